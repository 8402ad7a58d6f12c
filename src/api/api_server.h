// ApiServer: moatd's one public port. Each request goes to the envd routes when it names a
// sandbox (E2b-Sandbox-Id, or Host 49983-<id>.<domain>), to the port proxy when it names another
// port of a sandbox (E2b-Sandbox-Port, or Host <port>-<id>.<domain>), to the control routes
// otherwise. Every answer is counted in the metrics by route, and logged.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "api/http/router.h"
#include "api/http/server.h"
#include "api/metrics.h"
#include "api/port_proxy.h"
#include "api/routes/routes.h"
#include "api/sandbox_controller.h"
#include "api/store/store.h"

namespace moat::api {

inline constexpr const char* kEnvdVersion = "0.5.7";
// The largest control-API body (JSON; 413 past it).
inline constexpr size_t kControlBodyLimit = 1024 * 1024;
// The largest envd Connect body: one 16 MiB message and its framing.
inline constexpr size_t kEnvdBodyLimit = 16 * 1024 * 1024 + 64 * 1024;
// Bodies relayed to a sandbox's port by the port proxy are buffered whole (it does not stream
// them yet): at most this much.
inline constexpr size_t kProxyBodyLimit = 32 * 1024 * 1024;

class ApiServer {
 public:
  // `resolver` finds the address of a sandbox's port for the port proxy; null: no sandbox has
  // networking, and requests for sandbox ports answer 502.
  // `guest_of` reaches the guest channel of a sandbox on this host (envd's routes).
  static Result<std::unique_ptr<ApiServer>> Start(http::ServerOptions options,
                                                  SandboxController& controller,
                                                  store::Store& store, Metrics& metrics,
                                                  routes::GuestLookup guest_of,
                                                  PortResolver resolver = nullptr,
                                                  PortProxyOptions proxy_options = {});
  ~ApiServer();

  uint16_t port() const { return http_->port(); }
  // Stops accepting and closes connections, proxied ones included; Wait() joins their threads
  // once the handlers return (kill the sandboxes in between so that streams end).
  void Shutdown();
  void Wait() { http_->Wait(); }

  const http::Router& control_router() const { return control_; }
  const http::Router& envd_router() const { return envd_; }
  // Routes a request as the server does (tests drive it with a RecordingWriter).
  void Handle(http::Request& req, http::ResponseWriter& w);
  // The server's admission hook (http::AdmissionHandler): from the head alone, whether the
  // request authenticates (X-API-Key on control routes; a running sandbox's X-Access-Token on
  // envd's) and how its body is read — POST /files streams, control JSON is buffered up to
  // kControlBodyLimit, envd's Connect calls up to kEnvdBodyLimit. A request with a body that
  // would be refused anyway (no valid credentials, no such route, no such sandbox) is answered
  // here, before any of its body is read.
  http::Admission Admit(http::Request& req, bool has_body, http::ResponseWriter& w);

  // The routes without a server (the OpenAPI test reads them).
  static void RegisterAll(http::Router& control, http::Router& envd, routes::ControlContext& cc,
                          routes::EnvdContext& ec);

 private:
  ApiServer(SandboxController& controller, store::Store& store, Metrics& metrics,
            routes::GuestLookup guest_of, PortResolver resolver, PortProxyOptions proxy_options);
  // Counts and logs one answered request; `warn`: as a warning (rate-limited), for moatd's own
  // failures.
  void Record(const std::string& route, int status, std::chrono::steady_clock::time_point started,
              const std::string& peer, bool warn);

  routes::ControlContext control_ctx_;
  routes::EnvdContext envd_ctx_;
  Metrics& metrics_;
  size_t max_body_bytes_ = 0;  // ServerOptions::body_limit: streamed uploads, proxied bodies
  http::Router control_;
  http::Router envd_;
  PortProxy proxy_;  // before http_: connection threads use it until http_ is gone
  std::unique_ptr<http::HttpServer> http_;
};

}  // namespace moat::api
