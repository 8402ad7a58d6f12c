// What the agent keeps on disk about each sandbox (DATA_DIR/sandboxes/<id>/state.json), so that a
// restarted agent can re-adopt a running VMM or clean up after a dead one.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "common/status.h"

namespace moat::agent {

struct SandboxState {
  std::string id;
  std::string template_name;
  int64_t created_unix_ms = 0;
  pid_t vmm_pid = 0;
  // /proc/<pid>/stat field 22: tells our VMM apart from a later process that reuses the pid.
  uint64_t vmm_start_time = 0;
  uint32_t jail_id = 0;  // uid/gid of the jailed VMM; 0 when not jailed
  std::string accel;     // "kvm" | "tcg"
  std::string vm_name;   // the VmSpec name (names the cgroup)
};

std::string SerializeSandboxState(const SandboxState& s);
// Rejects unknown keys and wrong types, naming them.
Result<SandboxState> ParseSandboxState(const std::string& text);

// The start time of a process (clock ticks since boot), or NotFound if it is gone.
Result<uint64_t> ProcessStartTime(pid_t pid);

}  // namespace moat::agent
