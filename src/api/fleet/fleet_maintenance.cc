#include "api/fleet/fleet_maintenance.h"

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
