#include "vmm/qemu/command_line.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>

namespace moat::vmm::qemu {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::Not;

VmSpec ColdSpec() {
  VmSpec s;
  s.name = "sb1";
  s.vcpus = 2;
  s.memory_mib = 256;
  s.kernel_path = "/t/vmlinux";
  s.rootfs.path = "/t/rootfs.ext4";
  s.memory_path = "/t/mem";
  s.memory_shared = true;
  s.console_log_path = "/s/console.log";
  s.guest_socket_path = "/s/guest.sock";
  s.qmp_socket_path = "/s/qmp.sock";
  return s;
}

VmSpec RestoreSpec() {
  VmSpec s = ColdSpec();
  s.boot_mode = BootMode::kRestore;
  s.kernel_path.clear();
  s.memory_shared = false;
  s.device_state_path = "/t/vmstate";
  return s;
}

// The value following `flag` (the first occurrence whose value contains `needle`).
std::string ValueOf(const std::vector<std::string>& argv, const std::string& flag,
                    const std::string& needle = "") {
  for (size_t i = 0; i + 1 < argv.size(); ++i) {
    if (argv[i] == flag && argv[i + 1].find(needle) != std::string::npos) return argv[i + 1];
  }
  return "";
}

TEST(CommandLine, ColdBootUnderTcgKeepsMicrovmDefaultsAndBootsTheKernel) {
  auto argv = BuildCommandLine(ColdSpec());
  ASSERT_TRUE(argv.ok()) << argv.status().ToString();
  EXPECT_EQ((*argv)[0], kDefaultQemuBinary);
  EXPECT_EQ(ValueOf(*argv, "-M"),
            "microvm,x-option-roms=off,isa-serial=on,acpi=off,mem-merge=off,memory-backend=mem");
  EXPECT_EQ(ValueOf(*argv, "-accel"), "tcg,tb-size=128");
  // Every instruction TCG emulates, announced (the default qemu64 model announces too little
  // for Debian's numpy/scipy, which then die of SIGILL).
  EXPECT_EQ(ValueOf(*argv, "-cpu"), "max");
  EXPECT_EQ(ValueOf(*argv, "-smp"), "2");
  EXPECT_EQ(ValueOf(*argv, "-m"), "256M");
  EXPECT_EQ(ValueOf(*argv, "-object"),
            "memory-backend-file,id=mem,size=256M,mem-path=/t/mem,share=on,merge=off");
  EXPECT_EQ(ValueOf(*argv, "-kernel"), "/t/vmlinux");
  EXPECT_EQ(ValueOf(*argv, "-append"),
            "console=ttyS0 root=/dev/vda rootfstype=ext4 init=/usr/sbin/moat-guest reboot=t "
            "panic=-1 tsc=reliable quiet rw");
  EXPECT_THAT(*argv, Not(Contains("-incoming")));
  EXPECT_THAT(*argv, Not(Contains("-S")));
  for (const char* flag : {"-nodefaults", "-no-user-config", "-no-reboot"}) {
    EXPECT_THAT(*argv, Contains(flag));
  }
  EXPECT_EQ(ValueOf(*argv, "-sandbox"),
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny");
  EXPECT_EQ(ValueOf(*argv, "-chardev", "id=qmp"),
            "socket,id=qmp,path=/s/qmp.sock,server=on,wait=off");
  EXPECT_EQ(ValueOf(*argv, "-mon"), "chardev=qmp,mode=control");
  EXPECT_EQ(ValueOf(*argv, "-chardev", "id=guest"),
            "socket,id=guest,path=/s/guest.sock,server=on,wait=off");
  EXPECT_EQ(ValueOf(*argv, "-device", "virtserialport"),
            "virtserialport,bus=vser0.0,chardev=guest,name=moat.0");
  EXPECT_EQ(ValueOf(*argv, "-chardev", "id=console"),
            "file,id=console,path=/s/console.log,append=on");
  EXPECT_EQ(ValueOf(*argv, "-serial"), "chardev:console");
  EXPECT_EQ(ValueOf(*argv, "-device", "rng"), "virtio-rng-device");
  EXPECT_EQ(ValueOf(*argv, "-blockdev", "driver=file"),
            "driver=file,node-name=disk0-file,filename=/t/rootfs.ext4,read-only=off");
  EXPECT_EQ(ValueOf(*argv, "-device", "blk"), "virtio-blk-device,drive=disk0");
}

TEST(CommandLine, KvmAddsHostCpuAndTurnsTheRtcOff) {
  VmSpec s = ColdSpec();
  s.accel = Accel::kKvm;
  auto argv = BuildCommandLine(s);
  ASSERT_TRUE(argv.ok());
  EXPECT_THAT(ValueOf(*argv, "-M"), HasSubstr(",rtc=off"));
  EXPECT_EQ(ValueOf(*argv, "-accel"), "kvm");
  EXPECT_EQ(ValueOf(*argv, "-cpu"), "host");
}

TEST(CommandLine, OnQemu82AndLaterARestoreOpensTheSharedMemoryFileReadOnly) {
  QemuVersion v10{.major = 10, .minor = 0, .micro = 2};
  auto argv = BuildCommandLine(RestoreSpec(), kDefaultQemuBinary, QemuFeatures::Of(v10));
  ASSERT_TRUE(argv.ok()) << argv.status().ToString();
  EXPECT_EQ(ValueOf(*argv, "-object"),
            "memory-backend-file,id=mem,size=256M,mem-path=/t/mem,share=off,merge=off,"
            "readonly=on,rom=off");
  // The bake writes its (shared) file: never read-only.
  argv = BuildCommandLine(ColdSpec(), kDefaultQemuBinary, QemuFeatures::Of(v10));
  ASSERT_TRUE(argv.ok());
  EXPECT_THAT(ValueOf(*argv, "-object"), Not(HasSubstr("readonly")));
  // 7.2 has no rom= ("Invalid parameter 'rom'"): nothing is added without the feature.
  QemuVersion v72{.major = 7, .minor = 2};
  argv = BuildCommandLine(RestoreSpec(), kDefaultQemuBinary, QemuFeatures::Of(v72));
  ASSERT_TRUE(argv.ok());
  EXPECT_THAT(ValueOf(*argv, "-object"), Not(HasSubstr("readonly")));
}

TEST(QemuVersion, ParsesDebianVersionLinesAndComparesThem) {
  auto v = ParseQemuVersion(
      "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\n"
      "Copyright (c) 2003-2025 Fabrice Bellard and the QEMU Project developers\n");
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(v->Number(), "10.0.2");
  EXPECT_EQ(v->text, "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)");
  EXPECT_TRUE(v->AtLeast(8, 2));
  EXPECT_TRUE(v->AtLeast(10, 0, 2));
  EXPECT_FALSE(v->AtLeast(10, 0, 3));
  EXPECT_TRUE(CheckQemuSupported(*v).ok());
  QemuFeatures f = QemuFeatures::Of(*v);
  EXPECT_TRUE(f.readonly_private_memory && f.fdset_file_migration && f.incoming_exit_on_error);

  auto old = ParseQemuVersion("QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)");
  ASSERT_TRUE(old.ok());
  EXPECT_EQ(old->Number(), "7.2.19");
  Status refused = CheckQemuSupported(*old);
  EXPECT_EQ(refused.code(), ErrorCode::kFailedPrecondition);
  EXPECT_THAT(refused.message(), HasSubstr("QEMU 7.2.19 is too old"));
  EXPECT_THAT(refused.message(), HasSubstr("8.2"));

  auto two = ParseQemuVersion("QEMU emulator version 8.2\n");  // no micro
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(two->Number(), "8.2.0");
  EXPECT_TRUE(QemuFeatures::Of(*two).readonly_private_memory);
  EXPECT_FALSE(QemuFeatures::Of(*two).fdset_file_migration);

  for (const char* bad : {"", "qemu-img version 10.0.2", "QEMU emulator version x.1",
                          "QEMU emulator version 10", "QEMU emulator version 1234567890.1"}) {
    EXPECT_EQ(ParseQemuVersion(bad).status().code(), ErrorCode::kInvalidArgument) << bad;
  }
}

TEST(QemuVersion, ProbesTheInstalledBinary) {
  auto v = ProbeQemuVersion(kDefaultQemuBinary);
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_GE(v->major, 7);
  auto again = ProbeQemuVersion(kDefaultQemuBinary);  // cached
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->text, v->text);
  EXPECT_EQ(ProbeQemuVersion("/nonexistent/qemu").status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(ProbeQemuVersion("/bin/true").status().code(), ErrorCode::kInvalidArgument);
}

TEST(CommandLine, RestoreWaitsForIncomingStateWithPrivateMemoryAndNoKernel) {
  auto argv = BuildCommandLine(RestoreSpec());
  ASSERT_TRUE(argv.ok()) << argv.status().ToString();
  EXPECT_EQ(ValueOf(*argv, "-incoming"), "defer");
  EXPECT_THAT(*argv, Contains("-S"));
  EXPECT_THAT(*argv, Not(Contains("-kernel")));
  EXPECT_THAT(*argv, Not(Contains("-append")));
  EXPECT_THAT(ValueOf(*argv, "-object"), HasSubstr(",share=off,"));
  // Same machine and devices as the cold boot: the migration stream must match them.
  auto cold = BuildCommandLine(ColdSpec());
  ASSERT_TRUE(cold.ok());
  for (const char* flag : {"-M", "-accel", "-smp", "-m"}) {
    EXPECT_EQ(ValueOf(*argv, flag), ValueOf(*cold, flag)) << flag;
  }
  for (const char* dev : {"virtio-serial-device", "virtserialport", "rng", "blk"}) {
    EXPECT_EQ(ValueOf(*argv, "-device", dev), ValueOf(*cold, "-device", dev)) << dev;
  }
}

TEST(CommandLine, RestoreRefusesSharedMemoryAndNeedsTheDeviceState) {
  VmSpec s = RestoreSpec();
  s.memory_shared = true;
  EXPECT_EQ(BuildCommandLine(s).status().code(), ErrorCode::kInvalidArgument);
  s = RestoreSpec();
  s.device_state_path.clear();
  EXPECT_EQ(BuildCommandLine(s).status().code(), ErrorCode::kInvalidArgument);
}

TEST(CommandLine, OverlayGetsTheRawImageAsAnExplicitReadOnlyBackingNode) {
  VmSpec s = ColdSpec();
  s.rootfs.overlay_path = "/s/overlay.qcow2";
  auto argv = BuildCommandLine(s);
  ASSERT_TRUE(argv.ok());
  EXPECT_EQ(ValueOf(*argv, "-blockdev", "base0-file"),
            "driver=file,node-name=base0-file,filename=/t/rootfs.ext4,read-only=on");
  EXPECT_EQ(ValueOf(*argv, "-blockdev", "driver=raw"),
            "driver=raw,node-name=base0,file=base0-file,read-only=on");
  EXPECT_EQ(ValueOf(*argv, "-blockdev", "driver=qcow2"),
            "driver=qcow2,node-name=disk0,file=disk0-file,backing=base0");
  EXPECT_EQ(ValueOf(*argv, "-blockdev", "overlay"),
            "driver=file,node-name=disk0-file,filename=/s/overlay.qcow2");
}

TEST(CommandLine, ReadOnlyDiskMountsRootReadOnlyAndExtraCmdlineComesLast) {
  VmSpec s = ColdSpec();
  s.rootfs.read_only = true;
  s.kernel_cmdline_extra = "init=/bin/sh";
  auto argv = BuildCommandLine(s);
  ASSERT_TRUE(argv.ok());
  EXPECT_THAT(ValueOf(*argv, "-blockdev", "driver=file"), HasSubstr("read-only=on"));
  std::string append = ValueOf(*argv, "-append");
  EXPECT_THAT(append, HasSubstr(" ro init=/bin/sh"));
  EXPECT_EQ(append.rfind("init=/bin/sh"), append.size() - std::string("init=/bin/sh").size());
}

TEST(CommandLine, RejectsPathsThatCouldInjectOptions) {
  VmSpec s = ColdSpec();
  s.qmp_socket_path = "/s/qmp.sock,server=off";
  EXPECT_EQ(BuildCommandLine(s).status().code(), ErrorCode::kInvalidArgument);
  s = ColdSpec();
  s.rootfs.path = "relative/rootfs";
  EXPECT_EQ(BuildCommandLine(s).status().code(), ErrorCode::kInvalidArgument);
  s = ColdSpec();
  s.kernel_path.clear();
  EXPECT_EQ(BuildCommandLine(s).status().code(), ErrorCode::kInvalidArgument);
  s = ColdSpec();
  s.vcpus = 0;
  EXPECT_EQ(BuildCommandLine(s).status().code(), ErrorCode::kInvalidArgument);
}

TEST(CommandLine, NicIsATapFdAfterEveryOtherDeviceWithTheGivenMac) {
  VmSpec s = ColdSpec();
  auto plain = BuildCommandLine(s);
  ASSERT_TRUE(plain.ok());
  EXPECT_THAT(*plain, Not(Contains("-netdev")));
  s.net = NetDeviceSpec{.tap_fd = 17, .mac = "02:00:a9:fe:00:15"};
  auto argv = BuildCommandLine(s);
  ASSERT_TRUE(argv.ok()) << argv.status().ToString();
  // QEMU sees the tap as fd 3 whatever the caller's number (the driver maps it there).
  EXPECT_EQ(ValueOf(*argv, "-netdev"), "tap,id=net0,fd=3");
  EXPECT_EQ(ValueOf(*argv, "-device", "virtio-net"),
            "virtio-net-device,netdev=net0,mac=02:00:a9:fe:00:15");
  // The devices of a VM without a NIC come first, in the same order: its virtio-mmio layout
  // (and so its snapshots) do not change.
  auto net_at = std::find(argv->begin(), argv->end(), "-netdev") - argv->begin();
  auto blk_at =
      std::find(argv->begin(), argv->end(), "virtio-blk-device,drive=disk0") - argv->begin();
  EXPECT_LT(blk_at, net_at);
  std::vector<std::string> without(argv->begin(), argv->begin() + net_at);
  std::vector<std::string> plain_devices;
  for (const auto& a : *plain) {
    if (a == "-kernel") break;
    plain_devices.push_back(a);
  }
  EXPECT_EQ(without, plain_devices);
  // A restore gets the same NIC (it is part of the device state).
  VmSpec r = RestoreSpec();
  r.net = s.net;
  auto restore = BuildCommandLine(r);
  ASSERT_TRUE(restore.ok());
  EXPECT_EQ(ValueOf(*restore, "-netdev"), "tap,id=net0,fd=3");
}

TEST(CommandLine, NicNeedsAnFdAndAUnicastMac) {
  VmSpec s = ColdSpec();
  for (const char* bad : {"", "02:00:a9:fe:00", "02:00:a9:fe:00:1g", "02-00-a9-fe-00-15",
                          "01:00:5e:00:00:01", "02:00:a9:fe:00:15,x=y"}) {
    s.net = NetDeviceSpec{.tap_fd = 5, .mac = bad};
    auto argv = BuildCommandLine(s);
    EXPECT_FALSE(argv.ok()) << bad;
    if (!argv.ok()) {
      EXPECT_EQ(argv.status().code(), ErrorCode::kInvalidArgument);
    }
  }
  s.net = NetDeviceSpec{.tap_fd = -1, .mac = "02:00:a9:fe:00:15"};
  EXPECT_FALSE(BuildCommandLine(s).ok());
  s.net = NetDeviceSpec{.tap_fd = 5, .mac = "02:00:A9:FE:00:15"};
  EXPECT_TRUE(BuildCommandLine(s).ok());
}

}  // namespace
}  // namespace moat::vmm::qemu
