// LocalDataPlane: the data plane of the host that runs the sandboxes (`moatd serve`, and each
// `moatd agent` for what the API replicas relay to it): envd's routes (E2B-WIRE §3-§8) over the
// guest channel, and the port proxy to the sandbox's slot address (PortProxy).
#pragma once

#include <memory>

#include "api/api_server.h"
#include "api/data_plane.h"
#include "api/http/router.h"
#include "api/metrics.h"
#include "host/envd/envd_call.h"
#include "host/port_proxy.h"

namespace moat::api {

// The largest envd Connect body: one 16 MiB message and its framing.
inline constexpr size_t kEnvdBodyLimit = 16 * 1024 * 1024 + 64 * 1024;
// Bodies relayed to a sandbox's port by the port proxy are buffered whole (it does not stream
// them yet): at most this much.
inline constexpr size_t kProxyBodyLimit = 32 * 1024 * 1024;

class LocalDataPlane : public DataPlane {
 public:
  // `ctx`: the running sandboxes' records and guest channels. `resolver`: where a sandbox's port
  // is reached (null: no sandbox has networking; port requests answer 502). `max_body_bytes`:
  // the server's body limit (streamed uploads).
  LocalDataPlane(routes::EnvdContext ctx, PortResolver resolver, PortProxyOptions proxy_options,
                 Metrics& metrics, size_t max_body_bytes);

  http::Admission Admit(http::Request& req, const routes::EnvdTarget& target, bool has_body,
                        http::ResponseWriter& w, DataPlaneAnswer* answer) override;
  DataPlaneAnswer Handle(http::Request& req, const routes::EnvdTarget& target,
                         http::ResponseWriter& w) override;
  void Shutdown() override { proxy_.Shutdown(); }

  const http::Router& router() const { return envd_; }
  // envd's routes without a data plane (the OpenAPI and router tests read them).
  static void RegisterRoutes(http::Router& router, routes::EnvdContext& ctx);

 private:
  routes::EnvdContext ctx_;
  Metrics& metrics_;
  size_t max_body_bytes_;
  http::Router envd_;
  PortProxy proxy_;
};

// ApiServer with the sandboxes on this host (`moatd serve`): a LocalDataPlane over `guest_of`
// (the guest channel of a sandbox here) and `resolver` (where a sandbox's port is reached; null:
// no sandbox has networking, and requests for sandbox ports answer 502), with the controller's
// records and fault reports.
Result<std::unique_ptr<ApiServer>> StartWithLocalDataPlane(http::ServerOptions options,
                                                           SandboxController& controller,
                                                           store::Store& store, Metrics& metrics,
                                                           routes::GuestLookup guest_of,
                                                           PortResolver resolver = nullptr,
                                                           PortProxyOptions proxy_options = {});
// Every route without a server (the OpenAPI and router tests read them): the control routes and
// LocalDataPlane's envd routes.
void RegisterAllRoutes(http::Router& control, http::Router& envd, routes::ControlContext& cc,
                       routes::EnvdContext& ec);

}  // namespace moat::api
