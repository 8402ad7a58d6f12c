#include "api/sandbox_controller.h"

#include <algorithm>
#include <chrono>
#include <set>
#include <thread>

#include "api/auth.h"
#include "common/builtin_templates.h"
#include "common/cleanup.h"
#include "common/guarded.h"
#include "common/log.h"
#include "common/sandbox_id.h"

namespace moat::api {
namespace {

int64_t MillisSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t)
      .count();
}

// The storage record of a paused sandbox's snapshot: one per pause.
std::string PauseSnapshotId(const store::SandboxRecord& r, int64_t at_ms) {
  return r.id + "@" + std::to_string(at_ms);
}

// Ends the storage record of the sandbox's last pause (named in its last "paused" event).
void EndPauseStorage(store::Store& store, const std::string& sandbox_id) {
  auto events = store.SandboxEvents(sandbox_id);
  if (!events.ok()) return;
  for (auto it = events->rbegin(); it != events->rend(); ++it) {
    if (it->kind != "paused") continue;
    auto detail = nlohmann::json::parse(it->detail, nullptr, false);
    if (detail.is_object() && detail.contains("storageID") && detail["storageID"].is_string()) {
      (void)store.RecordSnapshotDeleted(detail["storageID"].get<std::string>(), UnixMillisNow());
    }
    return;
  }
}

// A snapshot starts to be billed: its size is the sandbox's memory (the memory file, written
// whole) — the disk layer is not counted (docs/usage.md).
void RecordSnapshotStorage(store::Store& store, const std::string& id,
                           const store::SandboxRecord& r, int64_t at_ms) {
  store::SnapshotStorageRecord s{.id = id,
                                 .team_id = r.team_id,
                                 .template_id = r.template_id,
                                 .bytes = int64_t{r.memory_mb} * 1024 * 1024,
                                 .created_at_ms = at_ms};
  if (Status st = store.RecordSnapshotStored(s); !st.ok()) {
    LogWarn("api.snapshot_usage_failed", {{"snapshot", id}, {"error", st.ToString()}});
  }
}

}  // namespace

int64_t UnixMillisNow() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Result<std::unique_ptr<SandboxController>> SandboxController::Start(HostAgent& single_host,
                                                                    store::Store& store,
                                                                    Metrics& metrics,
                                                                    ControllerOptions options) {
  auto hosts = std::make_unique<SingleHostDirectory>(single_host);
  MOAT_ASSIGN_OR_RETURN(auto c, Start(*hosts, store, metrics, options));
  c->owned_hosts_ = std::move(hosts);
  return c;
}

Result<std::unique_ptr<SandboxController>> SandboxController::Start(HostDirectory& hosts,
                                                                    store::Store& store,
                                                                    Metrics& metrics,
                                                                    ControllerOptions options) {
  std::unique_ptr<SandboxController> c(new SandboxController(hosts, store, metrics, options));
  if (options.templates) {
    c->templates_ = std::make_unique<TemplateService>(store, hosts, *options.templates);
  }
  if (options.reconcile_at_start) {
    MOAT_ASSIGN_OR_RETURN(HostAgent * host, hosts.Host(""));
    MOAT_RETURN_IF_ERROR(c->Reconcile(*host));
  }
  c->reaper_ = GuardedThread("reaper", [p = c.get()] { p->ReaperLoop(); });
  if (c->history_.enabled()) {
    c->usage_ = GuardedThread("usage", [p = c.get()] { p->UsageLoop(); });
  }
  return c;
}

Status SandboxController::Reconcile(HostAgent& host) {
  store::Store& store = store_;
  MOAT_ASSIGN_OR_RETURN(auto all, store.AllSandboxes());
  MOAT_ASSIGN_OR_RETURN(HostInventory inventory, host.Inventory());
  auto has = [](const std::vector<std::string>& ids, const std::string& id) {
    return std::find(ids.begin(), ids.end(), id) != ids.end();
  };
  const auto& cleaned = inventory.cleaned;
  for (const auto& r : all) {
    bool running = has(inventory.running, r.id);
    bool paused = !running && has(inventory.paused, r.id);
    // A record left mid-change by an earlier moatd becomes what its host holds now; one whose
    // create never returned to its client (creating), or that was being killed, goes.
    std::optional<SandboxState> now;
    switch (r.state) {
      case SandboxState::kRunning:
      case SandboxState::kError:
        if (running) now = r.state;
        break;
      case SandboxState::kPausing:
      case SandboxState::kResuming:
      case SandboxState::kPaused:
        if (running) now = SandboxState::kRunning;
        if (paused) now = SandboxState::kPaused;
        break;
      default: break;
    }
    if (now) {
      if (*now != r.state) {
        MOAT_ASSIGN_OR_RETURN(bool changed, store.TransitionSandbox(r.id, {r.state}, {*now}));
        // A pause or resume that completed on the host while no moatd ran: its event now.
        if (changed && *now == SandboxState::kPaused) {
          history_.Event(r.id, r.team_id, "paused", 0, R"({"reason":"found paused at start"})",
                         "paused", r.host_id);
        } else if (changed && r.state == SandboxState::kResuming) {
          history_.Event(r.id, r.team_id, "resumed", 0, "", "running", r.host_id);
        }
      }
      if (running) {
        LogInfo("api.sandbox_kept", {{"sandbox", r.id}, {"reason", "re-adopted after restart"}});
      }
      continue;
    }
    if (running || paused) (void)host.Kill(r.id);
    // Gone: its VMM died while no moatd ran (the agent's recovery released what was left), or
    // it was never re-adopted. Its record goes too.
    bool was_left = std::find(cleaned.begin(), cleaned.end(), r.id) != cleaned.end();
    MOAT_RETURN_IF_ERROR(store.DeleteSandbox(r.id));
    if (history_.enabled() && r.state == SandboxState::kPaused) EndPauseStorage(store, r.id);
    history_.Ended(r.id, r.team_id, store::kEndError, "not running after moatd restarted");
    LogInfo("api.sandbox_dropped",
            {{"sandbox", r.id},
             {"state", SandboxStateName(r.state)},
             {"reason", was_left ? "not running after restart: marked and cleaned"
                                 : "not running after restart"}});
  }
  // A sandbox the agent re-adopted that no record names (moatd stopped between making it and
  // recording it: a create or fork in flight) belongs to no team and no one could reach it.
  std::set<std::string> recorded;
  for (const auto& r : all) recorded.insert(r.id);
  for (const auto& id : inventory.running) {
    if (recorded.count(id) != 0) continue;
    (void)host.Kill(id);
    LogWarn("api.sandbox_killed", {{"sandbox", id}, {"reason", "re-adopted without a record"}});
  }
  MOAT_ASSIGN_OR_RETURN(auto snapshots, store.AllSnapshots());
  std::set<std::string> on_disk(inventory.snapshots.begin(), inventory.snapshots.end());
  for (const auto& s : snapshots) {
    if (on_disk.count(s.id) != 0) continue;
    MOAT_RETURN_IF_ERROR(store.DeleteSnapshot(s.id));
    if (history_.enabled()) (void)store.RecordSnapshotDeleted(s.id, UnixMillisNow());
    LogInfo("api.snapshot_dropped", {{"snapshot", s.id}, {"reason", "no files"}});
  }
  return Status::Ok();
}

SandboxController::~SandboxController() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (reaper_.joinable()) reaper_.join();
  if (usage_.joinable()) usage_.join();
}

Result<store::SandboxRecord> SandboxController::Create(const store::TeamRecord& team,
                                                       const CreateSandboxAction& a) {
  auto started = std::chrono::steady_clock::now();
  MOAT_ASSIGN_OR_RETURN(TemplateChoice choice, ResolveTemplate(team.id, a.template_id));
  const std::string& template_id = choice.host_name;
  // Held until the sandbox is recorded (or its start failed): see team_quotas.h.
  HostTemplateInfo tmpl = hosts_.base_template();
  tmpl.vcpus = choice.vcpus;
  tmpl.memory_mib = choice.memory_mib;
  tmpl.disk_mib = choice.disk_mib;
  auto ask = QuotaGate::CreateAsk(a, tmpl.vcpus, static_cast<int64_t>(tmpl.memory_mib));
  MOAT_ASSIGN_OR_RETURN(auto admitted, quotas_.Admit(team.id, ask));
  Reservation need{tmpl.vcpus, tmpl.memory_mib, template_id == tmpl.name};
  // A named snapshot lives on the disk of the host that took it, a custom template's build on
  // the host that built it: a create from either goes there.
  std::string snapshot_host = choice.host_id;
  // A start that fails is released and tried once more on another host (if there is one).
  std::string failed_host;
  Status failure;
  for (int attempt = 0; attempt < (snapshot_host.empty() ? 2 : 1); ++attempt) {
    auto placed =
        snapshot_host.empty() ? hosts_.Place(need, failed_host) : PlaceOn(snapshot_host, need);
    // A named snapshot whose host cannot take the sandbox (lost, draining, full) restores on
    // another host from the object store, once uploaded (docs/snapshots.md "Across hosts").
    std::string from_store;
    if (!placed.ok() && choice.snapshot) {
      auto stored = store_.GetStoredSnapshot(template_id);
      if (stored.ok() && *stored && (*stored)->state == "uploaded") {
        placed = hosts_.Place(need, snapshot_host);
        from_store = template_id;
      }
    }
    if (!placed.ok()) return attempt == 0 ? placed.status() : failure;
    if (attempt > 0 && placed->host_id == failed_host) {
      hosts_.Release(placed->host_id, need);
      return failure;
    }
    store::SandboxRecord r;
    // Minted and recorded (creating) before the host starts it: a control plane that dies in
    // between leaves a record its successor resolves, never a VM nobody knows of.
    r.id = NewSandboxId();
    r.state = SandboxState::kCreating;
    r.host_id = placed->host_id;
    r.team_id = team.id;
    r.template_id = choice.record_id;
    r.access_token = RandomToken("", 24);
    if (!a.allow_public_traffic) r.traffic_access_token = RandomToken("", 24);
    r.metadata = a.metadata;
    r.env_vars = a.env_vars;
    r.started_at_ms = UnixMillisNow();
    r.end_at_ms = r.started_at_ms + a.timeout_s * 1000;
    r.auto_pause = a.auto_pause;
    r.options = a.options;
    if (!choice.default_user.empty()) r.options.default_user = choice.default_user;
    r.cpu_count = tmpl.vcpus;
    r.memory_mb = tmpl.memory_mib;
    r.disk_size_mb = tmpl.disk_mib;
    if (Status recorded = store_.InsertSandbox(r); !recorded.ok()) {
      hosts_.Release(placed->host_id, need);
      return recorded.Annotate("recording sandbox " + r.id);
    }
    history_.Recorded(r, choice.snapshot ? "snapshot" : "",
                      choice.snapshot ? choice.record_id : "");
    HostSandboxStart start{.id = r.id,
                           .template_id = template_id,
                           .env_vars = a.env_vars,
                           .egress = a.egress.ToJson(),
                           .from_store = from_store};
    if (Status s = placed->host->Create(start); !s.ok()) {
      Abandon(r, "start failed");
      failure = s;
      failed_host = placed->host_id;
      // A refusal that any host would repeat is final.
      if (s.code() == ErrorCode::kInvalidArgument || s.code() == ErrorCode::kNotFound) return s;
      LogWarn("api.sandbox_start_failed",
              {{"sandbox", r.id}, {"host", placed->host_id}, {"error", s.ToString()}});
      continue;
    }
    MOAT_ASSIGN_OR_RETURN(bool started_ok,
                          Transition(r.id, SandboxState::kCreating, SandboxState::kRunning));
    if (!started_ok) {
      // Killed while it started: the kill (which gave the reservation back) found no VM yet;
      // the one that started is released here.
      (void)placed->host->Kill(r.id);
      (void)store_.DeleteSandbox(r.id);
      return NotFound("sandbox \"" + r.id + "\" was killed while it was being created");
    }
    r.state = SandboxState::kRunning;
    if (choice.custom) (void)store_.RecordTemplateSpawn(choice.record_id, UnixMillisNow());
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    history_.Started(r, static_cast<int64_t>(secs * 1000));
    metrics_.create_latency().Observe(secs);
    LogInfo("api.sandbox_created", {{"sandbox", r.id},
                                    {"team", team.id},
                                    {"host", r.host_id},
                                    {"template", r.template_id},
                                    {"timeout_s", a.timeout_s},
                                    {"ms", static_cast<int64_t>(secs * 1000)}});
    return r;
  }
  return failure;
}

Result<HostAgent*> SandboxController::HostOf(const store::SandboxRecord& r) {
  return hosts_.Host(r.host_id);
}

Result<HostSandboxStatus> SandboxController::ProbeOnHost(const store::SandboxRecord& r) {
  MOAT_ASSIGN_OR_RETURN(HostAgent * host, HostOf(r));
  return host->Probe(r.id);
}

Reservation SandboxController::ReservationOf(const store::SandboxRecord& r) {
  return {r.cpu_count, r.memory_mb};
}

Result<SandboxController::TemplateChoice> SandboxController::ResolveTemplate(
    const std::string& team_id, const std::string& template_id) {
  HostTemplateInfo base = hosts_.base_template();
  TemplateChoice c{.record_id = template_id,
                   .host_name = template_id,
                   .vcpus = base.vcpus,
                   .memory_mib = base.memory_mib,
                   .disk_mib = base.disk_mib};
  if (template_id == base.name) return c;
  if (template_id == kCodeInterpreterTemplate) {
    // Built in: every host whose guest dir has its image (the host says if it has not).
    c.vcpus = kCodeInterpreterVcpus;
    c.memory_mib = kCodeInterpreterMemoryMib;
    c.disk_mib = kCodeInterpreterDiskMib;
    return c;
  }
  MOAT_ASSIGN_OR_RETURN(auto by_id, store_.GetSnapshot(template_id));
  std::optional<store::SnapshotRecord> snap;
  if (by_id && by_id->team_id == team_id) snap = by_id;
  if (!snap && templates_) {
    MOAT_ASSIGN_OR_RETURN(auto custom, templates_->Resolve(team_id, template_id));
    if (custom) {
      c.record_id = custom->tmpl.id;
      c.host_name = custom->build.id;
      c.host_id = custom->build.host_id;
      c.vcpus = custom->build.cpu_count;
      c.memory_mib = custom->build.memory_mb;
      c.disk_mib = custom->build.disk_size_mb;
      c.default_user = custom->default_user;
      c.custom = true;
      return c;
    }
  }
  if (!snap) {
    MOAT_ASSIGN_OR_RETURN(snap, store_.SnapshotByName(team_id, template_id));
  }
  if (!snap) return NotFound("template '" + template_id + "' not found");
  c.record_id = c.host_name = snap->id;
  c.host_id = snap->host_id;
  c.snapshot = true;
  return c;
}

Result<store::SnapshotRecord> SandboxController::CreateSnapshot(const std::string& team_id,
                                                                const std::string& sandbox_id,
                                                                const CreateSnapshotAction& a) {
  MOAT_ASSIGN_OR_RETURN(auto r, Get(team_id, sandbox_id));
  if (r.state != SandboxState::kRunning) {
    return FailedPrecondition("sandbox \"" + sandbox_id + "\" is " +
                              std::string(SandboxStateName(r.state)) +
                              "; resume it before taking a snapshot");
  }
  auto started = std::chrono::steady_clock::now();
  MOAT_ASSIGN_OR_RETURN(HostAgent * host, HostOf(r));
  MOAT_ASSIGN_OR_RETURN(std::string snapshot_id, host->CreateSnapshot(r.id, a.name));
  store::SnapshotRecord snap{.id = snapshot_id,
                             .team_id = team_id,
                             .sandbox_id = r.id,
                             .name = a.name,
                             .created_at_ms = UnixMillisNow(),
                             .host_id = r.host_id};
  if (Status s = store_.InsertSnapshot(snap); !s.ok()) {
    (void)host->DeleteSnapshot(snap.id);
    return s.Annotate("recording snapshot " + snap.id);
  }
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                                  started)
                .count();
  LogInfo("api.snapshot_created",
          {{"snapshot", snap.id}, {"sandbox", r.id}, {"team", team_id}, {"ms", ms}});
  history_.Event(r.id, team_id, "snapshot", ms,
                 nlohmann::json{{"snapshotID", snap.id}, {"name", a.name}}.dump());
  if (history_.enabled()) RecordSnapshotStorage(store_, snap.id, r, snap.created_at_ms);
  return snap;
}

Result<std::string> SandboxController::SnapshotStorage(const std::string& snapshot_id) {
  MOAT_ASSIGN_OR_RETURN(auto stored, store_.GetStoredSnapshot(snapshot_id));
  if (!stored) return std::string("local");
  return stored->state;
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
  // On the host that took it; a copy in the object store goes too. A snapshot whose host is gone
  // can still be deleted when the store has it (its host's disk copy goes when it registers
  // again: reconciliation drops snapshots without a record).
  auto host = hosts_.Host(snap->host_id);
  if (host.ok()) {
    Status removed = (*host)->DeleteSnapshot(snap->id);
    if (!removed.ok() && removed.code() != ErrorCode::kNotFound) return removed;
  } else {
    MOAT_ASSIGN_OR_RETURN(auto stored, store_.GetStoredSnapshot(snap->id));
    if (!stored) return host.status();
  }
  MOAT_RETURN_IF_ERROR(store_.DeleteSnapshot(snap->id));
  (void)store_.MarkStoredSnapshotsDeleting("named", snap->id);
  LogInfo("api.snapshot_deleted", {{"snapshot", snap->id}, {"team", team_id}});
  if (history_.enabled()) (void)store_.RecordSnapshotDeleted(snap->id, UnixMillisNow());
  return Status::Ok();
}

Result<store::SandboxRecord> SandboxController::Get(const std::string& team_id,
                                                    const std::string& id) {
  MOAT_ASSIGN_OR_RETURN(auto r, store_.GetSandbox(id));
  // Killing, killed and lost sandboxes are gone for clients (api/lifecycle.h WireState).
  if (!r || r->team_id != team_id || !WireState(r->state)) {
    return NotFound("sandbox \"" + id + "\" not found");
  }
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
  if (r.state != SandboxState::kRunning || (start_s && now_s + kSlackS < *start_s) ||
      (end_s && now_s - kSlackS > *end_s)) {
    return out;
  }
  MOAT_ASSIGN_OR_RETURN(HostAgent * host, HostOf(r));
  auto usage = host->Usage(id);
  if (!usage.ok()) {
    // Paused, killed or its VMM just went away: no sample.
    if (usage.status().code() == ErrorCode::kNotFound) return out;
    LogWarn("api.usage_failed", {{"sandbox", id}, {"error", usage.status().ToString()}});
    return usage.status();
  }
  MetricSample m{.unix_ms = UnixMillisNow(), .usage = *usage};
  {
    std::lock_guard lock(cpu_mu_);
    // Since the previous sample of this VMM (intervals on its own boot-time clock), or since
    // the VMM started (the first sample, or after a resume started a new one).
    const HostSandboxUsage& u = m.usage;
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
    if (!same_vmm || it->second.age_seconds < u.vmm_age_seconds) {
      last_cpu_[id] = {u.vmm_pid, u.vmm_start_time, u.vmm_age_seconds, u.cpu_seconds};
    }
  }
  out.push_back(m);
  return out;
}

Result<store::SandboxPage> SandboxController::List(const store::SandboxFilter& filter) {
  if (!filter.states.empty()) return store_.ListSandboxes(filter);
  store::SandboxFilter visible = filter;  // any state a client can see
  for (SandboxState s : kAllSandboxStates) {
    if (WireState(s)) visible.states.push_back(s);
  }
  return store_.ListSandboxes(visible);
}

Result<Placement> SandboxController::PlaceOn(const std::string& host_id, const Reservation& need) {
  MOAT_ASSIGN_OR_RETURN(HostAgent * host, hosts_.Host(host_id));
  MOAT_RETURN_IF_ERROR(hosts_.Reserve(host_id, need));
  return Placement{host_id, host};
}

Result<bool> SandboxController::Transition(const std::string& id, SandboxState from,
                                           SandboxState to) {
  return store_.TransitionSandbox(id, {from}, {to});
}

void SandboxController::Abandon(const store::SandboxRecord& r, const char* why) {
  auto killing = Transition(r.id, r.state, SandboxState::kKilling);
  bool mine = killing.ok() && *killing;
  if (!mine) {
    LogWarn("api.sandbox_abandon_lost_race",
            {{"sandbox", r.id}, {"state", SandboxStateName(r.state)}, {"reason", why}});
  }
  if (auto host = HostOf(r); host.ok()) (void)(*host)->Kill(r.id);
  // Its reservation is given back by whoever moved it to killing.
  if (mine && HoldsResources(r.state)) hosts_.Release(r.host_id, ReservationOf(r));
  if (Status s = store_.DeleteSandbox(r.id); !s.ok()) {
    LogError("api.sandbox_abandon_failed", {{"sandbox", r.id}, {"error", s.ToString()}});
  }
  LogInfo("api.sandbox_released", {{"sandbox", r.id}, {"reason", why}});
  history_.Ended(r.id, r.team_id, store::kEndError, why);
}

Status SandboxController::Release(const store::SandboxRecord& r, const char* why) {
  const std::string& id = r.id;
  // Its last network reading and its console, while it still runs and before it is `killing`
  // (a kill in flight must stay short: the reaper retries one left killing for 30 s).
  if (r.state == SandboxState::kRunning || r.state == SandboxState::kError) {
    if (auto host = HostOf(r); host.ok()) KeepConsole(**host, r);
  }
  // Killing first: from then on every route answers 404 for it at once, while the VM and its
  // network slot are released (tens of milliseconds, more under load). A pause or resume in
  // flight loses its own compare-and-set and leaves the rest to this.
  if (r.state != SandboxState::kKilling) {
    MOAT_ASSIGN_OR_RETURN(bool mine, Transition(id, r.state, SandboxState::kKilling));
    if (!mine) {
      MOAT_ASSIGN_OR_RETURN(auto now, store_.GetSandbox(id));
      if (!now) return NotFound("sandbox \"" + id + "\" not found");
      if (now->state == SandboxState::kKilling) return Status::Ok();  // someone else's kill
      return Status(ErrorCode::kAborted, "sandbox \"" + id + "\" changed state (now " +
                                             std::string(SandboxStateName(now->state)) +
                                             "); try again");
    }
  }
  Status killed = Status::Ok();
  if (r.state != SandboxState::kLost) {
    auto host = HostOf(r);
    if (!host.ok() && r.state == SandboxState::kPaused) {
      // A paused sandbox of a lost host: nothing runs there, and what its disk held goes when
      // its agent registers again; its copy in the object store goes below.
      LogInfo("api.paused_on_lost_host", {{"sandbox", id}, {"host", r.host_id}});
    } else {
      MOAT_RETURN_IF_ERROR(host.status());
      killed = (*host)->Kill(id);
    }
  } else if (auto host = HostOf(r); host.ok()) {
    // A lost sandbox's host was cut off or fenced: asked once, in case it is back; when its agent
    // registers again it kills every VM whose record is not live there anyway
    // (host/host_membership.h), so the record goes whatever the answer.
    if (Status s = (*host)->Kill(id); !s.ok()) {
      LogDebug("api.lost_sandbox_kill", {{"sandbox", id}, {"error", s.ToString()}});
    }
  }
  {
    // After the agent let go of it: a sample racing with the kill cannot put it back.
    std::lock_guard lock(cpu_mu_);
    last_cpu_.erase(id);
  }
  if (!killed.ok() && killed.code() != ErrorCode::kNotFound) {
    // The record stays `killing`: the reaper tries again.
    LogError("api.sandbox_release_failed", {{"sandbox", id}, {"error", killed.ToString()}});
    return killed;
  }
  // Killed: its reservation goes back (a paused or lost one holds none), and the record goes
  // (history keeps killed sandboxes later).
  if (HoldsResources(r.state)) hosts_.Release(r.host_id, ReservationOf(r));
  MOAT_RETURN_IF_ERROR(store_.DeleteSandbox(id));
  // Its pauses in the object store, if any, are released (their chunks go with the next sweep).
  if (auto marked = store_.MarkStoredSnapshotsDeleting("paused", id); !marked.ok()) {
    LogWarn("api.stored_snapshot_release_failed",
            {{"sandbox", id}, {"error", marked.status().ToString()}});
  }
  LogInfo("api.sandbox_released", {{"sandbox", id}, {"reason", why}});
  std::string_view w(why);
  if (r.state == SandboxState::kLost) {
    history_.Ended(id, r.team_id, store::kEndHostLost, "its host stopped heartbeating");
  } else if (w == "timeout") {
    history_.Ended(id, r.team_id, store::kEndTimeout);
  } else if (w == "vmm exited") {
    history_.Ended(id, r.team_id, store::kEndError, "the VMM exited");
  } else if (r.state == SandboxState::kError && w != "killed") {
    history_.Ended(id, r.team_id, store::kEndError, "its guest broke the protocol");
  } else {
    history_.Ended(id, r.team_id, store::kEndKilled);
  }
  if (r.state == SandboxState::kPaused && history_.enabled()) EndPauseStorage(store_, id);
  return Status::Ok();
}

Status SandboxController::Kill(const std::string& team_id, const std::string& id) {
  MOAT_ASSIGN_OR_RETURN(auto r, Get(team_id, id));
  return Release(r, "killed");
}

Status SandboxController::UpdateNetwork(const std::string& team_id, const std::string& id,
                                        const nlohmann::json& egress) {
  MOAT_ASSIGN_OR_RETURN(auto r, Get(team_id, id));
  if (r.state != SandboxState::kRunning) {
    return FailedPrecondition("sandbox \"" + id + "\" is " +
                              std::string(SandboxStateName(r.state)) +
                              ": resume it to change its network");
  }
  MOAT_ASSIGN_OR_RETURN(HostAgent * host, HostOf(r));
  MOAT_RETURN_IF_ERROR(host->SetEgress(r.id, egress));
  history_.Event(r.id, r.team_id, "network", 0,
                 egress.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  return Status::Ok();
}

Result<SandboxEndpoint> SandboxController::ResolvePort(const std::string& id, uint16_t port) {
  MOAT_ASSIGN_OR_RETURN(store::SandboxRecord r, FindRunning(id));
  MOAT_ASSIGN_OR_RETURN(HostAgent * host, HostOf(r));
  auto endpoint = host->ResolvePort(id, port);
  if (!endpoint.ok()) {
    if (endpoint.status().code() == ErrorCode::kNotFound) {
      return NotFound("sandbox \"" + id + "\" is not running");
    }
    return endpoint.status();
  }
  return SandboxEndpoint{endpoint->address, endpoint->port, r.traffic_access_token,
                         MaskedHost(r.options.mask_request_host, port), r.team_id};
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
  if (r.state == SandboxState::kPaused) {
    if (resumed != nullptr) *resumed = true;
    return ResumeRecord(r, timeout_s);
  }
  if (r.state != SandboxState::kRunning && r.state != SandboxState::kError) {
    return Status(ErrorCode::kAborted, "sandbox \"" + id + "\" is " +
                                           std::string(SandboxStateName(r.state)) +
                                           "; try again when it is done");
  }
  MOAT_ASSIGN_OR_RETURN(HostSandboxStatus on_host, ProbeOnHost(r));
  if (on_host.kind != HostSandboxStatus::Kind::kRunning) {
    return NotFound("sandbox \"" + id + "\" is not running");
  }
  int64_t end = UnixMillisNow() + timeout_s * 1000;
  if (end > r.end_at_ms) {
    MOAT_RETURN_IF_ERROR(store_.SetSandboxEndAt(r.id, end));
    r.end_at_ms = end;
  }
  return r;
}

Status SandboxController::Pause(const std::string& team_id, const std::string& id,
                                bool keep_memory) {
  MOAT_ASSIGN_OR_RETURN(auto r, Get(team_id, id));
  if (r.state == SandboxState::kPaused) {
    return FailedPrecondition("sandbox \"" + id + "\" is already paused");
  }
  MOAT_RETURN_IF_ERROR(PauseRecord(r, keep_memory));
  LogInfo("api.sandbox_paused", {{"sandbox", r.id}, {"memory", keep_memory}});
  return Status::Ok();
}

Status SandboxController::WakeForTraffic(const std::string& id, std::string_view traffic_token) {
  constexpr auto kPoll = std::chrono::milliseconds(50);
  constexpr size_t kMaxRemembered = 65536;
  {
    // A sandbox's options never change: one created without auto-resume costs one read, ever.
    std::lock_guard lock(sleepless_mu_);
    if (sleepless_.count(id) != 0) return Status::Ok();
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  for (;;) {
    MOAT_ASSIGN_OR_RETURN(auto found, store_.GetSandbox(id));
    if (!found) return Status::Ok();
    if (!found->options.auto_resume) {
      std::lock_guard lock(sleepless_mu_);
      if (sleepless_.size() >= kMaxRemembered) sleepless_.clear();
      sleepless_.insert(id);
      return Status::Ok();
    }
    // Private ports wake only for whoever may reach them (the proxy answers the others).
    const std::string& token = found->traffic_access_token;
    if (!token.empty() && !SecretsEqual(traffic_token, token)) return Status::Ok();
    switch (found->state) {
      case SandboxState::kPaused: {
        auto resumed = ResumeRecord(*found, 0);
        if (resumed.ok()) {
          LogInfo("api.sandbox_resumed", {{"sandbox", id}, {"reason", "traffic"}});
          return Status::Ok();
        }
        // Another request resumes it (aborted), or holds the quota or room it needs while it
        // does: wait for that one; anything else fails this request.
        MOAT_ASSIGN_OR_RETURN(auto now, store_.GetSandbox(id));
        if (!now ||
            (now->state != SandboxState::kResuming && now->state != SandboxState::kRunning)) {
          return resumed.status();
        }
        break;
      }
      case SandboxState::kPausing:
      case SandboxState::kResuming: break;  // wait for the change in flight
      default: return Status::Ok();         // running, or nothing to wake
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      return DeadlineExceeded("sandbox \"" + id + "\" did not resume within 120 s");
    }
    std::this_thread::sleep_for(kPoll);
  }
}

Status SandboxController::PauseRecord(const store::SandboxRecord& r, bool keep_memory) {
  auto started = std::chrono::steady_clock::now();
  MOAT_ASSIGN_OR_RETURN(bool mine,
                        Transition(r.id, SandboxState::kRunning, SandboxState::kPausing));
  if (!mine) {
    return FailedPrecondition("sandbox \"" + r.id + "\" is not running (it is " +
                              std::string(SandboxStateName(r.state)) + " or changing)");
  }
  MOAT_ASSIGN_OR_RETURN(HostAgent * host, HostOf(r));
  MeterNet(*host, r);  // its slot goes with the pause
  if (Status paused = host->Pause(r.id, keep_memory); !paused.ok()) {
    // A failed pause leaves the VM running as it was (HostAgent::Pause).
    auto back = Transition(r.id, SandboxState::kPausing, SandboxState::kRunning);
    if (!back.ok() || !*back) (void)host->Kill(r.id);  // killed meanwhile
    return paused;
  }
  MOAT_ASSIGN_OR_RETURN(bool done, Transition(r.id, SandboxState::kPausing, SandboxState::kPaused));
  if (!done) {
    // Killed while it paused: the kill found no VM; its snapshot goes here.
    (void)host->Kill(r.id);
    return NotFound("sandbox \"" + r.id + "\" was killed while it was being paused");
  }
  // A paused sandbox holds only disk on its host.
  hosts_.Release(r.host_id, ReservationOf(r));
  if (history_.enabled()) {
    int64_t at = UnixMillisNow();
    std::string storage_id = PauseSnapshotId(r, at);
    RecordSnapshotStorage(store_, storage_id, r, at);
    history_.Event(r.id, r.team_id, "paused", MillisSince(started),
                   nlohmann::json{{"memory", keep_memory},
                                  {"reason", CurrentActor() != nullptr ? "request" : "timeout"},
                                  {"storageID", storage_id}}
                       .dump(),
                   "paused", r.host_id);
  }
  return Status::Ok();
}

Result<store::SandboxRecord> SandboxController::ResumeRecord(store::SandboxRecord r,
                                                             int64_t timeout_s) {
  auto started = std::chrono::steady_clock::now();
  QuotaGate::Ask ask{.sandboxes = 1, .vcpus = r.cpu_count, .memory_mib = r.memory_mb};
  MOAT_ASSIGN_OR_RETURN(auto admitted, quotas_.Admit(r.team_id, ask));
  // It resumes on the host that holds its snapshot, which must have room for it again; where
  // that host is lost, draining or full, on another one that restores the snapshot from the
  // object store (docs/snapshots.md "Across hosts") — if it was uploaded.
  const std::string home_id = r.host_id;
  auto home = HostOf(r);
  Status reserved = home.ok() ? hosts_.Reserve(home_id, ReservationOf(r)) : home.status();
  HostAgent* host = reserved.ok() ? *home : nullptr;
  std::string from_store;
  if (!reserved.ok()) {
    MOAT_ASSIGN_OR_RETURN(auto stored, store_.LatestStoredSnapshot("paused", r.id));
    if (!stored) return reserved;  // no object store: it waits for its host
    if (stored->state != "uploaded") {
      return Unavailable("sandbox \"" + r.id + "\" cannot resume: its host " + home_id +
                         " cannot take it (" + reserved.message() +
                         ") and its snapshot is local-only there (the upload to the object "
                         "store has not completed)");
    }
    MOAT_ASSIGN_OR_RETURN(Placement p, hosts_.Place(ReservationOf(r), home_id));
    host = p.host;
    r.host_id = p.host_id;
    from_store = stored->key;
  }
  // One conditional update: two resumes of one paused sandbox never both run it (a move to
  // another host is a new placement: a new generation).
  auto mine = store_.TransitionSandbox(
      r.id, {SandboxState::kPaused, home_id},
      {SandboxState::kResuming, r.host_id, /*bump_generation=*/r.host_id != home_id});
  if (!mine.ok() || !*mine) {
    hosts_.Release(r.host_id, ReservationOf(r));
    if (!mine.ok()) return mine.status();
    return Status(ErrorCode::kAborted, "sandbox \"" + r.id + "\" is already being resumed");
  }
  if (!from_store.empty()) {
    // The pause chosen before the compare-and-set must still be its latest: a resume and a new
    // pause may have come in between (the record was paused on its home host again).
    auto latest = store_.LatestStoredSnapshot("paused", r.id);
    if (!latest.ok() || !*latest || (*latest)->key != from_store ||
        (*latest)->state != "uploaded") {
      auto back = store_.TransitionSandbox(r.id, {SandboxState::kResuming, r.host_id},
                                           {SandboxState::kPaused, home_id});
      hosts_.Release(r.host_id, ReservationOf(r));
      if (!back.ok()) return back.status();
      return Status(ErrorCode::kAborted,
                    "sandbox \"" + r.id + "\" was paused again meanwhile; try the resume again");
    }
  }
  if (Status resumed = host->Resume(r.id, from_store); !resumed.ok()) {
    // The snapshot is kept (HostAgent::Resume): it stays paused, on its own host.
    auto back = store_.TransitionSandbox(r.id, {SandboxState::kResuming, r.host_id},
                                         {SandboxState::kPaused, home_id});
    if (back.ok() && *back) {
      hosts_.Release(r.host_id, ReservationOf(r));
    } else {
      (void)host->Kill(r.id);  // killed meanwhile (the kill gave the reservation back)
    }
    return resumed;
  }
  // The snapshot it resumed from is spent: its objects in the store go (the sweep takes the
  // chunks no other snapshot shares), and a copy its old host still holds.
  (void)store_.MarkStoredSnapshotsDeleting("paused", r.id);
  if (r.host_id != home_id) {
    LogInfo("api.sandbox_moved", {{"sandbox", r.id}, {"from", home_id}, {"to", r.host_id}});
    if (home.ok()) (void)(*home)->Kill(r.id);
  }
  MOAT_ASSIGN_OR_RETURN(bool done,
                        Transition(r.id, SandboxState::kResuming, SandboxState::kRunning));
  if (!done) {
    (void)host->Kill(r.id);
    return NotFound("sandbox \"" + r.id + "\" was killed while it was being resumed");
  }
  r.state = SandboxState::kRunning;
  // A connect may carry no timeout (0): a resumed sandbox then gets the default 300 s.
  r.end_at_ms = UnixMillisNow() + (timeout_s > 0 ? timeout_s : 300) * 1000;
  MOAT_RETURN_IF_ERROR(store_.SetSandboxEndAt(r.id, r.end_at_ms));
  LogInfo("api.sandbox_resumed", {{"sandbox", r.id}});
  if (history_.enabled()) {
    EndPauseStorage(store_, r.id);
    history_.Event(r.id, r.team_id, "resumed", MillisSince(started), "", "running", r.host_id);
  }
  return r;
}

Result<store::SandboxRecord> SandboxController::Resume(const std::string& team_id,
                                                       const std::string& id, int64_t timeout_s) {
  MOAT_ASSIGN_OR_RETURN(auto r, Get(team_id, id));
  if (r.state != SandboxState::kPaused) {
    return Status(ErrorCode::kAborted, "sandbox \"" + id + "\" is already " +
                                           std::string(WireState(r.state).value_or("running")));
  }
  return ResumeRecord(r, timeout_s);
}

Result<std::vector<store::SandboxRecord>> SandboxController::Fork(const std::string& team_id,
                                                                  const std::string& id, int count,
                                                                  int64_t timeout_s) {
  auto fork_started = std::chrono::steady_clock::now();
  MOAT_ASSIGN_OR_RETURN(auto parent, Get(team_id, id));
  if (parent.state != SandboxState::kRunning) {
    return FailedPrecondition("sandbox \"" + id + "\" is " +
                              std::string(SandboxStateName(parent.state)) +
                              "; resume it before forking");
  }
  QuotaGate::Ask ask{.sandboxes = count,
                     .vcpus = count * int64_t{parent.cpu_count},
                     .memory_mib = count * int64_t{parent.memory_mb},
                     .creates = count};
  MOAT_ASSIGN_OR_RETURN(auto admitted, quotas_.Admit(team_id, ask));
  // The children run on their parent's host (they share its snapshot), which must have room.
  MOAT_ASSIGN_OR_RETURN(HostAgent * host, HostOf(parent));
  Reservation each = ReservationOf(parent);
  if (Status here = hosts_.Reserve(parent.host_id, {each.vcpus * count, each.memory_mib * count});
      !here.ok()) {
    // Its host cannot take them (draining, full): on other hosts, through the object store.
    auto elsewhere = ForkElsewhere(parent, *host, count, timeout_s);
    if (!elsewhere.ok() && elsewhere.status().code() == ErrorCode::kFailedPrecondition) {
      return here;  // no object store: the children need the parent's host
    }
    if (!elsewhere.ok()) return elsewhere.status();
    int64_t fork_ms = MillisSince(fork_started);
    nlohmann::json children = nlohmann::json::array();
    for (const auto& r : *elsewhere) {
      history_.Started(r, fork_ms);
      children.push_back(r.id);
    }
    history_.Event(parent.id, parent.team_id, "forked", fork_ms,
                   nlohmann::json{{"children", children}, {"acrossHosts", true}}.dump());
    return elsewhere;
  }
  // The children are recorded (creating) before the host starts them, as a create's sandbox;
  // each one gives its share back when it is abandoned or killed.
  std::vector<store::SandboxRecord> out;
  std::vector<std::string> ids;
  auto abandon_all = [&](const char* why) {
    for (const auto& r : out) Abandon(r, why);
    int64_t unrecorded = count - static_cast<int64_t>(out.size());
    if (unrecorded > 0) {
      hosts_.Release(parent.host_id, {each.vcpus * unrecorded, each.memory_mib * unrecorded});
    }
  };
  for (int i = 0; i < count; ++i) {
    store::SandboxRecord r = parent;
    r.id = NewSandboxId();
    r.access_token = RandomToken("", 24);
    // A child's ports are as private as its parent's, behind a token of its own.
    if (!r.traffic_access_token.empty()) r.traffic_access_token = RandomToken("", 24);
    r.started_at_ms = UnixMillisNow();
    r.end_at_ms = r.started_at_ms + timeout_s * 1000;
    r.state = SandboxState::kCreating;
    if (Status s = store_.InsertSandbox(r); !s.ok()) {
      abandon_all("recording a fork failed");
      return s.Annotate("recording fork " + r.id);
    }
    history_.Recorded(r, "fork", parent.id);
    ids.push_back(r.id);
    out.push_back(std::move(r));
  }
  if (Status forked = host->Fork(parent.id, ids); !forked.ok()) {
    abandon_all("fork failed");
    return forked;
  }
  for (auto& r : out) {
    auto started = Transition(r.id, SandboxState::kCreating, SandboxState::kRunning);
    if (!started.ok() || !*started) {
      (void)host->Kill(r.id);  // killed while it started (or the store failed: not recorded)
      (void)store_.DeleteSandbox(r.id);
      continue;
    }
    r.state = SandboxState::kRunning;
  }
  std::erase_if(out,
                [](const store::SandboxRecord& r) { return r.state != SandboxState::kRunning; });
  LogInfo("api.sandbox_forked", {{"sandbox", parent.id}, {"children", count}});
  int64_t fork_ms = MillisSince(fork_started);
  nlohmann::json children = nlohmann::json::array();
  for (const auto& r : out) {
    history_.Started(r, fork_ms);
    children.push_back(r.id);
  }
  history_.Event(parent.id, parent.team_id, "forked", fork_ms,
                 nlohmann::json{{"children", children}}.dump());
  return out;
}

Result<std::vector<store::SandboxRecord>> SandboxController::ForkElsewhere(
    const store::SandboxRecord& parent, HostAgent& host, int count, int64_t timeout_s) {
  // Room for every child first (nothing is uploaded for a fork that cannot be placed).
  Reservation each = ReservationOf(parent);
  std::vector<Placement> placements;
  auto release_unused = [&](size_t from) {
    for (size_t i = from; i < placements.size(); ++i) hosts_.Release(placements[i].host_id, each);
  };
  for (int i = 0; i < count; ++i) {
    auto placed = hosts_.Place(each, parent.host_id);
    if (!placed.ok()) {
      release_unused(0);
      return placed.status().Annotate("placing a child of " + parent.id);
    }
    placements.push_back(*placed);
  }
  auto exported = host.ExportFork(parent.id);
  if (!exported.ok()) {
    release_unused(0);
    return exported.status();
  }
  const std::string key = *exported;
  // The children's own disks and RAM are theirs once they run: the snapshot goes then (its
  // objects after the store's grace period, while memfs pages the rest in).
  Cleanup release_snapshot([&] {
    (void)store_.MarkStoredSnapshotsDeleting("named", key);
    (void)host.DeleteSnapshot(key);
  });
  std::vector<store::SandboxRecord> out;
  auto abandon_all = [&](const char* why) {
    for (const auto& r : out) Abandon(r, why);
  };
  for (int i = 0; i < count; ++i) {
    const Placement* placed = &placements[static_cast<size_t>(i)];
    store::SandboxRecord r = parent;
    r.id = NewSandboxId();
    r.access_token = RandomToken("", 24);
    if (!r.traffic_access_token.empty()) r.traffic_access_token = RandomToken("", 24);
    r.host_id = placed->host_id;
    r.started_at_ms = UnixMillisNow();
    r.end_at_ms = r.started_at_ms + timeout_s * 1000;
    r.state = SandboxState::kCreating;
    if (Status s = store_.InsertSandbox(r); !s.ok()) {
      release_unused(static_cast<size_t>(i));
      abandon_all("recording a fork failed");
      return s.Annotate("recording fork " + r.id);
    }
    history_.Recorded(r, "fork", parent.id);
    HostSandboxStart start{.id = r.id, .template_id = key, .from_store = key};
    if (Status s = placed->host->Create(start); !s.ok()) {
      release_unused(static_cast<size_t>(i) + 1);
      Abandon(r, "fork failed");
      abandon_all("fork failed");
      return s.Annotate("starting fork " + r.id + " on host " + placed->host_id);
    }
    auto started = Transition(r.id, SandboxState::kCreating, SandboxState::kRunning);
    if (!started.ok() || !*started) {
      (void)placed->host->Kill(r.id);
      (void)store_.DeleteSandbox(r.id);
      continue;
    }
    r.state = SandboxState::kRunning;
    out.push_back(std::move(r));
  }
  LogInfo("api.sandbox_forked",
          {{"sandbox", parent.id}, {"children", count}, {"across_hosts", true}});
  return out;
}

Result<store::SandboxRecord> SandboxController::FindRunning(const std::string& id) {
  MOAT_ASSIGN_OR_RETURN(auto r, store_.GetSandbox(id));
  if (!r || r->state != SandboxState::kRunning) {
    return NotFound("sandbox \"" + id + "\" is not running");
  }
  return std::move(*r);
}

void SandboxController::ReportFault(const std::string& id, const std::string& fault) {
  // Recorded once, and only over `running`; the sandbox stays (inspectable, killable) until it
  // is killed or expires.
  auto changed = Transition(id, SandboxState::kRunning, SandboxState::kError);
  if (changed.ok() && *changed) {
    LogWarn("api.sandbox_error", {{"sandbox", id}, {"fault", fault}});
    if (auto r = store_.GetSandbox(id); r.ok() && *r) {
      history_.Event(id, (*r)->team_id, "fault", 0,
                     nlohmann::json{{"fault", fault}}.dump(
                         -1, ' ', false, nlohmann::json::error_handler_t::replace),
                     "error");
    }
  }
}

StoreGauges SandboxController::Gauges() {
  StoreGauges out;
  out.sandboxes_by_state = {{"running", 0}, {"paused", 0}};
  if (auto hosts = store_.ListHosts(); hosts.ok()) {
    for (const auto& h : *hosts) {
      StoreGauges::Host& g = out.hosts[h.id];
      g.record = h;
      g.sandboxes_by_state = {{"running", 0}, {"paused", 0}};
    }
  }
  if (auto stored = store_.ListStoredSnapshots({.limit = 1000000}); stored.ok()) {
    for (const char* state : {"local-only", "uploading", "uploaded", "deleting"}) {
      out.stored_snapshots[state] = {0, 0};
    }
    for (const auto& s : *stored) {
      auto& [count, bytes] = out.stored_snapshots[s.state];
      ++count;
      bytes += s.bytes;
    }
  }
  auto all = store_.AllSandboxes();
  if (!all.ok()) return out;
  for (const auto& r : *all) {
    std::string state(SandboxStateName(r.state));
    ++out.sandboxes_by_state[state];
    if (!r.host_id.empty()) ++out.hosts[r.host_id].sandboxes_by_state[state];
  }
  return out;
}

void SandboxController::ReapOnce() {
  // One reaper fleet-wide: the replica that leads (all of them share the store) makes the pass.
  auto leader = store_.Lead("reaper");
  if (!leader.ok()) {
    LogError("api.reaper_store_failed", {{"error", leader.status().ToString()}});
    return;
  }
  if (!*leader) return;
  auto all = store_.AllSandboxes();
  if (!all.ok()) {
    LogError("api.reaper_store_failed", {{"error", all.status().ToString()}});
    return;
  }
  int64_t now = UnixMillisNow();
  // Forget killing records that are gone or changed.
  std::set<std::string> killing_now;
  for (const auto& r : *all) {
    if (r.state == SandboxState::kKilling) killing_now.insert(r.id);
  }
  std::erase_if(killing_seen_, [&](const auto& kv) { return killing_now.count(kv.first) == 0; });
  for (const auto& r : *all) {
    const char* why = nullptr;
    switch (r.state) {
      case SandboxState::kPaused:    // kept until deleted
      case SandboxState::kCreating:  // a request in flight owns these
      case SandboxState::kPausing:
      case SandboxState::kResuming:
      case SandboxState::kKilled: continue;
      case SandboxState::kKilling: {
        // A kill that failed half-way: tried again once it has been killing for a while (a
        // kill in flight — this replica's or another's — is killing too, for milliseconds).
        auto [it, fresh] = killing_seen_.try_emplace(r.id, std::chrono::steady_clock::now());
        if (fresh || std::chrono::steady_clock::now() - it->second < kKillingGrace) continue;
        killing_seen_.erase(it);
        why = "left killing";
        break;
      }
      case SandboxState::kLost:  // its host is gone: the record goes
        why = "lost";
        break;
      case SandboxState::kRunning:
      case SandboxState::kError:
        if (r.end_at_ms <= now && r.auto_pause && r.state == SandboxState::kRunning) {
          Status s = PauseRecord(r, r.options.auto_pause_memory);
          if (!s.ok() && !r.options.auto_pause_memory) {
            // The guest could not flush its disk: a memory pause loses nothing either, and
            // beats the kill that would follow.
            LogWarn("api.auto_pause_filesystem_failed",
                    {{"sandbox", r.id}, {"error", s.ToString()}});
            s = PauseRecord(r, /*keep_memory=*/true);
          }
          if (s.ok()) {
            LogInfo("api.sandbox_paused", {{"sandbox", r.id}, {"reason", "timeout"}});
            continue;
          } else {
            LogError("api.auto_pause_failed", {{"sandbox", r.id}, {"error", s.ToString()}});
          }
        }
        if (r.end_at_ms <= now) {
          why = "timeout";
        } else if (auto on_host = ProbeOnHost(r);
                   on_host.ok() && on_host->kind == HostSandboxStatus::Kind::kGone) {
          // Its host already released the VM (the VMM exited).
          why = "vmm exited";
        }
        break;
    }
    if (why == nullptr) continue;
    if (Status s = Release(r, why); !s.ok()) {
      LogError("api.reap_failed", {{"sandbox", r.id}, {"error", s.ToString()}});
    }
  }
}

int SandboxController::ReclaimStaleCreating(std::chrono::milliseconds older_than) {
  auto stale = store_.StaleCreating(UnixMillisNow() - older_than.count());
  if (!stale.ok()) {
    LogError("api.janitor_store_failed", {{"error", stale.status().ToString()}});
    return 0;
  }
  for (const auto& r : *stale) Abandon(r, "janitor: its create never finished");
  return static_cast<int>(stale->size());
}

void SandboxController::EndAtShutdown() {
  if (!history_.enabled()) return;
  auto all = store_.AllSandboxes();
  if (!all.ok()) return;
  for (const auto& r : *all) {
    if (!HoldsResources(r.state)) continue;
    if (auto host = HostOf(r); host.ok()) KeepConsole(**host, r);
    history_.Ended(r.id, r.team_id, store::kEndKilled, "moatd stopped");
  }
}

void SandboxController::MeterNet(HostAgent& host, const store::SandboxRecord& r) {
  if (!history_.enabled()) return;
  auto usage = host.Usage(r.id);
  if (!usage.ok()) return;  // gone meanwhile: the reaper settles it
  int64_t now = UnixMillisNow();
  // The VMM's start time tells slots apart: a resume or a fork starts a new VMM with a new slot,
  // while a restarted moatd re-adopts the same VMM (and slot).
  Status s = store_.RecordNetUsage(
      r.id, now - now % 3600000, static_cast<int64_t>(usage->net_egress_bytes),
      static_cast<int64_t>(usage->net_ingress_bytes), static_cast<int64_t>(usage->vmm_start_time));
  if (!s.ok() && s.code() != ErrorCode::kNotFound) {
    LogWarn("api.usage_meter_failed", {{"sandbox", r.id}, {"error", s.ToString()}});
  }
}

void SandboxController::KeepConsole(HostAgent& host, const store::SandboxRecord& r) {
  if (!history_.enabled()) return;
  // The network counters' last reading: what the slot counted since the last meter pass.
  if (r.state == SandboxState::kRunning || r.state == SandboxState::kError) MeterNet(host, r);
  auto text = host.ConsoleLog(r.id, HistoryLog::kConsoleKeep);
  if (text.ok()) {
    history_.Console(r.id, std::move(*text));
  } else if (text.status().code() != ErrorCode::kNotFound) {
    LogDebug("api.console_unavailable", {{"sandbox", r.id}, {"error", text.status().ToString()}});
  }
}

Result<std::string> SandboxController::ConsoleLog(const std::string& team_id,
                                                  const std::string& id) {
  MOAT_ASSIGN_OR_RETURN(auto r, Get(team_id, id));
  MOAT_ASSIGN_OR_RETURN(HostAgent * host, HostOf(r));
  return host->ConsoleLog(r.id, HistoryLog::kConsoleKeep);
}

void SandboxController::MeterOnce(bool prune) {
  auto leader = store_.Lead("usage");
  if (!leader.ok() || !*leader) return;
  auto all = store_.AllSandboxes();
  if (!all.ok()) {
    LogError("api.usage_store_failed", {{"error", all.status().ToString()}});
    return;
  }
  HistoryLog::counters().meter_passes.fetch_add(1);
  int64_t now = UnixMillisNow();
  for (const auto& r : *all) {
    if (r.state != SandboxState::kRunning && r.state != SandboxState::kError) continue;
    auto host = HostOf(r);
    if (host.ok()) MeterNet(**host, r);
  }
  if (prune) {
    int64_t before =
        now -
        std::chrono::duration_cast<std::chrono::milliseconds>(options_.history_retention).count();
    auto pruned = store_.PruneHistory(before, now);
    if (pruned.ok()) {
      HistoryLog::counters().pruned.fetch_add(pruned->histories + pruned->events +
                                              pruned->commands + pruned->audit + pruned->net +
                                              pruned->snapshots + pruned->sessions);
    }
    if (!pruned.ok()) {
      LogError("api.history_prune_failed", {{"error", pruned.status().ToString()}});
    } else if (pruned->histories + pruned->audit + pruned->events + pruned->commands > 0) {
      LogInfo("api.history_pruned", {{"histories", pruned->histories},
                                     {"events", pruned->events},
                                     {"commands", pruned->commands},
                                     {"audit", pruned->audit}});
    }
  }
}

void SandboxController::UsageLoop() {
  std::unique_lock lock(mu_);
  auto next_prune = std::chrono::steady_clock::now();
  while (!stopping_) {
    cv_.wait_for(lock, options_.usage_interval);
    if (stopping_) break;
    lock.unlock();
    bool prune = std::chrono::steady_clock::now() >= next_prune;
    if (prune) next_prune = std::chrono::steady_clock::now() + std::chrono::hours(1);
    MeterOnce(prune);
    lock.lock();
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
