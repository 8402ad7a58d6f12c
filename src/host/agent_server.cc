#include "host/agent_server.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <iterator>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>

#include "api/codec/query.h"
#include "api/envd_target.h"
#include "api/fleet/agent_wire.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/unique_fd.h"

namespace moat::host {
namespace {

namespace http = api::http;
namespace fleet = api::fleet;
using nlohmann::json;

void SendError(http::ResponseWriter& w, const Status& status, int http_status = 0) {
  int code = http_status != 0 ? http_status : fleet::AgentHttpStatus(status.code());
  (void)w.Send(code, {{"Content-Type", "application/json"}}, fleet::ErrorBody(status));
}

void SendJson(http::ResponseWriter& w, int http_status, const json& body) {
  (void)w.Send(http_status, {{"Content-Type", "application/json"}}, fleet::DumpJson(body));
}

// 204 on success, the error otherwise.
void SendDone(http::ResponseWriter& w, const Status& status) {
  if (!status.ok()) return SendError(w, status);
  (void)w.Send(204, {}, "");
}

// 201 {} on success, the error otherwise.
void SendCreated(http::ResponseWriter& w, const Status& status) {
  if (!status.ok()) return SendError(w, status);
  SendJson(w, 201, json::object());
}

// The path parameter `{id}` when it is a sandbox id; otherwise answers 400 and gives nothing.
std::optional<std::string> SandboxIdOf(const http::Request& req, http::ResponseWriter& w) {
  std::string id = req.Param("id");
  if (!fleet::IsSandboxId(id)) {
    SendError(w, InvalidArgument("\"" + id + "\" is not a sandbox id ([a-z0-9]{20})"));
    return std::nullopt;
  }
  return id;
}

// The request's JSON body; otherwise answers 400 and gives nothing.
std::optional<json> BodyOf(const http::Request& req, http::ResponseWriter& w) {
  auto j = fleet::ParseJsonBody(req.body);
  if (!j.ok()) {
    SendError(w, j.status());
    return std::nullopt;
  }
  return std::move(j).value();
}

// What the signature covers: the target as the client sent it.
std::string TargetOf(const http::Request& req) {
  return req.raw_query.empty() ? req.path : req.path + "?" + req.raw_query;
}

RateLimiter& RefusedLogLimiter() {
  static RateLimiter limiter(1, 10);
  return limiter;
}

// A build's log, as the control plane bounds it (api/templates.cc).
constexpr int64_t kMaxBuildLogLines = 50000;
constexpr size_t kMaxBuildLogLine = 8192;
// The log text one poll answers with at most.
constexpr size_t kMaxReportBytes = 128 * 1024;
static_assert(kMaxReportBytes * 6 + 500 * 128 < fleet::kAgentBodyLimit);

// An upload's token: the part file it writes is its own ([a-z0-9]{8,64}).
bool IsUploadToken(std::string_view token) {
  return token.size() >= 8 && token.size() <= 64 &&
         std::all_of(token.begin(), token.end(),
                     [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); });
}

// Part files of uploads that stopped over an hour ago (a replica that died mid-way).
void RemoveStaleParts(const std::string& dir) {
  auto now = std::chrono::system_clock::now();
  for (const auto& name : DirNames(dir)) {
    if (name.size() < 6 || name[0] != '.' || name.compare(name.size() - 5, 5, ".part") != 0) {
      continue;
    }
    std::string path = dir + "/" + name;
    struct stat st {};
    if (::lstat(path.c_str(), &st) < 0 || !S_ISREG(st.st_mode)) continue;
    auto mtime = std::chrono::system_clock::time_point(std::chrono::seconds(st.st_mtim.tv_sec));
    if (now - mtime > std::chrono::hours(1)) (void)::unlink(path.c_str());
  }
}

RateLimiter& ErrorLogLimiter() {
  static RateLimiter limiter(5, 20);
  return limiter;
}

}  // namespace

AgentServer::AgentServer(api::HostAgent& agent, fleet::FleetToken token, api::DataPlane* data_plane)
    : agent_(agent), token_(std::move(token)), data_plane_(data_plane) {}

AgentServer::~AgentServer() {
  if (http_) {
    Shutdown();
    http_->Wait();
  }
  // Builds in progress run to their end: they use the host agent, which outlives this server.
  std::vector<std::thread> threads;
  {
    std::lock_guard lock(builds_mu_);
    for (auto& [id, run] : builds_) {
      if (run->thread.joinable()) threads.push_back(std::move(run->thread));
    }
  }
  for (auto& t : threads) t.join();
}

Result<std::unique_ptr<AgentServer>> AgentServer::Start(api::HostAgent& agent,
                                                        fleet::FleetToken token,
                                                        http::ServerOptions options,
                                                        api::DataPlane* data_plane,
                                                        std::string template_files_dir) {
  std::unique_ptr<AgentServer> s(new AgentServer(agent, std::move(token), data_plane));
  s->files_dir_ = std::move(template_files_dir);
  s->RegisterRoutes();
  if (!s->files_dir_.empty()) s->RegisterTemplateRoutes();
  AgentServer* self = s.get();
  MOAT_ASSIGN_OR_RETURN(
      s->http_,
      http::HttpServer::Start(
          std::move(options),
          [self](http::Request& req, http::ResponseWriter& w) { self->Handle(req, w); },
          [](const Status& st, int code, http::ResponseWriter& w) { SendError(w, st, code); },
          [self](http::Request& req, bool has_body, http::ResponseWriter& w) {
            return self->Admit(req, has_body, w);
          }));
  LogInfo("agent.api_listening", {{"host_id", agent.host_id()}, {"port", s->port()}});
  return s;
}

http::Admission AgentServer::Admit(http::Request& req, bool has_body, http::ResponseWriter& w) {
  http::Admission a;
  a.body_limit = fleet::kAgentBodyLimit;
  // Pieces of uploaded template files are larger than control bodies.
  if (req.method == "PUT" && req.path.rfind("/v1/template-files/", 0) == 0) {
    a.body_limit = fleet::kTemplateFilePiece;
  }
  auto target = api::routes::EnvdTargetOf(req);
  // No token: load balancers probe /healthz, Prometheus scrapes /metrics.
  if ((req.path == "/healthz" || req.path == "/metrics") && !target) return a;
  // Data-plane traffic is signed for the sandbox and port it names, control calls for the host.
  std::string subject =
      target ? fleet::DataPlaneSubject(agent_.host_id(), target->sandbox_id, target->port)
             : agent_.host_id();
  Status signed_for_us = token_.Verify(req.Header(fleet::kFleetHeader), req.method, TargetOf(req),
                                       subject, fleet::UnixNow());
  if (!signed_for_us.ok()) {
    unsigned long suppressed = 0;
    if (RefusedLogLimiter().Allow(&suppressed)) {
      LogWarn("agent.request_refused", {{"method", req.method},
                                        {"path", req.path},
                                        {"peer", req.peer},
                                        {"why", signed_for_us.message()},
                                        {"suppressed", suppressed}});
    }
    SendError(w, signed_for_us);
    return a;
  }
  if (target && data_plane_ != nullptr) {
    api::DataPlaneAnswer answer;
    a = data_plane_->Admit(req, *target, has_body, w, &answer);
    a.authenticated = true;  // the replica is: the connection may use the reserve
    if (answer.status != 0) {
      LogDebug("agent.request", {{"route", answer.route}, {"status", answer.status}});
    }
    return a;
  }
  a.authenticated = true;
  return a;
}

void AgentServer::Handle(http::Request& req, http::ResponseWriter& w) {
  auto started = std::chrono::steady_clock::now();
  auto target = api::routes::EnvdTargetOf(req);
  http::StatusRecorder rec(w);
  std::string route = "(unmatched)";
  auto match = router_.Find(req.method, req.path);
  if (target) {
    if (data_plane_ != nullptr) {
      api::DataPlaneAnswer answer = data_plane_->Handle(req, *target, w);
      route = answer.route;
      if (answer.warn && ErrorLogLimiter().Allow()) {
        LogWarn("agent.request", {{"route", route}, {"status", answer.status}});
      } else {
        LogDebug("agent.request", {{"route", route}, {"status", answer.status}});
      }
      return;
    }
    SendError(rec, NotFound("this agent serves no data plane"));
  } else if (match.route == nullptr) {
    if (match.path_known) {
      SendError(rec, InvalidArgument(req.method + " is not allowed on " + req.path), 405);
    } else {
      SendError(rec, NotFound("no route " + req.method + " " + req.path));
    }
  } else {
    route = match.route->method + " " + match.route->pattern;
    req.params = std::move(match.params);
    match.route->handler(req, rec);
  }
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                                  started)
                .count();
  if (rec.status() >= 500 && ErrorLogLimiter().Allow()) {
    LogWarn("agent.request", {{"route", route}, {"status", rec.status()}, {"ms", ms}});
  } else {
    LogDebug("agent.request", {{"route", route}, {"status", rec.status()}, {"ms", ms}});
  }
}

void AgentServer::RegisterRoutes() {
  api::HostAgent& agent = agent_;
  router_.Add("GET", "/healthz", [&agent](http::Request&, http::ResponseWriter& w) {
    SendJson(w, 200, {{"role", "agent"}, {"hostID", agent.host_id()}});
  });
  router_.Add("GET", "/metrics", [this](http::Request&, http::ResponseWriter& w) {
    std::function<std::string()> render;
    {
      std::lock_guard lock(metrics_mu_);
      render = metrics_;
    }
    if (!render) return SendError(w, NotFound("this agent reports no metrics"));
    (void)w.Send(200, {{"Content-Type", "text/plain; version=0.0.4"}}, render());
  });
  router_.Add("GET", "/v1/template", [&agent](http::Request&, http::ResponseWriter& w) {
    SendJson(w, 200, fleet::TemplateToJson(agent.base_template()));
  });
  router_.Add("GET", "/v1/inventory", [&agent](http::Request&, http::ResponseWriter& w) {
    auto inv = agent.Inventory();
    if (!inv.ok()) return SendError(w, inv.status());
    SendJson(w, 200, fleet::InventoryToJson(*inv));
  });

  router_.Add("POST", "/v1/sandboxes", [&agent](http::Request& req, http::ResponseWriter& w) {
    auto body = BodyOf(req, w);
    if (!body) return;
    auto start = fleet::StartFromJson(*body);
    if (!start.ok()) return SendError(w, start.status());
    SendCreated(w, agent.Create(*start));
  });
  router_.Add("GET", "/v1/sandboxes/{id}", [&agent](http::Request& req, http::ResponseWriter& w) {
    auto id = SandboxIdOf(req, w);
    if (!id) return;
    auto probe = agent.Probe(*id);
    if (!probe.ok()) return SendError(w, probe.status());
    SendJson(w, 200, fleet::ProbeToJson(*probe));
  });
  router_.Add("DELETE", "/v1/sandboxes/{id}",
              [&agent](http::Request& req, http::ResponseWriter& w) {
                if (auto id = SandboxIdOf(req, w)) SendDone(w, agent.Kill(*id));
              });
  router_.Add("POST", "/v1/sandboxes/{id}/pause",
              [&agent](http::Request& req, http::ResponseWriter& w) {
                auto id = SandboxIdOf(req, w);
                if (!id) return;
                // An empty body keeps memory; {"memory": false} keeps the filesystem only.
                bool keep_memory = true;
                if (!req.body.empty()) {
                  auto body = BodyOf(req, w);
                  if (!body) return;
                  auto memory = body->is_object() ? body->find("memory") : body->end();
                  if (memory == body->end() || !memory->is_boolean()) {
                    return SendError(w, InvalidArgument("pause: expected {\"memory\": bool}"));
                  }
                  keep_memory = memory->get<bool>();
                }
                SendDone(w, agent.Pause(*id, keep_memory));
              });
  router_.Add("POST", "/v1/sandboxes/{id}/resume",
              [&agent](http::Request& req, http::ResponseWriter& w) {
                auto id = SandboxIdOf(req, w);
                if (!id) return;
                // An empty body resumes from this host's disk; {"fromStore": key} from the
                // object store (a sandbox another host paused).
                std::string from_store;
                if (!req.body.empty()) {
                  auto body = BodyOf(req, w);
                  if (!body) return;
                  auto key = body->is_object() ? body->find("fromStore") : body->end();
                  if (key == body->end() || !key->is_string()) {
                    return SendError(w, InvalidArgument("resume: expected {\"fromStore\": key}"));
                  }
                  from_store = key->get<std::string>();
                }
                SendDone(w, agent.Resume(*id, from_store));
              });
  router_.Add("POST", "/v1/sandboxes/{id}/fork",
              [&agent](http::Request& req, http::ResponseWriter& w) {
                auto id = SandboxIdOf(req, w);
                if (!id) return;
                auto body = BodyOf(req, w);
                if (!body) return;
                auto children = fleet::ForkFromJson(*body);
                if (!children.ok()) return SendError(w, children.status());
                SendCreated(w, agent.Fork(*id, *children));
              });
  router_.Add("POST", "/v1/sandboxes/{id}/snapshots",
              [&agent](http::Request& req, http::ResponseWriter& w) {
                auto id = SandboxIdOf(req, w);
                if (!id) return;
                auto body = BodyOf(req, w);
                if (!body) return;
                std::string name;
                if (body->is_object() && body->contains("name") && !(*body)["name"].is_null()) {
                  auto n = fleet::StringField(*body, "name");
                  if (!n.ok()) return SendError(w, n.status());
                  name = std::move(n).value();
                } else if (!body->is_object()) {
                  return SendError(w, InvalidArgument("a snapshot request must be an object"));
                }
                auto snap = agent.CreateSnapshot(*id, name);
                if (!snap.ok()) return SendError(w, snap.status());
                SendJson(w, 201, {{"snapshotID", *snap}});
              });
  router_.Add("POST", "/v1/sandboxes/{id}/export-fork",
              [&agent](http::Request& req, http::ResponseWriter& w) {
                auto id = SandboxIdOf(req, w);
                if (!id) return;
                auto key = agent.ExportFork(*id);
                if (!key.ok()) return SendError(w, key.status());
                SendJson(w, 201, {{"snapshotID", *key}});
              });
  router_.Add("PUT", "/v1/sandboxes/{id}/egress",
              [&agent](http::Request& req, http::ResponseWriter& w) {
                auto id = SandboxIdOf(req, w);
                if (!id) return;
                auto body = BodyOf(req, w);
                if (!body) return;
                SendDone(w, agent.SetEgress(*id, *body));
              });
  router_.Add("GET", "/v1/sandboxes/{id}/usage",
              [&agent](http::Request& req, http::ResponseWriter& w) {
                auto id = SandboxIdOf(req, w);
                if (!id) return;
                auto usage = agent.Usage(*id);
                if (!usage.ok()) return SendError(w, usage.status());
                SendJson(w, 200, fleet::UsageToJson(*usage));
              });
  // The guest console's last bytes (?max=N, at most 1 MiB), kept in a sandbox's history when it
  // ends: {"text": ...} (invalid UTF-8 replaced).
  router_.Add(
      "GET", "/v1/sandboxes/{id}/console", [&agent](http::Request& req, http::ResponseWriter& w) {
        auto id = SandboxIdOf(req, w);
        if (!id) return;
        size_t max = 256 * 1024;
        if (auto m = api::codec::QueryValue(api::codec::ParseQuery(req.raw_query), "max"); m) {
          bool digits = !m->empty() && m->size() <= 7 &&
                        m->find_first_not_of("0123456789") == std::string::npos;
          if (!digits || std::stoul(*m) > 1024 * 1024) {
            return SendError(w, InvalidArgument("max must be 0..1048576"));
          }
          max = std::stoul(*m);
        }
        auto text = agent.ConsoleLog(*id, max);
        if (!text.ok()) return SendError(w, text.status());
        SendJson(w, 200, json{{"text", *text}});
      });
  router_.Add("DELETE", "/v1/snapshots/{id}",
              [&agent](http::Request& req, http::ResponseWriter& w) {
                std::string id = req.Param("id");
                if (!fleet::IsSnapshotId(id)) {
                  return SendError(w, InvalidArgument("\"" + id + "\" is not a snapshot id"));
                }
                SendDone(w, agent.DeleteSnapshot(id));
              });
}

void AgentServer::RegisterTemplateRoutes() {
  router_.Add("GET", "/v1/template-files/{team}/{hash}",
              [this](http::Request& req, http::ResponseWriter& w) {
                std::string team = req.Param("team"), hash = req.Param("hash");
                if (!fleet::IsTeamId(team) || !fleet::IsFilesHash(hash)) {
                  return SendError(w, InvalidArgument("not a team id and files hash"));
                }
                if (!PathExists(files_dir_ + "/" + team + "/" + hash)) {
                  return SendError(w, NotFound("no such file here"));
                }
                SendJson(w, 200, json::object());
              });
  router_.Add("PUT", "/v1/template-files/{team}/{hash}",
              [this](http::Request& req, http::ResponseWriter& w) { PutFilePiece(req, w); });
  router_.Add("POST", "/v1/templates/builds", [this](http::Request& req, http::ResponseWriter& w) {
    auto body = BodyOf(req, w);
    if (!body) return;
    auto build = fleet::BuildFromJson(*body, files_dir_);
    if (!build.ok()) return SendError(w, build.status());
    StartBuild(std::move(build).value(), w);
  });
  router_.Add("GET", "/v1/templates/builds/{id}",
              [this](http::Request& req, http::ResponseWriter& w) {
                int64_t offset = 0;
                for (auto& [k, v] : api::codec::ParseQuery(req.raw_query)) {
                  if (k == "offset") offset = std::strtoll(v.c_str(), nullptr, 10);
                }
                ReportBuild(req.Param("id"), std::max<int64_t>(offset, 0), w);
              });
  router_.Add("DELETE", "/v1/templates/builds/{id}",
              [this](http::Request& req, http::ResponseWriter& w) {
                std::string id = req.Param("id");
                if (!fleet::IsTemplateId(id))
                  return SendError(w, InvalidArgument("not a build id"));
                SendDone(w, agent_.DeleteTemplateBuild(id));
              });
}

void AgentServer::PutFilePiece(http::Request& req, http::ResponseWriter& w) {
  std::string team = req.Param("team"), hash = req.Param("hash");
  if (!fleet::IsTeamId(team) || !fleet::IsFilesHash(hash)) {
    return SendError(w, InvalidArgument("not a team id and files hash"));
  }
  int64_t offset = -1;
  bool last = false;
  std::string upload;
  for (auto& [k, v] : api::codec::ParseQuery(req.raw_query)) {
    if (k == "offset") offset = std::strtoll(v.c_str(), nullptr, 10);
    if (k == "last") last = v == "1";
    if (k == "upload") upload = v;
  }
  if (offset < 0) return SendError(w, InvalidArgument("offset is required"));
  // Each upload writes its own part file: two replicas may send the same file at once. The
  // rename that ends one is atomic, so the last to end wins (the content is the same).
  if (!IsUploadToken(upload)) {
    return SendError(w, InvalidArgument("upload is required: the upload's token ([a-z0-9]{8,64})"));
  }
  std::string dir = files_dir_ + "/" + team;
  if (Status s = MakeDirs(dir, 0700); !s.ok()) return SendError(w, s);
  if (offset == 0) RemoveStaleParts(dir);
  std::string part = dir + "/." + hash + "." + upload + ".part";
  UniqueFd fd(
      ::open(part.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | (offset == 0 ? O_TRUNC : 0), 0600));
  if (!fd) return SendError(w, ErrnoError("open(" + part + ")"));
  struct stat st {};
  if (::fstat(fd.get(), &st) < 0 || st.st_size != offset) {
    return SendError(
        w, FailedPrecondition("the upload of " + hash + " is at " + std::to_string(st.st_size) +
                              ", not " + std::to_string(offset)));
  }
  const std::string& data = req.body;
  if (::pwrite(fd.get(), data.data(), data.size(), offset) != static_cast<ssize_t>(data.size())) {
    return SendError(w, ErrnoError("write(" + part + ")"));
  }
  if (last) {
    if (::fsync(fd.get()) < 0) return SendError(w, ErrnoError("fsync(" + part + ")"));
    std::string final_path = dir + "/" + hash;
    if (::rename(part.c_str(), final_path.c_str()) < 0) {
      return SendError(w, ErrnoError("rename(" + part + ")"));
    }
  }
  SendDone(w, Status::Ok());
}

void AgentServer::AppendLog(RunningBuild& run, const api::HostBuildLog& line) {
  std::lock_guard lock(run.mu);
  if (++run.received > kMaxBuildLogLines && line.level != "error") {
    if (run.received == kMaxBuildLogLines + 1) {
      run.logs.push_back({line.unix_ms, "warn", line.step,
                          "the build's log is longer than " + std::to_string(kMaxBuildLogLines) +
                              " lines: from here on only errors are kept"});
    }
    return;
  }
  if (line.message.size() <= kMaxBuildLogLine) {
    run.logs.push_back(line);
  } else {
    run.logs.push_back(
        {line.unix_ms, line.level, line.step, line.message.substr(0, kMaxBuildLogLine) + "…"});
  }
}

void AgentServer::ReapBuilds() {
  std::vector<std::thread> ended;
  {
    std::lock_guard lock(builds_mu_);
    auto now = std::chrono::steady_clock::now();
    for (auto it = builds_.begin(); it != builds_.end();) {
      RunningBuild& run = *it->second;
      bool done, old;
      {
        std::lock_guard b(run.mu);
        done = run.done;
        old = done && now - run.finished > std::chrono::minutes(30);
      }
      // A build that is done only has its last lines of code to run.
      if (done && run.thread.joinable()) ended.push_back(std::move(run.thread));
      // Forget builds that ended long ago and were never collected.
      it = old ? builds_.erase(it) : std::next(it);
    }
  }
  for (auto& t : ended) t.join();
}

void AgentServer::StartBuild(api::HostTemplateBuild build, http::ResponseWriter& w) {
  ReapBuilds();
  auto run = std::make_shared<RunningBuild>();
  {
    std::lock_guard lock(builds_mu_);
    if (builds_.count(build.build_id) != 0) {
      return SendError(
          w, Status(ErrorCode::kAlreadyExists, "build " + build.build_id + " runs here already"));
    }
    builds_[build.build_id] = run;
    run->thread = std::thread([this, run, build = std::move(build)] {
      std::string step;
      Result<api::HostTemplateBuilt> r = Internal("the build did not run");
      // Nothing a build meets may take the agent down: the build fails instead.
      try {
        r = agent_.BuildTemplate(
            build, [&run](const api::HostBuildLog& l) { AppendLog(*run, l); }, &step);
      } catch (const std::exception& e) {
        r = Internal(std::string("the build failed unexpectedly: ") + e.what());
      }
      std::lock_guard lock(run->mu);
      run->done = true;
      run->finished = std::chrono::steady_clock::now();
      if (r.ok()) {
        run->built = *r;
      } else {
        run->status = r.status();
        run->step = step;
      }
    });
  }
  SendJson(w, 202, json::object());
}

void AgentServer::ReportBuild(const std::string& id, int64_t offset, http::ResponseWriter& w) {
  std::shared_ptr<RunningBuild> run;
  {
    std::lock_guard lock(builds_mu_);
    auto it = builds_.find(id);
    if (it == builds_.end()) return SendError(w, NotFound("no build " + id + " runs here"));
    run = it->second;
  }
  fleet::BuildProgress p;
  {
    std::lock_guard lock(run->mu);
    // The poller has the lines before `offset`: they go. It never asks for them again (an
    // offset before `first` gets the lines from `first` on).
    int64_t n = run->first + static_cast<int64_t>(run->logs.size());
    offset = std::clamp<int64_t>(offset, run->first, n);
    run->logs.erase(run->logs.begin(), run->logs.begin() + (offset - run->first));
    run->first = offset;
    // At most 500 lines and kMaxReportBytes of them, so that the answer stays under the
    // client's kAgentBodyLimit however JSON escapes them (six bytes for a control byte).
    int64_t end = offset;
    size_t bytes = 0;
    while (end < n && end - offset < 500) {
      const api::HostBuildLog& l = run->logs[end - run->first];
      bytes += l.message.size() + l.step.size() + l.level.size();
      if (end > offset && bytes > kMaxReportBytes) break;
      p.logs.push_back(l);
      ++end;
    }
    p.next = end;
    if (run->done && end == n) {
      p.status = run->built ? "ready" : "error";
      p.built = run->built;
      p.error = run->status;
      p.step = run->step;
    } else {
      p.status = "building";
    }
  }
  // A finished build stays reportable for 30 minutes (StartBuild forgets it then): an answer
  // lost on the way is asked for again.
  SendJson(w, 200, fleet::ProgressToJson(p));
}

}  // namespace moat::host
