// Which accelerator to run guests under: `--accel auto|kvm|tcg`. `auto` picks KVM only when a
// probe guest really boots under it; /dev/kvm existing proves nothing (on PVM-based nested
// virtualization KVM_CREATE_VM works and every stock guest dies with "KVM internal error").
#pragma once

#include <chrono>
#include <string>
#include <string_view>

#include "common/status.h"
#include "vmm/vmm_driver.h"

namespace moat::vmm::qemu {

enum class AccelMode { kAuto, kKvm, kTcg };
Result<AccelMode> ParseAccelMode(std::string_view text);  // "auto" | "kvm" | "tcg"

struct AccelChoice {
  Accel accel = Accel::kTcg;
  std::string reason;  // for "accel=tcg reason=..." log lines
};

struct AccelProbeOptions {
  // The guest kernel booted by the probe (no disk: it must reach "VFS: Unable to mount root").
  std::string kernel_path;
  std::string qemu_binary = "/usr/bin/qemu-system-x86_64";
  std::chrono::milliseconds boot_timeout{8000};
  // Directory for the probe's console and memory files (removed afterwards).
  std::string work_dir = "/tmp";
  // Skip the cheap checks (kvm_pvm module) and always try the boot: for tests.
  bool force_boot_probe = false;
};

// Resolves the mode. kTcg: TCG. kKvm: KVM if /dev/kvm opens, else an error (no probe: the
// operator asked for it). kAuto: the cheap checks, then the boot probe; never fails, falls back
// to TCG with the reason. The kAuto result is cached for the life of the process (unless
// force_boot_probe).
Result<AccelChoice> ResolveAccel(AccelMode mode, const AccelProbeOptions& options);

// The boot probe alone: boots `kernel_path` under -accel kvm -cpu host, bounded by
// boot_timeout. Ok if the kernel ran far enough to panic on the missing root disk.
Status ProbeKvmBoot(const AccelProbeOptions& options);

}  // namespace moat::vmm::qemu
