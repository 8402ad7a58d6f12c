// What the agent keeps on disk about each sandbox (DATA_DIR/sandboxes/<local id>/state.json), so
// that a restarted agent can re-adopt a running VMM or clean up after a dead one. Written when the
// VMM has started (pid, start time, jail, VM name: enough to clean up), then in full once the
// sandbox is ready (also what it was restored from, its identity and its network slot: enough to
// adopt).
//
// Names: "id" is the sandbox's public id, "vmName" is "moat-<local id>", and the directory is
// named by the local id (sandbox.h). They agree — id == local id — except for a claimed warm
// clone, whose public id was given to it after it started; there is no key for the local id
// (the directory and "vmName" both name it), so files of older agents, where "id" was always the
// directory's name, read the same.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>

#include "agent/guest_identity.h"
#include "agent/snapshot.h"
#include "common/status.h"

namespace moat::agent {

struct SandboxState {
  std::string id;  // public
  std::string template_name;
  int64_t created_unix_ms = 0;
  pid_t vmm_pid = 0;
  // /proc/<pid>/stat field 22: tells our VMM apart from a later process that reuses the pid.
  uint64_t vmm_start_time = 0;
  uint32_t jail_id = 0;  // uid/gid of the jailed VMM; 0 when not jailed
  std::string accel;     // "kvm" | "tcg"
  std::string vm_name;   // the VmSpec name, "moat-<local id>" (names the cgroup)

  // Set in the full record, written once the sandbox is ready. Files of older agents have none
  // of these keys: their sandboxes are cleaned up, never adopted.
  bool ready = false;
  std::optional<SnapshotManifest> origin;  // what it was restored from (pause, fork, snapshot)
  std::optional<GuestIdentity> identity;
  // Its network slot's namespace ("moat-10.200.0.20"), which names the slot's record in the
  // network state dir; empty for a sandbox without a NIC.
  std::string netns;

  // Can a new agent take this sandbox over (if its VMM still runs)?
  bool adoptable() const { return ready && origin.has_value() && identity.has_value(); }
};

std::string SerializeSandboxState(const SandboxState& s);
// Rejects unknown keys and wrong types, naming them.
Result<SandboxState> ParseSandboxState(const std::string& text);

}  // namespace moat::agent
