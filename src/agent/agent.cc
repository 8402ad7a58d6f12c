#include "agent/agent.h"

#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <functional>
#include <optional>

#include "agent/sandbox_state.h"
#include "common/builtin_templates.h"
#include "common/child_process.h"
#include "common/cleanup.h"
#include "common/fs.h"
#include "common/guarded.h"
#include "common/log.h"
#include "common/sandbox_id.h"
#include "vmm/cgroup.h"

namespace moat::agent {
namespace {

// Threads that tear sandboxes down side by side (Agent::TeardownLoop, KillAll).
unsigned TeardownWorkers() {
  return std::clamp(std::thread::hardware_concurrency(), 2u, 8u);
}

// fn(0) .. fn(n - 1) on up to `workers` threads (this one included), each taking the next index.
void SideBySide(size_t n, size_t workers, const std::function<void(size_t)>& fn) {
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i; (i = next.fetch_add(1)) < n;) fn(i);
  };
  std::vector<std::jthread> threads;  // joined even if starting one of them throws
  for (size_t w = 1; w < std::min(n, workers); ++w) threads.emplace_back(work);
  work();
}

}  // namespace

Agent::Agent(AgentConfig config) : config_(std::move(config)) {}

Result<std::unique_ptr<Agent>> Agent::Start(AgentConfig config) {
  if (config.data_dir.empty()) return InvalidArgument("agent: data_dir is empty");
  if (!PathExists(config.base.kernel_path)) {
    return NotFound("agent: guest kernel " + config.base.kernel_path +
                    " not found (run `make guest`)");
  }
  if (!PathExists(config.base.rootfs_path)) {
    return NotFound("agent: guest rootfs " + config.base.rootfs_path +
                    " not found (run `make guest`)");
  }
  if (config.base.vcpus == 0 || config.base.memory_mib < 64) {
    return InvalidArgument("agent: template needs >= 1 vCPU and >= 64 MiB");
  }
  MOAT_RETURN_IF_ERROR(MakeDirs(config.data_dir + "/sandboxes", 0711));
  // Disk backing files and jail binds need absolute, canonical paths.
  for (std::string* path : {&config.data_dir, &config.base.kernel_path, &config.base.rootfs_path}) {
    char real[PATH_MAX];
    if (::realpath(path->c_str(), real) == nullptr) return ErrnoError("realpath(" + *path + ")");
    *path = real;
  }
  std::unique_ptr<Agent> agent(new Agent(std::move(config)));
  AgentConfig& c = agent->config_;
  if (c.jail) {
    agent->jail_ids_ = std::make_unique<vmm::JailIdAllocator>(c.jail_id_first, c.jail_id_count);
  }
  if (c.network) {
    // The host table now; slots an earlier agent left are released after Recover() has killed
    // the VMMs that held their taps.
    MOAT_ASSIGN_OR_RETURN(agent->host_net_, net::HostNetwork::Create(*c.network));
  }
  MOAT_RETURN_IF_ERROR(MakeDirs(c.data_dir + "/snapshots", 0711));
  MOAT_RETURN_IF_ERROR(MakeDirs(c.data_dir + "/templates", 0711));
  // Recovery needs the environment but no slot pool (adopted sandboxes bring their slots, and
  // only creating a sandbox takes one): the pool starts once the leftovers are gone.
  agent->env_ = {.sandboxes_dir = c.data_dir + "/sandboxes",
                 .accel = c.accel,
                 .jail_ids = agent->jail_ids_.get(),
                 .ready_timeout = c.ready_timeout,
                 .slots = nullptr,
                 .memory_file_snapshots = c.memory_file_snapshots,
                 .replication = c.replication,
                 .low_priority_pool = c.low_priority_refills};
  agent->Recover();
  // A start that fails from here on leaves the adopted sandboxes running for the next attempt.
  Cleanup detach_on_error([a = agent.get()] {
    if (!a->recovery_.adopted.empty()) a->Detach();
  });
  if (agent->host_net_) {
    auto released = agent->host_net_->CleanupLeftovers();
    if (!released.ok()) return released.status().Annotate("releasing leftover network slots");
    if (*released > 0) LogInfo("agent.released_leftover_slots", {{"count", *released}});
    agent->slot_pool_ = std::make_unique<net::SlotPool>(*agent->host_net_, c.ready_slots);
    agent->env_.slots = agent->slot_pool_.get();
  }
  agent->templates_ = std::make_unique<TemplateStore>(c.data_dir + "/templates", agent->env_);
  detach_on_error.Cancel();
  agent->monitor_ = GuardedThread("agent monitor", [a = agent.get()] { a->MonitorLoop(); });
  for (unsigned i = 0; i < TeardownWorkers(); ++i) {
    agent->teardown_threads_.push_back(
        GuardedThread("sandbox teardown", [a = agent.get()] { a->TeardownLoop(); }));
  }
  if (c.warm_sandboxes > 0) {
    agent->warm_filler_ = GuardedThread("warm pool filler", [a = agent.get()] { a->WarmLoop(); });
  }
  if (c.prebake_builtins && !c.builtins.empty()) {
    agent->prebake_ = GuardedThread("built-in template bake", [a = agent.get()] { a->Prebake(); });
  }
  return agent;
}

Agent::~Agent() {
  StopWarmPool();
  StopMonitor();
  StopTeardowns();
  KillAll();
}

void Agent::TeardownLoop() {
  std::unique_lock lock(teardown_mu_);
  for (;;) {
    teardown_cv_.wait(lock, [&] { return teardown_stopping_ || !teardown_.empty(); });
    if (teardown_.empty()) return;  // stopping, and nothing left
    auto [sb, stopped] = std::move(teardown_.front());
    teardown_.pop_front();
    ++teardown_busy_;
    lock.unlock();
    auto t0 = std::chrono::steady_clock::now();
    sb->Kill();
    auto done = std::chrono::steady_clock::now();
    auto ms = [](auto d) {
      return static_cast<long>(std::chrono::duration_cast<std::chrono::milliseconds>(d).count());
    };
    // queued_ms: from the kill's answer until the teardown began; teardown_ms: the teardown.
    LogInfo(
        "sandbox.torn_down",
        {{"sandbox", sb->id()}, {"queued_ms", ms(t0 - stopped)}, {"teardown_ms", ms(done - t0)}});
    sb.reset();
    lock.lock();
    --teardown_busy_;
    teardown_cv_.notify_all();
  }
}

void Agent::StopTeardowns() {
  {
    std::lock_guard lock(teardown_mu_);
    teardown_stopping_ = true;
  }
  teardown_cv_.notify_all();
  for (auto& t : teardown_threads_) {
    if (t.joinable()) t.join();
  }
  // Had no thread started, what was queued is torn down here.
  std::deque<std::pair<std::shared_ptr<Sandbox>, std::chrono::steady_clock::time_point>> left;
  {
    std::lock_guard lock(teardown_mu_);
    left.swap(teardown_);
  }
  for (auto& [sb, stopped] : left) sb->Kill();
}

void Agent::WaitForTeardowns() {
  std::unique_lock lock(teardown_mu_);
  teardown_cv_.wait(lock, [&] { return teardown_.empty() && teardown_busy_ == 0; });
}

size_t Agent::teardowns_pending() {
  std::lock_guard lock(teardown_mu_);
  return teardown_.size() + teardown_busy_;
}

void Agent::Prebake() {
  // After the base template (whose bake the warm pool starts at once), one at a time, on this
  // thread of their own: the base pool fills meanwhile. Once: a bake that fails is not retried
  // (a create tries again, and says why).
  (void)templates_->Ensure(config_.base);
  for (const auto& b : config_.builtins) {
    auto t0 = std::chrono::steady_clock::now();
    auto dir = templates_->Ensure(b);
    long ms = static_cast<long>(
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
            .count());
    if (dir.ok()) {
      LogInfo("agent.builtin_ready", {{"template", b.name}, {"ms", ms}});
    } else {
      LogWarn("agent.builtin_bake_failed",
              {{"template", b.name}, {"error", dir.status().ToString()}});
    }
  }
}

void Agent::StopWarmPool() {
  // A bake in progress (the built-in templates' at start) gives up rather than be waited for.
  if (prebake_.joinable()) {
    templates_->Abort();
    prebake_.join();
  }
  {
    std::lock_guard lock(warm_mu_);
    warm_stopping_ = true;
  }
  warm_cv_.notify_all();
  if (warm_filler_.joinable()) warm_filler_.join();
  std::deque<WarmClone> all;
  {
    std::lock_guard lock(warm_mu_);
    all.swap(warm_);
  }
  for (auto& w : all) w.sandbox->Kill();
}

void Agent::NoteDemand(const std::string& template_name) {
  if (config_.warm_sandboxes == 0 || template_name == config_.base.name) return;
  {
    std::lock_guard lock(warm_mu_);
    auto& d = demand_[template_name];
    d.push_back(std::chrono::steady_clock::now());
    while (d.size() > 64) d.pop_front();
    warm_kick_ = true;
  }
  warm_cv_.notify_all();
}

namespace {

// Drops the times before `horizon` and the entries left empty; the count per name.
std::map<std::string, size_t> CountSince(
    std::map<std::string, std::deque<std::chrono::steady_clock::time_point>>& times,
    std::chrono::steady_clock::time_point horizon) {
  std::map<std::string, size_t> counts;
  for (auto it = times.begin(); it != times.end();) {
    while (!it->second.empty() && it->second.front() < horizon) it->second.pop_front();
    if (it->second.empty()) {
      it = times.erase(it);
    } else {
      counts[it->first] = it->second.size();
      ++it;
    }
  }
  return counts;
}

}  // namespace

Status HostMemoryAdmits(const MemInfo& mem, uint64_t reserve_mib, std::string_view what) {
  uint64_t available_mib = mem.available_bytes >> 20;
  if (reserve_mib == 0 || available_mib >= reserve_mib) return Status::Ok();
  return ResourceExhausted("host memory low: " + std::to_string(available_mib) +
                           " MiB available, below the " + std::to_string(reserve_mib) +
                           " MiB reserve (--memory-reserve-mb); " + std::string(what) + " refused");
}

Status Agent::AdmitNewVm(std::string_view what) {
  if (config_.memory_reserve_mib == 0) return Status::Ok();
  auto mem = ReadMeminfo();
  if (!mem.ok()) {
    LogWarn("agent.meminfo_unreadable", {{"error", mem.status().ToString()}});
    return Status::Ok();
  }
  Status s = HostMemoryAdmits(*mem, config_.memory_reserve_mib, what);
  if (!s.ok()) LogWarn("agent.memory_low", {{"what", std::string(what)}, {"error", s.ToString()}});
  return s;
}

size_t WarmPoolWant(size_t floor, size_t dry_creates, size_t warm_max) {
  if (floor == 0 && dry_creates == 0) return 0;
  return std::max(floor, std::min(floor + dry_creates, std::max(floor, warm_max)));
}

std::vector<Agent::WarmTarget> Agent::WarmTargets() {
  std::vector<WarmTarget> out;
  std::map<std::string, size_t> recent, dry;
  {
    std::lock_guard lock(warm_mu_);
    auto horizon = std::chrono::steady_clock::now() - config_.warm_demand_window;
    recent = CountSince(demand_, horizon);
    dry = CountSince(dry_, horizon);
  }
  auto base = templates_->Ensure(config_.base);
  if (base.ok()) {
    out.push_back({config_.base.name, *base,
                   WarmPoolWant(config_.warm_sandboxes, dry[config_.base.name], config_.warm_max),
                   config_.base.memory_mib});
  } else {
    LogWarn("agent.warm_base_unavailable", {{"error", base.status().ToString()}});
  }
  recent.erase(config_.base.name);
  // The busiest templates first.
  std::vector<std::pair<std::string, size_t>> busy(recent.begin(), recent.end());
  std::sort(busy.begin(), busy.end(),
            [](const auto& a, const auto& b) { return a.second > b.second; });
  for (const auto& [name, count] : busy) {
    std::unique_lock custom(custom_mu_, std::defer_lock);
    if (Builtin(name) == nullptr) custom.lock();  // a build: not while it is being deleted
    auto spec = TemplateOf(name);
    if (!spec.ok()) continue;  // deleted meanwhile
    auto dir = templates_->Ensure(*spec);
    if (!dir.ok()) continue;
    out.push_back(
        {name, *dir,
         WarmPoolWant(std::min(count, config_.warm_sandboxes), dry[name], config_.warm_max),
         spec->memory_mib});
  }
  // Within the memory budget, in this order.
  uint64_t budget = config_.warm_memory_budget_mib;
  for (auto& t : out) {
    size_t fits = t.memory_mib == 0 ? t.want : static_cast<size_t>(budget / t.memory_mib);
    t.want = std::min(t.want, fits);
    budget -= std::min<uint64_t>(budget, t.want * t.memory_mib);
  }
  std::lock_guard lock(warm_mu_);
  last_want_.clear();
  for (const auto& t : out) last_want_[t.name] = t.want;
  return out;
}

void Agent::NoteDry(const std::string& template_name) {
  {
    std::lock_guard lock(warm_mu_);
    // Only a pool that was meant to hold clones ran dry; a template's first create (no pool
    // yet) is demand, counted as such.
    auto w = last_want_.find(template_name);
    if (w == last_want_.end() || w->second == 0) return;
    auto& d = dry_[template_name];
    d.push_back(std::chrono::steady_clock::now());
    while (d.size() > std::max<size_t>(config_.warm_max, 1)) d.pop_front();
    warm_kick_ = true;
  }
  LogInfo("agent.warm_pool_dry", {{"template", template_name}});
  warm_cv_.notify_all();
}

void Agent::WarmLoop() {
  // Low-priority refills: this thread (and what it forks — QEMU, whose own cgroup's weight is
  // low until the clone is claimed) yields the cores to requests.
  if (config_.low_priority_refills) {
    if (Status s = SetThreadNice(kBackgroundNice); !s.ok()) {
      LogWarn("agent.warm_nice_failed", {{"error", s.ToString()}});
    }
  }
  auto backoff = std::chrono::milliseconds(0);
  for (;;) {
    {
      std::unique_lock lock(warm_mu_);
      // Woken by a claim, a new demand or a clone just made; else once a second (demand
      // expires) or after the backoff.
      warm_cv_.wait_for(lock, std::max(backoff, std::chrono::milliseconds(1000)),
                        [&] { return warm_stopping_ || (warm_kick_ && backoff.count() == 0); });
      if (warm_stopping_) return;
      warm_kick_ = false;
    }
    std::vector<WarmTarget> targets = WarmTargets();
    // Drop clones that died, belong to a build no longer current, or exceed their template's
    // share; then fill the first template short of its share whose refill is not held by a
    // recent claim (refill_hold_; if all are, the earliest hold's end or the next claim is
    // waited for).
    std::vector<std::unique_ptr<Sandbox>> stale;
    const WarmTarget* fill = nullptr;
    std::optional<std::chrono::steady_clock::time_point> deferred_until;
    {
      std::lock_guard lock(warm_mu_);
      std::map<std::string, size_t> have;
      for (auto it = warm_.begin(); it != warm_.end();) {
        auto t = std::find_if(targets.begin(), targets.end(),
                              [&](const WarmTarget& x) { return x.dir == it->template_dir; });
        if (t == targets.end() || have[t->dir] >= t->want || it->sandbox->VmmExited()) {
          stale.push_back(std::move(it->sandbox));
          it = warm_.erase(it);
        } else {
          ++have[t->dir];
          ++it;
        }
      }
      auto now = std::chrono::steady_clock::now();
      std::erase_if(refill_hold_, [&](const auto& h) { return now >= h.second; });
      for (const auto& t : targets) {
        if (have[t.dir] >= t.want) continue;
        if (auto held = refill_hold_.find(t.dir); held != refill_hold_.end()) {
          if (!deferred_until || held->second < *deferred_until) deferred_until = held->second;
          continue;
        }
        fill = &t;
        break;
      }
    }
    for (auto& sb : stale) sb->Kill();
    if (fill == nullptr) {
      backoff = std::chrono::milliseconds(0);
      if (deferred_until) {
        std::unique_lock lock(warm_mu_);
        warm_cv_.wait_until(lock, *deferred_until, [&] { return warm_stopping_ || warm_kick_; });
        warm_kick_ = true;  // look again at once
      }
      continue;
    }
    auto m = ReadManifest(fill->dir);
    Status s = m.status();
    if (s.ok()) s = AdmitNewVm("a warm clone");
    if (s.ok()) {
      auto t0 = std::chrono::steady_clock::now();
      auto sb = Sandbox::Restore(env_, fill->dir, *m, NewSandboxId(), {}, std::nullopt,
                                 /*pooled=*/true);
      s = sb.status();
      auto t1 = std::chrono::steady_clock::now();
      if (s.ok()) s = (*sb)->WarmUp();
      if (s.ok()) {
        auto ms = [](auto d) {
          return static_cast<long>(
              std::chrono::duration_cast<std::chrono::milliseconds>(d).count());
        };
        LogInfo("agent.warm_clone_added",
                {{"sandbox", (*sb)->local_id()},
                 {"template", fill->name},
                 {"restore_ms", ms(t1 - t0)},
                 {"warmup_ms", ms(std::chrono::steady_clock::now() - t1)}});
        std::lock_guard lock(warm_mu_);
        warm_.push_back({fill->dir, std::move(*sb), fill->name, fill->memory_mib});
      } else if (sb.ok()) {
        (*sb)->Kill();
      }
    }
    if (s.ok()) {
      backoff = std::chrono::milliseconds(0);
      // Straight on to the next clone.
      std::lock_guard lock(warm_mu_);
      warm_kick_ = true;
    } else {
      // A failing restore (disk full, template broken) must not spin: 1 s, doubling to 30 s.
      backoff = std::min<std::chrono::milliseconds>(
          std::max(backoff * 2, std::chrono::milliseconds(1000)), std::chrono::seconds(30));
      LogWarn("agent.warm_fill_failed",
              {{"template", fill->name}, {"error", s.ToString()}, {"retry_ms", backoff.count()}});
    }
  }
}

size_t Agent::warm_ready() {
  std::lock_guard lock(warm_mu_);
  return warm_.size();
}

size_t Agent::warm_ready(const std::string& template_name) {
  std::lock_guard lock(warm_mu_);
  return static_cast<size_t>(std::count_if(warm_.begin(), warm_.end(), [&](const WarmClone& w) {
    return w.template_name == template_name;
  }));
}

Result<std::shared_ptr<Sandbox>> Agent::ClaimWarm(const std::string& template_dir,
                                                  const std::string& id,
                                                  const GuestIdentity& identity,
                                                  const net::EgressPolicy& egress) {
  while (true) {
    std::unique_ptr<Sandbox> sb;
    {
      std::lock_guard lock(warm_mu_);
      auto it = std::find_if(warm_.begin(), warm_.end(),
                             [&](const WarmClone& w) { return w.template_dir == template_dir; });
      if (it == warm_.end()) return std::shared_ptr<Sandbox>();
      sb = std::move(it->sandbox);
      warm_.erase(it);
      if (config_.refill_delay.count() > 0 &&
          std::any_of(warm_.begin(), warm_.end(),
                      [&](const WarmClone& w) { return w.template_dir == template_dir; })) {
        refill_hold_[template_dir] = std::chrono::steady_clock::now() + config_.refill_delay;
      } else {
        refill_hold_.erase(template_dir);  // emptied: refill at once, all the way
      }
      warm_kick_ = true;
    }
    warm_cv_.notify_all();  // refill
    Status claimed = sb->Claim(id, identity, egress);
    if (claimed.ok()) {
      std::shared_ptr<Sandbox> shared = std::move(sb);
      Track(shared);
      return shared;
    }
    LogWarn("agent.warm_claim_failed",
            {{"sandbox", sb->id()}, {"local_id", sb->local_id()}, {"error", claimed.ToString()}});
    sb->Kill();
    // A clone that died is replaced by the next one; anything else (a policy that cannot be
    // applied, say) would fail on every clone alike: the create fails with it.
    if (claimed.code() != ErrorCode::kUnavailable) return claimed;
  }
}

void Agent::StopMonitor() {
  {
    std::lock_guard lock(monitor_mu_);
    stopping_ = true;
  }
  monitor_cv_.notify_all();
  if (monitor_.joinable()) monitor_.join();
}

void Agent::Detach() {
  // Warm clones are nobody's sandboxes: they go (state.json never said ready).
  StopWarmPool();
  // No sandbox is released under them once detached: the monitor stops first.
  StopMonitor();
  // Killed ones are released, not left behind.
  StopTeardowns();
  std::lock_guard paused(paused_mu_);
  std::map<std::string, std::shared_ptr<Sandbox>> all;
  {
    std::lock_guard lock(mu_);
    all.swap(sandboxes_);
  }
  for (auto& [id, sb] : all) sb->Detach();
  // Their slots live on, and so must the host table; with no sandbox left it goes as usual.
  if (host_net_ && !all.empty()) host_net_->Detach();
  LogInfo("agent.detached", {{"sandboxes", all.size()}});
}

namespace {

// Kills a VMM left by an earlier agent, if that pid still is the same process.
void KillLeftoverVmm(const SandboxState& s) {
  if (s.vmm_pid <= 0) return;
  auto start = ProcessStartTime(s.vmm_pid);
  if (!start.ok() || *start != s.vmm_start_time) return;  // gone, or the pid was reused
  auto proc = ChildProcess::Adopt(s.vmm_pid);
  if (proc.ok()) {
    proc->Kill();
    return;
  }
  ::kill(s.vmm_pid, SIGKILL);
}

// Kills whatever still runs in the VM's cgroup (a VMM whose state.json was never written: the
// agent died between spawn and record), then removes the cgroup.
void RemoveLeftoverCgroup(const std::string& vm_name) {
  auto layout = vmm::DetectCgroupLayout();
  if (!layout.ok()) return;
  for (const auto& dir : vmm::CgroupDirsFor(*layout, "", vm_name)) {
    if (!PathExists(dir)) continue;
    for (int attempt = 0; attempt <= 100; ++attempt) {
      auto procs = ReadFile(dir + "/cgroup.procs");
      if (!procs.ok() || procs->empty()) break;
      for (size_t pos = 0; pos < procs->size();) {
        size_t end = procs->find('\n', pos);
        if (end == std::string::npos) end = procs->size();
        pid_t pid = static_cast<pid_t>(std::atol(procs->substr(pos, end - pos).c_str()));
        if (pid > 0) ::kill(pid, SIGKILL);
        pos = end + 1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    // The kernel may still count a just-killed member for a moment: rmdir fails with EBUSY.
    for (int attempt = 0; PathExists(dir) && ::rmdir(dir.c_str()) < 0; ++attempt) {
      if (errno != EBUSY || attempt == 100) {
        LogWarn("agent.cgroup_cleanup_failed", {{"dir", dir}, {"errno", errno}});
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    // The shared parent (".../moat") goes too once empty; it is busy while others use it.
    ::rmdir(dir.substr(0, dir.rfind('/')).c_str());
  }
}

Result<SandboxState> ReadSandboxState(const std::string& dir) {
  MOAT_ASSIGN_OR_RETURN(std::string text, ReadFile(dir + "/state.json"));
  return ParseSandboxState(text);
}

// Kills the VMM recorded in `dir`/state.json, if any, and everything in the cgroup `vm_name`.
void ReleaseLeftoverVmm(const std::string& dir, const std::string& vm_name) {
  auto text = ReadFile(dir + "/state.json");
  if (text.ok()) {
    auto state = ParseSandboxState(*text);
    if (state.ok()) {
      KillLeftoverVmm(*state);
    } else {
      LogWarn("agent.bad_state", {{"dir", dir}, {"error", state.status().ToString()}});
    }
  }
  RemoveLeftoverCgroup(vm_name);
}

}  // namespace

void Agent::Recover() {
  // Snapshots and bakes are renamed into place when complete; anything else is a leftover of a
  // crash in the middle of writing one.
  std::string snaps = config_.data_dir + "/snapshots";
  for (const auto& name : DirNames(snaps)) {
    std::string dir = snaps + "/" + name;
    auto m = ReadManifest(dir);
    if (!m.ok() || name.find('.') != std::string::npos) {
      (void)RemoveTree(dir);
      recovery_.removed_partial.push_back(dir);
    } else if (m->kind == "paused") {
      recovery_.paused.push_back(name);
    }
  }
  std::string tmpls = config_.data_dir + "/templates";
  // Custom templates' artifacts, layers and images are renamed into place when complete too.
  for (const char* sub : {"/custom", "/layers", "/images"}) {
    for (const auto& name : DirNames(tmpls + sub)) {
      if (name[0] != '.') continue;
      (void)RemoveTree(tmpls + sub + "/" + name);
      recovery_.removed_partial.push_back(tmpls + sub + "/" + name);
    }
  }
  for (const auto& tmpl : DirNames(tmpls)) {
    for (const auto& build : DirNames(tmpls + "/" + tmpl)) {
      if (build.rfind(".bake-", 0) == 0) {
        std::string dir = tmpls + "/" + tmpl + "/" + build;
        ReleaseLeftoverVmm(dir, BakeVmName(tmpl, dir));
        RemoveLeftoverCgroup("moat-bake-" + tmpl);  // the name bakes had before BakeVmName
        (void)RemoveTree(dir);
        recovery_.removed_partial.push_back(dir);
      }
    }
  }
  // Running sandboxes: adopted where possible, otherwise cleaned up.
  std::map<std::string, net::SlotRecord> slots;  // by netns name
  if (host_net_) {
    auto records = host_net_->LeftoverSlots();
    if (records.ok()) {
      for (auto& r : *records) slots.emplace(r.slot.netns, std::move(r));
    } else {
      LogWarn("agent.slot_records_unreadable", {{"error", records.status().ToString()}});
    }
  }
  std::string root = env_.sandboxes_dir;
  for (const auto& name : DirNames(root)) {
    std::string dir = root + "/" + name;
    // The directory is named by the sandbox's local id; its public id is the one state.json
    // records (a claimed warm clone's is not its directory's name).
    Result<SandboxState> state = ReadSandboxState(dir);
    const std::string id = state.ok() ? state->id : name;
    auto adopted = state.ok() ? AdoptLeftover(*state, name, slots)
                              : Result<std::shared_ptr<Sandbox>>(state.status());
    if (adopted.ok()) {
      Track(*adopted);
      recovery_.adopted.push_back(id);
      LogInfo("agent.adopted_leftover", {{"sandbox", id}, {"local_id", name}});
      continue;
    }
    // Whatever adoption took over it released again; this kills what it did not reach.
    ReleaseLeftoverVmm(dir, "moat-" + name);
    Status s = RemoveTree(dir);
    if (!s.ok()) {
      LogError("agent.recover_cleanup_failed", {{"dir", dir}, {"error", s.ToString()}});
      continue;
    }
    recovery_.cleaned.push_back(id);
    LogInfo("agent.cleaned_leftover",
            {{"sandbox", id}, {"local_id", name}, {"reason", adopted.status().ToString()}});
  }
}

Result<std::shared_ptr<Sandbox>> Agent::AdoptLeftover(
    const SandboxState& state, const std::string& local_id,
    const std::map<std::string, net::SlotRecord>& slots) {
  // Every check that needs nothing taken over comes first: a refusal then touches nothing, and
  // the caller cleans up as for any leftover. The VM is named by the directory (the local id);
  // the public id is state.id, the directory's name too unless a warm clone was claimed.
  if (state.vm_name != "moat-" + local_id) {
    return FailedPrecondition("its state.json names sandbox " + state.id + ", VM " + state.vm_name);
  }
  if (!state.adoptable()) {
    return FailedPrecondition(
        "its state.json does not record enough to adopt it (an older agent's, or written "
        "before the sandbox was ready)");
  }
  auto started = state.vmm_pid > 0 ? ProcessStartTime(state.vmm_pid) : NotFound("");
  if (!started.ok() || *started != state.vmm_start_time) {
    return NotFound("its VMM (pid " + std::to_string(state.vmm_pid) + ") has exited");
  }
  if (std::find(recovery_.paused.begin(), recovery_.paused.end(), state.id) !=
      recovery_.paused.end()) {
    // Paused just before the earlier agent stopped: the complete snapshot is the sandbox now.
    return FailedPrecondition("it was paused (its snapshot is complete)");
  }
  if (Get(state.id).ok()) {
    return FailedPrecondition("sandbox " + state.id +
                              " was adopted already, from another directory");
  }
  if ((state.jail_id != 0) != config_.jail) {
    return FailedPrecondition(state.jail_id != 0 ? "its VMM is jailed, this agent's are not"
                                                 : "its VMM runs unjailed");
  }
  std::unique_ptr<net::NetworkSlot> slot;
  if (!state.netns.empty()) {
    if (!host_net_) {
      return FailedPrecondition("it has network slot " + state.netns +
                                " but this agent runs without networking");
    }
    auto record = slots.find(state.netns);
    if (record == slots.end()) {
      return NotFound("its network slot " + state.netns + " has no record");
    }
    MOAT_ASSIGN_OR_RETURN(slot, host_net_->AdoptSlot(record->second));
  } else if (state.origin->network) {
    return FailedPrecondition("its VM has a NIC but no network slot is recorded");
  }
  MOAT_ASSIGN_OR_RETURN(std::unique_ptr<Sandbox> sb,
                        Sandbox::Adopt(env_, state, local_id, std::move(slot)));
  return std::shared_ptr<Sandbox>(std::move(sb));
}

std::string Agent::SnapshotDir(const std::string& id) const {
  return config_.data_dir + "/snapshots/" + id;
}

void Agent::Track(const std::shared_ptr<Sandbox>& sb) {
  std::lock_guard lock(mu_);
  sandboxes_[sb->id()] = sb;
}

Status Agent::ReserveIds(const std::vector<std::string>& ids) {
  for (auto it = ids.begin(); it != ids.end(); ++it) {
    if (!IsValidSandboxId(*it)) {
      // Named as given, but not at any length: it came from a client.
      std::string shown = it->size() > 64 ? it->substr(0, 64) + "..." : *it;
      return InvalidArgument("sandbox id \"" + shown + "\" is not valid (" +
                             std::to_string(kSandboxIdLength) + " characters of [a-z0-9])");
    }
    if (std::find(ids.begin(), it, *it) != it) {
      return InvalidArgument("sandbox id " + *it + " is given more than once");
    }
  }
  // Under mu_, the map before the disk: Pause renames its snapshot into place before it drops
  // the sandbox from the map (under mu_), and Resume tracks the sandbox before it removes the
  // snapshot, so a sandbox on its way between running and paused is seen as one or the other.
  std::lock_guard lock(mu_);
  for (const auto& id : ids) {
    auto in_use = [&](const std::string& what) {
      return Status(ErrorCode::kAlreadyExists, "sandbox id " + id + " is in use: " + what);
    };
    if (sandboxes_.count(id) != 0) return in_use("a sandbox of that id runs");
    if (reserved_ids_.count(id) != 0) return in_use("a sandbox of that id is being created");
    // A paused sandbox, or a named snapshot (their ids share the alphabet): a pause under this
    // id would collide with it.
    if (PathExists(SnapshotDir(id))) return in_use("snapshots/" + id + " exists (paused?)");
    // Another sandbox's directory (a warm clone's, or one's whose public id differs).
    if (PathExists(env_.sandboxes_dir + "/" + id)) return in_use("sandboxes/" + id + " exists");
  }
  reserved_ids_.insert(ids.begin(), ids.end());
  return Status::Ok();
}

void Agent::ReleaseIds(const std::vector<std::string>& ids) {
  std::lock_guard lock(mu_);
  for (const auto& id : ids) reserved_ids_.erase(id);
}

Result<std::shared_ptr<Sandbox>> Agent::Restore(const std::string& snapshot_dir,
                                                const SnapshotManifest& m, const std::string& id,
                                                const GuestIdentity& identity,
                                                const std::optional<net::EgressPolicy>& egress) {
  MOAT_RETURN_IF_ERROR(AdmitNewVm("sandbox " + id));
  MOAT_ASSIGN_OR_RETURN(std::unique_ptr<Sandbox> sb,
                        Sandbox::Restore(env_, snapshot_dir, m, id, identity, egress));
  std::shared_ptr<Sandbox> shared = std::move(sb);
  Track(shared);
  return shared;
}

Result<std::shared_ptr<Sandbox>> Agent::Create(const std::string& template_name,
                                               const GuestIdentity& identity,
                                               const net::EgressPolicy& egress) {
  return Create(CreateRequest{.id = NewSandboxId(),
                              .template_name = template_name,
                              .identity = identity,
                              .egress = egress});
}

Result<std::shared_ptr<Sandbox>> Agent::Create(const CreateRequest& req) {
  MOAT_RETURN_IF_ERROR(ReserveIds({req.id}));
  // Released once the sandbox is tracked under its id (or was not made).
  Cleanup release([&] { ReleaseIds({req.id}); });
  const std::string& template_name = req.template_name;
  std::string dir;
  const TemplateSpec* builtin = Builtin(template_name);
  bool pooled =
      template_name == config_.base.name || builtin != nullptr || IsBuildId(template_name);
  if (template_name == config_.base.name) {
    MOAT_ASSIGN_OR_RETURN(dir, templates_->Ensure(config_.base));
  } else if (builtin != nullptr) {
    MOAT_ASSIGN_OR_RETURN(dir, templates_->Ensure(*builtin));
  } else if (IsBuildId(template_name)) {
    // A custom template's build: its snapshot (baked at build time; again only if something
    // it depends on changed since, such as the QEMU version).
    std::lock_guard custom(custom_mu_);  // not while it is being deleted
    MOAT_ASSIGN_OR_RETURN(TemplateSpec t, TemplateOf(template_name));
    MOAT_ASSIGN_OR_RETURN(dir, templates_->Ensure(t));
  } else if (template_name == kCodeInterpreterTemplate) {
    return TemplateOf(template_name).status();  // not installed here: says so
  } else {
    // A named snapshot's id (never a paused sandbox's: those are resumed, not cloned).
    dir = SnapshotDir(template_name);
    auto m = IsValidSnapshotName(template_name) ? ReadManifest(dir) : NotFound("");
    if (!m.ok() || m->kind != "named") {
      return NotFound("template \"" + template_name + "\" not found");
    }
  }
  NoteDemand(template_name);
  if (pooled && config_.warm_sandboxes > 0) {
    MOAT_ASSIGN_OR_RETURN(std::shared_ptr<Sandbox> warm,
                          ClaimWarm(dir, req.id, req.identity, req.egress));
    if (warm) return warm;
    NoteDry(template_name);
  }
  MOAT_ASSIGN_OR_RETURN(SnapshotManifest m, ReadManifest(dir));
  return Restore(dir, m, req.id, req.identity, req.egress);
}

Result<TemplateBuildResult> Agent::BuildTemplate(const TemplateBuildSpec& spec,
                                                 const BuildLogFn& log, BuildFailure* failure) {
  TemplateBuildSpec s = spec;
  if (const TemplateSpec* b = Builtin(s.from_template)) s.from_builtin = *b;
  s.insecure_registries = config_.insecure_registries;
  s.layer_cache_mib = config_.template_cache_mib;
  return agent::BuildTemplate(env_, *templates_, config_.base, config_.data_dir + "/templates", s,
                              log, failure, &custom_mu_);
}

const TemplateSpec* Agent::Builtin(const std::string& name) const {
  for (const auto& b : config_.builtins) {
    if (b.name == name) return &b;
  }
  return nullptr;
}

Result<TemplateSpec> Agent::TemplateOf(const std::string& name) {
  if (const TemplateSpec* b = Builtin(name)) return *b;
  if (!IsBuildId(name)) {
    if (name == kCodeInterpreterTemplate) {
      return NotFound("template \"" + name + "\" is not installed on this host (its image, " +
                      kCodeInterpreterImage + ", is built by `make guest`)");
    }
    return NotFound("template \"" + name + "\" not found");
  }
  return CustomTemplateSpec(config_.base, config_.data_dir + "/templates", name);
}

Status Agent::DeleteTemplateBuild(const std::string& build_id) {
  if (!IsBuildId(build_id)) return NotFound("template build \"" + build_id + "\" not found");
  std::lock_guard custom(custom_mu_);  // no create or warm-pool bake of it meanwhile
  std::string tmpls = config_.data_dir + "/templates";
  std::string artifact = CustomTemplateDir(tmpls, build_id);
  // Its snapshots: shared with the builds that ended in the same (TemplateBuildResult::
  // bake_name), removed with the last of them.
  std::string bake_name = build_id;
  if (auto spec = TemplateOf(build_id); spec.ok()) bake_name = spec->name;
  bool shared = false;
  for (const auto& other : DirNames(tmpls + "/custom")) {
    if (other == build_id || !IsBuildId(other)) continue;
    auto o = TemplateOf(other);
    if (o.ok() && o->name == bake_name) shared = true;
  }
  std::string bakes = tmpls + "/" + bake_name;
  if (!PathExists(artifact) && !PathExists(bakes)) {
    return NotFound("template build \"" + build_id + "\" is not on this host");
  }
  // Sandboxes and snapshots of it read their disk through its image (their overlays' base):
  // while one exists, it stays (unless another build keeps the snapshots they came from).
  auto uses = [&](const std::string& base_disk) {
    return (!shared && base_disk.rfind(bakes + "/", 0) == 0) ||
           base_disk.rfind(artifact + "/", 0) == 0;
  };
  {
    std::lock_guard lock(mu_);
    for (const auto& [id, sb] : sandboxes_) {
      if (uses(sb->origin().base_disk)) {
        return FailedPrecondition("sandbox " + id + " runs from template build " + build_id);
      }
    }
  }
  for (const auto& name : DirNames(config_.data_dir + "/snapshots")) {
    auto m = ReadManifest(config_.data_dir + "/snapshots/" + name);
    if (m.ok() && uses(m->base_disk)) {
      return FailedPrecondition((m->kind == "paused" ? "paused sandbox " : "snapshot ") + name +
                                " was made from template build " + build_id + " (delete it first)");
    }
  }
  // Warm clones of it go.
  std::vector<std::unique_ptr<Sandbox>> stale;
  {
    std::lock_guard lock(warm_mu_);
    demand_.erase(build_id);
    for (auto it = warm_.begin(); it != warm_.end();) {
      if (!shared && it->template_dir.rfind(bakes + "/", 0) == 0) {
        stale.push_back(std::move(it->sandbox));
        it = warm_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& sb : stale) sb->Kill();
  if (!shared) MOAT_RETURN_IF_ERROR(RemoveTree(bakes));
  return RemoveTree(artifact);
}

Status Agent::SetEgress(const std::string& id, const net::EgressPolicy& egress) {
  MOAT_ASSIGN_OR_RETURN(std::shared_ptr<Sandbox> sb, Get(id));
  return sb->SetEgress(egress);
}

Result<std::shared_ptr<Sandbox>> Agent::CreateColdBoot(const GuestIdentity& identity) {
  MOAT_RETURN_IF_ERROR(AdmitNewVm("a cold boot"));
  MOAT_ASSIGN_OR_RETURN(std::unique_ptr<Sandbox> sb,
                        Sandbox::Boot(env_, config_.base, NewSandboxId(), identity));
  std::shared_ptr<Sandbox> shared = std::move(sb);
  Track(shared);
  return shared;
}

Status Agent::Pause(const std::string& id, bool keep_memory) {
  MOAT_ASSIGN_OR_RETURN(std::shared_ptr<Sandbox> sb, Get(id));
  // The guest's flush runs before the host's pause lock: a slow guest holds up only itself. (A
  // sandbox killed or paused meanwhile is refused by its snapshot, which sees it killed.)
  if (!keep_memory) MOAT_RETURN_IF_ERROR(sb->FlushGuestFilesystems());
  std::lock_guard paused(paused_mu_);
  SnapshotManifest m{.kind = "paused", .name = id, .sandbox_id = id};
  auto start = std::chrono::steady_clock::now();
  if (keep_memory) {
    MOAT_RETURN_IF_ERROR(
        sb->SaveSnapshot(SnapshotDir(id), m, /*keep_running=*/false, /*durable=*/true));
  } else {
    MOAT_RETURN_IF_ERROR(sb->SaveDiskSnapshot(SnapshotDir(id), m));
  }
  auto saved = std::chrono::steady_clock::now();
  {
    std::lock_guard lock(mu_);
    sandboxes_.erase(id);
  }
  sb->Kill();
  if (config_.replication != nullptr) config_.replication->Written("paused", id, SnapshotDir(id));
  auto ms = [](auto d) {
    return static_cast<long>(std::chrono::duration_cast<std::chrono::milliseconds>(d).count());
  };
  LogInfo("sandbox.paused", {{"sandbox", id},
                             {"memory", keep_memory},
                             {"snapshot_ms", ms(saved - start)},
                             {"release_ms", ms(std::chrono::steady_clock::now() - saved)}});
  return Status::Ok();
}

Result<std::shared_ptr<Sandbox>> Agent::Resume(const std::string& id) {
  std::lock_guard paused(paused_mu_);
  if (Get(id).ok()) return FailedPrecondition("sandbox " + id + " is running, not paused");
  std::string dir = SnapshotDir(id);
  auto m = IsValidSandboxId(id) ? ReadManifest(dir) : NotFound("");
  if (!m.ok() || m->kind != "paused") return NotFound("sandbox \"" + id + "\" not found");
  // The paused snapshot is removed only once the sandbox runs again: a failed resume loses
  // nothing.
  // Its recorded egress policy comes back with it.
  std::shared_ptr<Sandbox> sb;
  if (m->filesystem_only) {
    MOAT_ASSIGN_OR_RETURN(sb, BootFromDisk(dir, *m));
  } else {
    MOAT_ASSIGN_OR_RETURN(sb, Restore(dir, *m, id, {}, std::nullopt));
  }
  Status removed = RemoveTree(dir);
  if (!removed.ok()) LogWarn("agent.paused_cleanup_failed", {{"error", removed.ToString()}});
  return sb;
}

Result<std::shared_ptr<Sandbox>> Agent::BootFromDisk(const std::string& dir,
                                                     const SnapshotManifest& m) {
  MOAT_RETURN_IF_ERROR(AdmitNewVm("sandbox " + m.sandbox_id));
  // The template it came from, with the resources and base disk it had.
  TemplateSpec tmpl = config_.base;
  tmpl.name = m.source;
  tmpl.vcpus = m.vcpus;
  tmpl.memory_mib = m.memory_mib;
  tmpl.rootfs_path = m.base_disk;
  net::EgressPolicy egress;
  if (!m.egress.is_null()) {
    MOAT_ASSIGN_OR_RETURN(egress, net::EgressPolicy::FromJson(m.egress));
  }
  if (m.network && slot_pool_ == nullptr) {
    return FailedPrecondition("sandbox " + m.sandbox_id +
                              " had a network but this agent runs without networking");
  }
  MOAT_ASSIGN_OR_RETURN(
      std::unique_ptr<Sandbox> sb,
      Sandbox::Boot(env_, tmpl, m.sandbox_id, m.identity.value_or(GuestIdentity{}), egress,
                    SnapshotFiles(dir).overlay));
  std::shared_ptr<Sandbox> shared = std::move(sb);
  Track(shared);
  return shared;
}

bool Agent::IsPaused(const std::string& id) {
  if (!IsValidSandboxId(id)) return false;
  auto m = ReadManifest(SnapshotDir(id));
  return m.ok() && m->kind == "paused";
}

std::vector<SnapshotManifest> Agent::ListPaused() {
  std::vector<SnapshotManifest> out;
  for (const auto& name : DirNames(config_.data_dir + "/snapshots")) {
    auto m = ReadManifest(SnapshotDir(name));
    if (m.ok() && m->kind == "paused") out.push_back(*m);
  }
  return out;
}

Result<std::vector<std::shared_ptr<Sandbox>>> Agent::Fork(const std::string& id, int count) {
  if (count < 1 || count > 64) return InvalidArgument("fork: count must be 1..64");
  std::vector<std::string> child_ids;
  for (int i = 0; i < count; ++i) child_ids.push_back(NewSandboxId());
  return Fork(id, child_ids);
}

Result<std::vector<std::shared_ptr<Sandbox>>> Agent::Fork(
    const std::string& id, const std::vector<std::string>& child_ids) {
  if (child_ids.empty() || child_ids.size() > 64) {
    return InvalidArgument("fork: 1 to 64 children, not " + std::to_string(child_ids.size()));
  }
  MOAT_RETURN_IF_ERROR(ReserveIds(child_ids).Annotate("fork of " + id));
  Cleanup release([&] { ReleaseIds(child_ids); });
  const int count = static_cast<int>(child_ids.size());
  MOAT_ASSIGN_OR_RETURN(std::shared_ptr<Sandbox> parent, Get(id));
  MOAT_RETURN_IF_ERROR(AdmitNewVm("fork of " + id));  // before the parent's snapshot
  // One snapshot of the parent (it runs on right after), then every child restores from it.
  std::string dir = SnapshotDir(".fork-" + NewSandboxId());
  Cleanup remove([&] { (void)RemoveTree(dir); });
  SnapshotManifest m{.kind = "named", .name = "fork of " + id};
  MOAT_RETURN_IF_ERROR(parent->SaveSnapshot(dir, m, /*keep_running=*/true, /*durable=*/false));
  MOAT_ASSIGN_OR_RETURN(m, ReadManifest(dir));
  // Children restore concurrently, as many at once as the host has cores: each one is a QEMU
  // loading the stream and then a guest translating its first code, both CPU-bound. Each child
  // gets a slot of its own with the parent's policy (recorded in the snapshot).
  std::vector<std::optional<Result<std::shared_ptr<Sandbox>>>> results(count);
  SideBySide(count, std::max(1u, std::thread::hardware_concurrency()), [&](size_t i) {
    Status caught = CatchAll("fork child", [&] {
      results[i] = Restore(dir, m, child_ids[i], parent->identity(), std::nullopt);
    });
    if (!caught.ok()) results[i] = caught;
  });
  std::vector<std::shared_ptr<Sandbox>> children;
  Status failed;
  for (auto& r : results) {
    if (r->ok()) {
      children.push_back(**r);
    } else if (failed.ok()) {
      failed = r->status();
    }
  }
  if (!failed.ok()) {
    for (auto& c : children) (void)Kill(c->id());
    return failed.Annotate("fork of " + id);
  }
  return children;
}

Result<SnapshotManifest> Agent::CreateSnapshot(const std::string& id, const std::string& name) {
  MOAT_ASSIGN_OR_RETURN(std::shared_ptr<Sandbox> sb, Get(id));
  std::string snap_id = "snap" + NewSandboxId().substr(4);
  SnapshotManifest m{.kind = "named", .name = name.empty() ? snap_id : name};
  MOAT_RETURN_IF_ERROR(
      sb->SaveSnapshot(SnapshotDir(snap_id), m, /*keep_running=*/true, /*durable=*/true));
  MOAT_ASSIGN_OR_RETURN(m, ReadManifest(SnapshotDir(snap_id)));
  if (config_.replication != nullptr) {
    config_.replication->Written("named", snap_id, SnapshotDir(snap_id));
  }
  m.sandbox_id = snap_id;  // reported as the snapshot's id
  return m;
}

std::vector<SnapshotManifest> Agent::ListSnapshots() {
  std::vector<SnapshotManifest> out;
  for (const auto& name : DirNames(config_.data_dir + "/snapshots")) {
    auto m = ReadManifest(SnapshotDir(name));
    if (m.ok() && m->kind == "named") {
      m->sandbox_id = name;
      out.push_back(*m);
    }
  }
  return out;
}

Status Agent::DeleteSnapshot(const std::string& snapshot_id) {
  auto m = IsValidSnapshotName(snapshot_id) ? ReadManifest(SnapshotDir(snapshot_id)) : NotFound("");
  if (!m.ok() || m->kind != "named") {
    return NotFound("snapshot \"" + snapshot_id + "\" not found");
  }
  return RemoveTree(SnapshotDir(snapshot_id));
}

Result<std::shared_ptr<Sandbox>> Agent::Get(const std::string& id) {
  std::lock_guard lock(mu_);
  auto it = sandboxes_.find(id);
  if (it == sandboxes_.end()) return NotFound("sandbox \"" + id + "\" not found");
  return it->second;
}

std::vector<std::shared_ptr<Sandbox>> Agent::List() {
  std::lock_guard lock(mu_);
  std::vector<std::shared_ptr<Sandbox>> out;
  for (auto& [id, sb] : sandboxes_) out.push_back(sb);
  return out;
}

Status Agent::Kill(const std::string& id) {
  std::shared_ptr<Sandbox> sb;
  {
    std::lock_guard lock(mu_);
    auto it = sandboxes_.find(id);
    if (it != sandboxes_.end()) {
      sb = std::move(it->second);
      sandboxes_.erase(it);
    }
  }
  if (!sb) {
    std::lock_guard paused(paused_mu_);
    if (IsPaused(id)) return RemoveTree(SnapshotDir(id));
    return NotFound("sandbox \"" + id + "\" not found");
  }
  // Unreachable now; released in the background (TeardownLoop).
  sb->Stop();
  {
    std::lock_guard lock(teardown_mu_);
    if (!teardown_stopping_) {
      teardown_.emplace_back(std::move(sb), std::chrono::steady_clock::now());
    }
  }
  teardown_cv_.notify_all();
  if (sb) sb->Kill();  // the agent is stopping: no queue any more
  return Status::Ok();
}

void Agent::KillAll() {
  std::vector<std::shared_ptr<Sandbox>> all;
  {
    std::lock_guard lock(mu_);
    for (auto& [id, sb] : sandboxes_) all.push_back(std::move(sb));
    sandboxes_.clear();
  }
  // Side by side, as the teardown threads do: a host with hundreds of sandboxes stops in seconds.
  SideBySide(all.size(), TeardownWorkers(), [&](size_t i) { all[i]->Kill(); });
}

void Agent::MonitorLoop() {
  std::unique_lock lock(monitor_mu_);
  while (!stopping_) {
    monitor_cv_.wait_for(lock, config_.monitor_interval, [this] { return stopping_; });
    if (stopping_) break;
    lock.unlock();
    std::vector<std::shared_ptr<Sandbox>> dead;
    {
      std::lock_guard l(mu_);
      for (auto it = sandboxes_.begin(); it != sandboxes_.end();) {
        if (it->second->VmmExited()) {
          dead.push_back(it->second);
          it = sandboxes_.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (auto& sb : dead) {
      LogWarn("sandbox.vmm_exited", {{"sandbox", sb->id()}, {"tail", sb->DiagnosticTail()}});
      sb->Kill();
    }
    lock.lock();
  }
}

}  // namespace moat::agent
