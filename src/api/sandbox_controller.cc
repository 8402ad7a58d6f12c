#include "api/sandbox_controller.h"

#include <sys/stat.h>

#include <algorithm>
#include <set>

#include "api/auth.h"
#include "common/guarded.h"
#include "common/log.h"

namespace moat::api {

int64_t UnixMillisNow() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Result<std::unique_ptr<SandboxController>> SandboxController::Start(agent::Agent& agent,
                                                                    store::Store& store,
                                                                    Metrics& metrics,
                                                                    ControllerOptions options) {
  std::unique_ptr<SandboxController> c(new SandboxController(agent, store, metrics, options));
  MOAT_ASSIGN_OR_RETURN(auto all, store.AllSandboxes());
  const auto& cleaned = agent.recovery().cleaned;
  for (const auto& r : all) {
    if (r.state == "paused" && agent.IsPaused(r.id)) continue;  // persisted: resumable
    // Running: the agent's recovery re-adopted it (moatd restarted, its VMM ran on).
    if (agent.Get(r.id).ok()) {
      LogInfo("api.sandbox_kept", {{"sandbox", r.id}, {"reason", "re-adopted after restart"}});
      continue;
    }
    // Gone: its VMM died while no moatd ran (the agent's recovery released what was left), or
    // it was never re-adopted. Its record goes too.
    bool was_left = std::find(cleaned.begin(), cleaned.end(), r.id) != cleaned.end();
    MOAT_RETURN_IF_ERROR(store.DeleteSandbox(r.id));
    LogInfo("api.sandbox_dropped",
            {{"sandbox", r.id},
             {"reason", was_left ? "not running after restart: marked and cleaned"
                                 : "not running after restart"}});
  }
  // A sandbox the agent re-adopted that no record names (moatd stopped between making it and
  // recording it: a create or fork in flight) belongs to no team and no one could reach it.
  std::set<std::string> recorded;
  for (const auto& r : all) recorded.insert(r.id);
  for (const auto& sb : agent.List()) {
    if (recorded.count(sb->id()) != 0) continue;
    (void)agent.Kill(sb->id());
    LogWarn("api.sandbox_killed",
            {{"sandbox", sb->id()}, {"reason", "re-adopted without a record"}});
  }
  MOAT_ASSIGN_OR_RETURN(auto snapshots, store.AllSnapshots());
  std::set<std::string> on_disk;
  for (const auto& m : agent.ListSnapshots()) on_disk.insert(m.sandbox_id);
  for (const auto& s : snapshots) {
    if (on_disk.count(s.id) != 0) continue;
    MOAT_RETURN_IF_ERROR(store.DeleteSnapshot(s.id));
    LogInfo("api.snapshot_dropped", {{"snapshot", s.id}, {"reason", "no files"}});
  }
  c->reaper_ = GuardedThread("reaper", [p = c.get()] { p->ReaperLoop(); });
  return c;
}

SandboxController::~SandboxController() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (reaper_.joinable()) reaper_.join();
}

Result<store::SandboxRecord> SandboxController::Create(const store::TeamRecord& team,
                                                       const CreateSandboxAction& a) {
  auto started = std::chrono::steady_clock::now();
  MOAT_ASSIGN_OR_RETURN(std::string template_id, ResolveTemplate(team.id, a.template_id));
  // Held until the sandbox is recorded (or its start failed): see team_quotas.h.
  const auto& base = agent_.config().base;
  auto ask = QuotaGate::CreateAsk(a, base.vcpus, static_cast<int64_t>(base.memory_mib));
  MOAT_ASSIGN_OR_RETURN(auto admitted, quotas_.Admit(team.id, ask));
  agent::GuestIdentity identity;
  identity.env = a.env_vars;
  MOAT_ASSIGN_OR_RETURN(auto sb, agent_.Create(template_id, identity, a.egress));
  const auto& tmpl = agent_.config().base;
  store::SandboxRecord r;
  r.id = sb->id();
  r.team_id = team.id;
  r.template_id = template_id;
  r.access_token = RandomToken("", 24);
  if (!a.allow_public_traffic) r.traffic_access_token = RandomToken("", 24);
  r.metadata = a.metadata;
  r.env_vars = a.env_vars;
  r.started_at_ms = UnixMillisNow();
  r.end_at_ms = r.started_at_ms + a.timeout_s * 1000;
  r.auto_pause = a.auto_pause;
  r.cpu_count = tmpl.vcpus;
  r.memory_mb = static_cast<uint32_t>(tmpl.memory_mib);
  struct stat st {};
  if (::stat(tmpl.rootfs_path.c_str(), &st) == 0) {
    r.disk_size_mb = static_cast<uint32_t>(st.st_size / (1024 * 1024));
  }
  if (Status s = store_.InsertSandbox(r); !s.ok()) {
    (void)agent_.Kill(r.id);
    return s.Annotate("recording sandbox " + r.id);
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  metrics_.create_latency().Observe(secs);
  LogInfo("api.sandbox_created", {{"sandbox", r.id},
                                  {"team", team.id},
                                  {"template", r.template_id},
                                  {"timeout_s", a.timeout_s},
                                  {"ms", static_cast<int64_t>(secs * 1000)}});
  return r;
}

Result<std::string> SandboxController::ResolveTemplate(const std::string& team_id,
                                                       const std::string& template_id) {
  if (template_id == agent_.config().base.name) return template_id;
  MOAT_ASSIGN_OR_RETURN(auto by_id, store_.GetSnapshot(template_id));
  if (by_id && by_id->team_id == team_id) return by_id->id;
  MOAT_ASSIGN_OR_RETURN(auto by_name, store_.SnapshotByName(team_id, template_id));
  if (by_name) return by_name->id;
  return NotFound("template \"" + template_id + "\" not found");
}

Result<store::SnapshotRecord> SandboxController::CreateSnapshot(const std::string& team_id,
                                                                const std::string& sandbox_id,
                                                                const CreateSnapshotAction& a) {
  MOAT_ASSIGN_OR_RETURN(auto r, Get(team_id, sandbox_id));
  if (r.state != "running") {
    return FailedPrecondition("sandbox \"" + sandbox_id +
                              "\" is paused; resume it before taking a snapshot");
  }
  auto started = std::chrono::steady_clock::now();
  MOAT_ASSIGN_OR_RETURN(auto manifest, agent_.CreateSnapshot(r.id, a.name));
  store::SnapshotRecord snap{.id = manifest.sandbox_id,
                             .team_id = team_id,
                             .sandbox_id = r.id,
                             .name = a.name,
                             .created_at_ms = UnixMillisNow()};
  if (Status s = store_.InsertSnapshot(snap); !s.ok()) {
    (void)agent_.DeleteSnapshot(snap.id);
    return s.Annotate("recording snapshot " + snap.id);
  }
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                                  started)
                .count();
  LogInfo("api.snapshot_created",
          {{"snapshot", snap.id}, {"sandbox", r.id}, {"team", team_id}, {"ms", ms}});
  return snap;
}

Result<store::SnapshotPage> SandboxController::ListSnapshots(const store::SnapshotFilter& filter) {
  return store_.ListSnapshots(filter);
}

Status SandboxController::DeleteSnapshot(const std::string& team_id,
                                         const std::string& snapshot_id) {
  MOAT_ASSIGN_OR_RETURN(auto snap, store_.GetSnapshot(snapshot_id));
  if (!snap || snap->team_id != team_id) {
    return NotFound("snapshot \"" + snapshot_id + "\" not found");
  }
  Status removed = agent_.DeleteSnapshot(snap->id);
  if (!removed.ok() && removed.code() != ErrorCode::kNotFound) return removed;
  MOAT_RETURN_IF_ERROR(store_.DeleteSnapshot(snap->id));
  LogInfo("api.snapshot_deleted", {{"snapshot", snap->id}, {"team", team_id}});
  return Status::Ok();
}

Result<store::SandboxRecord> SandboxController::Get(const std::string& team_id,
                                                    const std::string& id) {
  MOAT_ASSIGN_OR_RETURN(auto r, store_.GetSandbox(id));
  if (!r || r->team_id != team_id) return NotFound("sandbox \"" + id + "\" not found");
  return *r;
}

Result<std::vector<SandboxController::MetricSample>> SandboxController::SampleUsage(
    const std::string& team_id, const std::string& id, std::optional<int64_t> start_s,
    std::optional<int64_t> end_s) {
  MOAT_ASSIGN_OR_RETURN(store::SandboxRecord r, Get(team_id, id));
  std::vector<MetricSample> out;
  // The SDK rounds its range to seconds, and clocks differ: a sample "now" belongs to a range
  // that ends within a few seconds of it.
  constexpr int64_t kSlackS = 5;
  int64_t now_s = UnixMillisNow() / 1000;
  if (r.state != "running" || (start_s && now_s + kSlackS < *start_s) ||
      (end_s && now_s - kSlackS > *end_s)) {
    return out;
  }
  auto sb = agent_.Get(id);
  if (!sb.ok()) return out;  // paused or killed in the meantime
  auto usage = (*sb)->Usage();
  if (!usage.ok()) {
    // Its VMM just went away (killed, paused, exited): no sample.
    if (usage.status().code() == ErrorCode::kNotFound || !agent_.Get(id).ok() ||
        (*sb)->vmm_pid() <= 0) {
      return out;
    }
    LogWarn("api.usage_failed", {{"sandbox", id}, {"error", usage.status().ToString()}});
    return usage.status();
  }
  MetricSample m{.unix_ms = UnixMillisNow(), .usage = *usage};
  {
    std::lock_guard lock(cpu_mu_);
    // Since the previous sample of this VMM (intervals on its own boot-time clock), or since
    // the VMM started (the first sample, or after a resume started a new one).
    const agent::SandboxUsage& u = m.usage;
    double cpu = u.cpu_seconds, wall = u.vmm_age_seconds;
    auto it = last_cpu_.find(id);
    bool same_vmm = it != last_cpu_.end() && it->second.vmm_pid == u.vmm_pid &&
                    it->second.vmm_start_time == u.vmm_start_time;
    if (same_vmm && it->second.age_seconds < u.vmm_age_seconds) {
      cpu -= it->second.cpu_seconds;
      wall = u.vmm_age_seconds - it->second.age_seconds;
    }
    if (wall > 0 && u.vcpus > 0) {
      m.cpu_used_pct = std::clamp(100.0 * cpu / (wall * u.vcpus), 0.0, 100.0);
    }
    // Never a reading older than the one kept (two samplers at once), and none for a sandbox
    // that is gone: Release drops the entry after the agent has let go of the sandbox.
    if ((!same_vmm || it->second.age_seconds < u.vmm_age_seconds) && agent_.Get(id).ok()) {
      last_cpu_[id] = {u.vmm_pid, u.vmm_start_time, u.vmm_age_seconds, u.cpu_seconds};
    }
  }
  out.push_back(m);
  return out;
}

Result<store::SandboxPage> SandboxController::List(const store::SandboxFilter& filter) {
  return store_.ListSandboxes(filter);
}

Status SandboxController::Release(const std::string& id, const char* why) {
  // The record goes first: from then on every route answers 404 for it at once, while the VM
  // and its network slot are released (tens of milliseconds, more under load).
  MOAT_RETURN_IF_ERROR(store_.DeleteSandbox(id));
  Status killed = agent_.Kill(id);
  {
    // After the agent let go of it: a sample racing with the kill cannot put it back.
    std::lock_guard lock(cpu_mu_);
    last_cpu_.erase(id);
  }
  if (!killed.ok() && killed.code() != ErrorCode::kNotFound) {
    LogError("api.sandbox_release_failed", {{"sandbox", id}, {"error", killed.ToString()}});
    return killed;
  }
  LogInfo("api.sandbox_released", {{"sandbox", id}, {"reason", why}});
  return Status::Ok();
}

Status SandboxController::Kill(const std::string& team_id, const std::string& id) {
  MOAT_ASSIGN_OR_RETURN(auto r, Get(team_id, id));
  return Release(r.id, "killed");
}

Status SandboxController::UpdateNetwork(const std::string& team_id, const std::string& id,
                                        const net::EgressPolicy& egress) {
  MOAT_ASSIGN_OR_RETURN(auto r, Get(team_id, id));
  if (r.state == "paused") {
    return FailedPrecondition("sandbox \"" + id + "\" is paused: resume it to change its network");
  }
  return agent_.SetEgress(r.id, egress);
}

Result<SandboxEndpoint> SandboxController::ResolvePort(const std::string& id, uint16_t port) {
  MOAT_ASSIGN_OR_RETURN(Running running, FindRunning(id));
  MOAT_ASSIGN_OR_RETURN(net::Ipv4Address address, running.sandbox->NetworkAddress());
  return SandboxEndpoint{address.ToString(), port, running.record.traffic_access_token};
}

Status SandboxController::SetTimeout(const std::string& team_id, const std::string& id,
                                     int64_t timeout_s) {
  MOAT_ASSIGN_OR_RETURN(auto r, Get(team_id, id));
  return store_.SetSandboxEndAt(r.id, UnixMillisNow() + timeout_s * 1000);
}

Result<store::SandboxRecord> SandboxController::Connect(const std::string& team_id,
                                                        const std::string& id, int64_t timeout_s,
                                                        bool* resumed) {
  MOAT_ASSIGN_OR_RETURN(auto r, Get(team_id, id));
  if (resumed != nullptr) *resumed = false;
  if (r.state == "paused") {
    if (resumed != nullptr) *resumed = true;
    return ResumeRecord(r, timeout_s);
  }
  if (!agent_.Get(r.id).ok()) return NotFound("sandbox \"" + id + "\" is not running");
  int64_t end = UnixMillisNow() + timeout_s * 1000;
  if (end > r.end_at_ms) {
    MOAT_RETURN_IF_ERROR(store_.SetSandboxEndAt(r.id, end));
    r.end_at_ms = end;
  }
  return r;
}

Status SandboxController::Pause(const std::string& team_id, const std::string& id) {
  MOAT_ASSIGN_OR_RETURN(auto r, Get(team_id, id));
  if (r.state == "paused") return FailedPrecondition("sandbox \"" + id + "\" is already paused");
  MOAT_RETURN_IF_ERROR(agent_.Pause(r.id));
  MOAT_RETURN_IF_ERROR(store_.SetSandboxState(r.id, "paused"));
  LogInfo("api.sandbox_paused", {{"sandbox", r.id}});
  return Status::Ok();
}

Result<store::SandboxRecord> SandboxController::ResumeRecord(store::SandboxRecord r,
                                                             int64_t timeout_s) {
  QuotaGate::Ask ask{.sandboxes = 1, .vcpus = r.cpu_count, .memory_mib = r.memory_mb};
  MOAT_ASSIGN_OR_RETURN(auto admitted, quotas_.Admit(r.team_id, ask));
  MOAT_ASSIGN_OR_RETURN(auto sb, agent_.Resume(r.id));
  (void)sb;
  MOAT_RETURN_IF_ERROR(store_.SetSandboxState(r.id, "running"));
  r.state = "running";
  // A connect may carry no timeout (0): a resumed sandbox then gets the default 300 s.
  r.end_at_ms = UnixMillisNow() + (timeout_s > 0 ? timeout_s : 300) * 1000;
  MOAT_RETURN_IF_ERROR(store_.SetSandboxEndAt(r.id, r.end_at_ms));
  LogInfo("api.sandbox_resumed", {{"sandbox", r.id}});
  return r;
}

Result<store::SandboxRecord> SandboxController::Resume(const std::string& team_id,
                                                       const std::string& id, int64_t timeout_s) {
  MOAT_ASSIGN_OR_RETURN(auto r, Get(team_id, id));
  if (r.state != "paused") {
    return Status(ErrorCode::kAborted, "sandbox \"" + id + "\" is already running");
  }
  return ResumeRecord(r, timeout_s);
}

Result<std::vector<store::SandboxRecord>> SandboxController::Fork(const std::string& team_id,
                                                                  const std::string& id, int count,
                                                                  int64_t timeout_s) {
  MOAT_ASSIGN_OR_RETURN(auto parent, Get(team_id, id));
  if (parent.state != "running") {
    return FailedPrecondition("sandbox \"" + id + "\" is paused; resume it before forking");
  }
  QuotaGate::Ask ask{.sandboxes = count,
                     .vcpus = count * int64_t{parent.cpu_count},
                     .memory_mib = count * int64_t{parent.memory_mb},
                     .creates = count};
  MOAT_ASSIGN_OR_RETURN(auto admitted, quotas_.Admit(team_id, ask));
  MOAT_ASSIGN_OR_RETURN(auto children, agent_.Fork(parent.id, count));
  std::vector<store::SandboxRecord> out;
  for (const auto& child : children) {
    store::SandboxRecord r = parent;
    r.id = child->id();
    r.access_token = RandomToken("", 24);
    // A child's ports are as private as its parent's, behind a token of its own.
    if (!r.traffic_access_token.empty()) r.traffic_access_token = RandomToken("", 24);
    r.started_at_ms = UnixMillisNow();
    r.end_at_ms = r.started_at_ms + timeout_s * 1000;
    r.state = "running";
    if (Status s = store_.InsertSandbox(r); !s.ok()) {
      for (const auto& c : children) (void)agent_.Kill(c->id());
      return s.Annotate("recording fork " + r.id);
    }
    out.push_back(std::move(r));
  }
  LogInfo("api.sandbox_forked", {{"sandbox", parent.id}, {"children", count}});
  return out;
}

Result<SandboxController::Running> SandboxController::FindRunning(const std::string& id) {
  MOAT_ASSIGN_OR_RETURN(auto r, store_.GetSandbox(id));
  if (!r || r->state != "running") return NotFound("sandbox \"" + id + "\" is not running");
  auto sb = agent_.Get(id);
  if (!sb.ok()) return NotFound("sandbox \"" + id + "\" is not running");
  if (auto fault = (*sb)->Fault()) {
    // Recorded once, and only over `running` (a pause racing this keeps its state); the
    // sandbox stays (inspectable, killable) until it is killed or expires.
    (void)store_.ChangeSandboxState(id, "running", "error");
    return NotFound("sandbox \"" + id + "\" is in error state: " + *fault);
  }
  return Running{std::move(*r), *sb};
}

std::map<std::string, int64_t> SandboxController::CountByState() {
  std::map<std::string, int64_t> out{{"running", 0}, {"paused", 0}};
  auto all = store_.AllSandboxes();
  if (!all.ok()) return out;
  for (const auto& r : *all) ++out[r.state];
  return out;
}

void SandboxController::ReapOnce() {
  auto all = store_.AllSandboxes();
  if (!all.ok()) {
    LogError("api.reaper_store_failed", {{"error", all.status().ToString()}});
    return;
  }
  int64_t now = UnixMillisNow();
  for (const auto& r : *all) {
    const char* why = nullptr;
    if (r.state == "paused") continue;  // kept until deleted
    if (r.end_at_ms <= now && r.auto_pause) {
      if (Status s = agent_.Pause(r.id); s.ok()) {
        (void)store_.SetSandboxState(r.id, "paused");
        LogInfo("api.sandbox_paused", {{"sandbox", r.id}, {"reason", "timeout"}});
        continue;
      } else {
        LogError("api.auto_pause_failed", {{"sandbox", r.id}, {"error", s.ToString()}});
      }
    }
    if (r.end_at_ms <= now) {
      why = "timeout";
    } else if ((r.state == "running" || r.state == "error") && !agent_.Get(r.id).ok() &&
               !agent_.IsPaused(r.id)) {
      // The agent's monitor already released the VM. (A sandbox that the agent has just
      // paused, and whose record does not say so yet, is not gone: it must not be deleted.)
      why = "vmm exited";
    }
    if (why == nullptr) continue;
    if (Status s = Release(r.id, why); !s.ok()) {
      LogError("api.reap_failed", {{"sandbox", r.id}, {"error", s.ToString()}});
    }
  }
}

void SandboxController::ReaperLoop() {
  std::unique_lock lock(mu_);
  while (!stopping_) {
    cv_.wait_for(lock, options_.reap_interval);
    if (stopping_) break;
    lock.unlock();
    ReapOnce();
    lock.lock();
  }
}

}  // namespace moat::api
