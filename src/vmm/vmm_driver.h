// VmmDriver: the one seam between the host agent and a virtual machine monitor process. The
// agent's lifecycle code (cold boot for a template bake, restore for every create, pause,
// snapshot, kill) is written against this interface; QemuDriver (qemu/qemu_driver.h) drives
// QEMU microvm over QMP, and a Firecracker driver can be a second implementation later.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "common/status.h"
#include "vmm/jail.h"

namespace moat::vmm {

enum class Accel { kKvm, kTcg };
std::string_view AccelName(Accel accel);  // "kvm" / "tcg"

// A virtio-blk disk attached with -blockdev. When `overlay_path` is set, the guest sees a qcow2
// overlay (written by the guest) whose backing file is the raw image at `path` (read-only).
// The guest sees read_only as a virtio feature bit, which is device state: a clone must be
// restored with the same read-only-ness as its template (an overlay counts as writable).
struct DiskSpec {
  std::string path;          // raw image
  bool read_only = false;    // only for a disk without an overlay
  std::string overlay_path;  // optional qcow2 overlay over `path`
};

// A virtio-net NIC backed by a tap the host created (in the sandbox's network namespace, see
// src/net/): QEMU gets the open fd, so it needs no /dev/net/tun and no privileges. Every guest
// uses the same MAC (it is migrated device state: one snapshot restores into any slot).
struct NetDeviceSpec {
  int tap_fd = -1;  // owned by the caller, who keeps it open until Start() returns
  std::string mac;  // "02:00:a9:fe:00:15"
};

// How the VM starts: a cold boot runs the kernel; a restore loads a snapshot made by
// SaveDeviceState (template memory file + device-state file) and stays paused until Resume().
enum class BootMode { kColdBoot, kRestore };

struct VmSpec {
  std::string name;  // unique per host: names the cgroup; [A-Za-z0-9_.-]{1,64}
  unsigned vcpus = 1;
  uint64_t memory_mib = 256;
  Accel accel = Accel::kTcg;
  BootMode boot_mode = BootMode::kColdBoot;

  // Cold boot only: the restored guest needs no kernel (and leaving -kernel out saves ~15 ms).
  std::string kernel_path;
  std::string kernel_cmdline_extra;  // appended to the fixed moat command line

  DiskSpec rootfs;  // /dev/vda

  // Guest RAM lives in this file. Cold boot: share=on, the file becomes the template's memory.
  // Restore: share=off (MAP_PRIVATE) over the template's file: clean pages shared, writes copied.
  std::string memory_path;
  bool memory_shared = true;

  // Restore only: the device-state file written by SaveDeviceState.
  std::string device_state_path;

  std::string console_log_path;   // the guest's ttyS0, appended to
  std::string guest_socket_path;  // virtserialport moat.0, a unix socket QEMU listens on
  std::string qmp_socket_path;    // QMP, a unix socket QEMU listens on
  std::string vmm_log_path;       // QEMU's own stderr, opened by the host; empty: discarded

  // The NIC, if any. A snapshot taken with one restores only into a VM with one (and without
  // one only into a VM without).
  std::optional<NetDeviceSpec> net;

  // Runs QEMU jailed (own uid/gid, mount namespace, cgroup). Off only in tests that need it.
  std::optional<JailSpec> jail;
};

enum class VmState { kStarting, kPaused, kRunning, kExited };
std::string_view VmStateName(VmState state);

struct VmStatus {
  VmState state = VmState::kStarting;
  std::string qmp_status;  // QMP query-status "status" ("running", "paused", "inmigrate"...)
  std::optional<int> exit_status;  // wait status once exited
};

class VmmDriver {
 public:
  virtual ~VmmDriver() = default;

  // Starts the VMM process and connects to it. Cold boot: the guest is running on return.
  // Restore: the device state is loaded and the guest is paused until Resume().
  virtual Status Start(const VmSpec& spec) = 0;
  // The VMM's version ("10.0.2") once started or adopted; "" if unknown.
  virtual std::string VersionNumber() const { return ""; }
  // Takes over a VMM that an earlier agent started from `spec` and left running (re-adoption
  // after a restart): `pid` must still be the process that started at `start_time` (clock ticks
  // since boot, ProcessStartTime) — otherwise NotFound, and that pid is left alone. Supervises
  // it from then on as if Start() had made it: its control socket, its cgroup and (jailed) its
  // jail directory are this driver's to release. The VM keeps the run state it had
  // (QueryStatus). On any other failure the VMM is killed.
  virtual Status Adopt(const VmSpec& spec, pid_t pid, uint64_t start_time) = 0;
  // Lets the VMM run on without this driver (an agent that stops and leaves its sandboxes to the
  // next one): the connection is closed; the process, its sockets, cgroup and jail directory are
  // left as they are. The driver is empty afterwards.
  virtual void Detach() = 0;
  // Stops the vCPUs (QMP stop).
  virtual Status Pause() = 0;
  // Starts the vCPUs (QMP cont); also the last step of a restore.
  virtual Status Resume() = 0;
  // Pauses the VM and writes its state to `path`. With shared memory the RAM stays in the memory
  // file (the stream is ~50 KB of device state; together they are a snapshot, and the VM must
  // not run on). With private memory the stream carries the RAM too (a full snapshot) and the
  // VM may Resume(). Either way the disks are flushed and the VM stays paused.
  // `durable`: the file is fsync'd (and a shared memory file with it).
  virtual Status SaveDeviceState(const std::string& path, bool durable) = 0;
  // Private memory only: pauses the VM and writes a memory-file snapshot: guest RAM into
  // `memory_path` (a new sparse file the size of guest RAM, pages at their offsets) and the
  // device state without it into `state_path`. Restored like a template (that file mapped
  // share=off), it loads no RAM, and VMs restored from one such file share its clean pages.
  // `durable`: both files are fsync'd (pause, named snapshots; a fork's transient snapshot is
  // not). The disks are flushed; the VM stays paused and may Resume().
  virtual Status SaveMemorySnapshot(const std::string& state_path, const std::string& memory_path,
                                    bool durable) = 0;
  virtual Result<VmStatus> QueryStatus() = 0;
  // Asks QEMU to quit (QMP quit), waits up to `grace`, then kills it.
  virtual Status Stop(std::chrono::milliseconds grace) = 0;
  // SIGKILL; releases everything the VM held (process, sockets, cgroup, jail directory).
  virtual void Kill() = 0;
  // SIGKILL only, without waiting: the VM stops running at once; Kill() (which may follow at
  // any time, from any thread once no other call is in flight) reaps it and releases the rest.
  virtual void SignalKill() = 0;
  // The VM's share of CPU against other VMs (vmm::CgroupLimits::cpu_weight's scale); Ok and
  // nothing done when the VMM runs without a cgroup.
  virtual Status SetCpuWeight(uint32_t weight) = 0;
  // Waits for the VMM process to exit; returns its wait status or DeadlineExceeded.
  virtual Result<int> WaitForExit(std::optional<std::chrono::milliseconds> timeout) = 0;
  virtual pid_t pid() const = 0;
};

}  // namespace moat::vmm
