// The agent configuration e2e tests boot their sandboxes with: the base guest from the build
// dir, a small VM, TCG (these machines' /dev/kvm cannot run a stock guest).
#pragma once

#include <chrono>
#include <string>

#include "agent/agent.h"
#include "support/test_util.h"

namespace moat::test_support {

inline agent::AgentConfig E2eAgentConfig(const std::string& data_dir) {
  std::string guest = BuildDir() + "/guest";
  agent::AgentConfig c;
  c.data_dir = data_dir;
  c.base.kernel_path = guest + "/vmlinux";
  c.base.rootfs_path = guest + "/rootfs.ext4";
  c.base.vcpus = 1;
  c.base.memory_mib = 256;
  c.accel = vmm::Accel::kTcg;
  c.ready_timeout = std::chrono::seconds(60);
  c.monitor_interval = std::chrono::milliseconds(50);
  return c;
}

}  // namespace moat::test_support
