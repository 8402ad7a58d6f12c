// Boots real microVMs under TCG with the jail on: cold boot, pause/resume, save device state,
// restore a clone from the template memory, and checks that the VMM is confined and that
// nothing is left behind. Needs root and the guest artifacts in $MOAT_BUILD_DIR/guest.
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "common/fs.h"
#include "common/unique_fd.h"
#include "vmm/qemu/accel_probe.h"
#include "vmm/qemu/qemu_driver.h"

namespace moat::vmm::qemu {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

struct Artifacts {
  std::string kernel;
  std::string rootfs;
};

// The artifacts are part of the build: their absence is a failure, not a reason to skip.
Artifacts RequireArtifacts() {
  const char* build = std::getenv("MOAT_BUILD_DIR");
  std::string dir = std::string(build ? build : "build") + "/guest";
  Artifacts a{dir + "/vmlinux", dir + "/rootfs.ext4"};
  EXPECT_EQ(::geteuid(), 0u) << "the VMM e2e tests need root (jail, cgroups)";
  EXPECT_TRUE(PathExists(a.kernel))
      << "guest kernel missing: " << a.kernel << " (build it: guest/build-kernel.sh)";
  EXPECT_TRUE(PathExists(a.rootfs))
      << "guest rootfs missing: " << a.rootfs << " (build it: guest/build-rootfs.sh)";
  return a;
}

bool WaitFor(const std::function<bool()>& cond, milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(milliseconds(20));
  }
  return cond();
}

std::string StatusField(pid_t pid, const std::string& key) {
  auto text = ReadFile("/proc/" + std::to_string(pid) + "/status");
  if (!text.ok()) return "";
  size_t at = text->find("\n" + key + ":");
  if (at == std::string::npos) return "";
  size_t start = text->find_first_not_of(" \t", at + key.size() + 2);
  return text->substr(start, text->find('\n', start) - start);
}

std::string Readlink(const std::string& path) {
  char buf[256];
  ssize_t n = ::readlink(path.c_str(), buf, sizeof buf - 1);
  return n < 0 ? "" : std::string(buf, static_cast<size_t>(n));
}

double Ms(std::chrono::microseconds us) {
  return static_cast<double>(us.count()) / 1000.0;
}

// A restored VM's hold on the memory file it shares with its siblings is read-only three times
// over (QEMU >= 8.2, readonly=on,rom=off): its fd is O_RDONLY, its mapping is private and
// writable, and the file is bound read-only into its jail; its uid cannot open it for writing.
void ExpectMemoryFileReadOnly(pid_t pid, const std::string& path, uid_t uid, gid_t gid) {
  SCOPED_TRACE("memory file " + path + " in VMM " + std::to_string(pid));
  struct stat want {};
  ASSERT_EQ(::stat(path.c_str(), &want), 0);
  std::string proc = "/proc/" + std::to_string(pid);
  int found = 0;
  if (DIR* dir = ::opendir((proc + "/fd").c_str())) {
    while (dirent* e = ::readdir(dir)) {
      std::string n = e->d_name;
      if (n == "." || n == "..") continue;
      struct stat st {};
      if (::stat((proc + "/fd/" + n).c_str(), &st) < 0) continue;
      if (st.st_dev != want.st_dev || st.st_ino != want.st_ino) continue;
      ++found;
      auto info = ReadFile(proc + "/fdinfo/" + n);
      ASSERT_TRUE(info.ok());
      size_t at = info->find("flags:");
      ASSERT_NE(at, std::string::npos) << *info;
      unsigned long flags = std::stoul(info->substr(at + 6), nullptr, 8);
      EXPECT_EQ(flags & O_ACCMODE, static_cast<unsigned long>(O_RDONLY))
          << "fd " << n << " flags 0" << std::oct << flags;
    }
    ::closedir(dir);
  }
  EXPECT_EQ(found, 1) << "the VMM should hold the memory file open exactly once";
  // The mapping: private and writable (the guest's own copy-on-write RAM), never shared.
  auto maps = ReadFile(proc + "/maps");
  ASSERT_TRUE(maps.ok());
  char ino[32];
  std::snprintf(ino, sizeof ino, " %llu ", static_cast<unsigned long long>(want.st_ino));
  int mapped = 0;
  size_t line_start = 0;
  while (line_start < maps->size()) {
    size_t end = maps->find('\n', line_start);
    if (end == std::string::npos) end = maps->size();
    std::string line = maps->substr(line_start, end - line_start);
    line_start = end + 1;
    if (line.find(ino) == std::string::npos ||
        line.find(path.substr(path.rfind('/'))) == std::string::npos) {
      continue;
    }
    ++mapped;
    std::string perms = line.substr(line.find(' ') + 1, 4);
    EXPECT_EQ(perms, "rw-p") << line;
  }
  EXPECT_GE(mapped, 1) << "the memory file is not mapped";
  // The bind mount in the jail is read-only.
  auto mountinfo = ReadFile(proc + "/mountinfo");
  ASSERT_TRUE(mountinfo.ok());
  size_t m = mountinfo->find(" " + path + " ");
  ASSERT_NE(m, std::string::npos) << "the memory file is not bound in the jail";
  size_t opts = m + 1 + path.size();  // the space before the mount's options
  std::string o = mountinfo->substr(opts + 1, mountinfo->find(' ', opts + 1) - opts - 1);
  EXPECT_TRUE(o == "ro" || o.rfind("ro,", 0) == 0) << mountinfo->substr(m, 120);
  // And the VM's uid cannot open it for writing.
  pid_t child = ::fork();
  if (child == 0) {
    if (::setgroups(0, nullptr) < 0 || ::setgid(gid) < 0 || ::setuid(uid) < 0) ::_exit(2);
    int fd = ::open(path.c_str(), O_RDWR);
    ::_exit(fd < 0 && errno == EACCES ? 0 : 1);
  }
  int ws = 0;
  ASSERT_EQ(::waitpid(child, &ws, 0), child);
  EXPECT_TRUE(WIFEXITED(ws) && WEXITSTATUS(ws) == 0)
      << "the VM's uid " << uid << " can open " << path << " for writing";
}

class VmDirs {
 public:
  explicit VmDirs(const std::string& base, const std::string& name) : dir(base + "/" + name) {
    EXPECT_TRUE(MakeDirs(dir, 0755).ok());
  }
  std::string dir;
};

VmSpec BaseSpec(const Artifacts& a, const std::string& name, const std::string& dir, uid_t uid,
                gid_t gid) {
  VmSpec s;
  s.name = name;
  s.vcpus = 1;
  s.memory_mib = 128;
  s.accel = Accel::kTcg;
  s.kernel_path = a.kernel;
  // The test rootfs may lack a working moat-guest: run a shell as init, which waits on the
  // console forever, and print the kernel's info lines ("Run /bin/sh as init process").
  // "ro" (the last of rw/ro wins): the guest never writes its disk, so a clone's overlay over
  // the same base image stays consistent with the template's page cache.
  s.kernel_cmdline_extra = "init=/bin/sh loglevel=7 ro";
  s.rootfs.path = a.rootfs;
  // virtio-blk's read-only feature bit is device state: template and clone must agree, so both
  // get a writable qcow2 overlay of their own.
  s.rootfs.overlay_path = dir + "/overlay.qcow2";
  std::string qemu_img =
      "qemu-img create -q -f qcow2 -F raw -b " + a.rootfs + " " + s.rootfs.overlay_path;
  EXPECT_EQ(std::system(qemu_img.c_str()), 0) << qemu_img;
  s.console_log_path = dir + "/console.log";
  s.guest_socket_path = dir + "/guest.sock";
  s.qmp_socket_path = dir + "/qmp.sock";
  s.vmm_log_path = dir + "/vmm.log";
  JailSpec j;
  j.uid = uid;
  j.gid = gid;
  s.jail = j;
  return s;
}

TEST(AccelProbe, AutoPicksTcgOnThisHostQuicklyAndSaysWhy) {
  Artifacts a = RequireArtifacts();
  ASSERT_FALSE(::testing::Test::HasFailure());
  AccelProbeOptions o;
  o.kernel_path = a.kernel;
  o.work_dir = "/dev/shm";
  auto start = Clock::now();
  auto choice = ResolveAccel(AccelMode::kAuto, o);
  ASSERT_TRUE(choice.ok()) << choice.status().ToString();
  auto cheap_ms = std::chrono::duration_cast<milliseconds>(Clock::now() - start).count();
  std::printf("accel=%s reason=\"%s\" (%lld ms)\n", std::string(AccelName(choice->accel)).c_str(),
              choice->reason.c_str(), static_cast<long long>(cheap_ms));
  EXPECT_FALSE(choice->reason.empty());
  // This host's /dev/kvm is PVM nested virtualization, where stock guests cannot run.
  bool pvm = PathExists("/sys/module/kvm_pvm");
  if (pvm || !PathExists("/dev/kvm")) {
    EXPECT_EQ(choice->accel, Accel::kTcg);
  }
  // The real boot probe, forced past the cheap checks: it must finish in bounded time and, on
  // PVM, say that the guest failed.
  o.force_boot_probe = true;
  o.boot_timeout = milliseconds(8000);
  start = Clock::now();
  auto probed = ResolveAccel(AccelMode::kAuto, o);
  auto probe_ms = std::chrono::duration_cast<milliseconds>(Clock::now() - start).count();
  ASSERT_TRUE(probed.ok());
  std::printf("boot probe: accel=%s reason=\"%s\" (%lld ms)\n",
              std::string(AccelName(probed->accel)).c_str(), probed->reason.c_str(),
              static_cast<long long>(probe_ms));
  EXPECT_LT(probe_ms, 12000);
  if (pvm) {
    EXPECT_EQ(probed->accel, Accel::kTcg);
  }
  auto tcg = ResolveAccel(AccelMode::kTcg, o);
  ASSERT_TRUE(tcg.ok());
  EXPECT_EQ(tcg->accel, Accel::kTcg);
}

TEST(QemuDriver, JailedColdBootSnapshotRestoreAndNothingLeftBehind) {
  Artifacts a = RequireArtifacts();
  ASSERT_FALSE(::testing::Test::HasFailure());
  auto base_dir = MakeTempDir("/dev/shm", "moat-vmm-e2e.");  // tmpfs: the memory file lives here
  ASSERT_TRUE(base_dir.ok());
  std::string base = *base_dir;
  ::chmod(base.c_str(), 0755);
  struct RemoveBase {
    std::string p;
    ~RemoveBase() { (void)RemoveTree(p); }
  } remove_base{base};
  JailIdAllocator ids(900000 + static_cast<uint32_t>(::getpid() % 1000) * 16, 16);
  gid_t template_gid = *ids.Allocate();
  uid_t uid1 = *ids.Allocate();
  uid_t uid2 = *ids.Allocate();
  std::string tag = std::to_string(::getpid());
  ASSERT_TRUE(MakeDirs(base + "/template", 0755).ok());
  std::string mem = base + "/template/mem";
  std::string vmstate = base + "/template/vmstate";

  // --- Cold boot ------------------------------------------------------------------------
  VmDirs d1(base, "vm1");
  VmSpec s1 = BaseSpec(a, "e2e-" + tag + "-vm1", d1.dir, uid1, template_gid);
  s1.memory_path = mem;
  s1.memory_shared = true;
  QemuDriver vm1;
  auto t0 = Clock::now();
  Status started = vm1.Start(s1);
  ASSERT_TRUE(started.ok()) << started.ToString();
  pid_t pid1 = vm1.pid();
  ASSERT_GT(pid1, 0);
  bool booted = WaitFor(
      [&] {
        auto c = ReadFile(s1.console_log_path);
        return c.ok() && c->find("Run /bin/sh as init process") != std::string::npos;
      },
      milliseconds(30000));
  auto console = ReadFile(s1.console_log_path);
  ASSERT_TRUE(booted) << "console: " << (console.ok() ? *console : console.status().ToString());
  EXPECT_NE(console->find("Linux version"), std::string::npos);
  std::printf("cold boot to init: %.0f ms\n",
              std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  auto st = vm1.QueryStatus();
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  EXPECT_EQ(st->state, VmState::kRunning);
  EXPECT_EQ(st->qmp_status, "running");

  // --- The jail, seen from the host -----------------------------------------------------
  EXPECT_EQ(StatusField(pid1, "Uid"), std::to_string(uid1) + "\t" + std::to_string(uid1) + "\t" +
                                          std::to_string(uid1) + "\t" + std::to_string(uid1));
  EXPECT_EQ(StatusField(pid1, "Gid").substr(0, std::to_string(template_gid).size()),
            std::to_string(template_gid));
  EXPECT_EQ(StatusField(pid1, "Groups"), "");
  EXPECT_EQ(StatusField(pid1, "CapEff"), "0000000000000000");
  EXPECT_EQ(StatusField(pid1, "CapPrm"), "0000000000000000");
  EXPECT_EQ(StatusField(pid1, "CapBnd"), "0000000000000000");
  EXPECT_EQ(StatusField(pid1, "NoNewPrivs"), "1");
  EXPECT_EQ(StatusField(pid1, "Seccomp"), "2");  // QEMU's own -sandbox on
  ASSERT_NE(vm1.cgroup(), nullptr);
  auto in_cgroup = vm1.cgroup()->Contains(pid1);
  ASSERT_TRUE(in_cgroup.ok()) << in_cgroup.status().ToString();
  EXPECT_TRUE(*in_cgroup);
  std::vector<std::string> cgroup_dirs = vm1.cgroup()->dirs();
  auto proc_cgroup = ReadFile("/proc/" + std::to_string(pid1) + "/cgroup");
  ASSERT_TRUE(proc_cgroup.ok());
  EXPECT_NE(proc_cgroup->find("/moat/" + s1.name), std::string::npos) << *proc_cgroup;
  EXPECT_NE(Readlink("/proc/" + std::to_string(pid1) + "/ns/mnt"), Readlink("/proc/self/ns/mnt"));
  std::string root = "/proc/" + std::to_string(pid1) + "/root";
  EXPECT_TRUE(PathExists(root + "/usr/bin/qemu-system-x86_64"));
  EXPECT_TRUE(PathExists(root + s1.qmp_socket_path));
  EXPECT_FALSE(PathExists(root + "/etc/shadow"));
  EXPECT_FALSE(PathExists(root + "/root"));
  EXPECT_FALSE(PathExists(root + "/home"));
  EXPECT_FALSE(PathExists(root + "/proc/1"));
  EXPECT_FALSE(PathExists(root + base + "/template/vmstate")) << "files beside the memory file";
  std::vector<std::string> top;
  if (DIR* dir = ::opendir((root + "/").c_str())) {
    while (dirent* e = ::readdir(dir)) {
      std::string n = e->d_name;
      if (n != "." && n != "..") top.push_back(n);
    }
    ::closedir(dir);
  }
  // Only the system directories and the first components of the VM's own paths.
  auto first = [](const std::string& p) { return p.substr(1, p.find('/', 1) - 1); };
  for (const auto& n : top) {
    EXPECT_TRUE(n == "usr" || n == "lib" || n == "lib64" || n == "bin" || n == "sbin" ||
                n == "etc" || n == "dev" || n == first(base) || n == first(a.kernel) ||
                n == first(a.rootfs))
        << "unexpected entry in the jail's root: /" << n;
  }
  // The artifact directory shows only the two bound files, whatever else it holds on the host.
  std::string kernel_dir = a.kernel.substr(0, a.kernel.rfind('/'));
  auto base_name = [](const std::string& p) { return p.substr(p.rfind('/') + 1); };
  if (DIR* dir = ::opendir((root + kernel_dir).c_str())) {
    while (dirent* e = ::readdir(dir)) {
      std::string n = e->d_name;
      EXPECT_TRUE(n == "." || n == ".." || n == base_name(a.kernel) || n == base_name(a.rootfs))
          << "a sibling of the kernel image is visible in the jail: " << n;
    }
    ::closedir(dir);
  } else {
    ADD_FAILURE() << "the kernel's directory is missing from the jail";
  }
  auto devs = ReadFile(root + "/etc/ld.so.cache");
  EXPECT_TRUE(devs.ok());
  EXPECT_FALSE(PathExists(root + "/etc/passwd"));

  // --- Pause and resume -----------------------------------------------------------------
  ASSERT_TRUE(vm1.Pause().ok());
  EXPECT_EQ(vm1.QueryStatus()->qmp_status, "paused");
  ASSERT_TRUE(vm1.Resume().ok());
  EXPECT_EQ(vm1.QueryStatus()->qmp_status, "running");

  // --- Save device state: the template snapshot ------------------------------------------
  auto t_save = Clock::now();
  Status saved = vm1.SaveDeviceState(vmstate, /*durable=*/true);
  ASSERT_TRUE(saved.ok()) << saved.ToString();
  double save_ms = std::chrono::duration<double, std::milli>(Clock::now() - t_save).count();
  struct stat state_st {};
  ASSERT_EQ(::stat(vmstate.c_str(), &state_st), 0);
  std::printf("save device state: %.1f ms, %lld bytes\n", save_ms,
              static_cast<long long>(state_st.st_size));
  EXPECT_GT(state_st.st_size, 4 * 1024);
  EXPECT_LT(state_st.st_size, 1024 * 1024) << "guest RAM must not be in the device state";
  Status resumed = vm1.Resume();
  EXPECT_EQ(resumed.code(), ErrorCode::kFailedPrecondition) << resumed.ToString();
  // As the agent's template store leaves a baked template: the memory file is root's, readable
  // by the clones' group.
  ASSERT_EQ(::chown(mem.c_str(), 0, template_gid), 0);
  ASSERT_EQ(::chmod(mem.c_str(), 0640), 0);

  // --- Restore a clone from the template: private memory, a qcow2 overlay ------------------
  VmDirs d2(base, "vm2");
  VmSpec s2 = BaseSpec(a, "e2e-" + tag + "-vm2", d2.dir, uid2, template_gid);
  s2.boot_mode = BootMode::kRestore;
  s2.kernel_path.clear();
  s2.memory_path = mem;
  s2.memory_shared = false;
  s2.device_state_path = vmstate;
  QemuDriver vm2;
  auto t_restore = Clock::now();
  Status restored = vm2.Start(s2);
  ASSERT_TRUE(restored.ok()) << restored.ToString();
  EXPECT_EQ(vm2.QueryStatus()->qmp_status, "paused");
  auto t_cont = Clock::now();
  ASSERT_TRUE(vm2.Resume().ok());
  auto done = Clock::now();
  const StartTimings& t = vm2.timings();
  std::printf(
      "restore (jailed, TCG): spawn %.1f ms, qmp ready %.1f ms, state loaded %.1f ms, cont %.2f "
      "ms, total to running %.1f ms\n",
      Ms(t.spawn), Ms(t.qmp_ready), Ms(t.state_loaded),
      std::chrono::duration<double, std::milli>(done - t_cont).count(),
      std::chrono::duration<double, std::milli>(done - t_restore).count());
  auto st2 = vm2.QueryStatus();
  ASSERT_TRUE(st2.ok()) << st2.status().ToString();
  EXPECT_EQ(st2->qmp_status, "running");
  // Still running a moment later: the restored guest did not crash.
  std::this_thread::sleep_for(milliseconds(300));
  EXPECT_EQ(vm2.QueryStatus()->qmp_status, "running");
  EXPECT_EQ(StatusField(vm2.pid(), "CapEff"), "0000000000000000");
  EXPECT_GE(vm2.version().major, 8) << vm2.version().text;
  std::printf("qemu: %s\n", vm2.version().text.c_str());
  ExpectMemoryFileReadOnly(vm2.pid(), mem, uid2, template_gid);
  EXPECT_FALSE(PathExists("/proc/" + std::to_string(vm2.pid()) + "/root" + d1.dir + "/qmp.sock"))
      << "the clone sees the template VM's directory";

  // --- Snapshots of the clone, restored: byte-identical RAM ---------------------------------
  // Its RAM is private. A memory-file snapshot splits it out of the stream into a sparse file
  // that a restore maps (nothing loaded); the older full stream carries it. Each restored VM,
  // paused before it runs a single instruction, must hold exactly the RAM the clone had.
  uid_t uid3 = *ids.Allocate();
  auto dump_ram = [](QemuDriver& vm, const std::string& path) {
    auto r = vm.qmp()->Execute("pmemsave",
                               {{"val", 0}, {"size", int64_t{128} << 20}, {"filename", path}});
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    auto data = ReadFile(path);
    // The dump is on tmpfs, charged to the VM's cgroup: it must not stay there.
    ::unlink(path.c_str());
    EXPECT_TRUE(data.ok()) << data.status().ToString();
    return data.ok() ? *data : std::string();
  };
  auto restore_from = [&](const std::string& name, const std::string& memory,
                          const std::string& state, QemuDriver& vm) {
    VmDirs d(base, name);
    VmSpec sp = BaseSpec(a, "e2e-" + tag + "-" + name, d.dir, uid3, template_gid);
    sp.boot_mode = BootMode::kRestore;
    sp.kernel_path.clear();
    sp.memory_path = memory;
    sp.memory_shared = false;
    sp.device_state_path = state;
    Status st = vm.Start(sp);
    EXPECT_TRUE(st.ok()) << st.ToString();
    return d.dir;
  };
  std::string snap_mem = d2.dir + "/snap.mem", snap_state = d2.dir + "/snap.state";
  Status split = vm2.SaveMemorySnapshot(snap_state, snap_mem, /*durable=*/true);
  ASSERT_TRUE(split.ok()) << split.ToString();
  ASSERT_EQ(::chown(snap_mem.c_str(), 0, template_gid), 0);
  ASSERT_EQ(::chmod(snap_mem.c_str(), 0640), 0);  // as the agent leaves it: read-only to VMs
  struct stat mem_st {
  }, split_state_st{};
  ASSERT_EQ(::stat(snap_mem.c_str(), &mem_st), 0);
  ASSERT_EQ(::stat(snap_state.c_str(), &split_state_st), 0);
  EXPECT_EQ(mem_st.st_size, int64_t{128} << 20);
  EXPECT_LT(split_state_st.st_size, 1024 * 1024) << "guest RAM left in the device state";
  std::string ram2 = dump_ram(vm2, d2.dir + "/ram-at-split.dump");
  {
    QemuDriver vm3;
    std::string dir3 = restore_from("vm3", snap_mem, snap_state, vm3);
    EXPECT_EQ(vm3.QueryStatus()->qmp_status, "paused");
    ExpectMemoryFileReadOnly(vm3.pid(), snap_mem, uid3, template_gid);
    EXPECT_TRUE(dump_ram(vm3, dir3 + "/ram.dump") == ram2) << "memory-file restore changed RAM";
    ASSERT_TRUE(vm3.Resume().ok());
    std::this_thread::sleep_for(milliseconds(300));
    EXPECT_EQ(vm3.QueryStatus()->qmp_status, "running");
    EXPECT_TRUE(vm3.Stop(milliseconds(3000)).ok());
  }
  // A split that fails (here: the memory file's filesystem is full) fails the save at once —
  // QEMU's writes fail when the agent stops reading — and the VM can run on.
  {
    ASSERT_TRUE(vm2.Resume().ok());
    std::string small = base + "/small";
    ASSERT_TRUE(MakeDirs(small, 0755).ok());
    ASSERT_EQ(::mount("moat-e2e-small", small.c_str(), "tmpfs", 0, "size=1m"), 0);
    auto t_fail = Clock::now();
    Status full = vm2.SaveMemorySnapshot(small + "/state", small + "/mem", /*durable=*/false);
    auto fail_ms = std::chrono::duration_cast<milliseconds>(Clock::now() - t_fail).count();
    EXPECT_EQ(::umount2(small.c_str(), MNT_DETACH), 0);
    EXPECT_FALSE(full.ok());
    EXPECT_NE(full.message().find("No space left"), std::string::npos) << full.ToString();
    EXPECT_LT(fail_ms, 10000) << "a failed split must not wait for the migration timeout";
  }
  // The clone runs on after a snapshot; then a full snapshot (QEMU refuses to migrate a VM
  // still paused by the previous migration).
  ASSERT_TRUE(vm2.Resume().ok());
  std::string full_state = d2.dir + "/full.state";
  ASSERT_TRUE(vm2.SaveDeviceState(full_state, /*durable=*/true).ok());
  std::string ram2_full = dump_ram(vm2, d2.dir + "/ram-at-full.dump");
  {
    std::string fresh = base + "/fresh.mem";
    {
      UniqueFd f(::open(fresh.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
      ASSERT_TRUE(f.valid());
      ASSERT_EQ(::ftruncate(f.get(), int64_t{128} << 20), 0);
      ASSERT_EQ(::fchown(f.get(), uid3, template_gid), 0);
    }
    QemuDriver vm4;
    std::string dir4 = restore_from("vm4", fresh, full_state, vm4);
    EXPECT_TRUE(dump_ram(vm4, dir4 + "/ram.dump") == ram2_full)
        << "full-stream restore changed RAM";
    EXPECT_TRUE(vm4.Stop(milliseconds(3000)).ok());
  }
  ASSERT_TRUE(vm2.Resume().ok());

  // --- Kill: nothing left behind ----------------------------------------------------------
  pid_t pid2 = vm2.pid();
  std::vector<std::string> all_cgroups = cgroup_dirs;
  for (const auto& d : vm2.cgroup()->dirs()) all_cgroups.push_back(d);
  vm1.Kill();
  Status stopped = vm2.Stop(milliseconds(3000));
  EXPECT_TRUE(stopped.ok()) << stopped.ToString();
  for (pid_t p : {pid1, pid2}) {
    EXPECT_TRUE(::kill(p, 0) < 0 && errno == ESRCH) << "qemu " << p << " still exists";
  }
  for (const auto& d : all_cgroups) EXPECT_FALSE(PathExists(d)) << "cgroup left: " << d;
  for (const auto& s : {s1, s2}) {
    EXPECT_FALSE(PathExists(s.qmp_socket_path)) << s.qmp_socket_path;
    EXPECT_FALSE(PathExists(s.guest_socket_path)) << s.guest_socket_path;
    EXPECT_TRUE(PathExists(s.console_log_path)) << "the console log is kept";
  }
  EXPECT_FALSE(PathExists(d1.dir + "/jail"));
  EXPECT_FALSE(PathExists(d2.dir + "/jail"));
}

}  // namespace
}  // namespace moat::vmm::qemu
