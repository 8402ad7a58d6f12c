// Agent: the per-host owner of every sandbox. Creates and kills them, notices VMMs that died and
// releases what they held, and on start takes over whatever a previous agent left behind, using
// the state each sandbox keeps on disk: a sandbox whose VMM outlived its agent is re-adopted
// (VMM, cgroup, jail, network slot, directory; the guest must answer), one whose VMM died — or
// that cannot be adopted — is cleaned up: the VMM killed (its pid and start time are recorded),
// its cgroup, slot and directory removed. Paused sandboxes and named snapshots live on and can
// be resumed.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "agent/sandbox.h"
#include "agent/snapshot.h"
#include "agent/template_builder.h"
#include "agent/template_store.h"
#include "common/proc_text.h"
#include "common/status.h"
#include "net/network_slot.h"
#include "net/slot_pool.h"
#include "vmm/jail.h"
#include "vmm/vmm_driver.h"

namespace moat::agent {

struct AgentConfig {
  std::string data_dir;  // DATA_DIR (sandboxes/ lives under it)
  TemplateSpec base;     // the `base` template's artifacts and resources
  // The built-in templates beyond base this host has (code-interpreter-v1 where its image was
  // built: BuiltinTemplates), by name; warm pools by demand, like custom templates.
  std::vector<TemplateSpec> builtins;
  // Bake the built-in templates in the background at start (a thread of their own), so that
  // their first create does not wait for a cold boot (and their start commands) on the
  // request's path. Stopping the agent aborts a bake in progress.
  bool prebake_builtins = false;
  vmm::Accel accel = vmm::Accel::kTcg;
  bool jail = true;
  uint32_t jail_id_first = 900000;
  uint32_t jail_id_count = 65536;
  std::chrono::milliseconds ready_timeout{60000};
  std::chrono::milliseconds monitor_interval{250};
  // Networking (src/net/, DESIGN §6): every sandbox on a slot of its own. Absent: sandboxes
  // have no NIC at all.
  std::optional<net::NetConfig> network;
  size_t ready_slots = 4;  // the ready-slot pool's target
  // Warm clones of the base template kept restored, warmed up and waiting (docs/snapshots.md):
  // Create() hands one out after giving it the sandbox's identity (and policy), instead of
  // restoring on the request's path; the pool refills in the background. 0: none (every
  // create restores).
  size_t warm_sandboxes = 0;
  // Custom templates in use get warm clones too: as many as were created from the template in
  // the last warm_demand_window (at most warm_sandboxes; none once it goes unused that long),
  // while all warm clones together stay within this much guest memory (the base template's
  // come first).
  uint64_t warm_memory_budget_mib = 4096;
  // Registries on this host's own network (loopback, link-local) that template builds may pull
  // images from: "host" (any port) or "host:port". None by default.
  std::vector<std::string> insecure_registries;
  // Disk the cache of template build layers may keep (least recently used layers go first).
  uint64_t template_cache_mib = 20480;
  std::chrono::seconds warm_demand_window{300};
  // A pool that runs dry (a create finds none of its clones ready while it should have had
  // some) grows by one clone per such create within warm_demand_window, up to this many clones
  // per template (and within warm_memory_budget_mib); it shrinks back once the window has no
  // such create. 0: pools never grow past warm_sandboxes.
  size_t warm_max = 16;
  // A claim that leaves its template's pool holding a clone holds that pool's refill this long:
  // the refill (a restore and a warm-up, most of a core for ~0.7 s under TCG) would otherwise
  // run beside the claimed sandbox's first commands. A claim that empties the pool refills it at
  // once, all the way. 0: every claim refills at once.
  std::chrono::milliseconds refill_delay{500};
  // No new VM starts (a create that restores, a resume, a fork's children, a warm refill, a cold
  // boot) while the host's MemAvailable is below this: the create fails with resource_exhausted
  // naming it, instead of the kernel's OOM killer picking a sandbox (or the agent) later. A
  // claim of a clone already running is still served. 0: no check.
  uint64_t memory_reserve_mib = 1024;
  // Refill warm clones as background work: the filler thread (and what it forks) at nice 19, and
  // a waiting clone's VM in a cgroup of CPU weight 1 until it is claimed. Requests then keep the
  // cores under load (4 concurrent loops), but refills starve and the pool serves fewer creates
  // of a serial loop: off by default (docs/performance.md measures both).
  bool low_priority_refills = false;
  // Pause, named snapshots and fork write memory-file snapshots: the RAM split out of the
  // migration stream into a file that restores map (nothing loaded; fork children share its
  // pages). False: one full migration stream each, whose RAM every restore loads — the format
  // before memory files, kept for comparison (snapshot_bench) and as a way out should a QEMU
  // build write a stream the splitter refuses. Both formats always restore.
  bool memory_file_snapshots = true;
  // Snapshots shared through an object store (host/snapshot_replicator.h): every pause, named
  // snapshot and template bake is uploaded in the background, and a template is fetched from the
  // store before it is baked. Null: everything stays on this host. Not owned; outlives the agent.
  SnapshotReplication* replication = nullptr;
};

// By public id (a claimed warm clone's directory has a name of its own); `cleaned` names a
// directory by its own name where its state.json could not be read.
struct RecoveryReport {
  std::vector<std::string> adopted;  // running sandboxes of an earlier agent, now this one's
  std::vector<std::string> cleaned;  // sandboxes of an earlier agent: everything was released
  std::vector<std::string> paused;   // paused sandboxes found on disk: they can be resumed
  std::vector<std::string> removed_partial;  // half-written snapshots and bakes, removed
};

// A sandbox to create, under an id the caller chose (the control plane records it before it
// asks).
struct CreateRequest {
  std::string id;  // IsValidSandboxId, and no sandbox's on this agent: running, paused or other
  std::string template_name;
  GuestIdentity identity;
  net::EgressPolicy egress;  // ignored without networking
};

// How many warm clones a template's pool should hold: `floor` (the base template's
// warm_sandboxes; a custom template's recent creates, at most warm_sandboxes), plus one per
// create that found it dry within the demand window, up to `warm_max` (never below `floor`).
// Pure: unit-tested.
size_t WarmPoolWant(size_t floor, size_t dry_creates, size_t warm_max);

// Whether a new VM may start with `mem` as the host's memory (AgentConfig::memory_reserve_mib):
// resource_exhausted naming what was refused and both figures when MemAvailable is below the
// reserve. Pure: unit-tested.
Status HostMemoryAdmits(const MemInfo& mem, uint64_t reserve_mib, std::string_view what);

class Agent {
 public:
  // Validates the config, creates DATA_DIR/sandboxes, re-adopts or cleans up what a previous
  // agent left, and starts the monitor that releases sandboxes whose VMM died.
  static Result<std::unique_ptr<Agent>> Start(AgentConfig config);
  // Stops the monitor and kills every sandbox (none after Detach()).
  ~Agent();

  // Lets every running sandbox live on for the next agent on this data dir to re-adopt (moatd
  // --keep-sandboxes-on-stop): stops the monitor, then closes each sandbox's connections and
  // leaves its VMM, directory, cgroup and network slot as they are (the host's nftables table
  // too, which their traffic needs). The agent has no sandboxes afterwards; destroying it
  // releases only what is its own (ready slots of the pool). Call it when stopping, once no
  // request is in flight: a sandbox created meanwhile is killed with the agent.
  void Detach();

  // A new sandbox `req.id` restored from `req.template_name`: the base template (baked on first
  // use; a warm clone when the pool has one) or the id of a named snapshot. Never a cold boot
  // once the template is baked. An id that is not a sandbox id is InvalidArgument; one in use —
  // a sandbox running or being created, a paused one, a snapshot or a directory of that name —
  // is AlreadyExists, and what uses it is left as it was.
  Result<std::shared_ptr<Sandbox>> Create(const CreateRequest& req);
  // The same under a fresh id (NewSandboxId()).
  Result<std::shared_ptr<Sandbox>> Create(const std::string& template_name,
                                          const GuestIdentity& identity,
                                          const net::EgressPolicy& egress = {});
  // A cold boot of the base template, for reference benchmarks and tests.
  Result<std::shared_ptr<Sandbox>> CreateColdBoot(const GuestIdentity& identity);
  // Replaces a running sandbox's egress policy (PUT /sandboxes/{id}/network).
  Status SetEgress(const std::string& id, const net::EgressPolicy& egress);
  bool networking() const { return slot_pool_ != nullptr; }
  // The ready-slot pool, null without networking (benchmarks wait for it to fill).
  net::SlotPool* slot_pool() { return slot_pool_.get(); }
  // Warm clones ready to be claimed (benchmarks and tests wait for the pool to fill); of one
  // template (its name: "base" or a build id).
  size_t warm_ready();
  size_t warm_ready(const std::string& template_name);

  // Pause persists RAM, device state and disk under DATA_DIR/snapshots/<id>/ and frees the VM;
  // the sandbox keeps its id. Resume restores it (same id, same identity). Without
  // `keep_memory` only the disk is kept (after the guest flushed it): a resume boots the VM
  // afresh from it — files intact, processes gone, a new boot id.
  Status Pause(const std::string& id, bool keep_memory = true);
  Result<std::shared_ptr<Sandbox>> Resume(const std::string& id);
  bool IsPaused(const std::string& id);
  std::vector<SnapshotManifest> ListPaused();

  // Children of a running sandbox, one per id of `child_ids` (1 to 64 of them, no two alike,
  // each checked as Create checks its id), each with its memory and files at fork time and a
  // fresh identity; the parent pauses only while its state is written. Children come back in
  // the order of their ids; if one fails, none is kept.
  Result<std::vector<std::shared_ptr<Sandbox>>> Fork(const std::string& id,
                                                     const std::vector<std::string>& child_ids);
  // The same with `count` fresh ids.
  Result<std::vector<std::shared_ptr<Sandbox>>> Fork(const std::string& id, int count);

  // A named snapshot of a running sandbox (it keeps running); its id is usable as a template.
  Result<SnapshotManifest> CreateSnapshot(const std::string& id, const std::string& name);
  std::vector<SnapshotManifest> ListSnapshots();
  Status DeleteSnapshot(const std::string& snapshot_id);
  Result<std::shared_ptr<Sandbox>> Get(const std::string& id);
  std::vector<std::shared_ptr<Sandbox>> List();
  // Kills a running sandbox, or deletes a paused one. A running one is unreachable when this
  // returns (gone from the agent, its VMM SIGKILLed, its guest calls ended); the rest of its
  // teardown — reaping the VMM, its cgroup and jail, network slot and directory — finishes in
  // the background (WaitForTeardowns), and always before the agent is destroyed or detached.
  // An agent that dies first leaves it to the next one's recovery, like any dead VMM.
  Status Kill(const std::string& id);
  // Blocks until every teardown Kill started has finished.
  void WaitForTeardowns();
  // Teardowns started and not finished yet.
  size_t teardowns_pending();
  void KillAll();

  // Builds a custom template on this host (agent/template_builder.h): the steps in a builder
  // VM, the result baked with its start command running. Afterwards Create() takes the build id
  // as a template name. Builds of different templates run at once; the caller serializes builds
  // of one name.
  Result<TemplateBuildResult> BuildTemplate(const TemplateBuildSpec& spec, const BuildLogFn& log,
                                            BuildFailure* failure);
  // Removes a build's artifact and snapshots, and its warm clones. failed_precondition while a
  // sandbox (running or paused) or a named snapshot on this host was made from it: their disks
  // are overlays over its image. not_found if this host has none.
  Status DeleteTemplateBuild(const std::string& build_id);
  // The resources of a custom template build on this host.
  // A custom template's build, or a built-in template by name.
  Result<TemplateSpec> TemplateOf(const std::string& name);
  const TemplateSpec* Builtin(const std::string& name) const;

  const RecoveryReport& recovery() const { return recovery_; }
  const AgentConfig& config() const { return config_; }

 private:
  explicit Agent(AgentConfig config);
  void Recover();
  // Takes over the sandbox in DATA_DIR/sandboxes/`local_id` if its state.json (`state`) allows
  // and its VMM runs; `slots` are the earlier agent's slot records by namespace name.
  Result<std::shared_ptr<Sandbox>> AdoptLeftover(
      const SandboxState& state, const std::string& local_id,
      const std::map<std::string, net::SlotRecord>& slots);
  // Takes `ids` for sandboxes about to be made under them, all or none: InvalidArgument for one
  // that is not a sandbox id, AlreadyExists for one in use (see Create). ReleaseIds() gives them
  // back once the sandboxes are tracked (or were not made).
  Status ReserveIds(const std::vector<std::string>& ids);
  void ReleaseIds(const std::vector<std::string>& ids);
  void StopMonitor();
  void TeardownLoop();
  void StopTeardowns();
  std::string SnapshotDir(const std::string& id) const;
  Result<std::shared_ptr<Sandbox>> Restore(const std::string& snapshot_dir,
                                           const SnapshotManifest& m, const std::string& id,
                                           const GuestIdentity& identity,
                                           const std::optional<net::EgressPolicy>& egress);
  // A filesystem-only paused sandbox (its snapshot in `dir`), booted afresh from its disk.
  Result<std::shared_ptr<Sandbox>> BootFromDisk(const std::string& dir, const SnapshotManifest& m);
  void Track(const std::shared_ptr<Sandbox>& sb);
  void MonitorLoop();
  // The warm pool: a clone of the template build in `template_dir`, claimed for the sandbox `id`
  // (reserved by the caller) with `identity` and `egress`, and tracked under that id; null when
  // none is ready (the caller restores). An error that is
  // not about the clone (the policy cannot be applied) is returned.
  Result<std::shared_ptr<Sandbox>> ClaimWarm(const std::string& template_dir, const std::string& id,
                                             const GuestIdentity& identity,
                                             const net::EgressPolicy& egress);
  void WarmLoop();
  void StopWarmPool();
  void Prebake();

  AgentConfig config_;
  // Declared before everything that holds slots: destroyed after them.
  std::unique_ptr<net::HostNetwork> host_net_;
  std::unique_ptr<net::SlotPool> slot_pool_;
  std::unique_ptr<vmm::JailIdAllocator> jail_ids_;
  SandboxEnv env_;
  std::unique_ptr<TemplateStore> templates_;
  RecoveryReport recovery_;
  std::mutex paused_mu_;  // serialises pause/resume/delete of paused sandboxes
  // Held while a custom template build is looked up and baked (create, warm pool) and while one
  // is deleted: a deleted build is never baked again.
  std::mutex custom_mu_;

  std::mutex mu_;
  std::map<std::string, std::shared_ptr<Sandbox>> sandboxes_;  // by public id
  std::set<std::string> reserved_ids_;  // of creates and forks in flight (ReserveIds)

  struct WarmClone {
    std::string template_dir;  // the template build it was restored from
    std::unique_ptr<Sandbox> sandbox;
    std::string template_name;
    uint64_t memory_mib = 0;
  };
  // What the pool should hold now: per template, its snapshot dir and how many clones.
  struct WarmTarget {
    std::string name;
    std::string dir;
    size_t want = 0;
    uint64_t memory_mib = 0;
  };
  // HostMemoryAdmits on this host's /proc/meminfo now (admits when it cannot be read).
  Status AdmitNewVm(std::string_view what);
  std::vector<WarmTarget> WarmTargets();
  // A create from `template_name` (the pool of a custom template follows its demand).
  void NoteDemand(const std::string& template_name);
  // A create from `template_name` that found its pool dry (no clone ready).
  void NoteDry(const std::string& template_name);
  std::map<std::string, std::deque<std::chrono::steady_clock::time_point>> demand_;  // warm_mu_
  // Creates that found the pool dry while its target was above zero (they grow it).
  std::map<std::string, std::deque<std::chrono::steady_clock::time_point>> dry_;  // warm_mu_
  std::map<std::string, size_t> last_want_;  // WarmTargets' last answer per template; warm_mu_
  // Per template build dir: no refill before this time (AgentConfig::refill_delay); warm_mu_.
  std::map<std::string, std::chrono::steady_clock::time_point> refill_hold_;
  std::mutex warm_mu_;
  std::condition_variable warm_cv_;
  std::deque<WarmClone> warm_;
  bool warm_stopping_ = false;
  bool warm_kick_ = true;  // the filler has work to look at now
  std::thread warm_filler_;
  std::thread prebake_;  // AgentConfig::prebake_builtins: bakes them once, at start

  // Killed sandboxes whose teardown is left to teardown_threads_ (Kill): as many as the host
  // has cores (2..8), since a teardown is mostly waiting (QEMU's exit, ip and nft runs) and a
  // kill storm (hundreds at once) would otherwise queue behind one.
  std::mutex teardown_mu_;
  std::condition_variable teardown_cv_;
  std::deque<std::pair<std::shared_ptr<Sandbox>, std::chrono::steady_clock::time_point>> teardown_;
  size_t teardown_busy_ = 0;  // taken off the queue and not finished
  bool teardown_stopping_ = false;
  std::vector<std::thread> teardown_threads_;

  std::mutex monitor_mu_;
  std::condition_variable monitor_cv_;
  bool stopping_ = false;
  std::thread monitor_;
};

}  // namespace moat::agent
