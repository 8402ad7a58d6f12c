// `moat doctor`: checks that this host can run moat sandboxes and says what it found: the
// hypervisor binary (and whether its version is supported), the guest artifacts, the accelerator
// moat would choose (and why), cgroups.
#include <unistd.h>

#include <cstdio>
#include <string>

#include "cli/commands.h"
#include "common/fs.h"
#include "vmm/cgroup.h"
#include "vmm/qemu/accel_probe.h"
#include "vmm/qemu/command_line.h"
#include "vmm/qemu/qemu_version.h"

namespace moat::cli {
namespace {

struct DoctorOptions {
  std::string guest_dir = "build/guest";
};

int Check(bool ok, const std::string& what, const std::string& detail) {
  std::printf("%s %-22s %s\n", ok ? "[ok]  " : "[FAIL]", what.c_str(), detail.c_str());
  return ok ? 0 : 1;
}

}  // namespace

Runner AddDoctor(CLI::App& app) {
  auto opts = std::make_shared<DoctorOptions>();
  auto* cmd = app.add_subcommand("doctor", "check that this host can run moat sandboxes");
  cmd->add_option("--guest-dir", opts->guest_dir, "directory with vmlinux and rootfs.ext4")
      ->capture_default_str();
  return [opts] {
    int failures = 0;
    auto qemu = vmm::qemu::ProbeQemuVersion(vmm::qemu::kDefaultQemuBinary);
    if (!qemu.ok()) {
      failures += Check(false, "qemu-system-x86_64", qemu.status().message());
    } else {
      Status supported = vmm::qemu::CheckQemuSupported(*qemu);
      failures += Check(supported.ok(), "qemu-system-x86_64",
                        supported.ok() ? qemu->text : supported.message());
      if (supported.ok()) {
        vmm::qemu::QemuFeatures f = vmm::qemu::QemuFeatures::Of(*qemu);
        Check(true, "shared memory files",
              f.readonly_private_memory ? "read-only to every VMM (readonly=on,rom=off)" : "");
        if (!f.fdset_file_migration) {
          std::printf("[warn]  %-22s %s\n", "qemu < 9.1",
                      "state files go through fd: (add-fd/file: and exit-on-error=false need 9.1)");
        }
      }
    }
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
