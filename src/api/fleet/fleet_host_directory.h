// FleetHostDirectory: the hosts of a fleet as a `moatd api` replica sees them — the `hosts` rows
// of the shared store (api/store/store.h, shared/FLEET.md §2-§3), each reached through a
// RemoteHostAgent (its `moatd agent`). Placement asks the store for candidates (active, fresh
// heartbeat, room left) and reserves on the first that still has room with one conditional
// update (Store::ReserveOnHost), so replicas placing at the same moment never overbook a host.
//
// Routing: a host's endpoint is read from its row and cached for `endpoint_ttl`; an agent that
// restarted on another address is found again once the entry is older than that, or at once
// after a call to it failed as unavailable (Invalidate). Agents handed out stay valid for the
// directory's life (a replaced one is kept, not destroyed, since callers may hold it).
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "api/fleet/fleet_auth.h"
#include "api/fleet/remote_host_agent.h"
#include "api/host_directory.h"
#include "api/store/store.h"

namespace moat::api::fleet {

struct FleetPlacementOptions {
  // Capacity is a host's totals × these (FLEET.md §2): vCPUs are time-shared, memory is not.
  double cpu_overcommit = 4.0;
  double mem_overcommit = 1.0;
  // A host whose last heartbeat is older than this (the database's clock) gets no placements,
  // well before the sweeper declares it lost.
  std::chrono::milliseconds fresh_within{6000};
  std::chrono::milliseconds endpoint_ttl{5000};
  RemoteHostAgentOptions agent;
};

class FleetHostDirectory : public HostDirectory {
 public:
  FleetHostDirectory(store::Store& store, FleetToken token, FleetPlacementOptions options = {});

  // unavailable for a host the store does not have or has declared lost (its sandboxes are
  // lost with it), naming the host.
  Result<HostAgent*> Host(const std::string& host_id) override;
  // The `base` template of the fleet's hosts, from the first one that answers (all hosts are
  // given the same guest artifacts, docs/fleet.md); cached once known.
  HostTemplateInfo base_template() override;
  Result<Placement> Place(const Reservation& need, const std::string& except = "") override;
  Status Reserve(const std::string& host_id, const Reservation& need) override;
  void Release(const std::string& host_id, const Reservation& need) override;

  // The endpoint ("http://host:port") of a host's agent, cached as Host() caches it; the same
  // errors as Host().
  Result<std::string> Endpoint(const std::string& host_id);
  // Forgets the cached endpoint of a host (a call to it failed): the next Host() reads its row.
  void Invalidate(const std::string& host_id);

 private:
  struct Entry {
    std::string endpoint;
    std::unique_ptr<RemoteHostAgent> agent;
    std::chrono::steady_clock::time_point read_at;
  };
  // The agent for a host row, made (or replaced, if its endpoint changed) under mu_.
  Result<HostAgent*> AgentFor(const store::HostRecord& host);

  store::Store& store_;
  FleetToken token_;
  FleetPlacementOptions options_;
  std::mutex mu_;
  std::map<std::string, Entry> hosts_;
  std::vector<std::unique_ptr<RemoteHostAgent>> retired_;  // replaced, still valid for holders
  std::optional<HostTemplateInfo> template_;
};

}  // namespace moat::api::fleet
