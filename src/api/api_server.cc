#include "api/api_server.h"

#include <algorithm>
#include <chrono>

#include "api/auth.h"
#include "api/errors.h"
#include "common/log.h"

namespace moat::api {
namespace {

// Wraps a writer to learn the status a handler answered with.
class StatusRecorder : public http::ResponseWriter {
 public:
  explicit StatusRecorder(http::ResponseWriter& inner) : inner_(inner) {}
  Status Send(int status, http::Headers headers, std::string body) override {
    status_ = status;
    return inner_.Send(status, std::move(headers), std::move(body));
  }
  Status BeginStream(int status, http::Headers headers) override {
    status_ = status;
    return inner_.BeginStream(status, std::move(headers));
  }
  Status WriteChunk(std::string_view data) override { return inner_.WriteChunk(data); }
  Status EndStream() override { return inner_.EndStream(); }
  bool started() const override { return inner_.started(); }
  int status() const { return status_; }

 private:
  http::ResponseWriter& inner_;
  int status_ = 0;
};

RateLimiter& ErrorLogLimiter() {
  static RateLimiter limiter(20, 50);
  return limiter;
}

}  // namespace

ApiServer::ApiServer(SandboxController& controller, store::Store& store, Metrics& metrics,
                     routes::GuestLookup guest_of, PortResolver resolver,
                     PortProxyOptions proxy_options)
    : control_ctx_{&controller, &store, &metrics, kEnvdVersion, proxy_options.domain},
      envd_ctx_{&controller, &metrics, std::move(guest_of)},
      metrics_(metrics),
      proxy_(proxy_options, std::move(resolver), metrics) {}

ApiServer::~ApiServer() {
  if (http_) {
    Shutdown();
    http_->Wait();
  }
}

void ApiServer::Shutdown() {
  http_->Shutdown();
  // Relayed connections end when their upstream side is shut down too.
  proxy_.Shutdown();
}

void ApiServer::RegisterAll(http::Router& control, http::Router& envd, routes::ControlContext& cc,
                            routes::EnvdContext& ec) {
  routes::RegisterSandboxRoutes(control, cc);
  routes::RegisterSnapshotRoutes(control, cc);
  routes::RegisterKeyRoutes(control, cc);
  routes::RegisterTeamRoutes(control, cc);
  routes::RegisterHostRoutes(control, cc);
  routes::RegisterSystemRoutes(control, cc);
  routes::RegisterEnvdFileRoutes(envd, ec);
  routes::RegisterEnvdProcessRoutes(envd, ec);
  routes::RegisterEnvdFilesystemRoutes(envd, ec);
}

Result<std::unique_ptr<ApiServer>> ApiServer::Start(http::ServerOptions options,
                                                    SandboxController& controller,
                                                    store::Store& store, Metrics& metrics,
                                                    routes::GuestLookup guest_of,
                                                    PortResolver resolver,
                                                    PortProxyOptions proxy_options) {
  std::unique_ptr<ApiServer> s(new ApiServer(controller, store, metrics, std::move(guest_of),
                                             std::move(resolver), proxy_options));
  RegisterAll(s->control_, s->envd_, s->control_ctx_, s->envd_ctx_);
  ApiServer* self = s.get();
  s->max_body_bytes_ = options.body_limit;
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
  return s;
}

namespace {

// envd's Connect routes are /<package>.<Service>/<Method>; the rest (/files, /health) are REST.
bool IsConnectPattern(const std::string& pattern) {
  return pattern.find('.') < pattern.find('/', 1);
}

}  // namespace

http::Admission ApiServer::Admit(http::Request& req, bool has_body, http::ResponseWriter& w) {
  auto started = std::chrono::steady_clock::now();
  http::Admission a;
  a.body_limit = kControlBodyLimit;
  auto target = routes::EnvdTargetOf(req);
  if (target && target->port != routes::kEnvdPort) {
    // Public traffic to a sandbox's port: the port proxy relays the body whole (buffered, so
    // bounded tighter than uploads to envd). Before any of it is read, the proxy's own checks:
    // the sandbox runs with a network, and its traffic token if it has one.
    a.body_limit = std::min(max_body_bytes_, kProxyBodyLimit);
    if (has_body) {
      int status = 0;
      if (!proxy_.Resolve(req, target->sandbox_id, target->port, w, &status)) {
        Record("(port proxy)", status, started, req.peer, false);
      }
    }
    return a;
  }
  bool envd = target.has_value();
  const http::Router& router = envd ? envd_ : control_;
  auto match = router.Find(req.method, req.path);
  std::string route = match.route
                          ? (envd ? "envd " : "") + match.route->method + " " + match.route->pattern
                          : "(unmatched)";
  std::optional<store::SandboxRecord> running;
  Status unauthenticated;  // why the request does not authenticate
  if (envd) {
    a.body_limit = kEnvdBodyLimit;
    if (match.route && match.route->method == "POST" && match.route->pattern == "/files") {
      a.body = http::Admission::Body::kStream;
      a.body_limit = max_body_bytes_;
    }
    auto found = control_ctx_.controller->FindRunning(target->sandbox_id);
    if (found.ok()) running = std::move(*found);
    a.authenticated = running && req.HasHeader("X-Access-Token") &&
                      SecretsEqual(req.Header("X-Access-Token"), running->access_token);
    if (!a.authenticated) {
      unauthenticated = Unauthenticated(req.HasHeader("X-Access-Token") ? "invalid X-Access-Token"
                                                                        : "missing X-Access-Token");
    }
  } else {
    // /metrics also takes `Authorization: Bearer` (Prometheus): trusted the same way here.
    bool metrics = match.route && match.route->pattern == "/metrics";
    auto team = metrics ? routes::MetricsCaller(*control_ctx_.store, req)
                        : Authenticate(*control_ctx_.store, req);
    a.authenticated = team.ok();
    if (!team.ok()) unauthenticated = team.status();
  }
  // A request without a body costs nothing to route the usual way, and its handler checks its
  // credentials (some routes need none); one with a body is refused here if it would be anyway.
  if (!has_body) return a;
  StatusRecorder rec(w);
  if (match.route == nullptr) {
    if (match.path_known) {
      SendRestError(rec, InvalidArgument(req.method + " is not allowed on " + req.path), 405);
    } else {
      SendRestError(rec, NotFound("no route " + req.method + " " + req.path), 404);
    }
  } else if (envd && !running) {
    SendSandboxNotRunning(rec, target->sandbox_id);
  } else if (!a.authenticated) {
    if (envd && IsConnectPattern(match.route->pattern)) {
      SendConnectUnaryError(rec, unauthenticated);
    } else {
      SendRestError(rec, unauthenticated);
    }
  }
  if (rec.status() != 0) Record(route, rec.status(), started, req.peer, false);
  return a;
}

void ApiServer::Handle(http::Request& req, http::ResponseWriter& w) {
  auto started = std::chrono::steady_clock::now();
  auto target = routes::EnvdTargetOf(req);
  if (target && target->port != routes::kEnvdPort) {
    // Public traffic to a port inside the sandbox: neither API key nor access token.
    int status = proxy_.Serve(req, target->sandbox_id, target->port, w);
    // 502/503/504 here say that the sandbox's side is down or busy, not moatd: no warning.
    return Record("(port proxy)", status, started, req.peer, status == 500);
  }
  bool envd = target.has_value();
  const http::Router& router = envd ? envd_ : control_;
  auto match = router.Find(req.method, req.path);
  StatusRecorder rec(w);
  std::string route;
  if (match.route == nullptr) {
    route = "(unmatched)";
    if (match.path_known) {
      SendRestError(rec, InvalidArgument(req.method + " is not allowed on " + req.path), 405);
    } else {
      SendRestError(rec, NotFound("no route " + req.method + " " + req.path), 404);
    }
  } else {
    route = (envd ? "envd " : "") + match.route->method + " " + match.route->pattern;
    req.params = std::move(match.params);
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
