// HostMembership: a `moatd agent`'s place in the fleet (shared/FLEET.md §3-§4). It registers the
// host in the shared store (a new epoch each time), reconciles the host's VMs with the store,
// and heartbeats every interval, fenced by its epoch. When a heartbeat finds the host fenced —
// the sweeper declared it lost while it was cut off, or a newer process registered the same id —
// it registers again and reconciles, which kills the VMs the fleet declared lost: a sandbox
// belongs to the host its record names, and a record that is no longer live there loses its
// VM. A store that cannot be reached is only logged: a database outage never kills a VM, and
// the sweeper never declares a host lost while it cannot reach the database either. It also
// publishes how many warm clones the host has ready whenever that changes (placement prefers a
// host with one).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "api/host_agent.h"
#include "api/store/store.h"
#include "common/status.h"

namespace moat::host {

// Brings the host's VMs and the store's records of this host into line (after a registration):
//  - a running VM whose record is missing, on another host, or killing/killed/lost is killed;
//    a paused sandbox's snapshot with no record (or a dead one) is deleted;
//  - a record that says the sandbox holds resources here (running, error, pausing, resuming)
//    but whose VM is gone becomes lost, its reservation given back; one left pausing or resuming
//    becomes what the host holds (running, or paused with its reservation given back);
//  - creating records are left to the replica creating them (or the janitor).
// Returns how many VMs it killed.
Result<int> ReconcileHost(api::store::Store& store, api::HostAgent& host);

struct MembershipOptions {
  std::chrono::milliseconds heartbeat_interval{2000};
  // How often the host's warm clones are looked at; a change is written at once (SetHostWarm),
  // so that placement sees a clone claimed or refilled within about this long.
  std::chrono::milliseconds warm_poll{100};
};

class HostMembership {
 public:
  // Registers `registration` (its id must be host.host_id()), reconciles, then heartbeats on a
  // thread of its own.
  static Result<std::unique_ptr<HostMembership>> Start(api::store::Store& store,
                                                       api::HostAgent& host,
                                                       api::store::HostRegistration registration,
                                                       MembershipOptions options = {});
  // Stops heartbeating (the host is declared lost once its heartbeats are overdue).
  ~HostMembership();
  HostMembership(const HostMembership&) = delete;
  HostMembership& operator=(const HostMembership&) = delete;

  int64_t epoch() const { return epoch_.load(); }
  // Times the host found itself fenced and registered again.
  int64_t fenced_count() const { return fenced_.load(); }

 private:
  HostMembership(api::store::Store& store, api::HostAgent& host,
                 api::store::HostRegistration registration, MembershipOptions options)
      : store_(store), host_(host), registration_(std::move(registration)), options_(options) {}
  Status RegisterAndReconcile(const char* why);
  void Loop();
  // One heartbeat; registers again when it finds the host fenced. `store_down`: whether the
  // store was unreachable last time (logged once per outage), updated.
  void Beat(bool& store_down);

  api::store::Store& store_;
  api::HostAgent& host_;
  const api::store::HostRegistration registration_;
  const MembershipOptions options_;
  std::atomic<int64_t> epoch_{0};
  std::atomic<int64_t> fenced_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace moat::host
