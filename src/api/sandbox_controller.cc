#include "api/sandbox_controller.h"

#include <sys/stat.h>

#include "api/auth.h"
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
  for (const auto& r : all) {
    if (r.state == "paused" && agent.IsPaused(r.id)) continue;  // persisted: resumable
    if (!agent.Get(r.id).ok()) {
      // The agent re-adopts no VMM across restarts yet: its recovery released this one.
      MOAT_RETURN_IF_ERROR(store.DeleteSandbox(r.id));
      LogInfo("api.sandbox_dropped", {{"sandbox", r.id}, {"reason", "not running after restart"}});
    }
  }
  c->reaper_ = std::thread([p = c.get()] { p->ReaperLoop(); });
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
  agent::GuestIdentity identity;
  identity.env = a.env_vars;
  MOAT_ASSIGN_OR_RETURN(auto sb, agent_.Create(a.template_id, identity));
  const auto& tmpl = agent_.config().base;
  store::SandboxRecord r;
  r.id = sb->id();
  r.team_id = team.id;
  r.template_id = a.template_id;
  r.access_token = RandomToken("", 24);
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

Result<store::SandboxRecord> SandboxController::Get(const std::string& team_id,
                                                    const std::string& id) {
  MOAT_ASSIGN_OR_RETURN(auto r, store_.GetSandbox(id));
  if (!r || r->team_id != team_id) return NotFound("sandbox \"" + id + "\" not found");
  return *r;
}

Result<store::SandboxPage> SandboxController::List(const store::SandboxFilter& filter) {
  return store_.ListSandboxes(filter);
}

Status SandboxController::Release(const std::string& id, const char* why) {
  Status killed = agent_.Kill(id);
  if (!killed.ok() && killed.code() != ErrorCode::kNotFound) return killed;
  MOAT_RETURN_IF_ERROR(store_.DeleteSandbox(id));
  LogInfo("api.sandbox_released", {{"sandbox", id}, {"reason", why}});
  return Status::Ok();
}

Status SandboxController::Kill(const std::string& team_id, const std::string& id) {
  MOAT_ASSIGN_OR_RETURN(auto r, Get(team_id, id));
  return Release(r.id, "killed");
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
  MOAT_ASSIGN_OR_RETURN(auto children, agent_.Fork(parent.id, count));
  std::vector<store::SandboxRecord> out;
  for (const auto& child : children) {
    store::SandboxRecord r = parent;
    r.id = child->id();
    r.access_token = RandomToken("", 24);
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
    } else if (r.state == "running" && !agent_.Get(r.id).ok() && !agent_.IsPaused(r.id)) {
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
