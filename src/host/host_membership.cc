#include "host/host_membership.h"

#include <algorithm>
#include <map>
#include <set>

#include "common/guarded.h"
#include "common/log.h"

namespace moat::host {

using api::SandboxState;
using api::store::SandboxRecord;

namespace {

// Records whose VM on this host should still exist.
bool LiveHere(const SandboxRecord& r) {
  switch (r.state) {
    case SandboxState::kCreating:
    case SandboxState::kRunning:
    case SandboxState::kPausing:
    case SandboxState::kResuming:
    case SandboxState::kError:
    case SandboxState::kPaused: return true;
    default: return false;
  }
}

}  // namespace

Result<int> ReconcileHost(api::store::Store& store, api::HostAgent& host) {
  const std::string& me = host.host_id();
  MOAT_ASSIGN_OR_RETURN(api::HostInventory inventory, host.Inventory());
  MOAT_ASSIGN_OR_RETURN(auto records, store.SandboxesOnHost(me));
  std::map<std::string, SandboxRecord> mine;
  for (auto& r : records) {
    if (r.host_id == me) mine.emplace(r.id, std::move(r));
  }
  std::set<std::string> running(inventory.running.begin(), inventory.running.end());
  std::set<std::string> paused(inventory.paused.begin(), inventory.paused.end());
  int killed = 0;

  auto kill = [&](const std::string& id, const char* reason) {
    Status s = host.Kill(id);
    if (!s.ok() && s.code() != ErrorCode::kNotFound) {
      LogError("fleet.reconcile_kill_failed", {{"sandbox", id}, {"error", s.ToString()}});
      return;
    }
    ++killed;
    LogWarn("fleet.vm_killed", {{"host", me}, {"sandbox", id}, {"reason", reason}});
  };
  for (const auto& id : inventory.running) {
    auto it = mine.find(id);
    if (it == mine.end()) {
      kill(id, "no record of it on this host (declared lost, or moved)");
    } else if (!LiveHere(it->second) || it->second.state == SandboxState::kPaused) {
      kill(id, "its record is not running here");
    }
  }
  for (const auto& id : inventory.paused) {
    auto it = mine.find(id);
    if (it == mine.end() || !LiveHere(it->second)) kill(id, "paused without a live record");
  }

  auto release = [&](const SandboxRecord& r) {
    Status s = store.ReleaseOnHost(me, r.cpu_count, r.memory_mb);
    if (!s.ok()) LogError("fleet.release_failed", {{"sandbox", r.id}, {"error", s.ToString()}});
  };
  for (const auto& [id, r] : mine) {
    bool vm = running.count(id) != 0;
    bool snapshot = paused.count(id) != 0;
    std::optional<SandboxState> to;
    bool give_back = false;
    switch (r.state) {
      case SandboxState::kRunning:
      case SandboxState::kError:
        if (!vm) to = SandboxState::kLost, give_back = true;
        break;
      case SandboxState::kPausing:
      case SandboxState::kResuming:
        if (vm) {
          to = SandboxState::kRunning;
        } else if (snapshot) {
          to = SandboxState::kPaused, give_back = true;
        } else {
          to = SandboxState::kLost, give_back = true;
        }
        break;
      default: break;  // creating: its replica's; paused, killing, killed, lost: as they are
    }
    if (!to) continue;
    auto changed = store.TransitionSandbox(id, {r.state, me, r.generation}, {*to});
    if (!changed.ok()) {
      LogError("fleet.reconcile_failed", {{"sandbox", id}, {"error", changed.status().ToString()}});
      continue;
    }
    if (!*changed) continue;  // a replica moved it meanwhile: its change stands
    if (give_back) release(r);
    LogInfo("fleet.sandbox_reconciled", {{"host", me},
                                         {"sandbox", id},
                                         {"from", api::SandboxStateName(r.state)},
                                         {"to", api::SandboxStateName(*to)}});
  }
  return killed;
}

Result<std::unique_ptr<HostMembership>> HostMembership::Start(
    api::store::Store& store, api::HostAgent& host, api::store::HostRegistration registration,
    MembershipOptions options) {
  if (registration.id != host.host_id()) {
    return InvalidArgument("host id \"" + registration.id + "\" is not the agent's (\"" +
                           host.host_id() + "\")");
  }
  std::unique_ptr<HostMembership> m(
      new HostMembership(store, host, std::move(registration), options));
  MOAT_RETURN_IF_ERROR(m->RegisterAndReconcile("start"));
  m->thread_ = GuardedThread("heartbeat", [p = m.get()] { p->Loop(); });
  return m;
}

HostMembership::~HostMembership() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

Status HostMembership::RegisterAndReconcile(const char* why) {
  MOAT_ASSIGN_OR_RETURN(auto row, store_.RegisterHost(registration_));
  epoch_ = row.epoch;
  LogInfo("fleet.registered", {{"host", row.id},
                               {"epoch", row.epoch},
                               {"endpoint", row.endpoint},
                               {"state", api::store::HostStateName(row.state)},
                               {"why", why}});
  MOAT_ASSIGN_OR_RETURN(int killed, ReconcileHost(store_, host_));
  if (killed > 0) LogWarn("fleet.reconciled", {{"host", row.id}, {"vms_killed", killed}});
  return Status::Ok();
}

void HostMembership::Loop() {
  using Clock = std::chrono::steady_clock;
  std::unique_lock lock(mu_);
  bool store_down = false;
  int64_t published_warm = -1;  // unknown to the store: written on the first look
  int64_t published_epoch = epoch_.load();
  auto next_beat = Clock::now() + options_.heartbeat_interval;
  auto next_warm_try = Clock::now();  // a failed write is tried again at heartbeat pace
  while (!stopping_) {
    cv_.wait_for(lock, std::min(options_.warm_poll, options_.heartbeat_interval));
    if (stopping_) break;
    lock.unlock();
    // The heartbeat first when it is due: nothing else on this thread may delay it.
    if (Clock::now() >= next_beat) {
      next_beat = Clock::now() + options_.heartbeat_interval;
      Beat(store_down);
    }
    int64_t warm = host_.WarmReady();
    if (epoch_.load() != published_epoch) published_warm = -1;  // a new registration
    if (warm != published_warm && !store_down && Clock::now() >= next_warm_try) {
      published_epoch = epoch_.load();
      auto set = store_.SetHostWarm(registration_.id, published_epoch, warm);
      // Written; or tried again after a heartbeat interval (a fenced host finds out by its
      // heartbeat and registers again, which resets the count).
      if (set.ok() && *set) {
        published_warm = warm;
      } else {
        published_warm = -1;
        next_warm_try = Clock::now() + options_.heartbeat_interval;
      }
    }
    lock.lock();
  }
}

void HostMembership::Beat(bool& store_down) {
  auto alive = store_.Heartbeat(registration_.id, epoch_.load());
  if (!alive.ok()) {
    // Never act on an outage: the VMs stay, and so does the epoch (FLEET.md §4).
    if (!store_down) {
      LogError("fleet.heartbeat_failed",
               {{"host", registration_.id}, {"error", alive.status().ToString()}});
    }
    store_down = true;
    return;
  }
  if (store_down) LogInfo("fleet.heartbeat_restored", {{"host", registration_.id}});
  store_down = false;
  if (!*alive) {
    ++fenced_;
    LogWarn("fleet.fenced", {{"host", registration_.id}, {"epoch", epoch_.load()}});
    if (Status s = RegisterAndReconcile("fenced"); !s.ok()) {
      LogError("fleet.reregister_failed", {{"host", registration_.id}, {"error", s.ToString()}});
    }
  }
}

}  // namespace moat::host
