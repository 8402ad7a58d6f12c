#include "api/api_server.h"

#include <algorithm>
#include <chrono>

#include "api/auth.h"
#include "api/codec/query.h"
#include "api/dashboard.h"
#include "api/errors.h"
#include "api/templates.h"
#include "common/log.h"

namespace moat::api {
namespace {

RateLimiter& ErrorLogLimiter() {
  static RateLimiter limiter(20, 50);
  return limiter;
}

}  // namespace

ApiServer::ApiServer(SandboxController& controller, store::Store& store, Metrics& metrics,
                     std::unique_ptr<DataPlane> data_plane, std::string domain)
    : control_ctx_{&controller, &store, &metrics, kEnvdVersion, std::move(domain)},
      metrics_(metrics),
      data_plane_(std::move(data_plane)) {}

ApiServer::~ApiServer() {
  if (http_) {
    Shutdown();
    http_->Wait();
  }
}

void ApiServer::SetDashboardDir(std::string dir) {
  control_ctx_.dashboard->set_files_dir(std::move(dir));
}

void ApiServer::Shutdown() {
  http_->Shutdown();
  // Relayed connections end when their upstream side is shut down too.
  data_plane_->Shutdown();
}

void ApiServer::RegisterControl(http::Router& control, routes::ControlContext& cc) {
  routes::RegisterSandboxRoutes(control, cc);
  routes::RegisterSnapshotRoutes(control, cc);
  routes::RegisterTemplateRoutes(control, cc);
  routes::RegisterKeyRoutes(control, cc);
  routes::RegisterTeamRoutes(control, cc);
  routes::RegisterHostRoutes(control, cc);
  routes::RegisterSystemRoutes(control, cc);
  routes::RegisterDashboardRoutes(control, cc);
  routes::RegisterHistoryRoutes(control, cc);
}

Result<std::unique_ptr<ApiServer>> ApiServer::Start(http::ServerOptions options,
                                                    SandboxController& controller,
                                                    store::Store& store, Metrics& metrics,
                                                    std::unique_ptr<DataPlane> data_plane,
                                                    std::string domain) {
  std::string options_host = options.host;
  std::unique_ptr<ApiServer> s(
      new ApiServer(controller, store, metrics, std::move(data_plane), std::move(domain)));
  RegisterControl(s->control_, s->control_ctx_);
  ApiServer* self = s.get();
  MOAT_ASSIGN_OR_RETURN(
      s->http_, http::HttpServer::Start(
                    std::move(options),
                    [self](http::Request& req, http::ResponseWriter& w) { self->Handle(req, w); },
                    [self](const Status& st, int code, http::ResponseWriter& w) {
                      self->metrics_.CountRequest("(rejected)", code);
                      SendRestError(w, st, code);
                    },
                    [self](http::Request& req, bool has_body, http::ResponseWriter& w) {
                      return self->Admit(req, has_body, w);
                    }));
  // The web terminal reaches sandboxes through this very port.
  s->control_ctx_.dashboard->set_moatd_url(LocalUrlOf(options_host, s->http_->port()));
  return s;
}

http::Admission ApiServer::Admit(http::Request& req, bool has_body, http::ResponseWriter& w) {
  auto started = std::chrono::steady_clock::now();
  if (auto target = routes::EnvdTargetOf(req)) {
    if (target->port != routes::kEnvdPort) {
      // A paused sandbox with auto-resume wakes for its port traffic: the request waits for it.
      // If it cannot, the data plane answers as for any sandbox that is not running.
      static RateLimiter wake_log(1, 5);
      Status woke = control_ctx_.controller->WakeForTraffic(target->sandbox_id,
                                                            req.Header(kTrafficTokenHeader));
      if (!woke.ok() && wake_log.Allow()) {
        LogWarn("api.auto_resume_failed",
                {{"sandbox", target->sandbox_id}, {"error", woke.ToString()}});
      }
    }
    DataPlaneAnswer answer;
    http::Admission a = data_plane_->Admit(req, *target, has_body, w, &answer);
    if (answer.status != 0) Record(answer.route, answer.status, started, req.peer, answer.warn);
    return a;
  }
  http::Admission a;
  a.body_limit = kControlBodyLimit;
  if (req.path == routes::kTemplateUploadPath) return AdmitUpload(req, has_body, w, started);
  auto match = control_.Find(req.method, req.path);
  std::string route =
      match.route ? match.route->method + " " + match.route->pattern : "(unmatched)";
  // /metrics also takes `Authorization: Bearer` (Prometheus): trusted the same way here.
  bool metrics = match.route && match.route->pattern == "/metrics";
  // Signing in to the dashboard is what a request without credentials may do.
  bool sign_in =
      match.route && match.route->pattern == routes::kDashboardSessionPath && req.method == "POST";
  auto team = metrics ? routes::MetricsCaller(*control_ctx_.store, req)
                      : Authenticate(*control_ctx_.store, req);
  a.authenticated = team.ok();
  // A request without a body costs nothing to route the usual way, and its handler checks its
  // credentials (some routes need none); one with a body is refused here if it would be anyway.
  if (!has_body) return a;
  http::StatusRecorder rec(w);
  if (match.route == nullptr) {
    if (match.path_known) {
      SendRestError(rec, InvalidArgument(req.method + " is not allowed on " + req.path), 405);
    } else {
      SendRestError(rec, NotFound("no route " + req.method + " " + req.path), 404);
    }
  } else if (!team.ok() && !sign_in) {
    SendRestError(rec, team.status());
  }
  if (rec.status() != 0) Record(route, rec.status(), started, req.peer, false);
  return a;
}

http::Admission ApiServer::AdmitUpload(http::Request& req, bool has_body, http::ResponseWriter& w,
                                       std::chrono::steady_clock::time_point started) {
  // Authenticated by its own URL, before any of the body is read; then streamed to disk.
  http::Admission a;
  http::StatusRecorder rec(w);
  TemplateService* t = control_ctx_.controller->templates();
  if (req.method != "PUT") {
    SendRestError(rec, InvalidArgument("uploads take PUT"), 405);
  } else if (t == nullptr) {
    SendRestError(rec, Unavailable("custom templates are not enabled"));
  } else {
    std::map<std::string, std::string> q;
    for (auto& [k, v] : codec::ParseQuery(req.raw_query)) q[k] = v;
    auto target = t->CheckUploadUrl(q);
    if (!target.ok()) {
      SendRestError(rec, target.status());
    } else {
      a.authenticated = true;
      a.body = http::Admission::Body::kStream;
      a.body_limit = t->max_upload_bytes();
    }
  }
  (void)has_body;
  if (rec.status() != 0)
    Record("PUT /template-files/upload", rec.status(), started, req.peer, false);
  return a;
}

namespace {

// The client's X-Request-Id when it is a sane token, else a fresh one.
std::string RequestIdOf(const http::Request& req) {
  std::string given = req.Header("X-Request-Id");
  bool sane = !given.empty() && given.size() <= 64 &&
              given.find_first_not_of(
                  "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                  "0123456789-_.:") == std::string::npos;
  return sane ? given : RandomToken("", 8);
}

// Every answer moatd writes itself names its request (X-Request-Id); a relayed one (the port
// proxy's, once the connection is taken over) is the sandbox's own.
class RequestIdWriter : public http::ResponseWriter {
 public:
  RequestIdWriter(http::ResponseWriter& inner, const std::string& id) : inner_(inner), id_(id) {}
  Status Send(int status, http::Headers headers, std::string body) override {
    headers["X-Request-Id"] = id_;
    return inner_.Send(status, std::move(headers), std::move(body));
  }
  Status BeginStream(int status, http::Headers headers) override {
    headers["X-Request-Id"] = id_;
    return inner_.BeginStream(status, std::move(headers));
  }
  Status WriteChunk(std::string_view data) override { return inner_.WriteChunk(data); }
  Status EndStream() override { return inner_.EndStream(); }
  bool started() const override { return inner_.started(); }
  Result<http::HijackedConnection> Hijack() override { return inner_.Hijack(); }

 private:
  http::ResponseWriter& inner_;
  const std::string& id_;
};

}  // namespace

void ApiServer::Handle(http::Request& req, http::ResponseWriter& writer) {
  auto started = std::chrono::steady_clock::now();
  if (req.request_id.empty()) req.request_id = RequestIdOf(req);
  ScopedLogContext log_context({req.request_id, ""});
  RequestIdWriter w(writer, req.request_id);
  if (auto target = routes::EnvdTargetOf(req)) {
    ScopedLogContext::SetSandbox(target->sandbox_id);
    DataPlaneAnswer answer = data_plane_->Handle(req, *target, w);
    return Record(answer.route, answer.status, started, req.peer, answer.warn);
  }
  http::StatusRecorder rec(w);
  // The dashboard's files, under paths no route pattern can name.
  if (routes::ServeDashboardFiles(control_ctx_, req, rec)) {
    return Record("GET /dashboard/*", rec.status(), started, req.peer, rec.status() >= 500);
  }
  auto match = control_.Find(req.method, req.path);
  std::string route;
  if (match.route == nullptr) {
    route = "(unmatched)";
    if (match.path_known) {
      SendRestError(rec, InvalidArgument(req.method + " is not allowed on " + req.path), 405);
    } else {
      SendRestError(rec, NotFound("no route " + req.method + " " + req.path), 404);
    }
  } else {
    route = match.route->method + " " + match.route->pattern;
    req.params = std::move(match.params);
    if (auto id = req.params.find("sandboxID"); id != req.params.end()) {
      ScopedLogContext::SetSandbox(id->second);
    }
    match.route->handler(req, rec);
  }
  Record(route, rec.status(), started, req.peer, rec.status() >= 500);
}

void ApiServer::Record(const std::string& route, int status,
                       std::chrono::steady_clock::time_point started, const std::string& peer,
                       bool warn) {
  metrics_.CountRequest(route, status);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                                  started)
                .count();
  if (warn && ErrorLogLimiter().Allow()) {
    LogWarn("api.request", {{"route", route}, {"status", status}, {"ms", ms}, {"peer", peer}});
  } else {
    LogDebug("api.request", {{"route", route}, {"status", status}, {"ms", ms}});
  }
}

}  // namespace moat::api
