// The agent configuration e2e tests boot their sandboxes with: the base guest from the build
// dir, a small VM, TCG (these machines' /dev/kvm cannot run a stock guest).
#pragma once

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <string>

#include "agent/agent.h"
#include "common/fs.h"
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

// A suite's data dir under /tmp, readable by the jailed VMMs (they run as other users and must
// reach their files through it). Owned by the caller; null (and a test failure) if it cannot be
// made.
inline std::string* NewSuiteDir(const std::string& prefix) {
  auto dir = MakeTempDir("/tmp", prefix);
  EXPECT_TRUE(dir.ok()) << dir.status().ToString();
  if (!dir.ok()) return nullptr;
  ::chmod(dir->c_str(), 0755);
  return new std::string(*dir);
}

}  // namespace moat::test_support
