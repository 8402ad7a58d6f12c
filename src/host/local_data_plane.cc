#include "host/local_data_plane.h"

#include "api/auth.h"
#include "api/errors.h"
#include "api/routes/routes.h"
#include "host/envd/envd_routes.h"

namespace moat::api {
namespace {

// envd's Connect routes are /<package>.<Service>/<Method>; the rest (/files, /health) are REST.
bool IsConnectPattern(const std::string& pattern) {
  return pattern.find('.') < pattern.find('/', 1);
}

// The answer to a request no route takes: 405 for a known path, 404 otherwise.
void SendNoRoute(const http::Request& req, const http::Router::Match& match,
                 http::ResponseWriter& w) {
  if (match.path_known) {
    SendRestError(w, InvalidArgument(req.method + " is not allowed on " + req.path), 405);
  } else {
    SendRestError(w, NotFound("no route " + req.method + " " + req.path), 404);
  }
}

}  // namespace

LocalDataPlane::LocalDataPlane(routes::EnvdContext ctx, PortResolver resolver,
                               PortProxyOptions proxy_options, Metrics& metrics,
                               size_t max_body_bytes)
    : ctx_(std::move(ctx)),
      metrics_(metrics),
      max_body_bytes_(max_body_bytes),
      proxy_(proxy_options, std::move(resolver), metrics, ctx_.history) {
  RegisterRoutes(envd_, ctx_);
}

void LocalDataPlane::RegisterRoutes(http::Router& router, routes::EnvdContext& ctx) {
  routes::RegisterEnvdFileRoutes(router, ctx);
  routes::RegisterEnvdProcessRoutes(router, ctx);
  routes::RegisterEnvdFilesystemRoutes(router, ctx);
}

http::Admission LocalDataPlane::Admit(http::Request& req, const routes::EnvdTarget& target,
                                      bool has_body, http::ResponseWriter& w,
                                      DataPlaneAnswer* answer) {
  http::Admission a;
  if (target.port != routes::kEnvdPort) {
    // Public traffic to a sandbox's port: the port proxy relays the body whole (buffered, so
    // bounded tighter than uploads to envd). Before any of it is read, the proxy's own checks:
    // the sandbox runs with a network, and its traffic token if it has one.
    a.body_limit = std::min(max_body_bytes_, kProxyBodyLimit);
    if (has_body) {
      int status = 0;
      if (!proxy_.Resolve(req, target.sandbox_id, target.port, w, &status)) {
        *answer = {"(port proxy)", status, false};
      }
    }
    return a;
  }
  auto match = envd_.Find(req.method, req.path);
  std::string route =
      match.route ? "envd " + match.route->method + " " + match.route->pattern : "(unmatched)";
  a.body_limit = kEnvdBodyLimit;
  if (match.route && match.route->method == "POST" && match.route->pattern == "/files") {
    a.body = http::Admission::Body::kStream;
    a.body_limit = max_body_bytes_;
  }
  std::optional<store::SandboxRecord> running;
  if (auto found = ctx_.find_running(target.sandbox_id); found.ok()) running = std::move(*found);
  // /files also takes a signed URL in place of the token.
  bool signature_ok = match.route && match.route->pattern == "/files";
  Status access = running ? CheckEnvdAccess(req, running->access_token, signature_ok)
                          : Unauthenticated("the sandbox is not running");
  a.authenticated = access.ok();
  // A request without a body costs nothing to route the usual way, and its handler checks its
  // credentials (some routes need none); one with a body is refused here if it would be anyway.
  if (!has_body) return a;
  http::StatusRecorder rec(w);
  if (match.route == nullptr) {
    SendNoRoute(req, match, rec);
  } else if (!running) {
    SendSandboxNotRunning(rec, target.sandbox_id);
  } else if (!a.authenticated) {
    if (IsConnectPattern(match.route->pattern)) {
      SendConnectUnaryError(rec, access);
    } else {
      SendRestError(rec, access);
    }
  }
  if (rec.status() != 0) *answer = {route, rec.status(), false};
  return a;
}

DataPlaneAnswer LocalDataPlane::Handle(http::Request& req, const routes::EnvdTarget& target,
                                       http::ResponseWriter& w) {
  if (target.port != routes::kEnvdPort) {
    // Public traffic to a port inside the sandbox: neither API key nor access token.
    int status = proxy_.Serve(req, target.sandbox_id, target.port, w);
    // 502/503/504 here say that the sandbox's side is down or busy, not moatd: no warning.
    return {"(port proxy)", status, status == 500};
  }
  auto match = envd_.Find(req.method, req.path);
  http::StatusRecorder rec(w);
  if (match.route == nullptr) {
    SendNoRoute(req, match, rec);
    return {"(unmatched)", rec.status(), false};
  }
  req.params = std::move(match.params);
  match.route->handler(req, rec);
  return {"envd " + match.route->method + " " + match.route->pattern, rec.status(),
          rec.status() >= 500};
}

Result<std::unique_ptr<ApiServer>> StartWithLocalDataPlane(http::ServerOptions options,
                                                           SandboxController& controller,
                                                           store::Store& store, Metrics& metrics,
                                                           routes::GuestLookup guest_of,
                                                           PortResolver resolver,
                                                           PortProxyOptions proxy_options) {
  routes::EnvdContext ec{
      [&controller](const std::string& id) { return controller.FindRunning(id); },
      [&controller](const std::string& id, const std::string& fault) {
        controller.ReportFault(id, fault);
      },
      &metrics, std::move(guest_of), &controller.history()};
  auto plane = std::make_unique<LocalDataPlane>(std::move(ec), std::move(resolver), proxy_options,
                                                metrics, options.body_limit);
  return ApiServer::Start(std::move(options), controller, store, metrics, std::move(plane),
                          proxy_options.domain);
}

void RegisterAllRoutes(http::Router& control, http::Router& envd, routes::ControlContext& cc,
                       routes::EnvdContext& ec) {
  ApiServer::RegisterControl(control, cc);
  LocalDataPlane::RegisterRoutes(envd, ec);
}

}  // namespace moat::api
