#include "api/fleet/remote_host_agent.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <thread>

#include "api/fleet/agent_wire.h"
#include "common/log.h"
#include "common/sandbox_id.h"
#include "common/unique_fd.h"

namespace moat::api::fleet {
namespace {

using nlohmann::json;

Status BadId(std::string_view what, std::string_view id) {
  return InvalidArgument("\"" + std::string(id) + "\" is not a " + std::string(what) + " id");
}

RateLimiter& TemplateLogLimiter() {
  static RateLimiter limiter(0.2, 5);
  return limiter;
}

}  // namespace

Result<std::unique_ptr<RemoteHostAgent>> RemoteHostAgent::ForEndpoint(
    std::string host_id, std::string_view endpoint, FleetToken token,
    RemoteHostAgentOptions options) {
  http::ClientOptions client_options;
  client_options.connect_timeout = options.connect_timeout;
  client_options.max_idle_connections = options.max_idle_connections;
  client_options.max_response_body = kAgentBodyLimit;
  auto client = http::Client::ForUrl(endpoint, client_options);
  if (!client.ok()) return client.status().Annotate("host " + host_id);
  return std::unique_ptr<RemoteHostAgent>(new RemoteHostAgent(std::move(host_id), std::move(token),
                                                              std::move(client).value(), options));
}

RemoteHostAgent::RemoteHostAgent(std::string host_id, FleetToken token,
                                 std::unique_ptr<http::Client> client,
                                 RemoteHostAgentOptions options)
    : host_id_(std::move(host_id)),
      token_(std::move(token)),
      client_(std::move(client)),
      options_(options) {}

std::string RemoteHostAgent::Where() const {
  return "host " + host_id_;
}

Result<std::string> RemoteHostAgent::Send(const Call& call) {
  http::ClientRequest req;
  req.method = call.method;
  req.target = call.target;
  req.body = call.body;
  req.timeout = call.slow ? options_.slow_call_timeout : options_.call_timeout;
  req.idempotent = call.method == "GET";
  req.headers[std::string(kFleetHeader)] =
      token_.Header(UnixNow(), call.method, call.target, host_id_);
  if (!call.body.empty()) req.headers["Content-Type"] = call.content_type;
  auto res = client_->Send(req);
  // The client's messages name the request and the endpoint's URL.
  if (!res.ok()) return res.status().Annotate(Where());
  if (res->status >= 200 && res->status < 300) return std::move(res->body);
  Status status = StatusOfErrorAnswer(res->status, res->body);
  if (res->status == 401) {
    return Unavailable(Where() + " at " + endpoint() + " refused the fleet signature of " +
                       call.method + " " + call.target + " (" + status.message() +
                       "): check the fleet token, the host id and the clocks");
  }
  // The agent's own error, as it is: the same Status a local host would return.
  return status;
}

Result<json> RemoteHostAgent::SendForJson(const Call& call) {
  MOAT_ASSIGN_OR_RETURN(std::string body, Send(call));
  auto j = ParseJsonBody(body);
  if (!j.ok()) {
    return Internal(Where() + " answered " + call.method + " " + call.target +
                    " with a body that is not JSON");
  }
  return j;
}

Result<HostTemplateInfo> RemoteHostAgent::FetchTemplate() {
  {
    std::lock_guard lock(template_mu_);
    if (template_) return *template_;
  }
  Call call{"GET", "/v1/template"};
  MOAT_ASSIGN_OR_RETURN(json j, SendForJson(call));
  auto t = TemplateFromJson(j);
  if (!t.ok()) return Internal(Where() + ": invalid template: " + t.status().message());
  std::lock_guard lock(template_mu_);
  template_ = *t;
  return t;
}

HostTemplateInfo RemoteHostAgent::base_template() {
  auto t = FetchTemplate();
  if (t.ok()) return *t;
  if (TemplateLogLimiter().Allow()) {
    LogWarn("fleet.template_unavailable",
            {{"host", host_id_}, {"endpoint", endpoint()}, {"error", t.status().ToString()}});
  }
  return HostTemplateInfo{};
}

Result<HostInventory> RemoteHostAgent::Inventory() {
  Call call{"GET", "/v1/inventory"};
  MOAT_ASSIGN_OR_RETURN(json j, SendForJson(call));
  auto inv = InventoryFromJson(j);
  if (!inv.ok()) return Internal(Where() + ": invalid inventory: " + inv.status().message());
  return inv;
}

Result<HostSandboxStatus> RemoteHostAgent::Probe(const std::string& id) {
  if (!IsSandboxId(id)) return BadId("sandbox", id);
  Call call{"GET", SandboxPath(id)};
  MOAT_ASSIGN_OR_RETURN(json j, SendForJson(call));
  auto s = ProbeFromJson(j);
  if (!s.ok()) return Internal(Where() + ": invalid probe of " + id + ": " + s.status().message());
  return s;
}

Status RemoteHostAgent::Create(const HostSandboxStart& start) {
  if (!IsSandboxId(start.id)) return BadId("sandbox", start.id);
  if (!IsTemplateId(start.template_id)) return BadId("template", start.template_id);
  Call call{"POST", "/v1/sandboxes", DumpJson(StartToJson(start)), true, 201};
  return Send(call).status();
}

Status RemoteHostAgent::Kill(const std::string& id) {
  if (!IsSandboxId(id)) return BadId("sandbox", id);
  return Send({"DELETE", SandboxPath(id), "", false, 204}).status();
}

Status RemoteHostAgent::Pause(const std::string& id, bool keep_memory) {
  if (!IsSandboxId(id)) return BadId("sandbox", id);
  std::string body = keep_memory ? "" : R"({"memory":false})";
  return Send({"POST", SandboxPath(id) + "/pause", body, true, 204}).status();
}

Status RemoteHostAgent::Resume(const std::string& id, const std::string& from_store) {
  if (!IsSandboxId(id)) return BadId("sandbox", id);
  std::string body = from_store.empty() ? "" : DumpJson({{"fromStore", from_store}});
  return Send({"POST", SandboxPath(id) + "/resume", body, true, 204}).status();
}

Status RemoteHostAgent::Fork(const std::string& id, const std::vector<std::string>& child_ids) {
  if (!IsSandboxId(id)) return BadId("sandbox", id);
  for (const auto& c : child_ids) {
    if (!IsSandboxId(c)) return BadId("sandbox", c);
  }
  Call call{"POST", SandboxPath(id) + "/fork", DumpJson(ForkToJson(child_ids)), true, 201};
  return Send(call).status();
}

Result<std::string> RemoteHostAgent::ExportFork(const std::string& id) {
  if (!IsSandboxId(id)) return BadId("sandbox", id);
  Call call{"POST", SandboxPath(id) + "/export-fork", "", true, 201};
  MOAT_ASSIGN_OR_RETURN(json j, SendForJson(call));
  auto key = StringField(j, "snapshotID");
  if (!key.ok() || !IsSnapshotId(*key)) {
    return Internal(Where() + " answered a fork export of " + id + " without a valid snapshotID");
  }
  return key;
}

Result<std::string> RemoteHostAgent::CreateSnapshot(const std::string& id,
                                                    const std::string& name) {
  if (!IsSandboxId(id)) return BadId("sandbox", id);
  Call call{"POST", SandboxPath(id) + "/snapshots", DumpJson({{"name", name}}), true, 201};
  MOAT_ASSIGN_OR_RETURN(json j, SendForJson(call));
  auto snap = StringField(j, "snapshotID");
  if (!snap.ok() || !IsSnapshotId(*snap)) {
    return Internal(Where() + " answered a snapshot of " + id + " without a valid snapshotID");
  }
  return snap;
}

Status RemoteHostAgent::DeleteSnapshot(const std::string& snapshot_id) {
  if (!IsSnapshotId(snapshot_id)) return BadId("snapshot", snapshot_id);
  return Send({"DELETE", SnapshotPath(snapshot_id), "", false, 204}).status();
}

Status RemoteHostAgent::SetEgress(const std::string& id, const json& egress) {
  if (!IsSandboxId(id)) return BadId("sandbox", id);
  return Send({"PUT", SandboxPath(id) + "/egress", DumpJson(egress), false, 204}).status();
}

Result<HostSandboxUsage> RemoteHostAgent::Usage(const std::string& id) {
  if (!IsSandboxId(id)) return BadId("sandbox", id);
  Call call{"GET", SandboxPath(id) + "/usage"};
  MOAT_ASSIGN_OR_RETURN(json j, SendForJson(call));
  auto u = UsageFromJson(j);
  if (!u.ok()) return Internal(Where() + ": invalid usage of " + id + ": " + u.status().message());
  return u;
}

Result<std::string> RemoteHostAgent::ConsoleLog(const std::string& id, size_t max_bytes) {
  if (!IsSandboxId(id)) return BadId("sandbox", id);
  Call call{"GET", SandboxPath(id) + "/console?max=" + std::to_string(max_bytes)};
  MOAT_ASSIGN_OR_RETURN(json j, SendForJson(call));
  if (!j.is_object() || !j.contains("text") || !j["text"].is_string()) {
    return Internal(Where() + ": invalid console log of " + id);
  }
  return j["text"].get<std::string>();
}

Result<HostPortEndpoint> RemoteHostAgent::ResolvePort(const std::string& id, uint16_t port) {
  return FailedPrecondition("port " + std::to_string(port) + " of sandbox " + id + " on " +
                            Where() +
                            " is reached through its agent, which does not relay "
                            "ports yet");
}

Status RemoteHostAgent::CheckHealth() {
  http::ClientRequest req;
  req.method = "GET";
  req.target = "/healthz";
  req.timeout = options_.call_timeout;
  req.idempotent = true;
  auto res = client_->Send(req);
  if (!res.ok()) return res.status().Annotate(Where());
  if (res->status != 200) return StatusOfErrorAnswer(res->status, res->body).Annotate(Where());
  auto j = ParseJsonBody(res->body);
  auto role = j.ok() ? StringField(*j, "role") : Result<std::string>(j.status());
  auto id = j.ok() ? StringField(*j, "hostID") : Result<std::string>(j.status());
  if (!role.ok() || !id.ok() || *role != "agent") {
    return FailedPrecondition(Where() + ": " + endpoint() + " does not answer as a moatd agent");
  }
  if (*id != host_id_) {
    return FailedPrecondition(Where() + ": the agent at " + endpoint() + " is host \"" + *id +
                              "\"");
  }
  return Status::Ok();
}

Status RemoteHostAgent::SendTemplateFile(const std::string& team, const std::string& hash,
                                         const std::string& path) {
  std::string target = TemplateFilePath(team, hash);
  auto has = Send({.method = "GET", .target = target});
  if (has.ok()) return Status::Ok();
  if (has.status().code() != ErrorCode::kNotFound) return has.status();
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError("open(" + path + ")");
  struct stat st {};
  if (::fstat(fd.get(), &st) < 0) return ErrnoError("stat(" + path + ")");
  int64_t size = st.st_size, offset = 0;
  // The agent keeps this upload's pieces apart from any other upload of the same file.
  std::string upload = NewSandboxId();
  std::string piece;
  do {
    size_t n = static_cast<size_t>(std::min<int64_t>(size - offset, kTemplateFilePiece));
    piece.resize(n);
    if (n > 0 && ::pread(fd.get(), piece.data(), n, offset) != static_cast<ssize_t>(n)) {
      return ErrnoError("read(" + path + ")");
    }
    bool last = offset + static_cast<int64_t>(n) >= size;
    MOAT_RETURN_IF_ERROR(Send({.method = "PUT",
                               .target = target + "?upload=" + upload + "&offset=" +
                                         std::to_string(offset) + "&last=" + (last ? "1" : "0"),
                               .body = piece,
                               .slow = true,
                               .expect = 204,
                               .content_type = "application/octet-stream"})
                             .status());
    offset += static_cast<int64_t>(n);
  } while (offset < size);
  return Status::Ok();
}

Result<HostTemplateBuilt> RemoteHostAgent::BuildTemplate(
    const HostTemplateBuild& build, const std::function<void(const HostBuildLog&)>& log,
    std::string* failed_step) {
  if (failed_step != nullptr) *failed_step = "base";
  for (const auto& [hash, path] : build.files) {
    MOAT_RETURN_IF_ERROR(SendTemplateFile(build.team_id, hash, path)
                             .Annotate("sending the files of a COPY to " + Where()));
  }
  MOAT_RETURN_IF_ERROR(Send({.method = "POST",
                             .target = "/v1/templates/builds",
                             .body = DumpJson(BuildToJson(build)),
                             .slow = true,
                             .expect = 202})
                           .status());
  // Polled until it ends; an agent that cannot be reached for a while is waited for (a build
  // takes minutes), one that forgot the build (it restarted) loses it. A build longer than
  // options_.build_timeout is given up on.
  std::string target = "/v1/templates/builds/" + build.build_id;
  int64_t offset = 0;
  auto unreachable_since = std::chrono::steady_clock::time_point{};
  auto deadline = std::chrono::steady_clock::now() + options_.build_timeout;
  for (;;) {
    if (std::chrono::steady_clock::now() > deadline) {
      auto limit = options_.build_timeout;
      std::string within =
          limit >= std::chrono::minutes(1)
              ? std::to_string(std::chrono::duration_cast<std::chrono::minutes>(limit).count()) +
                    " minutes"
              : std::to_string(limit.count()) + " ms";
      return DeadlineExceeded("build " + build.build_id + " on " + Where() +
                              " did not end within " + within +
                              ": given up on (it may still run there)");
    }
    auto j = SendForJson({.method = "GET", .target = target + "?offset=" + std::to_string(offset)});
    if (!j.ok()) {
      if (j.status().code() == ErrorCode::kNotFound) {
        return Unavailable(Where() + " lost build " + build.build_id + " (its agent restarted?)");
      }
      if (j.status().code() != ErrorCode::kUnavailable) return j.status();
      auto now = std::chrono::steady_clock::now();
      if (unreachable_since == std::chrono::steady_clock::time_point{}) unreachable_since = now;
      if (now - unreachable_since > std::chrono::minutes(2)) return j.status();
      std::this_thread::sleep_for(std::chrono::seconds(1));
      continue;
    }
    unreachable_since = {};
    MOAT_ASSIGN_OR_RETURN(BuildProgress p, ProgressFromJson(*j));
    for (const auto& l : p.logs) {
      if (log) log(l);
    }
    // An offset going back would log lines twice.
    offset = std::max(offset, p.next);
    if (p.status == "ready") {
      if (p.built) return *p.built;
      return Internal(Where() + " reported build " + build.build_id + " ready without its result");
    }
    if (p.status == "error") {
      if (failed_step != nullptr) *failed_step = p.step.empty() ? "base" : p.step;
      return p.error.ok() ? Internal(Where() + ": the build failed") : p.error;
    }
    if (p.status != "building") {
      return Internal(Where() + " reported build " + build.build_id + " in an unknown state \"" +
                      p.status + "\"");
    }
    if (p.logs.empty()) std::this_thread::sleep_for(options_.build_poll_interval);
  }
}

Status RemoteHostAgent::DeleteTemplateBuild(const std::string& build_id) {
  return Send({.method = "DELETE",
               .target = "/v1/templates/builds/" + build_id,
               .slow = true,
               .expect = 204})
      .status();
}

}  // namespace moat::api::fleet
