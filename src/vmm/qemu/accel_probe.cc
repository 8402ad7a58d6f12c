#include "vmm/qemu/accel_probe.h"

#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <mutex>
#include <optional>
#include <thread>

#include "common/child_process.h"
#include "common/cleanup.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/unique_fd.h"

namespace moat::vmm::qemu {
namespace {

// Cheap reasons not to use KVM, before booting anything. Returns the reason, or "" to go on.
std::string CheapKvmCheck() {
  UniqueFd kvm(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
  if (!kvm) return ErrnoError("open(/dev/kvm)").message();
  // KVM_GET_API_VERSION takes no argument and returns the API version (12 since 2.6.22).
  int version = ::ioctl(kvm.get(), KVM_GET_API_VERSION, 0);
  if (version != KVM_API_VERSION) {
    return "/dev/kvm reports API version " + std::to_string(version);
  }
  auto modules = ReadFile("/proc/modules");
  if (PathExists("/sys/module/kvm_pvm") ||
      (modules.ok() && modules->find("kvm_pvm") != std::string::npos)) {
    return "kvm is kvm_pvm (PVM nested virtualization): stock guests fail with KVM internal "
           "error";
  }
  return "";
}

// The last `n` bytes of QEMU's stderr as one line, for a reason string that is logged.
std::string Tail(const std::string& s, size_t n) {
  std::string t = s.size() > n ? s.substr(s.size() - n) : s;
  while (!t.empty() && (t.back() == '\n' || t.back() == ' ')) t.pop_back();
  for (size_t i = 0; (i = t.find('\n', i)) != std::string::npos;) t.replace(i, 1, "; ");
  return t;
}

}  // namespace

Result<AccelMode> ParseAccelMode(std::string_view text) {
  if (text == "auto") return AccelMode::kAuto;
  if (text == "kvm") return AccelMode::kKvm;
  if (text == "tcg") return AccelMode::kTcg;
  return InvalidArgument("accel: \"" + std::string(text) + "\" is not one of auto, kvm, tcg");
}

Status ProbeKvmBoot(const AccelProbeOptions& o) {
  if (o.kernel_path.empty() || !PathExists(o.kernel_path)) {
    return NotFound("no probe kernel at \"" + o.kernel_path + "\"");
  }
  MOAT_ASSIGN_OR_RETURN(std::string dir, MakeTempDir(o.work_dir, "moat-kvm-probe."));
  Cleanup remove_dir([&dir] { (void)RemoveTree(dir); });
  std::string console = dir + "/console.log";
  std::string err_path = dir + "/stderr.log";
  UniqueFd err_fd(::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!err_fd) return ErrnoError("open(" + err_path + ")");
  SpawnOptions spawn;
  // No disk: the kernel panics on the missing root, which needs a working CPU, MMU, timer and
  // interrupts; -no-reboot turns the panic into a clean exit.
  spawn.argv = {o.qemu_binary,
                "-M",
                "microvm,x-option-roms=off,isa-serial=on,acpi=off,rtc=off",
                "-accel",
                "kvm",
                "-cpu",
                "host",
                "-m",
                "64M",
                "-smp",
                "1",
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
                "-sandbox",
                "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
                "-chardev",
                "file,id=console,path=" + console,
                "-serial",
                "chardev:console",
                "-kernel",
                o.kernel_path,
                "-append",
                "console=ttyS0 panic=-1 reboot=t root=/dev/vda rootwait=0"};
  spawn.env = std::vector<std::string>{};
  spawn.fds = {{2, err_fd.get()}};
  MOAT_ASSIGN_OR_RETURN(ChildProcess qemu, ChildProcess::Spawn(spawn));
  auto deadline = std::chrono::steady_clock::now() + o.boot_timeout;
  for (;;) {
    bool exited = qemu.Exited();  // before reading: a panic's last line is in the file by then
    auto out = ReadFile(console);
    if (out.ok() && (out->find("Kernel panic") != std::string::npos ||
                     out->find("VFS: Unable to mount root") != std::string::npos)) {
      return Status::Ok();
    }
    auto err = ReadFile(err_path);
    if (err.ok() && err->find("KVM internal error") != std::string::npos) {
      return Unavailable("probe guest failed under KVM: " + Tail(*err, 200));
    }
    if (exited) {
      return Unavailable("probe QEMU " + DescribeWaitStatus(qemu.exit_status().value_or(-1)) +
                         " before the guest kernel ran: " + Tail(err.ok() ? *err : "", 200));
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      return DeadlineExceeded("probe guest did not boot within " +
                              std::to_string(o.boot_timeout.count()) + " ms under KVM");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

Result<AccelChoice> ResolveAccel(AccelMode mode, const AccelProbeOptions& options) {
  if (mode == AccelMode::kTcg) return AccelChoice{Accel::kTcg, "requested"};
  if (mode == AccelMode::kKvm) {
    UniqueFd kvm(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
    if (!kvm) return ErrnoError("accel=kvm requested but open(/dev/kvm)");
    return AccelChoice{Accel::kKvm, "requested"};
  }
  static std::mutex mu;
  static std::optional<AccelChoice> cached;
  std::lock_guard<std::mutex> lock(mu);
  if (cached && !options.force_boot_probe) return *cached;
  AccelChoice choice;
  std::string cheap = options.force_boot_probe ? "" : CheapKvmCheck();
  if (!cheap.empty()) {
    choice = {Accel::kTcg, cheap};
  } else {
    auto start = std::chrono::steady_clock::now();
    Status probe = ProbeKvmBoot(options);
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                  std::chrono::steady_clock::now() - start)
                  .count();
    if (probe.ok()) {
      choice = {Accel::kKvm, "probe guest booted under KVM in " + std::to_string(ms) + " ms"};
    } else {
      choice = {Accel::kTcg, probe.message()};
    }
  }
  if (!options.force_boot_probe) cached = choice;
  return choice;
}

}  // namespace moat::vmm::qemu
