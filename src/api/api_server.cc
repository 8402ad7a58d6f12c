#include "api/api_server.h"

#include <chrono>

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

ApiServer::ApiServer(SandboxController& controller, store::Store& store, Metrics& metrics)
    : control_ctx_{&controller, &store, &metrics, kEnvdVersion},
      envd_ctx_{&controller, &metrics},
      metrics_(metrics) {}

ApiServer::~ApiServer() {
  if (http_) {
    http_->Shutdown();
    http_->Wait();
  }
}

void ApiServer::RegisterAll(http::Router& control, http::Router& envd, routes::ControlContext& cc,
                            routes::EnvdContext& ec) {
  routes::RegisterSandboxRoutes(control, cc);
  routes::RegisterSystemRoutes(control, cc);
  routes::RegisterEnvdFileRoutes(envd, ec);
  routes::RegisterEnvdProcessRoutes(envd, ec);
  routes::RegisterEnvdFilesystemRoutes(envd, ec);
}

Result<std::unique_ptr<ApiServer>> ApiServer::Start(http::ServerOptions options,
                                                    SandboxController& controller,
                                                    store::Store& store, Metrics& metrics) {
  std::unique_ptr<ApiServer> s(new ApiServer(controller, store, metrics));
  RegisterAll(s->control_, s->envd_, s->control_ctx_, s->envd_ctx_);
  ApiServer* self = s.get();
  MOAT_ASSIGN_OR_RETURN(
      s->http_, http::HttpServer::Start(
                    std::move(options),
                    [self](http::Request& req, http::ResponseWriter& w) { self->Handle(req, w); },
                    [self](const Status& st, int code, http::ResponseWriter& w) {
                      self->metrics_.CountRequest("(rejected)", code);
                      SendRestError(w, st, code);
                    }));
  return s;
}

void ApiServer::Handle(http::Request& req, http::ResponseWriter& w) {
  auto started = std::chrono::steady_clock::now();
  bool envd = routes::EnvdTargetOf(req).has_value();
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
  metrics_.CountRequest(route, rec.status());
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                                  started)
                .count();
  if (rec.status() >= 500 && ErrorLogLimiter().Allow()) {
    LogWarn("api.request",
            {{"route", route}, {"status", rec.status()}, {"ms", ms}, {"peer", req.peer}});
  } else {
    LogDebug("api.request", {{"route", route}, {"status", rec.status()}, {"ms", ms}});
  }
}

}  // namespace moat::api
