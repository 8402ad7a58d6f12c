// Agent: the per-host owner of every sandbox. Creates and kills them, notices VMMs that died and
// releases what they held, and on start cleans up whatever a previous agent left behind, using
// the state each sandbox keeps on disk (VMM processes die with the agent that spawned them:
// they are started with a parent-death signal, so nothing runs unsupervised).
#pragma once

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "agent/sandbox.h"
#include "common/status.h"
#include "vmm/jail.h"
#include "vmm/vmm_driver.h"

namespace moat::agent {

struct AgentConfig {
  std::string data_dir;  // DATA_DIR (sandboxes/ lives under it)
  TemplateSpec base;     // the `base` template's artifacts and resources
  vmm::Accel accel = vmm::Accel::kTcg;
  bool jail = true;
  uint32_t jail_id_first = 900000;
  uint32_t jail_id_count = 65536;
  std::chrono::milliseconds ready_timeout{60000};
  std::chrono::milliseconds monitor_interval{250};
};

struct RecoveryReport {
  std::vector<std::string> cleaned;  // sandboxes of an earlier agent: everything was released
};

class Agent {
 public:
  // Validates the config, creates DATA_DIR/sandboxes, cleans up what a previous agent left, and
  // starts the monitor that releases sandboxes whose VMM died.
  static Result<std::unique_ptr<Agent>> Start(AgentConfig config);
  // Stops the monitor and kills every sandbox.
  ~Agent();

  Result<std::shared_ptr<Sandbox>> Create(const std::string& template_name,
                                          const GuestIdentity& identity);
  Result<std::shared_ptr<Sandbox>> Get(const std::string& id);
  std::vector<std::shared_ptr<Sandbox>> List();
  Status Kill(const std::string& id);
  void KillAll();

  const RecoveryReport& recovery() const { return recovery_; }
  const AgentConfig& config() const { return config_; }

 private:
  explicit Agent(AgentConfig config);
  void Recover();
  void MonitorLoop();

  AgentConfig config_;
  std::unique_ptr<vmm::JailIdAllocator> jail_ids_;
  SandboxEnv env_;
  RecoveryReport recovery_;

  std::mutex mu_;
  std::map<std::string, std::shared_ptr<Sandbox>> sandboxes_;

  std::mutex monitor_mu_;
  std::condition_variable monitor_cv_;
  bool stopping_ = false;
  std::thread monitor_;
};

}  // namespace moat::agent
