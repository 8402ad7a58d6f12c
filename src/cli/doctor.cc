// `moat doctor`: checks that this host can run moat sandboxes and says what it found: the
// hypervisor binary, the guest artifacts, the accelerator moat would choose (and why), cgroups.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "cli/commands.h"
#include "common/child_process.h"
#include "common/fs.h"
#include "vmm/cgroup.h"
#include "vmm/qemu/accel_probe.h"

namespace moat::cli {
namespace {

struct DoctorOptions {
  std::string guest_dir = "build/guest";
};

int Check(bool ok, const std::string& what, const std::string& detail) {
  std::printf("%s %-22s %s\n", ok ? "[ok]  " : "[FAIL]", what.c_str(), detail.c_str());
  return ok ? 0 : 1;
}

std::string QemuVersion() {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) < 0) return "";
  UniqueFd r(p[0]), w(p[1]);
  auto child = ChildProcess::Spawn(
      {.argv = {"/usr/bin/qemu-system-x86_64", "--version"}, .fds = {{1, w.get()}}});
  w.Reset();
  if (!child.ok()) return "";
  char buf[256] = {};
  ssize_t n = ::read(r.get(), buf, sizeof buf - 1);
  (void)child->Wait();
  std::string out(buf, n > 0 ? static_cast<size_t>(n) : 0);
  return out.substr(0, out.find('\n'));
}

}  // namespace

Runner AddDoctor(CLI::App& app) {
  auto opts = std::make_shared<DoctorOptions>();
  auto* cmd = app.add_subcommand("doctor", "check that this host can run moat sandboxes");
  cmd->add_option("--guest-dir", opts->guest_dir, "directory with vmlinux and rootfs.ext4")
      ->capture_default_str();
  return [opts] {
    int failures = 0;
    std::string qemu = QemuVersion();
    failures += Check(!qemu.empty(), "qemu-system-x86_64", qemu.empty() ? "not found" : qemu);
    for (const char* f : {"vmlinux", "rootfs.ext4"}) {
      std::string path = opts->guest_dir + "/" + f;
      failures += Check(PathExists(path), std::string("guest ") + f,
                        PathExists(path) ? path : path + " missing (run `make guest`)");
    }
    failures += Check(::geteuid() == 0, "root", ::geteuid() == 0 ? "yes" : "the agent needs root");
    auto layout = vmm::DetectCgroupLayout();
    failures += Check(layout.ok(), "cgroups",
                      layout.ok() ? (layout->version == vmm::CgroupVersion::kV1 ? "v1" : "v2")
                                  : layout.status().message());
    vmm::qemu::AccelProbeOptions probe;
    probe.kernel_path = opts->guest_dir + "/vmlinux";
    auto accel = vmm::qemu::ResolveAccel(vmm::qemu::AccelMode::kAuto, probe);
    if (accel.ok()) {
      Check(true, "accelerator",
            std::string(vmm::AccelName(accel->accel)) + " (" + accel->reason + ")");
    } else {
      failures += Check(false, "accelerator", accel.status().message());
    }
    std::printf("%s\n", failures == 0 ? "moat can run sandboxes on this host"
                                      : "moat cannot run sandboxes on this host yet");
    return failures == 0 ? 0 : 1;
  };
}

}  // namespace moat::cli
