#include "vmm/qemu/command_line.h"

namespace moat::vmm::qemu {
namespace {

// QEMU's option syntax escapes ',' as ",,"; rejecting it (and control characters) keeps every
// path a literal and rules out option injection through a path.
Status CheckPath(std::string_view what, const std::string& path, bool required) {
  if (path.empty()) {
    if (required) return InvalidArgument(std::string(what) + " is required");
    return Status::Ok();
  }
  if (path[0] != '/') {
    return InvalidArgument(std::string(what) + " must be an absolute path: " + path);
  }
  for (unsigned char c : path) {
    if (c == ',' || c < 0x20 || c == 0x7f) {
      return InvalidArgument(std::string(what) + " contains ',' or a control character: " + path);
    }
  }
  return Status::Ok();
}

// "02:00:a9:fe:00:15": six lower- or upper-case hex pairs; unicast (the low bit of the first
// octet clear), as QEMU refuses a multicast MAC only at device realisation.
Status CheckMac(const std::string& mac) {
  auto hex = [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
  };
  bool ok = mac.size() == 17;
  for (size_t i = 0; ok && i < mac.size(); ++i) {
    ok = (i % 3 == 2) ? mac[i] == ':' : hex(mac[i]);
  }
  if (!ok) return InvalidArgument("net.mac is not a MAC address: \"" + mac.substr(0, 32) + "\"");
  if (std::stoi(mac.substr(0, 2), nullptr, 16) & 1) {
    return InvalidArgument("net.mac is a multicast address: " + mac);
  }
  return Status::Ok();
}

}  // namespace

std::string KernelCmdline(const VmSpec& spec) {
  std::string cmdline = kBaseKernelCmdline;
  // "rw"/"ro" goes with root=; a read-only disk cannot be mounted rw.
  cmdline += spec.rootfs.read_only && spec.rootfs.overlay_path.empty() ? " ro" : " rw";
  if (!spec.kernel_cmdline_extra.empty()) cmdline += " " + spec.kernel_cmdline_extra;
  return cmdline;
}

Result<std::vector<std::string>> BuildCommandLine(const VmSpec& spec,
                                                  const std::string& qemu_binary,
                                                  const QemuFeatures& features) {
  const bool restore = spec.boot_mode == BootMode::kRestore;
  if (spec.vcpus < 1 || spec.vcpus > 64) return InvalidArgument("vcpus must be 1..64");
  if (spec.memory_mib < 16 || spec.memory_mib > 1024 * 1024) {
    return InvalidArgument("memory_mib must be 16..1048576");
  }
  MOAT_RETURN_IF_ERROR(CheckPath("kernel_path", spec.kernel_path, !restore));
  MOAT_RETURN_IF_ERROR(CheckPath("rootfs.path", spec.rootfs.path, true));
  MOAT_RETURN_IF_ERROR(CheckPath("rootfs.overlay_path", spec.rootfs.overlay_path, false));
  MOAT_RETURN_IF_ERROR(CheckPath("memory_path", spec.memory_path, true));
  MOAT_RETURN_IF_ERROR(CheckPath("device_state_path", spec.device_state_path, restore));
  MOAT_RETURN_IF_ERROR(CheckPath("console_log_path", spec.console_log_path, true));
  MOAT_RETURN_IF_ERROR(CheckPath("guest_socket_path", spec.guest_socket_path, true));
  MOAT_RETURN_IF_ERROR(CheckPath("qmp_socket_path", spec.qmp_socket_path, true));
  if (restore && spec.memory_shared) {
    // A restored clone writing through to the template's memory would corrupt every sibling.
    return InvalidArgument("a restore maps the template memory private: memory_shared=false");
  }
  if (spec.net) {
    if (spec.net->tap_fd < 0) return InvalidArgument("net.tap_fd is required");
    MOAT_RETURN_IF_ERROR(CheckMac(spec.net->mac));
  }
  if (spec.kernel_cmdline_extra.find('\n') != std::string::npos) {
    return InvalidArgument("kernel_cmdline_extra contains a newline");
  }
  const bool kvm = spec.accel == Accel::kKvm;
  const std::string mib = std::to_string(spec.memory_mib);

  std::vector<std::string> a{qemu_binary};
  auto add = [&a](std::initializer_list<std::string> args) {
    a.insert(a.end(), args.begin(), args.end());
  };
  add({"-name", spec.name.empty() ? "moat" : spec.name});
  // microvm: no PCI, no firmware option ROMs, no ACPI (QEMU then lists the virtio-mmio devices
  // on the kernel command line). isa-serial stays on: it is the guest's ttyS0 console. Under
  // KVM the RTC is left out (the notes); under TCG microvm's defaults are kept.
  std::string machine =
      "microvm,x-option-roms=off,isa-serial=on,acpi=off,mem-merge=off,memory-backend=";
  machine += kMemoryBackendId;
  if (kvm) machine += ",rtc=off";
  add({"-M", machine});
  if (kvm) {
    add({"-accel", "kvm", "-cpu", "host"});
  } else {
    // -cpu max: every instruction TCG emulates, announced in CPUID. The default model
    // (qemu64) announces little, and code that assumes more than it checks dies of SIGILL
    // (the code interpreter's data stack did, importing numpy/scipy).
    add({"-accel", "tcg,tb-size=" + std::to_string(kTcgTbSizeMib), "-cpu", "max"});
  }
  add({"-smp", std::to_string(spec.vcpus), "-m", mib + "M"});
  // Guest RAM in a file: share=on makes it the template snapshot (not in the migration stream
  // with x-ignore-shared); share=off maps it MAP_PRIVATE for a clone. merge=off: KSM across
  // tenants is a side channel. A clone's file is shared with its siblings: readonly=on opens it
  // O_RDONLY and rom=off still maps it writable (private), so the VMM cannot write the file.
  std::string backend = std::string("memory-backend-file,id=") + kMemoryBackendId + ",size=" + mib +
                        "M,mem-path=" + spec.memory_path +
                        ",share=" + (spec.memory_shared ? "on" : "off") + ",merge=off";
  if (!spec.memory_shared && features.readonly_private_memory) backend += ",readonly=on,rom=off";
  add({"-object", backend});
  add({"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"});
  add({"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"});
  add({"-chardev", "socket,id=qmp,path=" + spec.qmp_socket_path + ",server=on,wait=off", "-mon",
       "chardev=qmp,mode=control"});
  add({"-chardev", "file,id=console,path=" + spec.console_log_path + ",append=on", "-serial",
       "chardev:console"});
  add({"-device", "virtio-serial-device,id=vser0", "-chardev",
       "socket,id=guest,path=" + spec.guest_socket_path + ",server=on,wait=off", "-device",
       std::string("virtserialport,bus=vser0.0,chardev=guest,name=") + kGuestPortName});
  add({"-device", "virtio-rng-device"});
  // The root disk. A qcow2 overlay gets the raw image as an explicit read-only backing node, so
  // QEMU never follows a backing path stored in the (guest-writable) overlay file.
  if (spec.rootfs.overlay_path.empty()) {
    std::string ro = spec.rootfs.read_only ? "on" : "off";
    add({"-blockdev",
         "driver=file,node-name=disk0-file,filename=" + spec.rootfs.path + ",read-only=" + ro,
         "-blockdev", "driver=raw,node-name=disk0,file=disk0-file,read-only=" + ro});
  } else {
    add({"-blockdev",
         "driver=file,node-name=base0-file,filename=" + spec.rootfs.path + ",read-only=on",
         "-blockdev", "driver=raw,node-name=base0,file=base0-file,read-only=on", "-blockdev",
         "driver=file,node-name=disk0-file,filename=" + spec.rootfs.overlay_path, "-blockdev",
         "driver=qcow2,node-name=disk0,file=disk0-file,backing=base0"});
  }
  add({"-device", "virtio-blk-device,drive=disk0"});
  // The NIC comes after every other device, so that VMs without one keep the same virtio-mmio
  // layout (and their snapshots stay valid).
  if (spec.net) {
    add({"-netdev", std::string("tap,id=") + kNetdevId + ",fd=" + std::to_string(kTapFdInQemu),
         "-device",
         std::string("virtio-net-device,netdev=") + kNetdevId + ",mac=" + spec.net->mac});
  }
  if (restore) {
    // -S: stay paused after the state is loaded, whatever the saved run state was; the caller
    // decides when to `cont`. No -kernel/-append: the guest is already in memory.
    add({"-S", "-incoming", "defer"});
  } else {
    add({"-kernel", spec.kernel_path, "-append", KernelCmdline(spec)});
  }
  return a;
}

}  // namespace moat::vmm::qemu
