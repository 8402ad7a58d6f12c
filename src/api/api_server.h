// ApiServer: moatd's one public port. Each request that names a sandbox (E2b-Sandbox-Id, or Host
// <port>-<id>.<domain>) goes to the data plane (data_plane.h: envd's routes and the port proxy on
// the host itself, or a relay to the fleet host that runs the sandbox), the rest to the control
// routes. Every answer is counted in the metrics by route, and logged.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "api/data_plane.h"
#include "api/http/router.h"
#include "api/http/server.h"
#include "api/metrics.h"
#include "api/routes/routes.h"
#include "api/sandbox_controller.h"
#include "api/store/store.h"

namespace moat::api {

// The envd version whose features moat implements (docs/sandbox.md, "envd version"): 0.6.2 file
// metadata, 0.6.3 entries in watch events, 0.6.4 watching network mounts on request.
inline constexpr const char* kEnvdVersion = "0.6.4";
// The largest control-API body (JSON; 413 past it).
inline constexpr size_t kControlBodyLimit = 1024 * 1024;

class ApiServer {
 public:
  // With a data plane: the sandboxes of this host (host/local_data_plane.h: `moatd serve`,
  // through StartWithLocalDataPlane) or the fleet relay (`moatd api`). `domain`: the sandbox
  // domain (`<port>-<id>.<domain>`; empty: answered as null).
  static Result<std::unique_ptr<ApiServer>> Start(http::ServerOptions options,
                                                  SandboxController& controller,
                                                  store::Store& store, Metrics& metrics,
                                                  std::unique_ptr<DataPlane> data_plane,
                                                  std::string domain);
  ~ApiServer();

  uint16_t port() const { return http_->port(); }
  // Where the dashboard's files are served from (default: DefaultDashboardDir()).
  void SetDashboardDir(std::string dir);
  // Stops accepting and closes connections, proxied ones included; Wait() joins their threads
  // once the handlers return (kill the sandboxes in between so that streams end).
  void Shutdown();
  void Wait() { http_->Wait(); }

  const http::Router& control_router() const { return control_; }
  // Routes a request as the server does (tests drive it with a RecordingWriter).
  void Handle(http::Request& req, http::ResponseWriter& w);
  // The server's admission hook (http::AdmissionHandler): from the head alone, whether the
  // request authenticates (X-API-Key on control routes; the data plane judges the rest) and how
  // its body is read — control JSON is buffered up to kControlBodyLimit. A request with a body
  // that would be refused anyway (no valid credentials, no such route) is answered here, before
  // any of its body is read.
  http::Admission Admit(http::Request& req, bool has_body, http::ResponseWriter& w);

  // The control routes without a server (the OpenAPI test reads them).
  static void RegisterControl(http::Router& control, routes::ControlContext& cc);

 private:
  ApiServer(SandboxController& controller, store::Store& store, Metrics& metrics,
            std::unique_ptr<DataPlane> data_plane, std::string domain);
  // The admission of a COPY upload (routes::kTemplateUploadPath): its URL's signature.
  http::Admission AdmitUpload(http::Request& req, bool has_body, http::ResponseWriter& w,
                              std::chrono::steady_clock::time_point started);
  // Counts and logs one answered request; `warn`: as a warning (rate-limited), for moatd's own
  // failures.
  void Record(const std::string& route, int status, std::chrono::steady_clock::time_point started,
              const std::string& peer, bool warn);

  routes::ControlContext control_ctx_;
  Metrics& metrics_;
  http::Router control_;
  std::unique_ptr<DataPlane> data_plane_;  // before http_: connection threads use it

  std::unique_ptr<http::HttpServer> http_;
};

}  // namespace moat::api
