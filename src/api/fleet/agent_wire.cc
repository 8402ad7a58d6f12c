#include "api/fleet/agent_wire.h"

#include <cstdint>
#include <limits>
#include <optional>
#include <utility>

namespace moat::api::fleet {
namespace {

using nlohmann::json;

constexpr size_t kIdLength = 20;

bool IsIdChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

std::optional<ErrorCode> ErrorCodeFromName(std::string_view name) {
  for (int c = static_cast<int>(ErrorCode::kInvalidArgument);
       c <= static_cast<int>(ErrorCode::kUnauthenticated); ++c) {
    if (ErrorCodeName(static_cast<ErrorCode>(c)) == name) return static_cast<ErrorCode>(c);
  }
  return std::nullopt;
}

Status NotAnObject(std::string_view what) {
  return InvalidArgument(std::string(what) + " must be a JSON object");
}

const json* Field(const json& j, std::string_view key) {
  auto it = j.find(key);
  return it == j.end() ? nullptr : &*it;
}

template <typename T>
Status UnsignedField(const json& j, std::string_view key, T* out) {
  const json* v = Field(j, key);
  if (v == nullptr || !v->is_number_unsigned() ||
      v->get<uint64_t>() > std::numeric_limits<T>::max()) {
    return InvalidArgument("\"" + std::string(key) + "\" must be an unsigned integer");
  }
  *out = static_cast<T>(v->get<uint64_t>());
  return Status::Ok();
}

Status DoubleField(const json& j, std::string_view key, double* out) {
  const json* v = Field(j, key);
  if (v == nullptr || !v->is_number()) {
    return InvalidArgument("\"" + std::string(key) + "\" must be a number");
  }
  *out = v->get<double>();
  return Status::Ok();
}

Status StringList(const json& j, std::string_view key, std::vector<std::string>* out) {
  const json* v = Field(j, key);
  if (v == nullptr || !v->is_array()) {
    return InvalidArgument("\"" + std::string(key) + "\" must be an array of strings");
  }
  out->clear();
  out->reserve(v->size());
  for (const auto& e : *v) {
    if (!e.is_string()) {
      return InvalidArgument("\"" + std::string(key) + "\" must be an array of strings");
    }
    out->push_back(e.get<std::string>());
  }
  return Status::Ok();
}

}  // namespace

bool IsSandboxId(std::string_view id) {
  if (id.size() != kIdLength) return false;
  for (char c : id) {
    if (!IsIdChar(c)) return false;
  }
  return true;
}

bool IsSnapshotId(std::string_view id) {
  return id.substr(0, 4) == "snap" && IsSandboxId(id);
}

bool IsTemplateId(std::string_view id) {
  if (id.empty() || id.size() > 64 || id == "." || id == "..") return false;
  for (char c : id) {
    bool ok = IsIdChar(c) || (c >= 'A' && c <= 'Z') || c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string SandboxPath(std::string_view id) {
  return "/v1/sandboxes/" + std::string(id);
}

std::string SnapshotPath(std::string_view snapshot_id) {
  return "/v1/snapshots/" + std::string(snapshot_id);
}

int AgentHttpStatus(ErrorCode code) {
  switch (code) {
    case ErrorCode::kOk: return 200;
    case ErrorCode::kInvalidArgument: return 400;
    case ErrorCode::kNotFound: return 404;
    case ErrorCode::kAlreadyExists: return 409;
    case ErrorCode::kPermissionDenied: return 403;
    case ErrorCode::kFailedPrecondition: return 409;
    case ErrorCode::kResourceExhausted: return 429;
    case ErrorCode::kDeadlineExceeded: return 504;
    case ErrorCode::kUnavailable: return 503;
    case ErrorCode::kCancelled: return 499;
    case ErrorCode::kAborted: return 409;
    case ErrorCode::kInternal: return 500;
    case ErrorCode::kUnauthenticated: return 401;
  }
  return 500;
}

std::string DumpJson(const json& j) {
  // Messages may quote guest or client bytes: never fail on invalid UTF-8.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string ErrorBody(const Status& status) {
  return DumpJson(
      {{"code", std::string(ErrorCodeName(status.code()))}, {"message", status.message()}});
}

Status StatusOfErrorAnswer(int http_status, std::string_view body) {
  json j = json::parse(body, nullptr, false);
  if (j.is_object()) {
    const json* code = Field(j, "code");
    const json* message = Field(j, "message");
    if (code != nullptr && code->is_string()) {
      if (auto c = ErrorCodeFromName(code->get<std::string>()); c.has_value()) {
        return Status(*c, message != nullptr && message->is_string()
                              ? message->get<std::string>()
                              : "HTTP " + std::to_string(http_status));
      }
    }
  }
  std::string excerpt(body.substr(0, 200));
  std::string what = "HTTP " + std::to_string(http_status) +
                     (excerpt.empty() ? std::string(" with no error body") : ": " + excerpt);
  if (http_status == 502 || http_status == 503 || http_status == 504) return Unavailable(what);
  return Internal(what);
}

Result<json> ParseJsonBody(std::string_view body) {
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded()) return InvalidArgument("the body is not valid JSON");
  return j;
}

Result<std::string> StringField(const json& j, std::string_view key) {
  const json* v = j.is_object() ? Field(j, key) : nullptr;
  if (v == nullptr || !v->is_string()) {
    return InvalidArgument("\"" + std::string(key) + "\" must be a string");
  }
  return v->get<std::string>();
}

json TemplateToJson(const HostTemplateInfo& t) {
  return {
      {"name", t.name}, {"vcpus", t.vcpus}, {"memoryMiB", t.memory_mib}, {"diskMiB", t.disk_mib}};
}

Result<HostTemplateInfo> TemplateFromJson(const json& j) {
  if (!j.is_object()) return NotAnObject("a template");
  HostTemplateInfo t;
  MOAT_ASSIGN_OR_RETURN(t.name, StringField(j, "name"));
  MOAT_RETURN_IF_ERROR(UnsignedField(j, "vcpus", &t.vcpus));
  MOAT_RETURN_IF_ERROR(UnsignedField(j, "memoryMiB", &t.memory_mib));
  MOAT_RETURN_IF_ERROR(UnsignedField(j, "diskMiB", &t.disk_mib));
  return t;
}

json InventoryToJson(const HostInventory& inv) {
  return {{"running", inv.running},
          {"paused", inv.paused},
          {"snapshots", inv.snapshots},
          {"cleaned", inv.cleaned}};
}

Result<HostInventory> InventoryFromJson(const json& j) {
  if (!j.is_object()) return NotAnObject("an inventory");
  HostInventory inv;
  MOAT_RETURN_IF_ERROR(StringList(j, "running", &inv.running));
  MOAT_RETURN_IF_ERROR(StringList(j, "paused", &inv.paused));
  MOAT_RETURN_IF_ERROR(StringList(j, "snapshots", &inv.snapshots));
  MOAT_RETURN_IF_ERROR(StringList(j, "cleaned", &inv.cleaned));
  return inv;
}

json ProbeToJson(const HostSandboxStatus& s) {
  using Kind = HostSandboxStatus::Kind;
  json j = {{"state", s.kind == Kind::kRunning  ? "running"
                      : s.kind == Kind::kPaused ? "paused"
                                                : "gone"}};
  if (s.fault) j["fault"] = *s.fault;
  return j;
}

Result<HostSandboxStatus> ProbeFromJson(const json& j) {
  if (!j.is_object()) return NotAnObject("a probe");
  HostSandboxStatus s;
  MOAT_ASSIGN_OR_RETURN(std::string state, StringField(j, "state"));
  if (state == "running") {
    s.kind = HostSandboxStatus::Kind::kRunning;
  } else if (state == "paused") {
    s.kind = HostSandboxStatus::Kind::kPaused;
  } else if (state == "gone") {
    s.kind = HostSandboxStatus::Kind::kGone;
  } else {
    return InvalidArgument("\"state\" must be running, paused or gone (got \"" + state + "\")");
  }
  if (const json* fault = Field(j, "fault"); fault != nullptr && !fault->is_null()) {
    if (!fault->is_string()) return InvalidArgument("\"fault\" must be a string");
    s.fault = fault->get<std::string>();
  }
  return s;
}

json StartToJson(const HostSandboxStart& start) {
  return {{"id", start.id},
          {"templateID", start.template_id},
          {"envVars", start.env_vars},
          {"egress", start.egress},
          {"fromStore", start.from_store}};
}

Result<HostSandboxStart> StartFromJson(const json& j) {
  if (!j.is_object()) return NotAnObject("a create request");
  HostSandboxStart start;
  MOAT_ASSIGN_OR_RETURN(start.id, StringField(j, "id"));
  if (!IsSandboxId(start.id)) return InvalidArgument("\"id\" is not a sandbox id");
  MOAT_ASSIGN_OR_RETURN(start.template_id, StringField(j, "templateID"));
  if (!IsTemplateId(start.template_id)) {
    return InvalidArgument("\"templateID\" is neither a template name nor a snapshot id");
  }
  if (const json* env = Field(j, "envVars"); env != nullptr && !env->is_null()) {
    if (!env->is_object()) return InvalidArgument("\"envVars\" must be an object of strings");
    for (const auto& [name, value] : env->items()) {
      if (!value.is_string()) return InvalidArgument("\"envVars\" must be an object of strings");
      start.env_vars[name] = value.get<std::string>();
    }
  }
  if (const json* egress = Field(j, "egress"); egress != nullptr) start.egress = *egress;
  if (const json* key = Field(j, "fromStore"); key != nullptr && !key->is_null()) {
    if (!key->is_string()) return InvalidArgument("\"fromStore\" must be a string");
    start.from_store = key->get<std::string>();
  }
  return start;
}

json ForkToJson(const std::vector<std::string>& child_ids) {
  return {{"childIDs", child_ids}};
}

Result<std::vector<std::string>> ForkFromJson(const json& j) {
  if (!j.is_object()) return NotAnObject("a fork request");
  std::vector<std::string> ids;
  MOAT_RETURN_IF_ERROR(StringList(j, "childIDs", &ids));
  for (const auto& id : ids) {
    if (!IsSandboxId(id)) return InvalidArgument("\"childIDs\" holds a value that is not an id");
  }
  return ids;
}

json UsageToJson(const HostSandboxUsage& u) {
  return {{"pssBytes", u.pss_bytes},
          {"pssFileBytes", u.pss_file_bytes},
          {"rssBytes", u.rss_bytes},
          {"memoryTotalBytes", u.memory_total_bytes},
          {"diskBytes", u.disk_bytes},
          {"diskTotalBytes", u.disk_total_bytes},
          {"vcpus", u.vcpus},
          {"cpuSeconds", u.cpu_seconds},
          {"vmmAgeSeconds", u.vmm_age_seconds},
          {"vmmPid", u.vmm_pid},
          {"vmmStartTime", u.vmm_start_time},
          {"netEgressBytes", u.net_egress_bytes},
          {"netIngressBytes", u.net_ingress_bytes}};
}

Result<HostSandboxUsage> UsageFromJson(const json& j) {
  if (!j.is_object()) return NotAnObject("a usage sample");
  HostSandboxUsage u;
  MOAT_RETURN_IF_ERROR(UnsignedField(j, "pssBytes", &u.pss_bytes));
  MOAT_RETURN_IF_ERROR(UnsignedField(j, "pssFileBytes", &u.pss_file_bytes));
  MOAT_RETURN_IF_ERROR(UnsignedField(j, "rssBytes", &u.rss_bytes));
  MOAT_RETURN_IF_ERROR(UnsignedField(j, "memoryTotalBytes", &u.memory_total_bytes));
  MOAT_RETURN_IF_ERROR(UnsignedField(j, "diskBytes", &u.disk_bytes));
  MOAT_RETURN_IF_ERROR(UnsignedField(j, "diskTotalBytes", &u.disk_total_bytes));
  MOAT_RETURN_IF_ERROR(UnsignedField(j, "vcpus", &u.vcpus));
  MOAT_RETURN_IF_ERROR(DoubleField(j, "cpuSeconds", &u.cpu_seconds));
  MOAT_RETURN_IF_ERROR(DoubleField(j, "vmmAgeSeconds", &u.vmm_age_seconds));
  const json* pid = Field(j, "vmmPid");
  if (pid == nullptr || !pid->is_number_integer() ||
      pid->get<int64_t>() < std::numeric_limits<pid_t>::min() ||
      pid->get<int64_t>() > std::numeric_limits<pid_t>::max()) {
    return InvalidArgument("\"vmmPid\" must be an integer pid");
  }
  u.vmm_pid = static_cast<pid_t>(pid->get<int64_t>());
  MOAT_RETURN_IF_ERROR(UnsignedField(j, "vmmStartTime", &u.vmm_start_time));
  // Agents from before the network counters send neither: 0, as for a sandbox without a network.
  for (auto [key, out] : {std::pair{"netEgressBytes", &u.net_egress_bytes},
                          std::pair{"netIngressBytes", &u.net_ingress_bytes}}) {
    if (Field(j, key) != nullptr) MOAT_RETURN_IF_ERROR(UnsignedField(j, key, out));
  }
  return u;
}

std::string DataPlaneSubject(std::string_view host_id, std::string_view sandbox_id, int port) {
  return std::string(host_id) + "/" + std::string(sandbox_id) + ":" + std::to_string(port);
}

bool IsFilesHash(std::string_view hash) {
  return hash.size() == 64 && hash.find_first_not_of("0123456789abcdef") == std::string_view::npos;
}

bool IsTeamId(std::string_view team) {
  return !team.empty() && team.size() <= 64 &&
         team.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789") == std::string_view::npos;
}

std::string TemplateFilePath(std::string_view team, std::string_view hash) {
  return "/v1/template-files/" + std::string(team) + "/" + std::string(hash);
}

json BuildToJson(const HostTemplateBuild& b) {
  json files = json::array();
  for (const auto& [hash, path] : b.files) files.push_back(hash);
  return {{"buildID", b.build_id},
          {"templateID", b.template_id},
          {"teamID", b.team_id},
          {"start", b.start},
          {"vcpus", b.vcpus},
          {"memoryMiB", b.memory_mib},
          {"minFreeDiskMiB", b.min_free_disk_mib},
          {"files", files}};
}

Result<HostTemplateBuild> BuildFromJson(const json& j, const std::string& files_dir) {
  if (!j.is_object()) return NotAnObject("a build request");
  HostTemplateBuild b;
  MOAT_ASSIGN_OR_RETURN(b.build_id, StringField(j, "buildID"));
  if (!IsTemplateId(b.build_id)) return InvalidArgument("\"buildID\" is not a build id");
  MOAT_ASSIGN_OR_RETURN(b.template_id, StringField(j, "templateID"));
  MOAT_ASSIGN_OR_RETURN(b.team_id, StringField(j, "teamID"));
  if (!IsTeamId(b.team_id)) return InvalidArgument("\"teamID\" is not a team id");
  const json* start = Field(j, "start");
  if (start == nullptr || !start->is_object())
    return InvalidArgument("\"start\" must be an object");
  b.start = *start;
  for (const char* k : {"vcpus", "memoryMiB", "minFreeDiskMiB"}) {
    const json* v = Field(j, k);
    if (v == nullptr || !v->is_number_unsigned()) {
      return InvalidArgument(std::string("\"") + k + "\" must be a non-negative integer");
    }
  }
  b.vcpus = j["vcpus"].get<uint32_t>();
  b.memory_mib = j["memoryMiB"].get<uint32_t>();
  b.min_free_disk_mib = j["minFreeDiskMiB"].get<uint32_t>();
  std::vector<std::string> hashes;
  MOAT_RETURN_IF_ERROR(StringList(j, "files", &hashes));
  for (const auto& h : hashes) {
    if (!IsFilesHash(h)) return InvalidArgument("\"files\" holds a value that is not a hash");
    b.files[h] = files_dir + "/" + b.team_id + "/" + h;
  }
  return b;
}

json ProgressToJson(const BuildProgress& p) {
  json logs = json::array();
  for (const auto& l : p.logs) {
    logs.push_back(
        {{"t", l.unix_ms}, {"level", l.level}, {"step", l.step}, {"message", l.message}});
  }
  json out = {{"status", p.status}, {"logs", logs}, {"next", p.next}};
  if (p.built) out["result"] = {{"diskMiB", p.built->disk_mib}, {"result", p.built->result}};
  if (!p.error.ok()) {
    out["error"] = {{"code", std::string(ErrorCodeName(p.error.code()))},
                    {"message", p.error.message()},
                    {"step", p.step}};
  }
  return out;
}

Result<BuildProgress> ProgressFromJson(const json& j) {
  if (!j.is_object()) return NotAnObject("a build's progress");
  BuildProgress p;
  MOAT_ASSIGN_OR_RETURN(p.status, StringField(j, "status"));
  try {
    p.next = j.value("next", int64_t{0});
    for (const auto& l : j.value("logs", json::array())) {
      p.logs.push_back({l.value("t", int64_t{0}), l.value("level", "info"), l.value("step", ""),
                        l.value("message", "")});
    }
    if (const json* r = Field(j, "result"); r != nullptr && r->is_object()) {
      p.built = HostTemplateBuilt{r->value("diskMiB", 0u), r->value("result", json::object())};
    }
    if (const json* e = Field(j, "error"); e != nullptr && e->is_object()) {
      p.error = StatusOfErrorAnswer(500, DumpJson({{"code", e->value("code", "internal")},
                                                   {"message", e->value("message", "")}}));
      p.step = e->value("step", "");
    }
  } catch (const json::exception& e) {
    return InvalidArgument(std::string("a build's progress: ") + e.what());
  }
  return p;
}

}  // namespace moat::api::fleet
