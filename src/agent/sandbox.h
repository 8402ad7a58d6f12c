// Sandbox: the host-side owner of one microVM — its VMM process (through a VmmDriver), its guest
// channel, its directory DATA_DIR/sandboxes/<local id>/ and its disk overlay. Kill() (or the
// destructor) releases all of them; a sandbox whose VMM died is released the same way.
//
// Two names: its public id (id(): what clients, the agent's map and the logs know it by) and
// its local id (local_id(): what names its directory, its VM "moat-<local id>" and so its
// cgroup, fixed when the VMM starts). They are the same, except for a warm clone: it is
// started ahead of time under a local id of its own, and Claim() gives it the public id of the
// create that takes it.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "agent/guest_identity.h"
#include "agent/sandbox_state.h"
#include "agent/snapshot.h"
#include "agent/snapshot_replication.h"
#include "channel/guest_client.h"
#include "common/egress_policy.h"
#include "common/status.h"
#include "net/network_slot.h"
#include "net/slot_pool.h"
#include "vmm/jail.h"
#include "vmm/vmm_driver.h"

namespace moat::agent {

// A template's boot artifacts and fixed resources.
struct TemplateSpec {
  std::string name = "base";
  std::string kernel_path;
  std::string rootfs_path;  // raw ext4 image, read-only; each sandbox writes to its own overlay
  unsigned vcpus = 1;
  uint64_t memory_mib = 512;
  // Custom templates (agent/template_builder.h): started in the bake before the snapshot, so
  // that every sandbox has it running; the bake waits until `ready_cmd` exits 0 (every second,
  // at most ready_timeout), both run as defaults.user in defaults.workdir with start_env.
  std::string start_cmd;
  std::string ready_cmd;
  std::vector<std::pair<std::string, std::string>> start_env;
  std::chrono::seconds ready_timeout{600};
  // The default user and workdir its sandboxes have (empty: the guest's).
  GuestIdentity defaults;
  // Set up by the bake, as root, before the start command: files written (path -> content), and
  // the root filesystem grown to its disk (resize2fs, online) when the disk was grown.
  std::map<std::string, std::string> bake_files;
  bool resize_root_fs = false;
  // Its rootfs is never written again (a custom template's artifact): the bake links it rather
  // than copying it.
  bool rootfs_immutable = false;
};

// What every sandbox of this agent shares.
struct SandboxEnv {
  std::string sandboxes_dir;  // DATA_DIR/sandboxes
  vmm::Accel accel = vmm::Accel::kTcg;
  vmm::JailIdAllocator* jail_ids = nullptr;  // null: VMMs run unjailed (tests of the jail only)
  std::chrono::milliseconds ready_timeout{60000};
  // Network slots (src/net/): null means sandboxes have no NIC. With them, every VM gets a NIC
  // on its own slot, and templates are baked with one (the device state includes it).
  net::SlotPool* slots = nullptr;
  // AgentConfig::memory_file_snapshots.
  bool memory_file_snapshots = true;
  // AgentConfig::replication (null: snapshots stay on this host).
  SnapshotReplication* replication = nullptr;
  // AgentConfig::low_priority_refills: a pooled clone's VM starts at the background CPU weight.
  bool low_priority_pool = false;
};

// Paths inside a sandbox's directory.
struct SandboxPaths {
  explicit SandboxPaths(const std::string& dir);
  std::string dir, disk, memory, qmp_socket, guest_socket, console_log, vmm_log, state, jail_root;
};

// What a running sandbox costs the host (E2B's getMetrics reports it).
struct SandboxUsage {
  uint64_t pss_bytes = 0;       // the VMM's proportional set size (shared pages split)
  uint64_t pss_file_bytes = 0;  // of which file-backed: its share of the memory file it maps
  uint64_t rss_bytes = 0;
  uint64_t memory_total_bytes = 0;  // guest RAM
  uint64_t disk_bytes = 0;          // host bytes allocated to the overlay
  uint64_t disk_total_bytes = 0;    // the guest disk's size
  unsigned vcpus = 0;
  double cpu_seconds = 0;      // CPU time of the VMM process (vCPUs and device emulation) so far
  double vmm_age_seconds = 0;  // since the VMM process started (a resume starts a new one)
  pid_t vmm_pid = 0;
  uint64_t vmm_start_time = 0;  // the process's start time (clock ticks after boot)
  // The slot's byte counters since it was set up (net::SlotCounters), as read at most a second
  // ago (Sandbox::kNetCountersMaxAge): 0 without a network, or when they could not be read (a
  // sample never fails for them).
  uint64_t net_egress_bytes = 0;
  uint64_t net_ingress_bytes = 0;
};

// The guest's `identity` op for `identity`: the clock now and fresh entropy with it (empty
// fields keep what the guest has).
Result<channel::proto::IdentityOp> IdentityOpFor(const GuestIdentity& identity);

// Runs what a user's first calls run, as the guest's default user: `/bin/bash -l -c true` (the
// SDK's and the CLI's commands), a listing of the home directory (the file API), and with
// `python3`, `python3 -c pass` where the image has python3. In a warm clone (Sandbox::WarmUp)
// it has the VMM's TCG translate those paths; in a template's bake it leaves what they read in
// the guest's page cache, which every clone then starts with. docs/performance.md measures both.
Status WarmGuestPaths(channel::GuestClient& guest, bool python3);

class Sandbox {
 public:
  ~Sandbox();
  Sandbox(const Sandbox&) = delete;
  Sandbox& operator=(const Sandbox&) = delete;

  // Cold-boots a new sandbox `id` (its public and local id alike) from `tmpl` and waits until
  // moat-guest answers, then sends the identity. On failure everything created so far is
  // released; a directory of that name that exists already is AlreadyExists and left alone.
  // With `disk_from` (a filesystem-only snapshot's overlay over tmpl.rootfs_path), the sandbox
  // boots from a copy of that disk instead of a fresh overlay: a filesystem-only resume.
  static Result<std::unique_ptr<Sandbox>> Boot(const SandboxEnv& env, const TemplateSpec& tmpl,
                                               const std::string& id, const GuestIdentity& identity,
                                               const net::EgressPolicy& egress = {},
                                               const std::string& disk_from = "");

  // Creates a sandbox `id` (its public and local id alike; a directory of that name that exists
  // already is AlreadyExists) by restoring a snapshot (a template's, a paused sandbox's or a
  // named one): no cold boot. Memory is mapped copy-on-write from the snapshot's memory file (a
  // template's, or a sandbox snapshot's linked into the sandbox's dir), or, from a snapshot written
  // before memory files, loaded into fresh private memory from the stream; the disk is a copy of
  // the snapshot's overlay over its base. Then the guest gets its identity (clock, entropy, env,
  // user, workdir) and, with a NIC, its network on a slot of its own with `egress` (absent: the
  // policy the snapshot recorded). `pooled`: a warm clone for Agent's pool, not a sandbox yet —
  // state.json never says ready (an agent restarting finds it and cleans it up rather than adopting
  // it) until Claim().
  static Result<std::unique_ptr<Sandbox>> Restore(
      const SandboxEnv& env, const std::string& snapshot_dir, const SnapshotManifest& snapshot,
      const std::string& id, const GuestIdentity& identity,
      const std::optional<net::EgressPolicy>& egress = std::nullopt, bool pooled = false);

  // A pooled clone: WarmGuestPaths without python3, so that this VMM's TCG has translated the
  // paths of a user's first command and file call (the login shell, fork, exec, the loader)
  // before they are needed.
  Status WarmUp();
  // Makes a pooled clone a sandbox: checks that it still runs, applies `egress` when it is not
  // what the slot has, gives the guest its identity (clock, fresh entropy, env, user,
  // workdir), takes `id` as its public id (its local id stays), restarts its clock of creation
  // and records it as ready. On failure the caller kills it. Call it before the sandbox is
  // shared: id() reads the public id without a lock.
  Status Claim(const std::string& id, const GuestIdentity& identity,
               const net::EgressPolicy& egress);

  // Takes over a sandbox that an earlier agent left running, as its state.json in
  // DATA_DIR/sandboxes/<local_id> records it (state.adoptable(); the public id is state.id,
  // the VM "moat-<local_id>"): the VMM process — if it still is the one that started at the
  // recorded time —, its cgroup, jail id and jail, its directory, and `slot` (the sandbox's network
  // slot, adopted by the caller from the earlier agent's records; null without a NIC). A VM that
  // the earlier agent left paused in the middle of a snapshot runs on. The guest must answer on a
  // new connection of the channel. On failure everything is released: the VMM killed (never a
  // process that merely reuses its pid), the slot, jail id and directory released.
  static Result<std::unique_ptr<Sandbox>> Adopt(const SandboxEnv& env, const SandboxState& state,
                                                const std::string& local_id,
                                                std::unique_ptr<net::NetworkSlot> slot);

  // Writes a snapshot (RAM in a memory file, device state, disk) into `dir`, which must not
  // exist yet; the VM is paused meanwhile. With `keep_running` it continues afterwards (named
  // snapshots, fork), otherwise it stays paused for the caller to release (pause); on failure it
  // runs on. `durable`: fsync'd (not for a fork's transient snapshot). The manifest is written
  // last.
  Status SaveSnapshot(const std::string& dir, SnapshotManifest manifest, bool keep_running,
                      bool durable);
  // Has the guest write what its page cache holds to its disk (`/bin/sync` as root, at most
  // 30 s): before a filesystem-only snapshot, whose disk is all that is kept.
  Status FlushGuestFilesystems();
  // A filesystem-only snapshot into `dir` (a pause that keeps no memory; flush first): the VM
  // stops, its disk is copied and fsync'd; the manifest records the identity, for the boot that
  // resumes it. The VM stays stopped for the caller to release; on failure it runs on.
  Status SaveDiskSnapshot(const std::string& dir, SnapshotManifest manifest);

  // Copies its disk (the qcow2 overlay over its base) to `dest` while the VM stands still for
  // the copy, then lets it run on: a consistent image of what the guest flushed
  // (FlushGuestFilesystems first). The template builder's step layers.
  Status CopyDiskTo(const std::string& dest);

  const std::string& id() const { return id_; }
  // The name of its directory and VM on this host (see the top of this file).
  const std::string& local_id() const { return local_id_; }
  // Where its disk's base image is and what template it came from (for pause/snapshot).
  const SnapshotManifest& origin() const { return origin_; }
  const GuestIdentity& identity() const { return identity_; }
  const std::string& template_name() const { return template_name_; }
  const SandboxPaths& paths() const { return paths_; }
  pid_t vmm_pid() const;
  std::chrono::milliseconds boot_time() const { return boot_time_; }
  // Was it handed out from the agent's warm pool (Claim) rather than restored for its create?
  bool from_warm_pool() const { return from_warm_pool_; }

  // The guest channel; reconnects first if the connection was lost while the VM still runs.
  // Shared: a caller's in-flight streams stay valid even if the sandbox is killed meanwhile
  // (they then end with Unavailable).
  Result<std::shared_ptr<channel::GuestClient>> Guest();
  // Drops the guest connection and connects anew (what every restore and fork does): the guest
  // forgets the old streams, its processes keep running.
  Status ReconnectGuest();
  // Has the VMM process exited (crashed, or killed from outside)?
  bool VmmExited();
  // A guest that breaks the channel protocol (an invalid reply, a bad frame) fails the request
  // it broke; past this many violations, over all its connections, the sandbox is faulted: every
  // guest call fails (Guest() answers failed_precondition) and moatd reports it as `error`
  // until it is killed or expires.
  static constexpr uint64_t kMaxGuestViolations = 8;
  // Why the sandbox is faulted; nullopt while it is not.
  std::optional<std::string> Fault() const;
  Result<SandboxUsage> Usage();
  // Networking: the address moatd's port proxy connects to (a port P inside the guest is
  // address:P), and the egress policy. FailedPrecondition for a sandbox without a NIC.
  Result<net::Ipv4Address> NetworkAddress();
  Result<net::EgressPolicy> Egress();
  Status SetEgress(const net::EgressPolicy& policy);
  // The last lines the VMM and the guest console wrote: why a VMM died, for the log.
  std::string DiagnosticTail() const;
  // The last `max_bytes` of the guest's console log ("" if it wrote none).
  Result<std::string> ConsoleTail(size_t max_bytes) const;
  // Stops the VM and releases everything; idempotent.
  void Kill();
  // Makes the sandbox unreachable at once, without waiting for anything: every operation fails
  // as for a killed one, in-flight guest calls end, and the VMM gets SIGKILL. The rest of Kill()
  // (reaping the VMM, its cgroup and jail, the network slot, the directory) is left for a
  // Kill() that must follow — the agent's teardown thread does it in the background.
  void Stop();
  // Lets the VM run on for the next agent to adopt (Adopt): closes the guest and VMM
  // connections and leaves the VMM, its directory, cgroup and network slot as they are. The
  // object then behaves as killed, and its destruction releases nothing.
  void Detach();

 private:
  // `local_id` names its directory and VM; `id` is its public id.
  Sandbox(const SandboxEnv& env, std::string id, std::string local_id, std::string template_name);
  Status ConnectGuest(std::chrono::milliseconds timeout);
  Status SendIdentity(const GuestIdentity& identity);
  // The fields of a snapshot manifest this sandbox knows (resources, disk, network, identity).
  void FillManifest(SnapshotManifest& m) const;
  // With mu_ held: a snapshot into `dir` (which must not exist) through a temporary directory
  // renamed when complete. `fill` writes its files (it may stop the VM; it sets *resumed once it
  // let the VM run again); the manifest (`m` and FillManifest) goes last. On any failure the
  // temporary directory goes and the VM runs on.
  Status WriteSnapshotLocked(
      const std::string& dir, SnapshotManifest m,
      const std::function<Status(const SnapshotFiles& f, bool* resumed)>& fill);
  // Takes a slot (from the ready pool) with `egress` and adds its NIC to `spec`.
  Status AttachSlot(vmm::VmSpec& spec, const net::EgressPolicy& egress);
  // Sends the slot's `network` op: after every boot, restore and fork.
  Status ConfigureGuestNetwork();
  // The spec every sandbox VM shares: its name, resources, sockets and logs in its directory,
  // private memory, and its own overlay over `base_disk`.
  vmm::VmSpec BaseSpec(unsigned vcpus, uint64_t memory_mib, const std::string& base_disk) const;
  Status StartVmm(vmm::VmSpec spec, gid_t gid, bool own_memory);
  // state.json: what cleaning up needs once the VMM runs; everything adoption needs once
  // `ready` (written atomically either way).
  Status WriteState(bool ready);
  // The VM's spec as StartVmm gave it to the driver, as far as a re-adopting driver needs it
  // (`jail_id` 0: not jailed).
  vmm::VmSpec AdoptedSpec(uint32_t jail_id) const;

  SandboxEnv env_;
  std::string id_;        // public; set once more by Claim()
  std::string local_id_;  // names paths_ and vm_name_: declared before them
  std::string template_name_;
  SandboxPaths paths_;
  std::chrono::milliseconds boot_time_{0};
  int64_t created_unix_ms_ = 0;
  uint64_t vmm_start_time_ = 0;  // ProcessStartTime of the VMM: state.json's guard against reuse
  std::string vm_name_;
  uint32_t jail_id_ = 0;
  SnapshotManifest origin_;
  GuestIdentity identity_;
  bool pooled_ = false;  // a warm clone not claimed yet (state.json: never ready)
  bool from_warm_pool_ = false;
  std::mutex mu_;
  std::unique_ptr<vmm::VmmDriver> vmm_;
  // Released after the VMM has exited. Shared: Usage() reads its counters outside mu_ through a
  // copy, which keeps the object alive; a read racing Kill's Release() reads the namespace it
  // opened before or fails (NetworkSlot::ReadCounters).
  std::shared_ptr<net::NetworkSlot> slot_;
  std::shared_ptr<channel::GuestClient> guest_;
  // Shared with every GuestClient's violation handler (a client may outlive the sandbox).
  struct GuestFaults {
    mutable std::mutex mu;
    std::string sandbox;  // the public id, for the log (Claim() changes it)
    uint64_t violations = 0;
    std::optional<std::string> fault;
  };
  std::shared_ptr<GuestFaults> faults_ = std::make_shared<GuestFaults>();
  // Usage()'s last reading of the slot's counters. Reading them forks `nft` (up to 2 s), so it
  // happens outside mu_, at most once per kNetCountersMaxAge (a reading is reused until then,
  // never after): net_mu_ is held across the read, so concurrent samplers wait for it and then
  // reuse it instead of forking again. Never taken with mu_ held.
  static constexpr std::chrono::milliseconds kNetCountersMaxAge{1000};
  struct NetCountersReading {
    std::chrono::steady_clock::time_point taken;   // when the read began
    uint64_t egress_bytes = 0, ingress_bytes = 0;  // 0 when the read failed
  };
  std::mutex net_mu_;
  std::optional<NetCountersReading> net_reading_;
  bool killed_ = false;     // unreachable: Stop, Kill or Detach
  bool torn_down_ = false;  // released (Kill), or left to the next agent (Detach)
  bool owns_dir_ = false;   // set once Boot created the directory: only then does Kill remove it
};

}  // namespace moat::agent
