// FleetMaintenance: what every `moatd api` replica runs in the background for the fleet
// (shared/FLEET.md §4). The sweeper declares hosts whose heartbeats are overdue `lost` — with
// their sandboxes that hold resources — once fleet-wide per round (Store::SweepLostHosts takes
// an advisory lock); the janitor reclaims `creating` records whose replica died mid-create, and
// (on the replica that leads the reaper) audits reservations: a host that reserves more than its
// records hold by the same excess on kAuditObservations janitor rounds in a row, with no
// reservation or release on it in between (its reservation_seq unchanged), has that excess given
// back — a replica that died between reserving and recording leaks exactly that, while a create
// or a release in flight changes the counter. A
// store that cannot be reached only delays both: an outage declares nothing lost by itself,
// since the sweep is a statement the database runs against its own clock.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "api/sandbox_controller.h"
#include "api/store/store.h"

namespace moat::api::fleet {

struct FleetMaintenanceOptions {
  std::chrono::milliseconds lost_after{15000};  // --lost-after
  std::chrono::milliseconds sweep_interval{1000};
  // A create takes seconds (a restore under TCG: under a minute even when slow); a record still
  // creating after this is an orphan. --creating-timeout.
  std::chrono::milliseconds creating_timeout{std::chrono::minutes(5)};
  std::chrono::milliseconds janitor_interval{5000};
};

class FleetMaintenance {
 public:
  static std::unique_ptr<FleetMaintenance> Start(store::Store& store, SandboxController& controller,
                                                 FleetMaintenanceOptions options);
  ~FleetMaintenance();
  FleetMaintenance(const FleetMaintenance&) = delete;
  FleetMaintenance& operator=(const FleetMaintenance&) = delete;

  // One round of each (tests).
  void SweepOnce();
  void JanitorOnce();
  void AuditOnce();

  static constexpr size_t kAuditObservations = 3;

 private:
  FleetMaintenance(store::Store& store, SandboxController& controller,
                   FleetMaintenanceOptions options)
      : store_(store), controller_(controller), options_(options) {}
  void Loop();

  store::Store& store_;
  SandboxController& controller_;
  const FleetMaintenanceOptions options_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  bool store_down_ = false;
  // No sweep before this (a store that was down gives hosts one period to heartbeat again).
  std::chrono::steady_clock::time_point hold_until_{};
  // Per host, the excess its last audits saw, oldest first (the loop's thread).
  struct Excess {
    int64_t vcpus, mem_mb, seq;
    bool operator==(const Excess&) const = default;
  };
  std::map<std::string, std::deque<Excess>> excess_;
  std::thread thread_;
};

}  // namespace moat::api::fleet
