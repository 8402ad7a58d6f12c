// The QEMU microvm command line for a VmSpec: a pure function, so every option is unit-tested
// without starting QEMU. Every option here was checked against qemu-system-x86_64 7.2 and 10.0
// (`-M microvm,help`, `-device help`); see shared VMM notes for why each is there.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"
#include "vmm/qemu/qemu_version.h"
#include "vmm/vmm_driver.h"

namespace moat::vmm::qemu {

inline constexpr char kDefaultQemuBinary[] = "/usr/bin/qemu-system-x86_64";
// The fixed part of the guest kernel command line; VmSpec::kernel_cmdline_extra follows it
// (a repeated key there wins: the kernel keeps the last value). `tsc=reliable`: the TSC is the
// right clocksource under both TCG (derived from host time) and KVM, but the clocksource
// watchdog compares it with jiffies, which lag under TCG load, and would fall back to jiffies —
// a guest clock that runs slow.
inline constexpr char kBaseKernelCmdline[] =
    "console=ttyS0 root=/dev/vda rootfstype=ext4 init=/usr/sbin/moat-guest reboot=t panic=-1 "
    "tsc=reliable quiet";
// QMP names the command line sets up.
inline constexpr char kMemoryBackendId[] = "mem";
inline constexpr char kGuestPortName[] = "moat.0";
inline constexpr char kNetdevId[] = "net0";
// The fd number the tap has in the QEMU process (`-netdev tap,fd=3`); the driver maps
// VmSpec::net->tap_fd onto it.
inline constexpr int kTapFdInQemu = 3;
// TCG translation cache: QEMU 7.2 defaults to 1 GiB, which the cgroup memory limit would have
// to allow for; 128 MiB is ample for one small guest.
inline constexpr unsigned kTcgTbSizeMib = 128;

// Validates the spec (paths present for the boot mode, no ',' or control characters in paths,
// sizes in range) and returns argv, argv[0] = `qemu_binary`. `features` are the binary's
// (QemuFeatures::Of its probed version); a restore maps its memory file read-only with them.
Result<std::vector<std::string>> BuildCommandLine(
    const VmSpec& spec, const std::string& qemu_binary = kDefaultQemuBinary,
    const QemuFeatures& features = {});

// The kernel command line for a cold boot of `spec`.
std::string KernelCmdline(const VmSpec& spec);

}  // namespace moat::vmm::qemu
