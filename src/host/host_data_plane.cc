#include "host/host_data_plane.h"

#include "api/store/route_cache.h"
#include "common/log.h"

namespace moat::host {

std::unique_ptr<api::LocalDataPlane> FleetHostDataPlane(api::store::Store& store,
                                                        InProcessHostAgent& host,
                                                        agent::Agent& agent, api::Metrics& metrics,
                                                        api::PortProxyOptions proxy_options,
                                                        size_t max_body_bytes, bool network,
                                                        api::HistoryLog* history) {
  std::string host_id = host.host_id();
  // Kept until the store says the sandbox changed (or briefly, without the feed), and through a
  // database outage (the VM itself is the proof that it runs here).
  auto routes = std::make_shared<api::store::RouteCache>(store);
  routes->Watch();  // a change on any replica drops the route here at once
  api::routes::RunningLookup find_running =
      [routes, host_id](const std::string& id) -> Result<api::store::SandboxRecord> {
    MOAT_ASSIGN_OR_RETURN(auto r, routes->Running(id));
    if (!r || r->host_id != host_id) {
      return NotFound("sandbox \"" + id + "\" is not running on this host");
    }
    return std::move(*r);
  };
  api::routes::FaultReporter report_fault = [&store, host_id](const std::string& id,
                                                              const std::string& fault) {
    auto changed = store.TransitionSandbox(id, {api::SandboxState::kRunning, host_id, {}},
                                           {api::SandboxState::kError, {}, false});
    if (changed.ok() && *changed) {
      LogWarn("agent.sandbox_error", {{"sandbox", id}, {"fault", fault}});
    }
  };
  api::PortResolver resolver = nullptr;
  if (network) {
    resolver = [find_running, &host](const std::string& id,
                                     uint16_t port) -> Result<api::SandboxEndpoint> {
      MOAT_ASSIGN_OR_RETURN(auto r, find_running(id));
      MOAT_ASSIGN_OR_RETURN(auto ep, host.ResolvePort(id, port));
      return api::SandboxEndpoint{ep.address, ep.port, r.traffic_access_token,
                                  api::MaskedHost(r.options.mask_request_host, port), r.team_id};
    };
  }
  api::routes::EnvdContext ctx{std::move(find_running), std::move(report_fault), &metrics,
                               GuestLookupOf(agent), history};
  return std::make_unique<api::LocalDataPlane>(std::move(ctx), std::move(resolver), proxy_options,
                                               metrics, max_body_bytes);
}

}  // namespace moat::host
