#include "agent/agent.h"

#include <dirent.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>

#include "agent/sandbox_id.h"
#include "agent/sandbox_state.h"
#include "common/child_process.h"
#include "common/fs.h"
#include "common/log.h"
#include "vmm/cgroup.h"

namespace moat::agent {

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
  agent->env_ = {.sandboxes_dir = c.data_dir + "/sandboxes",
                 .accel = c.accel,
                 .jail_ids = agent->jail_ids_.get(),
                 .ready_timeout = c.ready_timeout};
  agent->Recover();
  agent->monitor_ = std::thread([a = agent.get()] { a->MonitorLoop(); });
  return agent;
}

Agent::~Agent() {
  {
    std::lock_guard lock(monitor_mu_);
    stopping_ = true;
  }
  monitor_cv_.notify_all();
  if (monitor_.joinable()) monitor_.join();
  KillAll();
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

void RemoveLeftoverCgroup(const std::string& vm_name) {
  auto layout = vmm::DetectCgroupLayout();
  if (!layout.ok()) return;
  for (const auto& dir : vmm::CgroupDirsFor(*layout, "", vm_name)) {
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

}  // namespace

void Agent::Recover() {
  std::string root = env_.sandboxes_dir;
  DIR* d = ::opendir(root.c_str());
  if (d == nullptr) return;
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  ::closedir(d);
  for (const auto& name : names) {
    std::string dir = root + "/" + name;
    auto text = ReadFile(dir + "/state.json");
    if (text.ok()) {
      auto state = ParseSandboxState(*text);
      if (state.ok()) {
        KillLeftoverVmm(*state);
        if (!state->vm_name.empty()) RemoveLeftoverCgroup(state->vm_name);
      } else {
        LogWarn("agent.bad_state", {{"dir", dir}, {"error", state.status().ToString()}});
      }
    }
    Status s = RemoveTree(dir);
    if (!s.ok()) {
      LogError("agent.recover_cleanup_failed", {{"dir", dir}, {"error", s.ToString()}});
      continue;
    }
    recovery_.cleaned.push_back(name);
    LogInfo("agent.cleaned_leftover", {{"sandbox", name}});
  }
}

Result<std::shared_ptr<Sandbox>> Agent::Create(const std::string& template_name,
                                               const GuestIdentity& identity) {
  if (template_name != config_.base.name) {
    return NotFound("template \"" + template_name + "\" not found");
  }
  std::string id = NewSandboxId();
  MOAT_ASSIGN_OR_RETURN(std::unique_ptr<Sandbox> sb,
                        Sandbox::Boot(env_, config_.base, id, identity));
  std::shared_ptr<Sandbox> shared = std::move(sb);
  std::lock_guard lock(mu_);
  sandboxes_[id] = shared;
  return shared;
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
    if (it == sandboxes_.end()) return NotFound("sandbox \"" + id + "\" not found");
    sb = std::move(it->second);
    sandboxes_.erase(it);
  }
  sb->Kill();
  return Status::Ok();
}

void Agent::KillAll() {
  std::map<std::string, std::shared_ptr<Sandbox>> all;
  {
    std::lock_guard lock(mu_);
    all.swap(sandboxes_);
  }
  for (auto& [id, sb] : all) sb->Kill();
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
      LogWarn("sandbox.vmm_exited", {{"sandbox", sb->id()}});
      sb->Kill();
    }
    lock.lock();
  }
}

}  // namespace moat::agent
