// RelayDataPlane: the data plane of a `moatd api` replica. A request for a sandbox (envd, or a
// port inside it) is relayed as bytes to the agent of the host that runs the sandbox, which
// serves it with its own LocalDataPlane (api/agent-api.md, "Data plane"): the request head as
// received (minus hop-by-hop headers and X-API-Key) plus a fleet signature bound to the host, the
// sandbox and the port; the body streamed as it arrives (never buffered whole here); then
// whatever the agent answers — a plain response, a Connect stream, a WebSocket after its 101 —
// relayed both ways with back-pressure until the agent closes. The replica checks what it can
// from the store before any body is read (the sandbox runs; envd's access token), so a refused
// upload never crosses to the host. Routes come from a RouteCache: a database outage does not
// stop the traffic of sandboxes this replica has seen.
#pragma once

#include <chrono>
#include <mutex>
#include <set>
#include <string>

#include "api/data_plane.h"
#include "api/fleet/fleet_auth.h"
#include "api/fleet/fleet_host_directory.h"
#include "api/metrics.h"
#include "api/store/route_cache.h"
#include "api/store/store.h"

namespace moat::api::fleet {

struct RelayDataPlaneOptions {
  std::chrono::milliseconds connect_timeout{2000};
  // A relayed connection on which nothing moves either way for this long is closed (envd's
  // streams send keepalives well within it).
  std::chrono::milliseconds idle_timeout{std::chrono::minutes(10)};
  size_t max_connections = 4096;  // relayed at once; 503 past it
  size_t max_body_bytes = 0;      // the server's body limit (ServerOptions::body_limit)
};

class RelayDataPlane : public DataPlane {
 public:
  RelayDataPlane(store::Store& store, FleetHostDirectory& hosts, FleetToken token, Metrics& metrics,
                 RelayDataPlaneOptions options);

  http::Admission Admit(http::Request& req, const routes::EnvdTarget& target, bool has_body,
                        http::ResponseWriter& w, DataPlaneAnswer* answer) override;
  DataPlaneAnswer Handle(http::Request& req, const routes::EnvdTarget& target,
                         http::ResponseWriter& w) override;
  void Shutdown() override;
  size_t active() const;

 private:
  // The running sandbox's record, or the answer a client gets when it is not running.
  std::optional<store::SandboxRecord> Running(const routes::EnvdTarget& target,
                                              http::ResponseWriter& w, int* status);
  int Relay(http::Request& req, const routes::EnvdTarget& target,
            const store::SandboxRecord& record, http::ResponseWriter& w);

  store::RouteCache routes_;  // running records: kept briefly, and through a store outage
  FleetHostDirectory& hosts_;
  FleetToken token_;
  Metrics& metrics_;
  RelayDataPlaneOptions options_;

  mutable std::mutex mu_;
  std::set<int> upstreams_;  // agent connections being relayed (owned by their Handle calls)
  size_t active_ = 0;
  bool stopping_ = false;
};

}  // namespace moat::api::fleet
