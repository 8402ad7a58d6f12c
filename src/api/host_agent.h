// HostAgent: the boundary between the control plane and one host's sandboxes (shared/FLEET.md
// §1). The control plane (SandboxController, the routes) records, places and authorises; a host
// agent runs VMs. Everything that touches a VM, its guest channel, /proc or a network slot lives
// behind this interface, and the control plane sees only these plain values. Two
// implementations: in-process (host/in_process_host_agent.h: `moatd serve`, no hop) and remote
// (HTTP to `moatd agent`, docs/fleet.md).
//
// Every call names the sandbox by the id the control plane minted and recorded before calling.
// Errors: not_found for a sandbox the host does not have; already_exists for an id it already
// has; failed_precondition for a sandbox in the wrong state on the host; unavailable when the
// host cannot be reached (the caller answers 502/503 and changes no record).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace moat::api {

// What a host offers to place on it.
struct HostTemplateInfo {
  std::string name;  // "base"
  uint32_t vcpus = 0;
  uint32_t memory_mib = 0;
  uint32_t disk_mib = 0;  // the guest disk's size
};

// What a host holds now: the ids of its running sandboxes, paused sandboxes (snapshots on its
// disk), named snapshots, and those an earlier agent left that were cleaned up at its start.
struct HostInventory {
  std::vector<std::string> running;
  std::vector<std::string> paused;
  std::vector<std::string> snapshots;
  std::vector<std::string> cleaned;
};

struct HostSandboxStart {
  std::string id;           // minted by the control plane; the host takes it as it is
  std::string template_id;  // "base" or a named snapshot's id on this host
  std::map<std::string, std::string> env_vars;
  // The egress policy in its canonical JSON (net::EgressPolicy::ToJson); null: the default (with
  // `from_store`: the snapshot's own).
  nlohmann::json egress;
  // A cross-host fork's child: the key of the snapshot in the object store that `template_id`
  // names, laid out on this host first (docs/snapshots.md "Across hosts"). Empty: none.
  std::string from_store;
};

// One sample of what a running sandbox costs its host.
struct HostSandboxUsage {
  uint64_t pss_bytes = 0;
  uint64_t pss_file_bytes = 0;
  uint64_t rss_bytes = 0;
  uint64_t memory_total_bytes = 0;
  uint64_t disk_bytes = 0;
  uint64_t disk_total_bytes = 0;
  unsigned vcpus = 0;
  double cpu_seconds = 0;
  double vmm_age_seconds = 0;
  pid_t vmm_pid = 0;
  uint64_t vmm_start_time = 0;
  // The bytes the sandbox's network slot counted (its nftables counters, since the slot was set
  // up): sent out by the guest, and sent to it. Both 0 for a sandbox without a network.
  uint64_t net_egress_bytes = 0;
  uint64_t net_ingress_bytes = 0;
};

// How a host sees one of its sandboxes right now.
struct HostSandboxStatus {
  enum class Kind { kRunning, kPaused, kGone } kind = Kind::kGone;
  std::optional<std::string> fault;  // running, but its guest broke the protocol
};

// Where a sandbox's port is reached from the host (the port proxy dials it there).
struct HostPortEndpoint {
  std::string address;  // IPv4, host-local
  uint16_t port = 0;
};

// A custom template build for a host to run (docs/templates.md). `start` is E2B's
// TemplateBuildStartV2 as the control plane validated it, with `fromTemplate` resolved to what
// the host knows: "base" or the build id of a ready build on that host.
struct HostTemplateBuild {
  std::string build_id;
  std::string template_id;
  std::string team_id;  // whose uploads `files` are
  nlohmann::json start;
  uint32_t vcpus = 0;
  uint32_t memory_mib = 0;
  uint32_t min_free_disk_mib = 0;
  // filesHash -> where the uploaded archive is on the host.
  std::map<std::string, std::string> files;
};

struct HostBuildLog {
  int64_t unix_ms = 0;
  std::string level;
  std::string step;
  std::string message;
};

struct HostTemplateBuilt {
  uint32_t disk_mib = 0;
  // What sandboxes of it and builds from it need: the default user and workdir, start and
  // ready commands, the build context (kept in the build's record).
  nlohmann::json result;
};

class HostAgent {
 public:
  virtual ~HostAgent() = default;

  virtual const std::string& host_id() const = 0;
  virtual HostTemplateInfo base_template() = 0;
  virtual Result<HostInventory> Inventory() = 0;
  virtual Result<HostSandboxStatus> Probe(const std::string& id) = 0;
  // Warm clones of the base template ready to be handed out now (placement prefers hosts that
  // have one); 0 where the host keeps none.
  virtual int64_t WarmReady() { return 0; }

  // Starts a sandbox restored from the template (never a cold boot once it is baked).
  virtual Status Create(const HostSandboxStart& start) = 0;
  // Kills a running sandbox, or deletes a paused one's snapshot. not_found if it has neither.
  virtual Status Kill(const std::string& id) = 0;
  // `keep_memory` false keeps only the filesystem: the resume boots it (E2B's memory: false).
  virtual Status Pause(const std::string& id, bool keep_memory = true) = 0;
  // A failed resume keeps the snapshot (the sandbox stays paused). `from_store`: the key of the
  // sandbox's pause in the object store, to restore on this host although another one paused it
  // (docs/snapshots.md "Across hosts"); empty: the snapshot is on this host's disk.
  virtual Status Resume(const std::string& id, const std::string& from_store = "") = 0;
  // Children of a running sandbox, one per id, all or none.
  virtual Status Fork(const std::string& id, const std::vector<std::string>& child_ids) = 0;
  // For children on other hosts: a snapshot of the running sandbox (which runs on) uploaded to
  // the object store before this returns; its key, which is also a snapshot id here (creates
  // on other hosts name it with HostSandboxStart::from_store). failed_precondition where the
  // host has no object store.
  virtual Result<std::string> ExportFork(const std::string& id) {
    (void)id;
    return FailedPrecondition("this host has no snapshot store: forks stay on their host");
  }
  // A named snapshot of a running sandbox (which runs on): its id, usable as a template here.
  virtual Result<std::string> CreateSnapshot(const std::string& id, const std::string& name) = 0;
  virtual Status DeleteSnapshot(const std::string& snapshot_id) = 0;
  virtual Status SetEgress(const std::string& id, const nlohmann::json& egress) = 0;
  // not_found once it is not running.
  virtual Result<HostSandboxUsage> Usage(const std::string& id) = 0;
  // The last `max_bytes` of the sandbox's guest console log (kept in its history when it ends).
  // not_found for an unknown sandbox; failed_precondition where the host cannot tell.
  virtual Result<std::string> ConsoleLog(const std::string& id, size_t max_bytes) {
    (void)id;
    (void)max_bytes;
    return FailedPrecondition("this host does not serve console logs");
  }
  // failed_precondition for a sandbox without a network.
  virtual Result<HostPortEndpoint> ResolvePort(const std::string& id, uint16_t port) = 0;

  // Runs a template build to its end (minutes), its log handed to `log` as it goes; on failure
  // *failed_step names the step ("base", "1".."N", "finalize"). Afterwards the build id is a
  // template_id for Create on this host.
  virtual Result<HostTemplateBuilt> BuildTemplate(
      const HostTemplateBuild& build, const std::function<void(const HostBuildLog&)>& log,
      std::string* failed_step) {
    (void)build;
    (void)log;
    (void)failed_step;
    return FailedPrecondition("this host cannot build templates");
  }
  // Removes a build's files; not_found if the host has none.
  virtual Status DeleteTemplateBuild(const std::string& build_id) {
    (void)build_id;
    return FailedPrecondition("this host cannot build templates");
  }
};

}  // namespace moat::api
