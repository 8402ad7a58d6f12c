#include "agent/sandbox_state.h"

#include <nlohmann/json.hpp>

#include "agent/sandbox_id.h"
#include "common/fs.h"

namespace moat::agent {

using nlohmann::json;

std::string SerializeSandboxState(const SandboxState& s) {
  json j = {{"id", s.id},
            {"template", s.template_name},
            {"createdUnixMs", s.created_unix_ms},
            {"vmmPid", s.vmm_pid},
            {"vmmStartTime", s.vmm_start_time},
            {"jailId", s.jail_id},
            {"accel", s.accel},
            {"vmName", s.vm_name}};
  return j.dump(2) + "\n";
}

Result<SandboxState> ParseSandboxState(const std::string& text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return InvalidArgument("state.json: not a JSON object");
  SandboxState s;
  for (auto& [key, v] : j.items()) {
    auto want = [&](bool ok, const char* type) -> Status {
      if (!ok) return InvalidArgument("state.json: \"" + key + "\" must be " + type);
      return Status::Ok();
    };
    if (key == "id") {
      MOAT_RETURN_IF_ERROR(want(v.is_string(), "a string"));
      s.id = v.get<std::string>();
    } else if (key == "template") {
      MOAT_RETURN_IF_ERROR(want(v.is_string(), "a string"));
      s.template_name = v.get<std::string>();
    } else if (key == "createdUnixMs") {
      MOAT_RETURN_IF_ERROR(want(v.is_number_integer(), "an integer"));
      s.created_unix_ms = v.get<int64_t>();
    } else if (key == "vmmPid") {
      MOAT_RETURN_IF_ERROR(want(v.is_number_integer(), "an integer"));
      s.vmm_pid = v.get<pid_t>();
    } else if (key == "vmmStartTime") {
      MOAT_RETURN_IF_ERROR(want(v.is_number_unsigned(), "a non-negative integer"));
      s.vmm_start_time = v.get<uint64_t>();
    } else if (key == "jailId") {
      MOAT_RETURN_IF_ERROR(want(v.is_number_unsigned(), "a non-negative integer"));
      s.jail_id = v.get<uint32_t>();
    } else if (key == "accel") {
      MOAT_RETURN_IF_ERROR(want(v.is_string(), "a string"));
      s.accel = v.get<std::string>();
    } else if (key == "vmName") {
      MOAT_RETURN_IF_ERROR(want(v.is_string(), "a string"));
      s.vm_name = v.get<std::string>();
    } else {
      return InvalidArgument("state.json: unknown key \"" + key + "\"");
    }
  }
  if (!IsValidSandboxId(s.id)) return InvalidArgument("state.json: invalid sandbox id");
  return s;
}

Result<uint64_t> ProcessStartTime(pid_t pid) {
  MOAT_ASSIGN_OR_RETURN(std::string stat, ReadFile("/proc/" + std::to_string(pid) + "/stat"));
  // The command name (field 2) may contain spaces and parentheses: fields resume after the last
  // ')'.
  size_t close = stat.rfind(')');
  if (close == std::string::npos)
    return Internal("/proc/" + std::to_string(pid) + "/stat: bad format");
  size_t pos = close + 2;  // field 3 starts here
  for (int field = 3; field < 22; ++field) {
    pos = stat.find(' ', pos);
    if (pos == std::string::npos) return Internal("/proc/stat: too few fields");
    ++pos;
  }
  return std::stoull(stat.substr(pos, stat.find(' ', pos) - pos));
}

}  // namespace moat::agent
