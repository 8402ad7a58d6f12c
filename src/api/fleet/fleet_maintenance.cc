#include "api/fleet/fleet_maintenance.h"

#include <algorithm>
#include <string>

#include "common/guarded.h"
#include "common/log.h"

namespace moat::api::fleet {

std::unique_ptr<FleetMaintenance> FleetMaintenance::Start(store::Store& store,
                                                          SandboxController& controller,
                                                          FleetMaintenanceOptions options) {
  std::unique_ptr<FleetMaintenance> m(new FleetMaintenance(store, controller, options));
  m->thread_ = GuardedThread("fleet-maintenance", [p = m.get()] { p->Loop(); });
  return m;
}

FleetMaintenance::~FleetMaintenance() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void FleetMaintenance::SweepOnce() {
  auto now = std::chrono::steady_clock::now();
  if (store_down_ || now < hold_until_) {
    // After an outage of the store, no heartbeat could land while it was down: every host looks
    // overdue. Hosts are judged again only once they have had a whole period to heartbeat.
    if (auto probe = store_.ListHosts(); !probe.ok()) return;
    if (store_down_) {
      store_down_ = false;
      hold_until_ = now + options_.lost_after;
      LogInfo("fleet.sweep_held",
              {{"why", "the store is back"}, {"for_ms", options_.lost_after.count()}});
    }
    if (now < hold_until_) return;
  }
  auto lost = store_.SweepLostHosts(options_.lost_after.count());
  if (!lost.ok()) {
    if (!store_down_) {
      LogError("fleet.sweep_failed", {{"error", lost.status().ToString()}});
    }
    store_down_ = true;
    return;
  }
  store_down_ = false;
  for (const auto& host : *lost) {
    LogWarn("fleet.host_lost", {{"host", host},
                                {"after_ms", options_.lost_after.count()},
                                {"effect", "its running sandboxes are lost; paused ones stay"}});
  }
}

void FleetMaintenance::JanitorOnce() {
  int n = controller_.ReclaimStaleCreating(options_.creating_timeout);
  if (n > 0) LogWarn("fleet.janitor_reclaimed", {{"sandboxes", n}});
  AuditOnce();
}

void FleetMaintenance::AuditOnce() {
  auto leader = store_.Lead("reaper");
  if (!leader.ok() || !*leader) {
    excess_.clear();  // another replica audits; its history, not ours
    return;
  }
  auto audit = store_.AuditReservations();
  if (!audit.ok()) return;  // the sweep logs an unreachable store
  std::map<std::string, std::deque<Excess>> seen;
  for (const auto& a : *audit) {
    Excess now{std::max<int64_t>(0, a.vcpu_reserved - a.vcpu_held),
               std::max<int64_t>(0, a.mem_reserved_mb - a.mem_held_mb), a.seq};
    if (now.vcpus == 0 && now.mem_mb == 0) continue;  // no excess: its history ends
    auto& history = seen[a.host_id];
    if (auto it = excess_.find(a.host_id); it != excess_.end()) history = std::move(it->second);
    // Only the same excess with no reservation or release in between counts as a leak.
    if (!history.empty() && !(history.back() == now)) history.clear();
    history.push_back(now);
    if (history.size() < kAuditObservations) continue;
    auto trimmed = store_.TrimReservation(a.host_id, now.vcpus, now.mem_mb, now.seq);
    if (trimmed.ok() && *trimmed) {
      LogWarn("fleet.reservation_trimmed",
              {{"host", a.host_id},
               {"vcpus", now.vcpus},
               {"memory_mb", now.mem_mb},
               {"why", "reserved beyond what its sandboxes hold for " +
                           std::to_string(kAuditObservations) + " audits"}});
      history.clear();
    }
  }
  excess_ = std::move(seen);
}

void FleetMaintenance::Loop() {
  auto next_janitor = std::chrono::steady_clock::now() + options_.janitor_interval;
  std::unique_lock lock(mu_);
  while (!stopping_) {
    cv_.wait_for(lock, options_.sweep_interval);
    if (stopping_) break;
    lock.unlock();
    SweepOnce();
    if (std::chrono::steady_clock::now() >= next_janitor) {
      JanitorOnce();
      next_janitor = std::chrono::steady_clock::now() + options_.janitor_interval;
    }
    lock.lock();
  }
}

}  // namespace moat::api::fleet
