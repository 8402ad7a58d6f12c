#include "vmm/qemu/qemu_driver.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <thread>

#include "common/cleanup.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/socket.h"
#include "vmm/qemu/ram_split.h"

namespace moat::vmm::qemu {
namespace {

using Clock = std::chrono::steady_clock;
constexpr char kStateFdName[] = "moat-state";

std::chrono::microseconds Since(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t);
}

std::string DirName(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos || slash == 0) return "/";
  return path.substr(0, slash);
}

// The VM's own directories (sockets, console log) become the jailed uid's. A shared sticky
// directory such as /tmp is refused rather than given away.
Status GiveDirToVm(const std::string& dir, uid_t uid, gid_t gid) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) < 0) return ErrnoError("stat(" + dir + ")");
  if (!S_ISDIR(st.st_mode)) return InvalidArgument(dir + " is not a directory");
  if ((st.st_mode & S_ISVTX) != 0) {
    return InvalidArgument(
        "VM files must live in a directory of their own, not in the shared "
        "sticky directory " +
        dir);
  }
  if (::chown(dir.c_str(), uid, gid) < 0) return ErrnoError("chown(" + dir + ")");
  if (::chmod(dir.c_str(), 0750) < 0) return ErrnoError("chmod(" + dir + ")");
  return Status::Ok();
}

Status GiveFileToVm(const std::string& path, uid_t uid, gid_t gid, mode_t mode) {
  if (::chown(path.c_str(), uid, gid) < 0) return ErrnoError("chown(" + path + ")");
  if (::chmod(path.c_str(), mode) < 0) return ErrnoError("chmod(" + path + ")");
  return Status::Ok();
}

// A restored clone maps a memory file its siblings map too (a template's, a snapshot's). It
// opens it O_RDONLY (readonly=on,rom=off: a private writable mapping over a read-only fd), so
// read access through the shared gid is all it needs, and all it gets. See docs/jail.md.
Status CheckVmCanOpen(const std::string& path, uid_t uid, gid_t gid, bool write) {
  struct stat st {};
  if (::stat(path.c_str(), &st) < 0) return ErrnoError("stat(" + path + ")");
  mode_t need = write ? 0600 : 0400;
  bool owner = st.st_uid == uid && (st.st_mode & need) == need;
  bool group = st.st_gid == gid && (st.st_mode & (need >> 3)) == (need >> 3);
  if (!owner && !group) {
    return FailedPrecondition(path + " must be " + (write ? "read-writable" : "readable") +
                              " by the jail's uid " + std::to_string(uid) + " or gid " +
                              std::to_string(gid));
  }
  return Status::Ok();
}

Result<UniqueFd> OpenLog(const std::string& path) {
  if (path.empty()) {
    UniqueFd fd(::open("/dev/null", O_WRONLY | O_CLOEXEC));
    if (!fd) return ErrnoError("open(/dev/null)");
    return fd;
  }
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640));
  if (!fd) return ErrnoError("open(" + path + ")");
  return fd;
}

}  // namespace

QemuDriver::QemuDriver(QemuDriverOptions options) : options_(std::move(options)) {}

QemuDriver::~QemuDriver() {
  Kill();
}

Status QemuDriver::WithVmmLog(const Status& s) const {
  if (spec_.vmm_log_path.empty()) return s;
  auto log = ReadFile(spec_.vmm_log_path);
  if (!log.ok() || log->empty()) return s;
  std::string tail = log->size() > 400 ? log->substr(log->size() - 400) : *log;
  while (!tail.empty() && tail.back() == '\n') tail.pop_back();
  return Status(s.code(), s.message() + " (qemu: " + tail + ")");
}

Status QemuDriver::Start(const VmSpec& spec) {
  if (process_.valid()) return FailedPrecondition("vmm " + spec.name + ": already started");
  auto t0 = Clock::now();
  spec_ = spec;
  timings_ = {};
  memory_is_snapshot_ = false;
  Cleanup release_on_error([this] { Kill(); });
  MOAT_ASSIGN_OR_RETURN(version_, ProbeQemuVersion(options_.qemu_binary));
  MOAT_RETURN_IF_ERROR(CheckQemuSupported(version_));
  features_ = QemuFeatures::Of(version_);
  MOAT_ASSIGN_OR_RETURN(std::vector<std::string> argv,
                        BuildCommandLine(spec, options_.qemu_binary, features_));
  const bool restore = spec.boot_mode == BootMode::kRestore;
  ::unlink(spec.qmp_socket_path.c_str());
  ::unlink(spec.guest_socket_path.c_str());
  if (restore) {
    struct stat st {};
    if (::stat(spec.memory_path.c_str(), &st) < 0) {
      return ErrnoError("template memory file: stat(" + spec.memory_path + ")");
    }
    if (static_cast<uint64_t>(st.st_size) < spec.memory_mib << 20) {
      return FailedPrecondition("template memory file " + spec.memory_path + " is " +
                                std::to_string(st.st_size) + " bytes, smaller than the guest");
    }
  } else if (!PathExists(spec.memory_path)) {
    // Created by the host, not QEMU, so that its owner and mode are ours to choose.
    UniqueFd mem(::open(spec.memory_path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (!mem) return ErrnoError("open(" + spec.memory_path + ")");
    if (::ftruncate(mem.get(), static_cast<off_t>(spec.memory_mib << 20)) < 0) {
      return ErrnoError("ftruncate(" + spec.memory_path + ")");
    }
  }
  if (spec.jail) MOAT_RETURN_IF_ERROR(SetUpJail(*spec.jail));

  auto t_spawn = Clock::now();
  MOAT_ASSIGN_OR_RETURN(process_, SpawnQemu(argv));
  timings_.spawn = Since(t_spawn);
  LogInfo("vmm.spawned", {{"vm", spec.name},
                          {"pid", process_.pid()},
                          {"accel", std::string(AccelName(spec.accel))},
                          {"qemu", version_.Number()},
                          {"mode", restore ? "restore" : "cold"}});
  MOAT_RETURN_IF_ERROR(ConnectQmp());
  TakeVersionFromGreeting();
  timings_.qmp_ready = Since(t0);
  if (restore) {
    MOAT_RETURN_IF_ERROR(LoadDeviceState());
    timings_.state_loaded = Since(t0);
  }
  timings_.total = Since(t0);
  if (restore) {
    LogInfo("vmm.restored",
            {{"vm", spec.name},
             {"jail_us", static_cast<long>((t_spawn - t0) / std::chrono::microseconds(1))},
             {"spawn_us", static_cast<long>(timings_.spawn.count())},
             {"qmp_ready_us", static_cast<long>(timings_.qmp_ready.count())},
             {"state_loaded_us", static_cast<long>(timings_.state_loaded.count())}});
  }
  release_on_error.Cancel();
  return Status::Ok();
}

Status QemuDriver::Adopt(const VmSpec& spec, pid_t pid, uint64_t start_time) {
  if (process_.valid()) return FailedPrecondition("vmm " + spec.name + ": already started");
  auto adopted = ChildProcess::Adopt(pid);
  if (!adopted.ok()) {
    return NotFound("vmm " + spec.name + ": process " + std::to_string(pid) + " is gone");
  }
  // The pidfd pins the process: if it started when the VMM did, it is the VMM.
  auto started = ProcessStartTime(pid);
  if (!started.ok() || *started != start_time) {
    adopted->Release();  // someone else's process (the pid was reused): never signalled
    return NotFound("vmm " + spec.name + ": process " + std::to_string(pid) +
                    " is gone (the pid now names another process)");
  }
  spec_ = spec;
  timings_ = {};
  memory_is_snapshot_ = false;
  process_ = std::move(*adopted);
  Cleanup release_on_error([this] { Kill(); });
  if (spec.jail) {
    if (spec.jail->use_cgroup) {
      MOAT_ASSIGN_OR_RETURN(Cgroup cg, Cgroup::Adopt(pid, spec.name));
      cgroup_.emplace(std::move(cg));
    }
    created_jail_root_ = !spec.jail->root_dir.empty();
  }
  MOAT_RETURN_IF_ERROR(ConnectQmp().Annotate("reconnecting to the VMM of " + spec.name));
  // What runs may be older than the binary on disk now (upgraded under it).
  version_ = {};
  TakeVersionFromGreeting();
  if (version_.major == 0) {
    auto probed = ProbeQemuVersion(options_.qemu_binary);
    if (probed.ok()) version_ = *probed;
  }
  features_ = QemuFeatures::Of(version_);
  MOAT_RETURN_IF_ERROR(CancelMigration());
  release_on_error.Cancel();
  LogInfo("vmm.adopted", {{"vm", spec.name}, {"pid", pid}});
  return Status::Ok();
}

Status QemuDriver::CancelMigration() {
  // "none" before the first migration; completed, failed and cancelled are final.
  auto in_progress = [](const std::string& st) {
    return !st.empty() && st != "none" && st != "completed" && st != "failed" && st != "cancelled";
  };
  MOAT_ASSIGN_OR_RETURN(Json q, qmp_->Execute("query-migrate"));
  std::string st = QmpString(q, "status");
  if (!in_progress(st)) return Status::Ok();
  LogWarn("vmm.migration_cancelled", {{"vm", spec_.name}, {"status", st}});
  MOAT_RETURN_IF_ERROR(qmp_->Execute("migrate_cancel").status());
  auto deadline = Clock::now() + options_.migration_timeout;
  while (in_progress(st)) {
    if (Clock::now() >= deadline) {
      return DeadlineExceeded("vmm " + spec_.name + ": a migration is still \"" + st + "\"");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    MOAT_ASSIGN_OR_RETURN(q, qmp_->Execute("query-migrate"));
    st = QmpString(q, "status");
  }
  return Status::Ok();
}

void QemuDriver::Detach() {
  qmp_.reset();
  (void)process_.Release();
  if (cgroup_) cgroup_->Release();
  cgroup_.reset();
  jail_.reset();
  created_jail_root_ = false;
  // Nothing of the VM's is touched by Kill() or the destructor from now on.
  spec_ = VmSpec{};
}

Status QemuDriver::SetUpJail(const JailSpec& jail_in) {
  JailSpec jail = jail_in;
  const VmSpec& s = spec_;
  const bool restore = s.boot_mode == BootMode::kRestore;
  std::vector<std::string> own_dirs{DirName(s.qmp_socket_path), DirName(s.guest_socket_path),
                                    DirName(s.console_log_path)};
  for (const auto& d : own_dirs) {
    MOAT_RETURN_IF_ERROR(GiveDirToVm(d, jail.uid, jail.gid));
    jail.binds.push_back({d, true});
  }
  if (!restore) jail.binds.push_back({s.kernel_path, false});
  if (s.rootfs.overlay_path.empty()) {
    if (!s.rootfs.read_only) {
      MOAT_RETURN_IF_ERROR(GiveFileToVm(s.rootfs.path, jail.uid, jail.gid, 0600));
    }
    jail.binds.push_back({s.rootfs.path, !s.rootfs.read_only});
  } else {
    MOAT_RETURN_IF_ERROR(GiveFileToVm(s.rootfs.overlay_path, jail.uid, jail.gid, 0600));
    jail.binds.push_back({s.rootfs.path, false});
    jail.binds.push_back({s.rootfs.overlay_path, true});
  }
  if (restore) {
    // Read-only in every sense: the fd, the file's mode for this uid, and the bind mount.
    const bool write = !features_.readonly_private_memory;
    MOAT_RETURN_IF_ERROR(CheckVmCanOpen(s.memory_path, jail.uid, jail.gid, write));
    jail.binds.push_back({s.memory_path, write});
  } else {
    // The template's memory: owned by the baking VM, read-writable by the template's gid.
    MOAT_RETURN_IF_ERROR(GiveFileToVm(s.memory_path, jail.uid, jail.gid, 0660));
    jail.binds.push_back({s.memory_path, true});
  }
  jail.dev_kvm = jail.dev_kvm || s.accel == Accel::kKvm;
  if (jail.root_dir.empty()) jail.root_dir = DirName(s.qmp_socket_path) + "/jail";
  if (!PathExists(jail.root_dir)) {
    if (::mkdir(jail.root_dir.c_str(), 0755) < 0) return ErrnoError("mkdir(" + jail.root_dir + ")");
    created_jail_root_ = true;
    spec_.jail->root_dir = jail.root_dir;
  }
  if (jail.use_cgroup) {
    MOAT_ASSIGN_OR_RETURN(CgroupLayout layout, DetectCgroupLayout());
    CgroupLimits limits = jail.limits;
    if (limits.memory_bytes == 0) {
      limits.memory_bytes = (s.memory_mib + options_.memory_overhead_mib) << 20;
    }
    if (limits.cpus == 0) limits.cpus = s.vcpus;
    // QEMU's block thread pool alone grows to 64 workers under heavy guest I/O, beside its main,
    // RCU and vCPU threads: at 64 + 2 × vCPUs a busy 2-vCPU guest (the code interpreter loading
    // its libraries) hit the limit and QEMU died of qemu_thread_create's EAGAIN.
    if (limits.pids_max == 0) limits.pids_max = 128 + 2 * s.vcpus;
    MOAT_ASSIGN_OR_RETURN(Cgroup cg, Cgroup::Create(layout, jail.cgroup_parent, s.name, limits));
    cgroup_.emplace(std::move(cg));
  }
  MOAT_ASSIGN_OR_RETURN(jail_, PreparedJail::Prepare(jail, cgroup_ ? &*cgroup_ : nullptr));
  return Status::Ok();
}

Result<ChildProcess> QemuDriver::SpawnQemu(const std::vector<std::string>& argv) {
  MOAT_ASSIGN_OR_RETURN(UniqueFd log, OpenLog(spec_.vmm_log_path));
  SpawnOptions o;
  o.argv = argv;
  o.env = std::vector<std::string>{};  // nothing of the agent's environment leaks in
  o.fds = {{1, log.get()}, {2, log.get()}};
  // See jail.cc: a parent-death signal would kill the VM when the spawning thread ends.
  o.parent_death_signal = 0;
  // The tap stays the caller's; QEMU gets its own copy as fd kTapFdInQemu.
  if (spec_.net) o.fds.push_back({kTapFdInQemu, spec_.net->tap_fd});
  if (jail_) o.pre_exec = jail_->PreExec();
  auto child = ChildProcess::Spawn(o);
  if (!child.ok()) return WithVmmLog(child.status().Annotate("starting qemu"));
  return child;
}

Status QemuDriver::ConnectQmp() {
  auto deadline = Clock::now() + options_.qmp_connect_timeout;
  for (;;) {
    if (process_.Exited()) {
      return WithVmmLog(Unavailable("qemu " +
                                    DescribeWaitStatus(process_.exit_status().value_or(-1)) +
                                    " before its QMP socket was ready"));
    }
    // Short connect attempts, so that a QEMU that died is noticed quickly.
    auto fd = ConnectUnix(spec_.qmp_socket_path, std::chrono::milliseconds(20));
    if (fd.ok()) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      auto client =
          QmpClient::FromSocket(std::move(*fd), std::max(left, std::chrono::milliseconds(200)));
      if (!client.ok()) return WithVmmLog(client.status());
      qmp_ = std::move(*client);
      return Status::Ok();
    }
    if (Clock::now() >= deadline) {
      return WithVmmLog(fd.status().Annotate("qmp socket not ready within " +
                                             std::to_string(options_.qmp_connect_timeout.count()) +
                                             " ms"));
    }
  }
}

void QemuDriver::TakeVersionFromGreeting() {
  if (!qmp_) return;
  auto v = VersionFromQmpGreeting(qmp_->Greeting());
  if (!v.ok()) {
    LogWarn("vmm.qmp_greeting_without_version",
            {{"vm", spec_.name}, {"error", v.status().message()}});
    return;
  }
  if (version_.major != 0 && v->Number() != version_.Number()) {
    LogWarn("vmm.qemu_version_differs",
            {{"vm", spec_.name}, {"binary", version_.Number()}, {"running", v->Number()}});
  }
  std::string text =
      version_.major != 0 && v->Number() == version_.Number() ? version_.text : v->text;
  version_ = *v;
  version_.text = text;
}

Result<std::string> QemuDriver::MigrationUri(int fd, bool regular_file,
                                             std::optional<int64_t>* fdset) {
  if (regular_file && features_.fdset_file_migration) {
    MOAT_ASSIGN_OR_RETURN(int64_t id, qmp_->AddFd(fd));
    *fdset = id;
    return "file:/dev/fdset/" + std::to_string(id);
  }
  MOAT_RETURN_IF_ERROR(qmp_->GetFd(kStateFdName, fd));
  return std::string("fd:") + kStateFdName;
}

void QemuDriver::RemoveFdSet(std::optional<int64_t>* fdset) {
  if (!fdset->has_value() || !qmp_) return;
  Status s = qmp_->RemoveFdSet(**fdset);
  if (!s.ok()) LogWarn("vmm.remove_fd_failed", {{"vm", spec_.name}, {"error", s.message()}});
  fdset->reset();
}

Status QemuDriver::WaitMigration(uint64_t cursor, std::string_view what) {
  auto ev = qmp_->WaitEvent("MIGRATION", cursor, options_.migration_timeout, [](const Json& e) {
    std::string st = QmpEventStatus(e);
    return st == "completed" || st == "failed" || st == "cancelled";
  });
  if (!ev.ok()) return WithVmmLog(ev.status().Annotate(what));
  std::string st = QmpEventStatus(*ev);
  if (st == "completed") return Status::Ok();
  // QEMU says why in query-migrate (a load that failed with exit-on-error=false, a save that
  // could not write): that is the message worth returning.
  std::string why;
  if (auto q = qmp_->Execute("query-migrate"); q.ok()) why = QmpString(*q, "error-desc");
  if (!why.empty()) {
    return WithVmmLog(
        Internal(std::string(what) + ": migration " + st + ": " + why.substr(0, 500)));
  }
  return WithVmmLog(Internal(std::string(what) + ": migration " + st));
}

Status QemuDriver::LoadDeviceState() {
  UniqueFd state(::open(spec_.device_state_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!state) return ErrnoError("open(" + spec_.device_state_path + ")");
  Json caps{{"capabilities", Json::array({{{"capability", "x-ignore-shared"}, {"state", true}},
                                          {{"capability", "events"}, {"state", true}}})}};
  MOAT_RETURN_IF_ERROR(qmp_->Execute("migrate-set-capabilities", caps).status());
  std::optional<int64_t> fdset;
  MOAT_ASSIGN_OR_RETURN(std::string uri, MigrationUri(state.get(), /*regular_file=*/true, &fdset));
  Json args{{"uri", uri}};
  // A state QEMU cannot load (another version's, a damaged file) fails the migration and leaves
  // QEMU up to say why, instead of exiting with the reason only in its log.
  if (features_.incoming_exit_on_error) args["exit-on-error"] = false;
  uint64_t cursor = qmp_->EventCursor();
  Status s = qmp_->Execute("migrate-incoming", args).status();
  if (s.ok()) s = WaitMigration(cursor, "loading device state from " + spec_.device_state_path);
  RemoveFdSet(&fdset);
  return s;
}

Status QemuDriver::Pause() {
  if (!qmp_) return FailedPrecondition("vmm not started");
  return qmp_->Execute("stop").status();
}

Status QemuDriver::Resume() {
  if (!qmp_) return FailedPrecondition("vmm not started");
  if (memory_is_snapshot_) {
    return FailedPrecondition("vmm " + spec_.name +
                              ": its shared memory file is now a snapshot; resuming would "
                              "change it (restore a clone instead)");
  }
  return qmp_->Execute("cont").status();
}

Status QemuDriver::StartSave(int fd, bool regular_file, uint64_t* cursor,
                             std::optional<int64_t>* fdset) {
  // x-ignore-shared leaves a shared memory file's RAM out of the stream (it is on disk already);
  // private (share=off) RAM is not ignored, so then the stream carries it.
  Json caps{{"capabilities", Json::array({{{"capability", "x-ignore-shared"}, {"state", true}},
                                          {{"capability", "events"}, {"state", true}}})}};
  MOAT_RETURN_IF_ERROR(qmp_->Execute("migrate-set-capabilities", caps).status());
  // The default bandwidth cap (128 MiB/s) is for networks; this is a local file.
  MOAT_RETURN_IF_ERROR(
      qmp_->Execute("migrate-set-parameters", {{"max-bandwidth", int64_t{1} << 40}}).status());
  MOAT_RETURN_IF_ERROR(qmp_->Execute("stop").status());
  MOAT_ASSIGN_OR_RETURN(std::string uri, MigrationUri(fd, regular_file, fdset));
  *cursor = qmp_->EventCursor();
  Status migrate = qmp_->Execute("migrate", {{"uri", uri}}).status();
  if (!migrate.ok()) {
    if (fdset->has_value()) {
      RemoveFdSet(fdset);
    } else {
      (void)qmp_->Execute("closefd", {{"fdname", kStateFdName}});
    }
  }
  return migrate;
}

Status QemuDriver::SaveDeviceState(const std::string& path, bool durable) {
  if (!qmp_) return FailedPrecondition("vmm not started");
  UniqueFd out(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640));
  if (!out) return ErrnoError("open(" + path + ")");
  uint64_t cursor = 0;
  std::optional<int64_t> fdset;
  MOAT_RETURN_IF_ERROR(StartSave(out.get(), /*regular_file=*/true, &cursor, &fdset));
  if (spec_.memory_shared) memory_is_snapshot_ = true;
  Status saved = WaitMigration(cursor, "saving device state to " + path);
  RemoveFdSet(&fdset);
  MOAT_RETURN_IF_ERROR(saved);
  if (!durable) return Status::Ok();
  if (::fsync(out.get()) < 0) return ErrnoError("fsync(" + path + ")");
  if (spec_.memory_shared) {
    UniqueFd mem(::open(spec_.memory_path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!mem || ::fsync(mem.get()) < 0) return ErrnoError("fsync(" + spec_.memory_path + ")");
  }
  return Status::Ok();
}

Status QemuDriver::SaveMemorySnapshot(const std::string& state_path, const std::string& memory_path,
                                      bool durable) {
  if (!qmp_) return FailedPrecondition("vmm not started");
  if (spec_.memory_shared) {
    return FailedPrecondition("vmm " + spec_.name + ": its memory is a shared file already");
  }
  auto start = Clock::now();
  UniqueFd state(::open(state_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640));
  if (!state) return ErrnoError("open(" + state_path + ")");
  UniqueFd mem(::open(memory_path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0640));
  if (!mem) return ErrnoError("open(" + memory_path + ")");
  int p[2], c[2];
  if (::pipe2(p, O_CLOEXEC) < 0) return ErrnoError("pipe2");
  UniqueFd stream_rd(p[0]), stream_wr(p[1]);
  if (::pipe2(c, O_CLOEXEC) < 0) return ErrnoError("pipe2");
  UniqueFd cancel_rd(c[0]), cancel_wr(c[1]);
  // Fewer, larger reads (the default pipe holds 64 KiB); the limit may be lower: then as is.
  (void)::fcntl(stream_wr.get(), F_SETPIPE_SZ, 1 << 20);
  RamSplitOptions o{.block = kMemoryBackendId,
                    .block_bytes = spec_.memory_mib << 20,
                    .timeout = options_.migration_timeout,
                    .cancel_fd = cancel_rd.get()};
  Result<RamSplitStats> split = Internal("not run");
  // The thread owns the read end: closing it the moment the split ends (a full disk, a stream
  // it refuses) fails QEMU's writes at once instead of leaving the migration blocked on a full
  // pipe until its timeout.
  std::jthread splitter([&, rd = std::move(stream_rd)]() mutable {
    split = SplitRamFromStream(rd.get(), state.get(), mem.get(), o);
    rd.Reset();
  });
  uint64_t cursor = 0;
  std::optional<int64_t> no_fdset;  // a pipe: `fd:` (not deprecated for pipes)
  Status saved = StartSave(stream_wr.get(), /*regular_file=*/false, &cursor, &no_fdset);
  stream_wr.Reset();  // QEMU holds the write end now: its closing ends the stream
  if (saved.ok()) saved = WaitMigration(cursor, "saving a memory snapshot to " + state_path);
  if (!saved.ok()) cancel_wr.Reset();
  splitter.join();
  // The split's own error explains a failed migration better than "migration failed" (unless
  // the split was only cancelled because the migration had failed).
  if (!split.ok() && (saved.ok() || split.status().code() != ErrorCode::kCancelled)) {
    return WithVmmLog(split.status().Annotate("splitting the RAM out of the state"));
  }
  MOAT_RETURN_IF_ERROR(saved);
  auto split_done = Clock::now();
  if (durable) {
    if (::fsync(mem.get()) < 0) return ErrnoError("fsync(" + memory_path + ")");
    if (::fsync(state.get()) < 0) return ErrnoError("fsync(" + state_path + ")");
  }
  LogInfo("vmm.memory_snapshot",
          {{"vm", spec_.name},
           {"pages", static_cast<long>(split->pages)},
           {"zero_pages", static_cast<long>(split->zero_pages)},
           {"state_bytes", static_cast<long>(split->state_bytes)},
           {"waited_for_qemu_ms", static_cast<long>(split->waited.count() / 1000)},
           {"durable", durable},
           {"save_ms", static_cast<long>((split_done - start) / std::chrono::milliseconds(1))},
           {"ms", static_cast<long>(Since(start).count() / 1000)}});
  return Status::Ok();
}

Result<VmStatus> QemuDriver::QueryStatus() {
  VmStatus st;
  if (!process_.valid() || process_.Exited()) {
    st.state = VmState::kExited;
    st.exit_status = process_.exit_status();
    return st;
  }
  if (!qmp_) return FailedPrecondition("vmm not started");
  MOAT_ASSIGN_OR_RETURN(Json r, qmp_->Execute("query-status"));
  st.qmp_status = QmpString(r, "status");
  if (st.qmp_status == "running") {
    st.state = VmState::kRunning;
  } else if (st.qmp_status == "inmigrate" || st.qmp_status == "prelaunch") {
    st.state = VmState::kStarting;
  } else {
    st.state = VmState::kPaused;
  }
  return st;
}

Status QemuDriver::Stop(std::chrono::milliseconds grace) {
  if (!process_.valid()) return Status::Ok();
  if (qmp_ && qmp_->connected()) {
    // The reply may or may not arrive before QEMU closes the socket: either is fine.
    (void)qmp_->Execute("quit", Json::object(), std::chrono::milliseconds(1000));
  }
  auto r = process_.Wait(grace);
  Status s = r.ok() ? Status::Ok()
                    : DeadlineExceeded("qemu did not quit within " + std::to_string(grace.count()) +
                                       " ms; killed");
  Kill();
  return s;
}

void QemuDriver::Kill() {
  process_.Kill();
  Release();
}

void QemuDriver::SignalKill() {
  if (process_.valid()) (void)process_.Signal(SIGKILL);
}

Status QemuDriver::SetCpuWeight(uint32_t weight) {
  if (!cgroup_) return Status::Ok();
  return cgroup_->SetCpuWeight(weight);
}

Result<int> QemuDriver::WaitForExit(std::optional<std::chrono::milliseconds> timeout) {
  if (!process_.valid()) return FailedPrecondition("vmm not started");
  return process_.Wait(timeout);
}

void QemuDriver::Release() {
  qmp_.reset();
  if (!spec_.qmp_socket_path.empty()) ::unlink(spec_.qmp_socket_path.c_str());
  if (!spec_.guest_socket_path.empty()) ::unlink(spec_.guest_socket_path.c_str());
  if (cgroup_) {
    Status s = cgroup_->Remove();
    if (!s.ok())
      LogError("vmm.cgroup_remove_failed", {{"vm", spec_.name}, {"error", s.ToString()}});
    cgroup_.reset();
  }
  jail_.reset();
  if (created_jail_root_ && spec_.jail) {
    if (::rmdir(spec_.jail->root_dir.c_str()) < 0 && errno != ENOENT) {
      LogError("vmm.jail_root_remove_failed",
               {{"vm", spec_.name},
                {"error", ErrnoError("rmdir(" + spec_.jail->root_dir + ")").message()}});
    }
    created_jail_root_ = false;
  }
}

}  // namespace moat::vmm::qemu
