#include "agent/sandbox.h"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <ctime>

#include "agent/disk.h"
#include "agent/sandbox_state.h"
#include "agent/template_store.h"
#include "channel/guest_ops.h"
#include "common/child_process.h"
#include "common/cleanup.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/socket.h"
#include "common/unique_fd.h"
#include "vmm/qemu/qemu_driver.h"

namespace moat::agent {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

SandboxPaths::SandboxPaths(const std::string& d)
    : dir(d),
      disk(d + "/disk.qcow2"),
      memory(d + "/mem"),
      qmp_socket(d + "/qmp.sock"),
      guest_socket(d + "/guest.sock"),
      console_log(d + "/console.log"),
      vmm_log(d + "/vmm.log"),
      state(d + "/state.json"),
      jail_root(d + "/root") {}

namespace {

// A restore that failed: when the snapshot came from another QEMU than this host's, the error
// says so (that is the likely cause, and what an operator must know). The caller keeps the
// snapshot either way.
Status AcrossQemuVersions(const SnapshotManifest& snap, Status s) {
  if (s.ok()) return s;
  auto here = vmm::qemu::ProbeQemuVersion(vmm::qemu::kDefaultQemuBinary);
  if (!here.ok() || here->Number() == snap.qemu_version) return s;
  std::string then =
      snap.qemu_version.empty() ? "an older QEMU (7.2; not recorded)" : "QEMU " + snap.qemu_version;
  return Status(s.code(), "snapshot " + snap.name + " was taken under " + then +
                              " and this host runs QEMU " + here->Number() +
                              "; it did not restore (" + s.message() +
                              "). The snapshot is kept: restore it on a host with its QEMU, or "
                              "delete it");
}

}  // namespace

Sandbox::Sandbox(const SandboxEnv& env, std::string id, std::string local_id,
                 std::string template_name)
    : env_(env),
      id_(std::move(id)),
      local_id_(std::move(local_id)),
      template_name_(std::move(template_name)),
      paths_(env.sandboxes_dir + "/" + local_id_) {
  faults_->sandbox = id_;
}

Sandbox::~Sandbox() {
  Kill();
}

pid_t Sandbox::vmm_pid() const {
  return vmm_ ? vmm_->pid() : -1;
}

Result<std::unique_ptr<Sandbox>> Sandbox::Boot(const SandboxEnv& env, const TemplateSpec& tmpl,
                                               const std::string& id, const GuestIdentity& identity,
                                               const net::EgressPolicy& egress,
                                               const std::string& disk_from) {
  auto start = Clock::now();
  std::unique_ptr<Sandbox> sb(new Sandbox(env, id, id, tmpl.name));
  sb->identity_ = identity;
  const SandboxPaths& p = sb->paths_;
  if (PathExists(p.dir))
    return Status(ErrorCode::kAlreadyExists, "sandbox dir " + p.dir + " exists");
  // From here on, any failure releases what was made (the destructor runs Kill()).
  MOAT_RETURN_IF_ERROR(MakeDirs(p.dir, 0711));
  sb->owns_dir_ = true;
  MOAT_RETURN_IF_ERROR(MakeDirs(p.jail_root, 0755));
  if (disk_from.empty()) {
    MOAT_RETURN_IF_ERROR(CreateOverlay(tmpl.rootfs_path, p.disk));
  } else {
    MOAT_RETURN_IF_ERROR(CopyFile(disk_from, p.disk));
  }

  vmm::VmSpec spec = sb->BaseSpec(tmpl.vcpus, tmpl.memory_mib, tmpl.rootfs_path);
  spec.boot_mode = vmm::BootMode::kColdBoot;
  spec.kernel_path = tmpl.kernel_path;
  // A private mapping of an empty file: guest RAM is anonymous copy-on-write memory, never
  // written back to the data dir. (A template bake uses a shared mapping instead.)
  spec.memory_path = p.memory;
  if (env.slots != nullptr) MOAT_RETURN_IF_ERROR(sb->AttachSlot(spec, egress));
  MOAT_RETURN_IF_ERROR(sb->StartVmm(spec, /*gid=*/0, /*own_memory=*/false));
  sb->origin_ = {.kind = "template",
                 .name = tmpl.name,
                 .source = tmpl.name,
                 .vcpus = tmpl.vcpus,
                 .memory_mib = tmpl.memory_mib,
                 .accel = std::string(vmm::AccelName(env.accel)),
                 .base_disk = tmpl.rootfs_path,
                 .network = spec.net.has_value()};
  MOAT_RETURN_IF_ERROR(sb->ConnectGuest(env.ready_timeout));
  MOAT_RETURN_IF_ERROR(sb->SendIdentity(identity));
  MOAT_RETURN_IF_ERROR(sb->ConfigureGuestNetwork());
  MOAT_RETURN_IF_ERROR(sb->WriteState(/*ready=*/true));
  sb->boot_time_ = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
  LogInfo("sandbox.booted", {{"sandbox", id},
                             {"template", tmpl.name},
                             {"accel", std::string(vmm::AccelName(env.accel))},
                             {"vmm_pid", sb->vmm_->pid()},
                             {"ready_ms", static_cast<long>(sb->boot_time_.count())}});
  return sb;
}

vmm::VmSpec Sandbox::BaseSpec(unsigned vcpus, uint64_t memory_mib,
                              const std::string& base_disk) const {
  vmm::VmSpec spec;
  spec.name = "moat-" + local_id_;
  spec.vcpus = vcpus;
  spec.memory_mib = memory_mib;
  spec.accel = env_.accel;
  spec.rootfs = {.path = base_disk, .read_only = false, .overlay_path = paths_.disk};
  spec.memory_shared = false;
  spec.console_log_path = paths_.console_log;
  spec.vmm_log_path = paths_.vmm_log;
  spec.guest_socket_path = paths_.guest_socket;
  spec.qmp_socket_path = paths_.qmp_socket;
  return spec;
}

Status Sandbox::StartVmm(vmm::VmSpec spec, gid_t gid, bool own_memory) {
  const SandboxPaths& p = paths_;
  if (env_.jail_ids != nullptr) {
    MOAT_ASSIGN_OR_RETURN(jail_id_, env_.jail_ids->Allocate());
    vmm::JailSpec jail;
    jail.uid = jail_id_;
    jail.gid = gid != 0 ? gid : jail_id_;
    jail.root_dir = p.jail_root;
    jail.dev_kvm = env_.accel == vmm::Accel::kKvm;
    // A warm clone may yield the CPU to sandboxes in use until it is claimed (Claim).
    if (pooled_ && env_.low_priority_pool) jail.limits.cpu_weight = vmm::kBackgroundCpuWeight;
    spec.jail = jail;
    // A sandbox's own memory file (the fresh RAM of an old full snapshot) is its VM's alone.
    if (own_memory && ::chown(p.memory.c_str(), jail.uid, jail.gid) < 0) {
      return ErrnoError("chown(" + p.memory + ")");
    }
  }
  auto driver = std::make_unique<vmm::qemu::QemuDriver>();
  Status started = driver->Start(spec);
  vmm_ = std::move(driver);
  MOAT_RETURN_IF_ERROR(started.Annotate("starting the VMM of sandbox " + id_));
  created_unix_ms_ = static_cast<int64_t>(::time(nullptr)) * 1000;
  vm_name_ = spec.name;
  auto st = ProcessStartTime(vmm_->pid());
  if (st.ok()) vmm_start_time_ = *st;
  return WriteState(/*ready=*/false);
}

Status Sandbox::WriteState(bool ready) {
  SandboxState state{.id = id_,
                     .template_name = template_name_,
                     .created_unix_ms = created_unix_ms_,
                     .vmm_pid = vmm_ ? vmm_->pid() : 0,
                     .vmm_start_time = vmm_start_time_,
                     .jail_id = jail_id_,
                     .accel = std::string(vmm::AccelName(env_.accel)),
                     .vm_name = vm_name_};
  if (ready && !pooled_) {
    state.ready = true;
    state.origin = origin_;
    state.identity = identity_;
    if (slot_) state.netns = slot_->netns_name();
  }
  return WriteFileAtomic(paths_.state, SerializeSandboxState(state), 0600);
}

vmm::VmSpec Sandbox::AdoptedSpec(uint32_t jail_id) const {
  vmm::VmSpec spec = BaseSpec(origin_.vcpus, origin_.memory_mib, origin_.base_disk);
  spec.name = vm_name_;
  spec.boot_mode = vmm::BootMode::kRestore;
  // Guest RAM is private (share=off) in every sandbox: SaveMemorySnapshot gets it from the
  // stream and never reads the file, whichever file it maps.
  spec.memory_path = paths_.memory;
  if (jail_id != 0) {
    vmm::JailSpec jail;
    jail.uid = jail_id;
    jail.gid = jail_id;  // unused by a re-adopting driver: the process runs as it was started
    jail.root_dir = paths_.jail_root;
    spec.jail = jail;
  }
  return spec;
}

Result<std::unique_ptr<Sandbox>> Sandbox::Adopt(const SandboxEnv& env, const SandboxState& state,
                                                const std::string& local_id,
                                                std::unique_ptr<net::NetworkSlot> slot) {
  auto start = Clock::now();
  if (!state.adoptable()) {
    return FailedPrecondition("sandbox " + state.id +
                              ": its state.json does not record enough to adopt it");
  }
  if (state.vm_name != "moat-" + local_id) {
    return FailedPrecondition("sandbox " + state.id + ": its state.json names VM " + state.vm_name +
                              ", not moat-" + local_id);
  }
  std::unique_ptr<Sandbox> sb(new Sandbox(env, state.id, local_id, state.template_name));
  // From here on the sandbox owns what it was given: a failure releases it (the destructor runs
  // Kill()), the VMM first.
  sb->owns_dir_ = true;
  sb->slot_ = std::move(slot);
  sb->origin_ = *state.origin;
  sb->identity_ = *state.identity;
  sb->created_unix_ms_ = state.created_unix_ms;
  sb->vmm_start_time_ = state.vmm_start_time;
  sb->vm_name_ = state.vm_name;
  vmm::VmSpec spec = sb->AdoptedSpec(state.jail_id);
  auto driver = std::make_unique<vmm::qemu::QemuDriver>();
  Status adopted = driver->Adopt(spec, state.vmm_pid, state.vmm_start_time);
  sb->vmm_ = std::move(driver);
  MOAT_RETURN_IF_ERROR(adopted.Annotate("adopting the VMM of sandbox " + state.id));
  // Reserved only now, and only then this sandbox's to release (Kill()): a VMM that is gone
  // or someone else's must not take an id another sandbox may hold.
  if (state.jail_id != 0 && env.jail_ids != nullptr) {
    MOAT_RETURN_IF_ERROR(env.jail_ids->Reserve(state.jail_id).Annotate("sandbox " + state.id));
    sb->jail_id_ = state.jail_id;
  }
  // A snapshot (pause, fork, named) stops the VM while its state is written; an earlier agent
  // that died meanwhile left it stopped (the driver has cancelled the migration; recovery removes
  // the unfinished snapshot). It runs on as if the snapshot had failed.
  MOAT_ASSIGN_OR_RETURN(vmm::VmStatus status, sb->vmm_->QueryStatus());
  bool resumed = false;
  if (status.qmp_status == "paused" || status.qmp_status == "postmigrate") {
    MOAT_RETURN_IF_ERROR(sb->vmm_->Resume().Annotate("resuming adopted sandbox " + state.id));
    resumed = true;
  } else if (status.qmp_status != "running") {
    return FailedPrecondition("sandbox " + state.id + ": its VM is in state \"" +
                              status.qmp_status + "\"");
  }
  // The guest's end of the channel takes a new connection; its processes ran on meanwhile.
  MOAT_RETURN_IF_ERROR(
      sb->ConnectGuest(std::min(env.ready_timeout, std::chrono::milliseconds(30000))));
  // A VM that stood still has a clock that lags by as long: set it (same env, user, workdir).
  if (resumed) MOAT_RETURN_IF_ERROR(sb->SendIdentity(sb->identity_));
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
  LogInfo("sandbox.adopted", {{"sandbox", state.id},
                              {"local_id", local_id},
                              {"vmm_pid", sb->vmm_->pid()},
                              {"netns", state.netns.empty() ? "none" : state.netns},
                              {"resumed", resumed ? "true" : "false"},
                              {"ms", static_cast<long>(ms.count())}});
  return sb;
}

Result<std::unique_ptr<Sandbox>> Sandbox::Restore(
    const SandboxEnv& env, const std::string& snapshot_dir, const SnapshotManifest& snap,
    const std::string& id, const GuestIdentity& identity,
    const std::optional<net::EgressPolicy>& egress, bool pooled) {
  auto start = Clock::now();
  if (snap.accel != vmm::AccelName(env.accel)) {
    return FailedPrecondition("snapshot " + snap.name + " was made under " + snap.accel +
                              " and cannot be restored under " +
                              std::string(vmm::AccelName(env.accel)));
  }
  if (snap.network && env.slots == nullptr) {
    return FailedPrecondition("snapshot " + snap.name +
                              " has a network device but this agent runs without networking");
  }
  net::EgressPolicy policy;
  if (egress) {
    policy = *egress;
  } else if (!snap.egress.is_null()) {
    MOAT_ASSIGN_OR_RETURN(policy, net::EgressPolicy::FromJson(snap.egress));
  }
  std::unique_ptr<Sandbox> sb(new Sandbox(env, id, id, snap.source));
  sb->pooled_ = pooled;
  const SandboxPaths& p = sb->paths_;
  SnapshotFiles f(snapshot_dir);
  if (PathExists(p.dir)) {
    return Status(ErrorCode::kAlreadyExists, "sandbox dir " + p.dir + " exists");
  }
  MOAT_RETURN_IF_ERROR(MakeDirs(p.dir, 0711));
  sb->owns_dir_ = true;
  MOAT_RETURN_IF_ERROR(CopyFile(f.overlay, p.disk));

  vmm::VmSpec spec = sb->BaseSpec(snap.vcpus, snap.memory_mib, snap.base_disk);
  spec.boot_mode = vmm::BootMode::kRestore;
  spec.device_state_path = f.state;
  gid_t gid = 0;
  bool own_memory = false;
  if (snap.kind == "template") {
    // Copy-on-write over the template's RAM: clean pages stay shared by every clone.
    spec.memory_path = f.memory;
    gid = kTemplateGid;
  } else if (snap.memory_file && !snap.memory_path.empty()) {
    // RAM paged in from the object store by `moatd memfs` (a snapshot of another host): mapped
    // privately like a local one; its file lives as long as memfs serves it. The sandbox's dir
    // names it with a symbolic link, for the record.
    if (::symlink(snap.memory_path.c_str(), p.memory.c_str()) < 0) {
      return ErrnoError("symlink(" + snap.memory_path + ", " + p.memory + ")");
    }
    spec.memory_path = snap.memory_path;
    gid = kTemplateGid;
  } else if (snap.memory_file) {
    // The same over the snapshot's RAM file, linked into the sandbox's dir: it outlives the
    // snapshot (a resume removes it, a fork's is transient), its disk space is the sandbox's,
    // and fork children of one snapshot share its clean pages (one inode).
    if (::link(f.memory.c_str(), p.memory.c_str()) < 0) {
      // Snapshots and sandboxes on different filesystems: a copy (sparse), then this sandbox's.
      if (errno != EXDEV) return ErrnoError("link(" + f.memory + ", " + p.memory + ")");
      MOAT_RETURN_IF_ERROR(CopyFile(f.memory, p.memory));
      MOAT_RETURN_IF_ERROR(GiveMemoryFileToSandboxes(p.memory));
    }
    spec.memory_path = p.memory;
    gid = kTemplateGid;
  } else {
    // A full snapshot: RAM comes from the stream into fresh private memory. QEMU maps this
    // empty sparse file privately, so it is never written.
    spec.memory_path = p.memory;
    UniqueFd mem(::open(p.memory.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    if (!mem || ::ftruncate(mem.get(), static_cast<off_t>(snap.memory_mib) << 20) < 0) {
      return ErrnoError("creating " + p.memory);
    }
    own_memory = true;
  }
  if (snap.network) MOAT_RETURN_IF_ERROR(sb->AttachSlot(spec, policy));
  MOAT_RETURN_IF_ERROR(AcrossQemuVersions(snap, sb->StartVmm(spec, gid, own_memory)));
  MOAT_RETURN_IF_ERROR(
      AcrossQemuVersions(snap, sb->vmm_->Resume().Annotate("resuming restored sandbox " + id)));
  sb->origin_ = snap;
  sb->origin_.memory_path.clear();
  sb->origin_.egress = nullptr;
  sb->origin_.identity.reset();
  // A resume sends no identity (the guest keeps its own) but remembers the one it had.
  sb->identity_ = identity == GuestIdentity{} && snap.identity ? *snap.identity : identity;
  MOAT_RETURN_IF_ERROR(AcrossQemuVersions(snap, sb->ConnectGuest(env.ready_timeout)));
  auto t_id = Clock::now();
  MOAT_RETURN_IF_ERROR(sb->SendIdentity(identity));
  auto t_net = Clock::now();
  // A guest whose new slot presents what was last applied to it has nothing to change.
  bool as_applied = sb->slot_ && snap.guest_network.is_object() &&
                    snap.guest_network == channel::proto::Encode(sb->slot_->GuestConfig());
  if (!as_applied) MOAT_RETURN_IF_ERROR(sb->ConfigureGuestNetwork());
  MOAT_RETURN_IF_ERROR(sb->WriteState(/*ready=*/true));
  auto t_done = Clock::now();
  sb->boot_time_ = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
  auto us = [](Clock::duration d) {
    return static_cast<long>(std::chrono::duration_cast<std::chrono::microseconds>(d).count());
  };
  LogInfo(pooled ? "sandbox.restored_for_pool" : "sandbox.restored",
          {{"sandbox", id},
           {"from", snap.kind + ":" + snap.name},
           {"vmm_pid", sb->vmm_->pid()},
           {"ready_us", us(t_done - start)},
           {"guest_us", us(t_id - start)},
           {"identity_us", us(t_net - t_id)},
           {"network_us", us(t_done - t_net)},
           {"network", !sb->slot_   ? "none"
                       : as_applied ? "as_applied"
                                    : "op"}});
  return sb;
}

Status WarmGuestPaths(channel::GuestClient& guest, bool python3) {
  auto deadline = [] { return Clock::now() + std::chrono::seconds(35); };
  channel::ExecRequest req;
  req.cmd = "true";
  req.timeout_ms = 30000;
  MOAT_RETURN_IF_ERROR(guest.Run(req, deadline()).status());
  channel::proto::ListOp list;
  list.path = ".";  // the default user's home
  list.depth = 1;
  MOAT_RETURN_IF_ERROR(channel::ops::List(guest, list, deadline()).status());
  if (!python3) return Status::Ok();
  channel::ExecRequest py;
  py.argv = {"/bin/sh", "-c", "command -v python3 >/dev/null 2>&1 || exit 0; exec python3 -c pass"};
  py.timeout_ms = 30000;
  return guest.Run(py, deadline()).status();
}

Status Sandbox::WarmUp() {
  // Not python3 here: its translations would stay in every clone's TCG buffer (~22 MiB more
  // per idle sandbox, docs/performance.md) and double a refill's CPU; the bake already left
  // what it reads in the page cache.
  return WarmGuestPaths(*guest_, /*python3=*/false).Annotate("warming up pooled sandbox " + id_);
}

Status Sandbox::Claim(const std::string& id, const GuestIdentity& identity,
                      const net::EgressPolicy& egress) {
  auto start = Clock::now();
  std::lock_guard lock(mu_);
  if (killed_ || !vmm_ || !guest_ || !guest_->alive() ||
      vmm_->WaitForExit(std::chrono::milliseconds(0)).ok()) {
    return Unavailable("pooled sandbox " + local_id_ + " is gone");
  }
  // From here on it is the sandbox `id`: errors and logs name it (and Kill, should the claim
  // fail). Its directory, VM and cgroup keep the local id.
  id_ = id;
  {
    std::lock_guard faults(faults_->mu);
    faults_->sandbox = id_;
  }
  if (slot_ && !(slot_->policy() == egress)) {
    MOAT_RETURN_IF_ERROR(slot_->ApplyPolicy(egress).Annotate("egress policy of sandbox " + id_));
  }
  if (env_.low_priority_pool) {
    // Restored as background work: its full share of the CPU from now on.
    Status w = vmm_->SetCpuWeight(vmm::kNormalCpuWeight);
    if (w.ok()) w = SetProcessNice(vmm_->pid(), 0);  // it was forked by the niced warm filler
    if (!w.ok()) {
      LogError("sandbox.cpu_priority_failed", {{"sandbox", id_}, {"error", w.ToString()}});
    }
  }
  MOAT_RETURN_IF_ERROR(SendIdentity(identity));
  identity_ = identity;
  pooled_ = false;
  from_warm_pool_ = true;
  created_unix_ms_ = static_cast<int64_t>(::time(nullptr)) * 1000;
  MOAT_RETURN_IF_ERROR(WriteState(/*ready=*/true));
  boot_time_ = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
  LogInfo(
      "sandbox.claimed",
      {{"sandbox", id_},
       {"local_id", local_id_},
       {"ready_us",
        static_cast<long>(
            std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count())}});
  return Status::Ok();
}

Status Sandbox::WriteSnapshotLocked(
    const std::string& dir, SnapshotManifest m,
    const std::function<Status(const SnapshotFiles& f, bool* resumed)>& fill) {
  if (killed_ || !vmm_) return NotFound("sandbox " + id_ + " was killed");
  if (PathExists(dir)) return Status(ErrorCode::kAlreadyExists, dir + " exists");
  // Written under a temporary name, renamed when complete: a crash leaves no half snapshot.
  std::string tmp = dir + ".tmp";
  (void)RemoveTree(tmp);
  MOAT_RETURN_IF_ERROR(MakeDirs(tmp, 0700));
  Cleanup remove_tmp([&] { (void)RemoveTree(tmp); });
  // A failed snapshot (or pause) leaves the sandbox running as it was.
  bool resumed = false;
  Cleanup resume_on_failure([&] {
    if (resumed) return;
    Status s = vmm_->Resume();
    if (!s.ok()) LogError("sandbox.resume_failed", {{"sandbox", id_}, {"error", s.ToString()}});
  });
  MOAT_RETURN_IF_ERROR(fill(SnapshotFiles(tmp), &resumed));
  FillManifest(m);
  MOAT_RETURN_IF_ERROR(WriteManifest(tmp, m));
  if (::rename(tmp.c_str(), dir.c_str()) < 0) return ErrnoError("rename(" + tmp + ")");
  remove_tmp.Cancel();
  resume_on_failure.Cancel();
  return Status::Ok();
}

Status Sandbox::SaveSnapshot(const std::string& dir, SnapshotManifest m, bool keep_running,
                             bool durable) {
  std::lock_guard lock(mu_);
  m.memory_file = env_.memory_file_snapshots;
  return WriteSnapshotLocked(dir, std::move(m), [&](const SnapshotFiles& f, bool* resumed) {
    // The VM stops, and its disk is flushed and inactivated when the migration completes: the
    // overlay can be copied consistently.
    if (env_.memory_file_snapshots) {
      // RAM into a memory file, device state without it.
      MOAT_RETURN_IF_ERROR(vmm_->SaveMemorySnapshot(f.state, f.memory, durable)
                               .Annotate("snapshot of sandbox " + id_));
      MOAT_RETURN_IF_ERROR(GiveMemoryFileToSandboxes(f.memory));
    } else {
      // One full stream, RAM included.
      MOAT_RETURN_IF_ERROR(
          vmm_->SaveDeviceState(f.state, durable).Annotate("snapshot of sandbox " + id_));
    }
    MOAT_RETURN_IF_ERROR(CopyFile(paths_.disk, f.overlay));
    if (keep_running) {
      // The VM runs on as soon as its state is written; the rest is host-side bookkeeping.
      *resumed = true;
      MOAT_RETURN_IF_ERROR(vmm_->Resume().Annotate("resuming sandbox " + id_ + " after snapshot"));
    }
    return Status::Ok();
  });
}

void Sandbox::FillManifest(SnapshotManifest& m) const {
  m.vcpus = origin_.vcpus;
  m.memory_mib = origin_.memory_mib;
  m.accel = origin_.accel;
  m.base_disk = origin_.base_disk;
  m.source = origin_.source;
  m.network = origin_.network;
  m.egress = slot_ ? slot_->policy().ToJson() : nlohmann::json(nullptr);
  m.guest_network = slot_ ? channel::proto::Encode(slot_->GuestConfig()) : nlohmann::json(nullptr);
  m.qemu_version = vmm_->VersionNumber();
  m.created_unix_ms = static_cast<int64_t>(::time(nullptr)) * 1000;
  m.identity = identity_;
}

Status Sandbox::FlushGuestFilesystems() {
  std::shared_ptr<channel::GuestClient> guest;
  {
    std::lock_guard lock(mu_);
    if (killed_ || !guest_) return NotFound("sandbox " + id_ + " was killed");
    guest = guest_;
  }
  channel::ExecRequest sync;
  sync.argv = {"/bin/sync"};
  sync.user = "root";
  sync.timeout_ms = 30000;
  auto r = guest->Run(sync, Clock::now() + std::chrono::seconds(35));
  if (!r.ok()) return r.status().Annotate("flushing the filesystems of sandbox " + id_);
  if (r->exit_code != 0) {
    return FailedPrecondition("flushing the filesystems of sandbox " + id_ + ": sync exited " +
                              std::to_string(r->exit_code.value_or(-1)));
  }
  return Status::Ok();
}

Status Sandbox::SaveDiskSnapshot(const std::string& dir, SnapshotManifest m) {
  std::lock_guard lock(mu_);
  m.filesystem_only = true;
  return WriteSnapshotLocked(dir, std::move(m), [&](const SnapshotFiles& f, bool*) {
    // Stopping the VM drains and flushes its disk: the overlay can be copied consistently.
    MOAT_RETURN_IF_ERROR(vmm_->Pause().Annotate("stopping sandbox " + id_));
    MOAT_RETURN_IF_ERROR(CopyFile(paths_.disk, f.overlay));
    // The disk is all this snapshot keeps: on stable storage before the manifest names it.
    UniqueFd disk(::open(f.overlay.c_str(), O_RDONLY | O_CLOEXEC));
    if (!disk || ::fsync(disk.get()) < 0) return ErrnoError("fsync(" + f.overlay + ")");
    return Status::Ok();
  });
}

Status Sandbox::CopyDiskTo(const std::string& dest) {
  std::lock_guard lock(mu_);
  if (killed_ || !vmm_) return NotFound("sandbox " + id_ + " was killed");
  // Stopping the VM drains and flushes its disk: the overlay can be copied consistently.
  MOAT_RETURN_IF_ERROR(vmm_->Pause().Annotate("stopping sandbox " + id_));
  Status copied = CopyFile(paths_.disk, dest);
  Status resumed = vmm_->Resume();
  MOAT_RETURN_IF_ERROR(copied);
  return resumed.Annotate("resuming sandbox " + id_);
}

Status Sandbox::AttachSlot(vmm::VmSpec& spec, const net::EgressPolicy& egress) {
  MOAT_ASSIGN_OR_RETURN(slot_, env_.slots->Acquire());
  // Ready slots carry the default policy; replacing it costs an nft run, so only when needed.
  if (!(egress == net::EgressPolicy{})) {
    MOAT_RETURN_IF_ERROR(slot_->ApplyPolicy(egress).Annotate("egress policy of sandbox " + id_));
  }
  spec.net = vmm::NetDeviceSpec{.tap_fd = slot_->tap_fd(), .mac = net::NetworkSlot::guest_mac()};
  return Status::Ok();
}

Status Sandbox::ConfigureGuestNetwork() {
  if (!slot_) return Status::Ok();
  Status s =
      channel::ops::Unary(*guest_, slot_->GuestConfig(), Clock::now() + std::chrono::seconds(10));
  return s.Annotate("configuring the network of sandbox " + id_);
}

Result<net::Ipv4Address> Sandbox::NetworkAddress() {
  std::lock_guard lock(mu_);
  if (killed_) return NotFound("sandbox " + id_ + " was killed");
  if (!slot_) return FailedPrecondition("sandbox " + id_ + " has no network");
  return slot_->slot_address();
}

Result<net::EgressPolicy> Sandbox::Egress() {
  std::lock_guard lock(mu_);
  if (killed_) return NotFound("sandbox " + id_ + " was killed");
  if (!slot_) return FailedPrecondition("sandbox " + id_ + " has no network");
  return slot_->policy();
}

Status Sandbox::SetEgress(const net::EgressPolicy& policy) {
  std::lock_guard lock(mu_);
  if (killed_) return NotFound("sandbox " + id_ + " was killed");
  if (!slot_) return FailedPrecondition("sandbox " + id_ + " has no network");
  return slot_->ApplyPolicy(policy);
}

Status Sandbox::ConnectGuest(std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  // QEMU creates the socket during start-up; the guest answers the HELLO once moat-guest runs.
  MOAT_ASSIGN_OR_RETURN(UniqueFd fd, ConnectUnix(paths_.guest_socket, timeout));
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  auto client =
      channel::GuestClient::Connect(std::move(fd), std::max(left, std::chrono::milliseconds(1)));
  if (!client.ok()) {
    return client.status().Annotate("waiting for moat-guest in sandbox " + id_ +
                                    " (console log: " + paths_.console_log + ")");
  }
  (*client)->SetViolationHandler([faults = faults_](const Status& why) {
    std::lock_guard lock(faults->mu);
    if (++faults->violations < kMaxGuestViolations || faults->fault) return;
    faults->fault = "its guest broke the channel protocol " + std::to_string(faults->violations) +
                    " times (the last: " + why.message() + ")";
    LogWarn("sandbox.faulted", {{"sandbox", faults->sandbox}, {"reason", *faults->fault}});
  });
  guest_ = std::move(client).value();
  return Status::Ok();
}

std::optional<std::string> Sandbox::Fault() const {
  std::lock_guard lock(faults_->mu);
  return faults_->fault;
}

Result<channel::proto::IdentityOp> IdentityOpFor(const GuestIdentity& identity) {
  timespec now{};
  ::clock_gettime(CLOCK_REALTIME, &now);
  unsigned char entropy[64];
  if (::getrandom(entropy, sizeof entropy, 0) != static_cast<ssize_t>(sizeof entropy)) {
    return ErrnoError("getrandom");
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned char c : entropy) {
    hex.push_back(kHex[c >> 4]);
    hex.push_back(kHex[c & 15]);
  }
  channel::proto::IdentityOp op;
  op.unix_ns = static_cast<int64_t>(now.tv_sec) * 1000000000 + now.tv_nsec;
  op.entropy_hex = std::move(hex);
  // Empty fields keep the guest's defaults: a resumed sandbox keeps the env it was given.
  op.env = identity.env;
  op.user = identity.user;
  op.workdir = identity.workdir;
  return op;
}

Status Sandbox::SendIdentity(const GuestIdentity& identity) {
  MOAT_ASSIGN_OR_RETURN(channel::proto::IdentityOp op, IdentityOpFor(identity));
  Status s = channel::ops::Unary(*guest_, op, Clock::now() + std::chrono::seconds(10));
  return s.Annotate("sending the identity to sandbox " + id_);
}

Result<std::shared_ptr<channel::GuestClient>> Sandbox::Guest() {
  std::lock_guard lock(mu_);
  if (killed_) return NotFound("sandbox " + id_ + " was killed");
  if (auto fault = Fault()) {
    return FailedPrecondition("sandbox " + id_ + " is in error state: " + *fault);
  }
  if (guest_ && guest_->alive()) return guest_;
  if (!vmm_ || vmm_->WaitForExit(std::chrono::milliseconds(0)).ok()) {
    return Unavailable("the VMM of sandbox " + id_ + " has exited");
  }
  guest_.reset();
  MOAT_RETURN_IF_ERROR(ConnectGuest(std::chrono::seconds(10)));
  return guest_;
}

Status Sandbox::ReconnectGuest() {
  std::lock_guard lock(mu_);
  if (killed_) return NotFound("sandbox " + id_ + " was killed");
  guest_.reset();
  return ConnectGuest(std::chrono::seconds(10));
}

bool Sandbox::VmmExited() {
  std::lock_guard lock(mu_);
  return !vmm_ || vmm_->WaitForExit(std::chrono::milliseconds(0)).ok();
}

Result<SandboxUsage> Sandbox::Usage() {
  SandboxUsage u;
  pid_t pid = -1;
  uint64_t start_time = 0;
  std::shared_ptr<net::NetworkSlot> slot;
  {
    // The API samples while the sandbox may be killed: read the VMM under the lock.
    std::lock_guard lock(mu_);
    if (killed_ || !vmm_) return NotFound("sandbox " + id_ + " was killed");
    pid = vmm_->pid();
    start_time = vmm_start_time_;
    slot = slot_;
  }
  if (pid <= 0) return FailedPrecondition("sandbox " + id_ + " has no VMM");
  MOAT_ASSIGN_OR_RETURN(std::string rollup,
                        ReadFile("/proc/" + std::to_string(pid) + "/smaps_rollup"));
  auto field = [&](std::string_view name) -> uint64_t {
    size_t at = rollup.find(std::string("\n") + std::string(name) + ":");
    if (at == std::string::npos) return 0;
    return std::strtoull(rollup.c_str() + at + name.size() + 2, nullptr, 10) * 1024;
  };
  u.pss_bytes = field("Pss");
  u.pss_file_bytes = field("Pss_File");
  u.rss_bytes = field("Rss");
  MOAT_ASSIGN_OR_RETURN(ProcessTimes times, ReadProcessTimes(pid));
  const auto ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
  u.cpu_seconds = static_cast<double>(times.user + times.system) / ticks;
  if (auto up = ReadFile("/proc/uptime"); up.ok()) {
    u.vmm_age_seconds = std::max(
        0.0, std::strtod(up->c_str(), nullptr) - static_cast<double>(times.start_time) / ticks);
  }
  // Read last: if the VMM was killed meanwhile and its pid reused, the figures above are not
  // this sandbox's.
  if (start_time != 0 && times.start_time != start_time) {
    return NotFound("sandbox " + id_ + ": its VMM is gone");
  }
  u.vmm_pid = pid;
  u.vmm_start_time = times.start_time;
  u.vcpus = origin_.vcpus;
  u.memory_total_bytes = origin_.memory_mib << 20;
  MOAT_ASSIGN_OR_RETURN(u.disk_bytes, AllocatedBytes(paths_.disk));
  struct stat base {};
  if (::stat(origin_.base_disk.c_str(), &base) == 0) {
    u.disk_total_bytes = static_cast<uint64_t>(base.st_size);
  }
  // Outside mu_ (the read forks nft, and Guest() needs mu_ for every guest call): `slot` keeps
  // the object alive, should Kill() drop slot_ meanwhile, and a read racing its Release() reads
  // the namespace it opened before or fails (NetworkSlot::ReadCounters). A slot without counters
  // (set up by an older agent and adopted) reads as 0.
  if (slot) {
    std::lock_guard net_lock(net_mu_);
    const auto now = Clock::now();
    if (!net_reading_ || now - net_reading_->taken >= kNetCountersMaxAge) {
      NetCountersReading r{.taken = now};
      auto counters = slot->ReadCounters();
      if (counters.ok()) {
        r.egress_bytes = counters->egress_bytes;
        r.ingress_bytes = counters->ingress_bytes;
      } else {
        static RateLimiter counters_log(0.1, 3);
        unsigned long suppressed = 0;
        if (counters_log.Allow(&suppressed)) {
          LogDebug("sandbox.net_counters_unread", {{"sandbox", id_},
                                                   {"error", counters.status().ToString()},
                                                   {"suppressed", suppressed}});
        }
      }
      net_reading_ = r;
    }
    u.net_egress_bytes = net_reading_->egress_bytes;
    u.net_ingress_bytes = net_reading_->ingress_bytes;
  }
  return u;
}

std::string Sandbox::DiagnosticTail() const {
  std::string out;
  for (const std::string& path : {paths_.vmm_log, paths_.console_log}) {
    auto text = ReadFile(path);
    if (!text.ok()) continue;
    size_t from = text->size() > 600 ? text->size() - 600 : 0;
    out += path.substr(path.rfind('/') + 1) + ": " + text->substr(from) + "\n";
  }
  return out;
}

Result<std::string> Sandbox::ConsoleTail(size_t max_bytes) const {
  UniqueFd fd(::open(paths_.console_log.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd.valid()) {
    if (errno == ENOENT) return std::string();
    return ErrnoError("opening " + paths_.console_log);
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return ErrnoError("stat " + paths_.console_log);
  off_t size = st.st_size;
  off_t from = size > static_cast<off_t>(max_bytes) ? size - static_cast<off_t>(max_bytes) : 0;
  std::string out(static_cast<size_t>(size - from), '\0');
  size_t got = 0;
  while (got < out.size()) {
    ssize_t n =
        ::pread(fd.get(), out.data() + got, out.size() - got, from + static_cast<off_t>(got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("reading " + paths_.console_log);
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  out.resize(got);
  return out;
}

void Sandbox::Stop() {
  std::lock_guard lock(mu_);
  if (killed_) return;
  killed_ = true;
  if (guest_) guest_->Shutdown();
  guest_.reset();
  if (vmm_) vmm_->SignalKill();
}

void Sandbox::Kill() {
  std::lock_guard lock(mu_);
  if (torn_down_) return;
  torn_down_ = true;
  killed_ = true;
  guest_.reset();
  if (vmm_) {
    vmm_->Kill();  // the process, its cgroup and its jail directory
    vmm_.reset();
  }
  if (slot_) {
    // Only now: a VMM still holding the tap would keep the namespace alive.
    Status released = slot_->Release();
    if (!released.ok()) {
      LogError("sandbox.slot_release_failed", {{"sandbox", id_}, {"error", released.ToString()}});
    }
    slot_.reset();
  }
  Status s = owns_dir_ ? RemoveTree(paths_.dir) : Status::Ok();
  if (!s.ok()) LogError("sandbox.cleanup_failed", {{"sandbox", id_}, {"error", s.ToString()}});
  if (jail_id_ != 0 && env_.jail_ids != nullptr) env_.jail_ids->Release(jail_id_);
  jail_id_ = 0;
}

void Sandbox::Detach() {
  std::lock_guard lock(mu_);
  if (killed_) return;
  killed_ = true;
  torn_down_ = true;
  // Callers may hold the client: shut it down for all of them, so that the next agent's
  // connection is the only one the guest's chardev waits on.
  if (guest_) guest_->Shutdown();
  guest_.reset();
  if (vmm_) {
    vmm_->Detach();
    vmm_.reset();
  }
  if (slot_) {
    slot_->Detach();
    slot_.reset();
  }
  owns_dir_ = false;
  // The jail id stays taken in this agent's allocator: its VMM still runs under it.
  jail_id_ = 0;
  LogInfo("sandbox.detached", {{"sandbox", id_}});
}

}  // namespace moat::agent
