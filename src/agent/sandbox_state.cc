#include "agent/sandbox_state.h"

#include <nlohmann/json.hpp>

#include "common/sandbox_id.h"

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
  // The keys of the full record only once the sandbox is ready (see the header).
  if (s.ready) j["ready"] = true;
  if (s.origin) j["origin"] = ManifestToJson(*s.origin);
  if (s.identity) {
    j["identity"] = IdentityToJson(*s.identity);
  }
  if (!s.netns.empty()) j["netns"] = s.netns;
  return j.dump(2) + "\n";
}

Result<SandboxState> ParseSandboxState(const std::string& text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return InvalidArgument("state.json: not a JSON object");
  SandboxState s;
  for (auto& item : j.items()) {
    const std::string& key = item.key();
    const json& v = item.value();
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
    } else if (key == "ready") {
      MOAT_RETURN_IF_ERROR(want(v.is_boolean(), "a bool"));
      s.ready = v.get<bool>();
    } else if (key == "origin") {
      auto m = ManifestFromJson(v);
      if (!m.ok()) return m.status().Annotate("state.json: \"origin\"");
      s.origin = std::move(*m);
    } else if (key == "identity") {
      MOAT_ASSIGN_OR_RETURN(GuestIdentity id, IdentityFromJson(v, "state.json"));
      s.identity = std::move(id);
    } else if (key == "netns") {
      MOAT_RETURN_IF_ERROR(
          want(v.is_string() && !v.get<std::string>().empty(), "a non-empty string"));
      s.netns = v.get<std::string>();
    } else {
      return InvalidArgument("state.json: unknown key \"" + key + "\"");
    }
  }
  if (!IsValidSandboxId(s.id)) return InvalidArgument("state.json: invalid sandbox id");
  return s;
}

}  // namespace moat::agent
