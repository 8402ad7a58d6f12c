// QEMU 10's `mapped-ram` migration side by side with moat's RAM splitter, on one guest in one
// run (docs/qemu10.md §3 and §6 item 9; docs/snapshots.md, memory-file snapshots):
//   - save ("pause"): the splitter (QemuDriver::SaveMemorySnapshot: migrate into a pipe,
//     SplitRamFromStream into `mem` + `state`) against `migrate file:/dev/fdset/N` with the
//     mapped-ram capability (an O_WRONLY fd through add-fd), without and with multifd (2
//     channels). Never x-ignore-shared with mapped-ram: 10.0.2 cannot load that combination;
//   - restore ("resume"): the splitter's `memory-backend-file,share=off,readonly=on,rom=off`
//     over its `mem` file plus an x-ignore-shared load of `state` (QemuDriver, BootMode::kRestore)
//     against `memory-backend-ram` plus `migrate-incoming file:/dev/fdset/N` (an O_RDONLY fd);
//     times to the migration's completion and to `cont`;
//   - fork, N = 1 and 8: N VMs restored from one snapshot at once; the total wall time and the
//     sum of their PSS (/proc/<pid>/smaps_rollup) right after, and once each guest has read
//     its dirtied memory;
//   - the snapshot files' sizes and allocated bytes.
// The guest (build/guest: vmlinux + rootfs.ext4, moat-guest as init) is cold booted, saved as a
// template and restored as a clone, like every sandbox; the clone dirties memory from inside
// (`head -c <dirty>M /dev/urandom > /dev/shm/dirty`: tmpfs, so the pages stay in guest RAM) and
// is the source of every save. One restore per method is checked: the guest's md5sum of the
// dirtied file must match the source's. Unjailed (run it as root), TCG, 1 vCPU. Prints a
// summary and writes JSON (with every sample); about 50 s on a 2-core host (`make bench`).
// The first save after the source's restore is not counted (it faults in every page of the
// source's mapping, whatever the method); the fork rows are the children's restores only (a
// fork also pays one save).
//
// usage: mapped_ram_bench [--guest-dir DIR] [--work-dir DIR] [--memory-mib N] [--dirty-mib N]
//                         [--reps N] [--json PATH]
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.h"
#include "channel/guest_client.h"
#include "common/child_process.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/socket.h"
#include "common/unique_fd.h"
#include "vmm/qemu/command_line.h"
#include "vmm/qemu/qemu_driver.h"
#include "vmm/qemu/qemu_version.h"
#include "vmm/qemu/qmp_client.h"

namespace moat::bench {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;
using vmm::qemu::Json;
using vmm::qemu::QemuDriver;
using vmm::qemu::QmpClient;

struct Options {
  std::string guest_dir = "build/guest";
  // VM files: a disk-backed directory by default, like moat's data dir (page cache, not tmpfs).
  std::string work_dir = "/var/tmp";
  uint64_t memory_mib = 512;
  uint64_t dirty_mib = 128;
  int reps = 5;
  std::string json_path = "build/bench/mapped_ram.json";
};

// Errors end the run by exception, so that every VM (its owner's destructor kills it) and the
// work directory are cleaned up on the way out.
struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void Check(const Status& s, const std::string& what) {
  if (!s.ok()) throw Failure(what + ": " + s.ToString());
}

template <typename T>
T Must(Result<T> r, const std::string& what) {
  Check(r.status(), what);
  return std::move(r).value();
}

enum class Method { kSplitter, kMappedRam, kMappedRamMultifd };
constexpr Method kAllMethods[] = {Method::kSplitter, Method::kMappedRam, Method::kMappedRamMultifd};
constexpr int kMultifdChannels = 2;

const char* Key(Method m) {
  switch (m) {
    case Method::kSplitter: return "splitter";
    case Method::kMappedRam: return "mapped_ram";
    case Method::kMappedRamMultifd: return "mapped_ram_multifd2";
  }
  return "?";
}

const char* Label(Method m) {
  switch (m) {
    case Method::kSplitter: return "splitter";
    case Method::kMappedRam: return "mapped-ram";
    case Method::kMappedRamMultifd: return "mapped-ram+multifd(2)";
  }
  return "?";
}

bool Multifd(Method m) {
  return m == Method::kMappedRamMultifd;
}

// What every VM of the run shares: the artifacts, the binary and its features.
struct Env {
  Options o;
  std::string dir;        // the work directory
  std::string base_disk;  // a private copy of the rootfs: the read-only base of every overlay
  std::string kernel;
  std::string qemu = vmm::qemu::kDefaultQemuBinary;
  vmm::qemu::QemuVersion version;
  vmm::qemu::QemuFeatures features;
  // QEMU's stderr, every line of every VM, counted.
  std::map<std::string, int> qemu_stderr;
  std::mutex stderr_mu;

  void TakeVmmLog(const std::string& path) {
    auto log = ReadFile(path);
    if (!log.ok()) return;
    std::lock_guard lock(stderr_mu);
    size_t at = 0;
    while (at < log->size()) {
      size_t end = log->find('\n', at);
      if (end == std::string::npos) end = log->size();
      std::string line = log->substr(at, end - at);
      at = end + 1;
      if (!line.empty()) ++qemu_stderr[line.substr(0, 300)];
    }
  }
};

void RunTool(const std::vector<std::string>& argv, const std::string& what) {
  auto child = Must(ChildProcess::Spawn({.argv = argv}), what);
  int st = Must(child.Wait(seconds(120)), what);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    throw Failure(what + ": " + argv[0] + " " + DescribeWaitStatus(st));
  }
}

void CopySmallFile(const std::string& from, const std::string& to) {
  std::error_code ec;
  std::filesystem::copy_file(from, to, std::filesystem::copy_options::overwrite_existing, ec);
  if (ec) throw Failure("copy " + from + " to " + to + ": " + ec.message());
}

// A VM's files in a directory of its own; its disk is an overlay (a copy of `overlay_from`, or a
// new one over the base disk).
vmm::VmSpec SpecIn(Env& env, const std::string& dir, const std::string& name,
                   const std::string& overlay_from) {
  Check(MakeDirs(dir, 0755), "mkdir " + dir);
  vmm::VmSpec s;
  s.name = name;
  s.vcpus = 1;
  s.memory_mib = env.o.memory_mib;
  s.accel = vmm::Accel::kTcg;
  s.rootfs = {.path = env.base_disk, .read_only = false, .overlay_path = dir + "/disk.qcow2"};
  if (overlay_from.empty()) {
    RunTool({"qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", env.base_disk,
             s.rootfs.overlay_path},
            "qemu-img create");
  } else {
    CopySmallFile(overlay_from, s.rootfs.overlay_path);
  }
  s.console_log_path = dir + "/console.log";
  s.guest_socket_path = dir + "/guest.sock";
  s.qmp_socket_path = dir + "/qmp.sock";
  s.vmm_log_path = dir + "/vmm.log";
  return s;
}

std::unique_ptr<channel::GuestClient> ConnectGuest(const vmm::VmSpec& s, milliseconds timeout) {
  auto fd = Must(ConnectUnix(s.guest_socket_path, seconds(10)), "connect " + s.guest_socket_path);
  auto g = channel::GuestClient::Connect(std::move(fd), timeout);
  if (!g.ok()) {
    auto console = ReadFile(s.console_log_path);
    std::string tail =
        console.ok() ? console->substr(console->size() > 2000 ? console->size() - 2000 : 0) : "";
    throw Failure("moat-guest of " + s.name + " did not answer: " + g.status().ToString() +
                  "\nconsole:\n" + tail);
  }
  return std::move(g).value();
}

std::string GuestSh(channel::GuestClient& g, const std::string& cmd, seconds timeout) {
  auto r = Must(g.Run({.argv = {"/bin/sh", "-c", cmd}, .timeout_ms = timeout.count() * 1000},
                      Clock::now() + timeout + seconds(10)),
                "guest: " + cmd);
  if (r.exit_code != 0) {
    throw Failure("guest: " + cmd + ": exit " + std::to_string(r.exit_code.value_or(-1)) + ": " +
                  r.stderr_data.substr(0, 500));
  }
  return r.stdout_data;
}

// --- QMP, for the mapped-ram side ----------------------------------------------------------

Json Caps(std::initializer_list<std::pair<const char*, bool>> caps) {
  Json list = Json::array();
  for (const auto& [name, on] : caps) list.push_back({{"capability", name}, {"state", on}});
  return {{"capabilities", list}};
}

// Sets the capabilities for a mapped-ram migration (either side). No x-ignore-shared: with
// mapped-ram, 10.0.2 writes a stream it cannot load (docs/qemu10.md §3).
void SetMappedRamCaps(QmpClient& q, bool multifd) {
  Check(q.Execute("migrate-set-capabilities", Caps({{"x-ignore-shared", false},
                                                    {"events", true},
                                                    {"mapped-ram", true},
                                                    {"multifd", multifd}}))
            .status(),
        "migrate-set-capabilities mapped-ram");
  if (multifd) {
    Check(q.Execute("migrate-set-parameters", {{"multifd-channels", kMultifdChannels}}).status(),
          "migrate-set-parameters multifd-channels");
  }
}

// Waits for the MIGRATION event that ends a migration; the error carries QEMU's reason.
void WaitMigration(QmpClient& q, uint64_t cursor, const std::string& what) {
  auto ev = Must(q.WaitEvent("MIGRATION", cursor, seconds(120),
                             [](const Json& e) {
                               std::string st = vmm::qemu::QmpEventStatus(e);
                               return st == "completed" || st == "failed" || st == "cancelled";
                             }),
                 what);
  std::string st = vmm::qemu::QmpEventStatus(ev);
  if (st == "completed") return;
  std::string why;
  if (auto r = q.Execute("query-migrate"); r.ok()) why = vmm::qemu::QmpString(*r, "error-desc");
  throw Failure(what + ": migration " + st + ": " + why);
}

// --- Save ----------------------------------------------------------------------------------

struct Snapshot {
  Method method = Method::kSplitter;
  std::string dir;
  std::string mem, state;  // splitter
  std::string file;        // mapped-ram
  std::string disk;        // the source's overlay at the save
};

Snapshot SnapshotIn(const std::string& dir, Method m) {
  return {.method = m,
          .dir = dir,
          .mem = dir + "/mem",
          .state = dir + "/state",
          .file = dir + "/ram.mr",
          .disk = dir + "/disk.qcow2"};
}

struct SaveTimes {
  double save_ms = 0;   // from the first QMP command to the migration completed (files written)
  double fsync_ms = 0;  // then fsync of the snapshot's files (a pause is durable; a fork is not)
};

double Fsync(const std::vector<std::string>& paths) {
  auto t0 = Clock::now();
  for (const auto& p : paths) {
    UniqueFd fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd || ::fsync(fd.get()) < 0) Check(ErrnoError("fsync(" + p + ")"), "fsync");
  }
  return Ms(Clock::now() - t0);
}

// Saves the running source VM (it stays paused until the caller resumes it).
SaveTimes Save(QemuDriver& src, const vmm::VmSpec& src_spec, const Snapshot& snap) {
  Check(MakeDirs(snap.dir, 0755), "mkdir " + snap.dir);
  SaveTimes t;
  if (snap.method == Method::kSplitter) {
    // The production path: caps, stop, migrate into a pipe, split as it arrives.
    auto t0 = Clock::now();
    Check(src.SaveMemorySnapshot(snap.state, snap.mem, /*durable=*/false), "splitter save");
    t.save_ms = Ms(Clock::now() - t0);
    t.fsync_ms = Fsync({snap.mem, snap.state});
  } else {
    QmpClient& q = *src.qmp();
    auto t0 = Clock::now();
    SetMappedRamCaps(q, Multifd(snap.method));
    Check(q.Execute("migrate-set-parameters", {{"max-bandwidth", int64_t{1} << 40}}).status(),
          "max-bandwidth");
    Check(q.Execute("stop").status(), "stop");
    // QEMU opens /dev/fdset/N O_WRONLY (each multifd channel too): a member with that mode.
    UniqueFd out(::open(snap.file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640));
    if (!out) Check(ErrnoError("open(" + snap.file + ")"), "mapped-ram save");
    int64_t fdset = Must(q.AddFd(out.get()), "add-fd");
    uint64_t cursor = q.EventCursor();
    Check(q.Execute("migrate", {{"uri", "file:/dev/fdset/" + std::to_string(fdset)}}).status(),
          "migrate mapped-ram");
    WaitMigration(q, cursor, std::string(Label(snap.method)) + " save");
    Check(q.RemoveFdSet(fdset), "remove-fd");
    t.save_ms = Ms(Clock::now() - t0);
    out.Reset();
    t.fsync_ms = Fsync({snap.file});
    // Back to what the splitter's save expects (its pipe is not seekable: no mapped-ram).
    Check(q.Execute("migrate-set-capabilities", Caps({{"mapped-ram", false}, {"multifd", false}}))
              .status(),
          "migrate-set-capabilities off");
  }
  // The disk as it was at the save (flushed by it), for the VMs restored from this snapshot.
  CopySmallFile(src_spec.rootfs.overlay_path, snap.disk);
  return t;
}

// --- Restore -------------------------------------------------------------------------------

struct RestoredVm {
  vmm::VmSpec spec;
  std::string dir;
  std::unique_ptr<QemuDriver> driver;  // splitter: the production driver
  ChildProcess process;                // mapped-ram: QEMU driven here over QMP
  std::unique_ptr<QmpClient> qmp;
  double qmp_ready_ms = 0;  // from the spawn: QMP answered (process start)
  double loaded_ms = 0;     // from the spawn: migrate-incoming completed
  double running_ms = 0;    // from the spawn: `cont` answered

  ~RestoredVm() { Kill(); }
  pid_t pid() const { return driver ? driver->pid() : process.pid(); }
  void Kill() {
    if (driver) driver->Kill();
    qmp.reset();
    process.Kill();
  }
};

// The VM's directory and disk, made before any timing starts.
std::unique_ptr<RestoredVm> PrepareRestore(Env& env, const Snapshot& snap, const std::string& dir,
                                           const std::string& name) {
  auto vm = std::make_unique<RestoredVm>();
  vm->dir = dir;
  vm->spec = SpecIn(env, dir, name, snap.disk);
  vm->spec.boot_mode = vmm::BootMode::kRestore;
  vm->spec.memory_shared = false;
  if (snap.method == Method::kSplitter) {
    vm->spec.memory_path = snap.mem;
    vm->spec.device_state_path = snap.state;
  } else {
    // Replaced by memory-backend-ram below; BuildCommandLine wants a path.
    vm->spec.memory_path = snap.file;
    vm->spec.device_state_path = snap.file;
  }
  return vm;
}

void ConnectQmp(RestoredVm& vm) {
  auto deadline = Clock::now() + seconds(20);
  for (;;) {
    if (vm.process.Exited()) {
      auto log = ReadFile(vm.spec.vmm_log_path);
      throw Failure("qemu " + DescribeWaitStatus(vm.process.exit_status().value_or(-1)) +
                    " before its QMP socket was ready: " + (log.ok() ? *log : ""));
    }
    auto fd = ConnectUnix(vm.spec.qmp_socket_path, milliseconds(20));
    if (fd.ok()) {
      vm.qmp = Must(QmpClient::FromSocket(std::move(*fd), seconds(10)), "qmp");
      return;
    }
    if (Clock::now() >= deadline) Check(fd.status(), "qmp socket of " + vm.spec.name);
  }
}

void StartRestore(Env& env, RestoredVm& vm, const Snapshot& snap) {
  if (snap.method == Method::kSplitter) {
    vm.driver = std::make_unique<QemuDriver>();
    auto t0 = Clock::now();
    Check(vm.driver->Start(vm.spec), "splitter restore of " + vm.spec.name);
    vm.loaded_ms = Ms(Clock::now() - t0);
    vm.qmp_ready_ms = static_cast<double>(vm.driver->timings().qmp_ready.count()) / 1000.0;
    Check(vm.driver->Resume(), "cont");
    vm.running_ms = Ms(Clock::now() - t0);
    return;
  }
  std::vector<std::string> argv =
      Must(vmm::qemu::BuildCommandLine(vm.spec, env.qemu, env.features), "command line");
  bool replaced = false;
  for (size_t i = 0; i + 1 < argv.size(); ++i) {
    if (argv[i] == "-object" && argv[i + 1].rfind("memory-backend-file,", 0) == 0) {
      argv[i + 1] = std::string("memory-backend-ram,id=") + vmm::qemu::kMemoryBackendId +
                    ",size=" + std::to_string(vm.spec.memory_mib) + "M,merge=off";
      replaced = true;
    }
  }
  if (!replaced) throw Failure("no memory-backend-file in the command line");
  UniqueFd log(
      ::open(vm.spec.vmm_log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640));
  if (!log) Check(ErrnoError("open(" + vm.spec.vmm_log_path + ")"), "vmm log");
  auto t0 = Clock::now();
  // QEMU opens /dev/fdset/N O_RDONLY for the load: a member with that mode.
  UniqueFd in(::open(snap.file.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in) Check(ErrnoError("open(" + snap.file + ")"), "mapped-ram restore");
  // No parent-death signal: it fires when the spawning thread (a fork's) ends.
  vm.process = Must(ChildProcess::Spawn({.argv = argv,
                                         .env = std::vector<std::string>{},
                                         .fds = {{1, log.get()}, {2, log.get()}},
                                         .parent_death_signal = 0}),
                    "spawn qemu");
  ConnectQmp(vm);
  vm.qmp_ready_ms = Ms(Clock::now() - t0);
  QmpClient& q = *vm.qmp;
  SetMappedRamCaps(q, Multifd(snap.method));
  int64_t fdset = Must(q.AddFd(in.get()), "add-fd");
  uint64_t cursor = q.EventCursor();
  Check(q.Execute("migrate-incoming",
                  {{"uri", "file:/dev/fdset/" + std::to_string(fdset)}, {"exit-on-error", false}})
            .status(),
        "migrate-incoming");
  WaitMigration(q, cursor, std::string(Label(snap.method)) + " restore of " + vm.spec.name);
  Check(q.RemoveFdSet(fdset), "remove-fd");
  vm.loaded_ms = Ms(Clock::now() - t0);
  Check(q.Execute("cont").status(), "cont");
  vm.running_ms = Ms(Clock::now() - t0);
}

void Discard(Env& env, std::unique_ptr<RestoredVm>& vm) {
  if (!vm) return;
  vm->Kill();
  env.TakeVmmLog(vm->spec.vmm_log_path);
  (void)RemoveTree(vm->dir);
  vm.reset();
}

// The restored guest holds the source's dirtied file, byte for byte.
void Verify(RestoredVm& vm, const std::string& want_md5, Method m) {
  auto g = ConnectGuest(vm.spec, seconds(60));
  std::string got = GuestSh(*g, "md5sum /dev/shm/dirty", seconds(120));
  if (got.substr(0, 32) != want_md5) {
    throw Failure(std::string(Label(m)) + " restore: the guest's /dev/shm/dirty has md5 " +
                  got.substr(0, 32) + ", the source's " + want_md5);
  }
}

// --- Memory --------------------------------------------------------------------------------

struct MemUse {
  double rss = 0, pss = 0, pss_anon = 0, pss_file = 0, pss_shmem = 0;  // MiB
  double anon_huge = 0;  // of the anonymous pages, in transparent huge pages (QEMU madvises)
  MemUse& operator+=(const MemUse& o) {
    rss += o.rss;
    pss += o.pss;
    pss_anon += o.pss_anon;
    pss_file += o.pss_file;
    pss_shmem += o.pss_shmem;
    anon_huge += o.anon_huge;
    return *this;
  }
  json ToJson() const {
    return {{"rss", rss},
            {"pss", pss},
            {"pss_anon", pss_anon},
            {"pss_file", pss_file},
            {"pss_shmem", pss_shmem},
            {"anon_huge_pages", anon_huge}};
  }
};

MemUse ReadMemUse(pid_t pid) {
  std::string text =
      Must(ReadFile("/proc/" + std::to_string(pid) + "/smaps_rollup"), "smaps_rollup");
  auto field = [&](const std::string& key) {
    size_t at = text.find("\n" + key + ":");
    if (at == std::string::npos) return 0.0;
    return std::strtod(text.c_str() + at + key.size() + 2, nullptr) / 1024.0;  // kB → MiB
  };
  return {.rss = field("Rss"),
          .pss = field("Pss"),
          .pss_anon = field("Pss_Anon"),
          .pss_file = field("Pss_File"),
          .pss_shmem = field("Pss_Shmem"),
          .anon_huge = field("AnonHugePages")};
}

// Runs `fn(i)` for i in [0, n) on threads of their own; rethrows the first failure.
void Parallel(int n, const std::function<void(int)>& fn) {
  std::vector<std::string> errors(n);
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      try {
        fn(i);
      } catch (const std::exception& e) {
        errors[i] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& e : errors) {
    if (!e.empty()) throw Failure(e);
  }
}

struct FileSize {
  uint64_t bytes = 0, allocated = 0;
};
FileSize SizeOf(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) < 0) Check(ErrnoError("stat(" + path + ")"), "size");
  return {static_cast<uint64_t>(st.st_size), static_cast<uint64_t>(st.st_blocks) * 512};
}

std::string FsType(const std::string& path) {
  struct statfs s {};
  if (::statfs(path.c_str(), &s) < 0) return "?";
  switch (static_cast<unsigned long>(s.f_type)) {
    case 0x01021994: return "tmpfs";
    case 0xEF53: return "ext4";
    case 0x9123683E: return "btrfs";
    case 0x58465342: return "xfs";
    case 0x794c7630: return "overlayfs";
    default:
      return "0x" + [&] {
        char b[17];
        std::snprintf(b, sizeof b, "%lx", static_cast<unsigned long>(s.f_type));
        return std::string(b);
      }();
  }
}

// Percentiles plus the samples in the order they were taken.
json Stats(const std::vector<double>& v) {
  json j = Percentiles(v);
  j["samples"] = v;
  return j;
}

// --- The run -------------------------------------------------------------------------------

json Run(Env& env) {
  const Options& o = env.o;
  auto run_start = Clock::now();
  json out = {{"accel", "tcg"},
              {"vcpus", 1},
              {"memory_mib", o.memory_mib},
              {"dirty_mib", o.dirty_mib},
              {"reps", o.reps},
              {"qemu", env.version.Number()},
              {"qemu_version", env.version.text},
              {"work_dir_fs", FsType(env.dir)},
              {"multifd_channels", kMultifdChannels}};
  std::printf("mapped_ram_bench: %s, %llu MiB guest, work dir %s (%s)\n", env.version.text.c_str(),
              static_cast<unsigned long long>(o.memory_mib), env.dir.c_str(),
              FsType(env.dir).c_str());

  // The base disk: a private copy, so that a guest image rebuilt meanwhile changes nothing.
  RunTool({"cp", "--sparse=always", o.guest_dir + "/rootfs.ext4", env.base_disk},
          "copy the rootfs");

  // --- The template: cold boot, moat-guest up, device state saved (its RAM is the file) ----
  std::string tpl_dir = env.dir + "/template";
  vmm::VmSpec tpl = SpecIn(env, tpl_dir, "mrbench-template", "");
  tpl.boot_mode = vmm::BootMode::kColdBoot;
  tpl.kernel_path = env.kernel;
  tpl.memory_path = tpl_dir + "/mem";
  tpl.memory_shared = true;
  std::string tpl_state = tpl_dir + "/state";
  {
    QemuDriver vm;
    auto t0 = Clock::now();
    Check(vm.Start(tpl), "cold boot");
    auto g = ConnectGuest(tpl, seconds(180));
    out["cold_boot_to_guest_ms"] = Ms(Clock::now() - t0);
    // Saved while the guest waits on a connected port, as the agent bakes templates.
    Check(vm.SaveDeviceState(tpl_state, /*durable=*/false), "template save");
    g.reset();
    vm.Kill();
    env.TakeVmmLog(tpl.vmm_log_path);
  }
  std::printf("  template baked (cold boot to moat-guest %.0f ms)\n",
              out["cold_boot_to_guest_ms"].get<double>());

  // --- The source: a clone of the template, with memory dirtied from inside -----------------
  std::string src_dir = env.dir + "/source";
  vmm::VmSpec src_spec = SpecIn(env, src_dir, "mrbench-source", tpl.rootfs.overlay_path);
  src_spec.boot_mode = vmm::BootMode::kRestore;
  src_spec.memory_path = tpl.memory_path;
  src_spec.memory_shared = false;
  src_spec.device_state_path = tpl_state;
  QemuDriver src;
  Check(src.Start(src_spec), "restore the source clone");
  Check(src.Resume(), "cont the source");
  auto src_guest = ConnectGuest(src_spec, seconds(60));
  std::string dirty_cmd =
      "head -c " + std::to_string(o.dirty_mib) + "M /dev/urandom > /dev/shm/dirty";
  auto t_dirty = Clock::now();
  std::string md5 = GuestSh(*src_guest, dirty_cmd + " && md5sum /dev/shm/dirty", seconds(600));
  md5 = md5.substr(0, 32);
  out["dirty_ms"] = Ms(Clock::now() - t_dirty);
  std::string meminfo =
      GuestSh(*src_guest, "grep -E '^(MemTotal|MemFree|Shmem):' /proc/meminfo", seconds(30));
  out["dirtied"] = "in the guest: `" + dirty_cmd +
                   "` (tmpfs: the pages stay in guest RAM), in a clone of a cold-booted template "
                   "(moat-guest idle)";
  out["guest_meminfo_after_dirtying"] = meminfo;
  std::printf("  source clone dirtied %llu MiB in %.0f ms (md5 %s)\n",
              static_cast<unsigned long long>(o.dirty_mib), out["dirty_ms"].get<double>(),
              md5.c_str());

  // --- Save: alternating, the source runs on between saves ----------------------------------
  // The first save after the restore, whatever the method, reads every page of the source's
  // mapping for the first time (page-cache pages for the template file's holes included): that
  // one is not counted, or it would go to whichever method comes first.
  {
    Snapshot warmup = SnapshotIn(env.dir + "/snap-warmup", Method::kMappedRam);
    out["first_save_mapped_ram_ms_not_counted"] = Save(src, src_spec, warmup).save_ms;
    Check(src.Resume(), "cont after the save");
    (void)RemoveTree(warmup.dir);
    std::this_thread::sleep_for(milliseconds(200));
  }
  std::map<Method, std::vector<double>> save_ms, fsync_ms;
  std::map<Method, Snapshot> kept;
  for (int rep = 0; rep < o.reps; ++rep) {
    for (Method m : kAllMethods) {
      Snapshot snap = SnapshotIn(env.dir + "/snap-" + Key(m) + "-" + std::to_string(rep), m);
      SaveTimes t = Save(src, src_spec, snap);
      save_ms[m].push_back(t.save_ms);
      fsync_ms[m].push_back(t.fsync_ms);
      Check(src.Resume(), "cont after the save");
      if (rep + 1 == o.reps) {
        kept[m] = snap;
      } else {
        (void)RemoveTree(snap.dir);
      }
      // A moment of running guest between saves, as between two pauses.
      std::this_thread::sleep_for(milliseconds(200));
    }
  }
  src_guest.reset();
  src.Kill();
  env.TakeVmmLog(src_spec.vmm_log_path);
  for (Method m : kAllMethods) {
    out[std::string("save_") + Key(m) + "_ms"] = Stats(save_ms[m]);
    out[std::string("save_fsync_") + Key(m) + "_ms"] = Stats(fsync_ms[m]);
  }
  {
    const Snapshot& s = kept[Method::kSplitter];
    FileSize mem = SizeOf(s.mem), state = SizeOf(s.state);
    out["files"]["splitter"] = {{"mem_bytes", mem.bytes},
                                {"mem_allocated_bytes", mem.allocated},
                                {"state_bytes", state.bytes},
                                {"state_allocated_bytes", state.allocated},
                                {"total_allocated_bytes", mem.allocated + state.allocated}};
    for (Method m : {Method::kMappedRam, Method::kMappedRamMultifd}) {
      FileSize f = SizeOf(kept[m].file);
      out["files"][Key(m)] = {{"bytes", f.bytes},
                              {"allocated_bytes", f.allocated},
                              {"total_allocated_bytes", f.allocated}};
    }
  }
  std::printf("  saves done\n");

  // --- Restore: alternating; the first of each method checked against the source ------------
  std::map<Method, std::vector<double>> qmp_ready, loaded, load_only, running;
  int serial = 0;
  for (int rep = 0; rep < o.reps; ++rep) {
    for (Method m : kAllMethods) {
      std::string name = "mrbench-r" + std::to_string(serial++);
      auto vm = PrepareRestore(env, kept[m], env.dir + "/" + name, name);
      StartRestore(env, *vm, kept[m]);
      qmp_ready[m].push_back(vm->qmp_ready_ms);
      loaded[m].push_back(vm->loaded_ms);
      load_only[m].push_back(vm->loaded_ms - vm->qmp_ready_ms);
      running[m].push_back(vm->running_ms);
      if (rep == 0) {
        Verify(*vm, md5, m);
        out[std::string("verified_") + Key(m)] = true;
      }
      Discard(env, vm);
    }
  }
  for (Method m : kAllMethods) {
    out[std::string("restore_qmp_ready_") + Key(m) + "_ms"] = Stats(qmp_ready[m]);
    out[std::string("restore_loaded_") + Key(m) + "_ms"] = Stats(loaded[m]);
    out[std::string("restore_load_only_") + Key(m) + "_ms"] = Stats(load_only[m]);
    out[std::string("restore_running_") + Key(m) + "_ms"] = Stats(running[m]);
  }
  std::printf("  restores done (each method's restored guest has the source's dirtied file)\n");

  // --- Fork: N restores from one snapshot at once ---------------------------------------------
  const Method fork_methods[] = {Method::kSplitter, Method::kMappedRam};
  for (int n : {1, 8}) {
    std::map<Method, std::vector<double>> wall, pss;
    std::map<Method, MemUse> last_mem;
    for (int rep = 0; rep < o.reps; ++rep) {
      for (Method m : fork_methods) {
        std::vector<std::unique_ptr<RestoredVm>> kids;
        for (int i = 0; i < n; ++i) {
          std::string name = "mrbench-f" + std::to_string(serial++);
          kids.push_back(PrepareRestore(env, kept[m], env.dir + "/" + name, name));
        }
        auto t0 = Clock::now();
        Parallel(n, [&](int i) { StartRestore(env, *kids[i], kept[m]); });
        wall[m].push_back(Ms(Clock::now() - t0));
        MemUse sum;
        for (auto& k : kids) sum += ReadMemUse(k->pid());
        pss[m].push_back(sum.pss);
        last_mem[m] = sum;
        if (n == 8 && rep + 1 == o.reps) {
          // Every child reads its whole dirtied file: the splitter's children fault the one
          // file's page-cache pages in (shared); mapped-ram's read their own copies.
          Parallel(n, [&](int i) {
            auto g = ConnectGuest(kids[i]->spec, seconds(120));
            GuestSh(*g, "cat /dev/shm/dirty > /dev/null", seconds(300));
          });
          MemUse after;
          for (auto& k : kids) after += ReadMemUse(k->pid());
          out["fork_n8_mem_after_guest_read_" + std::string(Key(m)) + "_mib"] = after.ToJson();
        }
        for (auto& k : kids) Discard(env, k);
      }
    }
    for (Method m : fork_methods) {
      std::string sfx = std::string(Key(m));
      out["fork_n" + std::to_string(n) + "_" + sfx + "_ms"] = Stats(wall[m]);
      out["fork_n" + std::to_string(n) + "_pss_" + sfx + "_mib"] = Stats(pss[m]);
      out["fork_n" + std::to_string(n) + "_mem_" + sfx + "_mib"] = last_mem[m].ToJson();
    }
    std::printf("  fork N=%d done\n", n);
  }

  json lines = json::array();
  for (const auto& [line, count] : env.qemu_stderr)
    lines.push_back({{"line", line}, {"count", count}});
  out["qemu_stderr"] = lines;
  out["run_seconds"] = std::chrono::duration<double>(Clock::now() - run_start).count();
  return out;
}

// --- The summary ---------------------------------------------------------------------------

std::string Cell(const json& out, const std::string& key, const char* unit) {
  if (!out.contains(key)) return "-";
  const json& v = out[key];
  char b[64];
  std::snprintf(b, sizeof b, "%.1f %s (%.1f-%.1f)", v["p50"].get<double>(), unit,
                v["min"].get<double>(), v["max"].get<double>());
  return b;
}

void PrintSummary(const json& out, const std::string& json_path) {
  std::printf(
      "\nmapped-ram vs splitter: %s, TCG, 1 vCPU, %d MiB guest, %d MiB dirtied in the guest; "
      "p50 (min-max) of %d\n",
      out["qemu"].get<std::string>().c_str(), out["memory_mib"].get<int>(),
      out["dirty_mib"].get<int>(), out["reps"].get<int>());
  std::printf("  %-34s %-26s %-26s %-26s\n", "", Label(Method::kSplitter),
              Label(Method::kMappedRam), Label(Method::kMappedRamMultifd));
  auto row = [&](const char* label, const std::string& prefix, const std::string& suffix,
                 const char* unit) {
    std::printf("  %-34s", label);
    for (Method m : kAllMethods) {
      std::printf(" %-26s", Cell(out, prefix + Key(m) + suffix, unit).c_str());
    }
    std::printf("\n");
  };
  row("save (stop to written)", "save_", "_ms", "ms");
  row("  then fsync", "save_fsync_", "_ms", "ms");
  row("restore: QMP up (process start)", "restore_qmp_ready_", "_ms", "ms");
  row("restore: to migration completed", "restore_loaded_", "_ms", "ms");
  row("  of which the load", "restore_load_only_", "_ms", "ms");
  row("restore: to running (cont)", "restore_running_", "_ms", "ms");
  row("fork N=1: wall", "fork_n1_", "_ms", "ms");
  row("fork N=8: wall", "fork_n8_", "_ms", "ms");
  row("fork N=1: PSS of the child", "fork_n1_pss_", "_mib", "MiB");
  row("fork N=8: PSS sum, after restore", "fork_n8_pss_", "_mib", "MiB");
  std::printf("  %-34s", "fork N=8: PSS sum, guests read all");
  for (Method m : kAllMethods) {
    std::string k = std::string("fork_n8_mem_after_guest_read_") + Key(m) + "_mib";
    char b[64] = "-";
    if (out.contains(k)) {
      std::snprintf(b, sizeof b, "%.1f MiB (anon %.1f)", out[k]["pss"].get<double>(),
                    out[k]["pss_anon"].get<double>());
    }
    std::printf(" %-26s", b);
  }
  std::printf("\n");
  const json& f = out["files"];
  auto mib = [](const json& v) { return v.get<double>() / (1 << 20); };
  std::printf("  %-34s", "files: size / allocated");
  char b[96];
  std::snprintf(b, sizeof b, "%.0f+%.2f / %.1f MiB", mib(f["splitter"]["mem_bytes"]),
                mib(f["splitter"]["state_bytes"]), mib(f["splitter"]["total_allocated_bytes"]));
  std::printf(" %-26s", b);
  for (Method m : {Method::kMappedRam, Method::kMappedRamMultifd}) {
    std::snprintf(b, sizeof b, "%.1f / %.1f MiB", mib(f[Key(m)]["bytes"]),
                  mib(f[Key(m)]["allocated_bytes"]));
    std::printf(" %-26s", b);
  }
  std::printf("\n");
  if (!out["qemu_stderr"].empty()) {
    std::printf("  QEMU stderr (all VMs):\n");
    for (const auto& l : out["qemu_stderr"]) {
      std::printf("    %dx %s\n", l["count"].get<int>(), l["line"].get<std::string>().c_str());
    }
  } else {
    std::printf("  QEMU stderr: nothing\n");
  }
  std::printf("  run time %.0f s; JSON: %s\n", out["run_seconds"].get<double>(), json_path.c_str());
}

}  // namespace
}  // namespace moat::bench

int main(int argc, char** argv) {
  using moat::bench::AtLeastOne;
  moat::bench::Env env;
  moat::bench::Options& o = env.o;
  bool parsed = moat::bench::ParseFlags(
      argc, argv,
      {{"--guest-dir", [&](const std::string& v) { o.guest_dir = v; }},
       {"--work-dir", [&](const std::string& v) { o.work_dir = v; }},
       {"--memory-mib", [&](const std::string& v) { o.memory_mib = AtLeastOne(v); }},
       {"--dirty-mib", [&](const std::string& v) { o.dirty_mib = AtLeastOne(v); }},
       {"--reps", [&](const std::string& v) { o.reps = AtLeastOne(v); }},
       {"--json", [&](const std::string& v) { o.json_path = v; }}},
      "mapped_ram_bench [--guest-dir DIR] [--work-dir DIR] [--memory-mib N] [--dirty-mib N]\n"
      "                 [--reps N] [--json PATH]");
  if (!parsed) return 2;
  if (::geteuid() != 0) {
    std::fprintf(stderr, "mapped_ram_bench: run it as root (QEMU's files, /proc of its pids)\n");
    return 2;
  }
  if (o.dirty_mib + 8 > o.memory_mib / 2) {
    // The guest's /dev/shm (tmpfs) holds half its RAM (MemTotal, a little less than the VM's).
    std::fprintf(stderr,
                 "mapped_ram_bench: --dirty-mib must be under half of --memory-mib, less 8 (the "
                 "guest's /dev/shm)\n");
    return 2;
  }
  moat::SetLogLevel(moat::LogLevel::kWarn);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  // QEMU's command line takes absolute paths only.
  o.guest_dir = std::filesystem::absolute(o.guest_dir).lexically_normal().string();
  o.work_dir = std::filesystem::absolute(o.work_dir).lexically_normal().string();
  env.kernel = o.guest_dir + "/vmlinux";
  for (const auto& p : {env.kernel, o.guest_dir + "/rootfs.ext4"}) {
    if (!moat::PathExists(p)) {
      std::fprintf(stderr, "mapped_ram_bench: %s is missing (make guest)\n", p.c_str());
      return 2;
    }
  }
  auto version = moat::vmm::qemu::ProbeQemuVersion(env.qemu);
  if (!version.ok()) {
    std::fprintf(stderr, "mapped_ram_bench: %s\n", version.status().ToString().c_str());
    return 1;
  }
  if (!version->AtLeast(9, 0)) {
    std::fprintf(stderr, "mapped_ram_bench: mapped-ram needs QEMU 9.0 or later; this is %s\n",
                 version->text.c_str());
    return 1;
  }
  env.version = *version;
  env.features = moat::vmm::qemu::QemuFeatures::Of(env.version);
  auto dir = moat::MakeTempDir(o.work_dir, "moat-mrbench.");
  if (!dir.ok()) {
    std::fprintf(stderr, "mapped_ram_bench: %s\n", dir.status().ToString().c_str());
    return 1;
  }
  env.dir = *dir;
  env.base_disk = env.dir + "/disk.raw";
  int rc = 0;
  nlohmann::json out;
  try {
    out = moat::bench::Run(env);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mapped_ram_bench: %s\n", e.what());
    rc = 1;
  }
  (void)moat::RemoveTree(env.dir);
  if (rc != 0) {
    for (const auto& [line, count] : env.qemu_stderr) {
      std::fprintf(stderr, "  qemu stderr: %dx %s\n", count, line.c_str());
    }
    return rc;
  }
  if (auto w = moat::bench::WriteJson(o.json_path, out); !w.ok()) {
    std::fprintf(stderr, "mapped_ram_bench: %s\n", w.ToString().c_str());
    return 1;
  }
  moat::bench::PrintSummary(out, o.json_path);
  return 0;
}
