#include "api/fleet/fleet_host_directory.h"

#include <cmath>

#include "common/log.h"

namespace moat::api::fleet {

FleetHostDirectory::FleetHostDirectory(store::Store& store, FleetToken token,
                                       FleetPlacementOptions options)
    : store_(store), token_(std::move(token)), options_(std::move(options)) {}

Result<HostAgent*> FleetHostDirectory::AgentFor(const store::HostRecord& host) {
  auto& e = hosts_[host.id];
  e.read_at = std::chrono::steady_clock::now();
  if (e.agent != nullptr && e.endpoint == host.endpoint) return e.agent.get();
  auto agent = RemoteHostAgent::ForEndpoint(host.id, host.endpoint, token_, options_.agent);
  if (!agent.ok()) {
    hosts_.erase(host.id);
    return Unavailable("host \"" + host.id + "\" has an unusable endpoint \"" + host.endpoint +
                       "\": " + agent.status().message());
  }
  if (e.agent != nullptr) {
    LogInfo("fleet.host_moved", {{"host", host.id}, {"from", e.endpoint}, {"to", host.endpoint}});
    retired_.push_back(std::move(e.agent));
  }
  e.endpoint = host.endpoint;
  e.agent = std::move(*agent);
  return e.agent.get();
}

Result<HostAgent*> FleetHostDirectory::Host(const std::string& host_id) {
  {
    std::lock_guard lock(mu_);
    auto it = hosts_.find(host_id);
    if (it != hosts_.end() && it->second.agent != nullptr &&
        std::chrono::steady_clock::now() - it->second.read_at < options_.endpoint_ttl) {
      return it->second.agent.get();
    }
  }
  if (host_id.empty()) return Unavailable("the sandbox has no host recorded");
  MOAT_ASSIGN_OR_RETURN(auto row, store_.GetHost(host_id));
  if (!row) return Unavailable("host \"" + host_id + "\" is not in the fleet");
  if (row->state == store::HostState::kLost) {
    return Unavailable("host \"" + host_id + "\" is lost (it missed its heartbeats)");
  }
  std::lock_guard lock(mu_);
  return AgentFor(*row);
}

Result<std::string> FleetHostDirectory::Endpoint(const std::string& host_id) {
  MOAT_RETURN_IF_ERROR(Host(host_id).status());
  std::lock_guard lock(mu_);
  auto it = hosts_.find(host_id);
  if (it == hosts_.end()) return Unavailable("host \"" + host_id + "\" has no endpoint");
  return it->second.endpoint;
}

void FleetHostDirectory::Invalidate(const std::string& host_id) {
  std::lock_guard lock(mu_);
  auto it = hosts_.find(host_id);
  if (it != hosts_.end()) it->second.read_at = {};
}

HostTemplateInfo FleetHostDirectory::base_template() {
  {
    std::lock_guard lock(mu_);
    if (template_) return *template_;
  }
  auto hosts = store_.ListHosts();
  if (hosts.ok()) {
    for (const auto& h : *hosts) {
      if (h.state == store::HostState::kLost) continue;
      auto agent = Host(h.id);
      if (!agent.ok()) continue;
      // RemoteHostAgent::FetchTemplate, through the interface: an empty name means it failed.
      HostTemplateInfo t = (*agent)->base_template();
      if (t.name.empty()) continue;
      std::lock_guard lock(mu_);
      template_ = t;
      return t;
    }
  }
  return {};
}

Result<Placement> FleetHostDirectory::Place(const Reservation& need, const std::string& except) {
  store::PlacementQuery q;
  q.vcpus = need.vcpus;
  q.mem_mb = need.memory_mib;
  q.cpu_overcommit = options_.cpu_overcommit;
  q.mem_overcommit = options_.mem_overcommit;
  q.fresh_within_ms = options_.fresh_within.count();
  q.prefer_warm_base = need.base_template;
  MOAT_ASSIGN_OR_RETURN(auto candidates, store_.PlacementCandidates(q));
  size_t tried = 0;
  for (const auto& c : candidates) {
    if (c.id == except) continue;
    ++tried;
    MOAT_ASSIGN_OR_RETURN(auto endpoint,
                          store_.ReserveOnHost(c.id, need.vcpus, need.memory_mib,
                                               options_.cpu_overcommit, options_.mem_overcommit));
    if (!endpoint) continue;  // filled up (or drained) since the candidates were read
    auto agent = Host(c.id);
    if (!agent.ok()) {
      Release(c.id, need);
      continue;
    }
    return Placement{c.id, *agent};
  }
  return Unavailable("no host in the fleet has room for " + std::to_string(need.vcpus) +
                     " vCPUs and " + std::to_string(need.memory_mib) + " MiB (" +
                     std::to_string(tried) + " active hosts tried; add hosts or undrain one)");
}

Status FleetHostDirectory::Reserve(const std::string& host_id, const Reservation& need) {
  MOAT_ASSIGN_OR_RETURN(auto endpoint,
                        store_.ReserveOnHost(host_id, need.vcpus, need.memory_mib,
                                             options_.cpu_overcommit, options_.mem_overcommit));
  if (!endpoint) {
    return ResourceExhausted(
        "host \"" + host_id + "\" has no room for " + std::to_string(need.vcpus) + " vCPUs and " +
        std::to_string(need.memory_mib) + " MiB now (or it is draining or lost)");
  }
  return Status::Ok();
}

void FleetHostDirectory::Release(const std::string& host_id, const Reservation& need) {
  if (host_id.empty()) return;
  Status s = store_.ReleaseOnHost(host_id, need.vcpus, need.memory_mib);
  if (!s.ok() && s.code() != ErrorCode::kNotFound) {
    LogError("fleet.release_failed", {{"host", host_id},
                                      {"vcpus", need.vcpus},
                                      {"memory_mib", need.memory_mib},
                                      {"error", s.ToString()}});
  }
}

}  // namespace moat::api::fleet
