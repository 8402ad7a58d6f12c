#include "agent/template_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ctime>

#include "agent/disk.h"
#include "agent/sandbox_state.h"
#include "agent/snapshot.h"
#include "channel/guest_client.h"
#include "channel/guest_ops.h"
#include "common/child_process.h"
#include "common/cleanup.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/sandbox_id.h"
#include "common/socket.h"
#include "vmm/qemu/qemu_driver.h"

namespace moat::agent {
namespace {

using Clock = std::chrono::steady_clock;

// FNV-1a: a stable content key, not a security boundary.
uint64_t Fnv(std::string_view s, uint64_t h = 1469598103934665603ull) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

// What identifies an artifact: the key file the guest build writes beside it (a hash of its
// inputs), else its size and modification time.
std::string ArtifactKey(const std::string& path, const std::string& key_file) {
  auto key = ReadFile(key_file);
  if (key.ok() && !key->empty()) return *key;
  struct stat st {};
  if (::stat(path.c_str(), &st) < 0) return "missing";
  return std::to_string(st.st_size) + ":" + std::to_string(st.st_mtim.tv_sec) + "." +
         std::to_string(st.st_mtim.tv_nsec);
}

std::string Dir(const std::string& path) {
  return path.substr(0, path.rfind('/'));
}

}  // namespace

std::string BakeVmName(const std::string& template_name, const std::string& bake_dir) {
  std::string base = bake_dir.substr(bake_dir.rfind('/') + 1);  // ".bake-XXXXXX"
  return "moat-bake-" + template_name + "-" + base.substr(std::string_view(".bake-").size());
}

Result<std::string> TemplateStore::BuildId(const TemplateSpec& t) const {
  if (!PathExists(t.kernel_path)) return NotFound("template kernel " + t.kernel_path);
  if (!PathExists(t.rootfs_path)) return NotFound("template rootfs " + t.rootfs_path);
  std::string in = ArtifactKey(t.kernel_path, Dir(t.kernel_path) + "/vmlinux.key") + "|" +
                   ArtifactKey(t.rootfs_path, Dir(t.rootfs_path) + "/rootfs.key") + "|" +
                   std::to_string(t.vcpus) + "|" + std::to_string(t.memory_mib) + "|" +
                   std::string(vmm::AccelName(env_.accel)) + "|" +
                   ArtifactKey("/usr/bin/qemu-system-x86_64", "") + "|" +
                   vmm::qemu::kBaseKernelCmdline + "|moat-snapshot-v1" +
                   (env_.slots != nullptr ? "|nic" : "");
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(Fnv(in)));
  return std::string(hex);
}

Result<std::string> TemplateStore::Ensure(const TemplateSpec& t) {
  MOAT_ASSIGN_OR_RETURN(std::string build, BuildId(t));
  std::string build_dir = dir_ + "/" + t.name + "/" + build;
  if (PathExists(build_dir + "/manifest.json")) return build_dir;
  std::shared_future<Result<std::string>> bake;
  bool mine = false;
  std::promise<Result<std::string>> promise;
  {
    std::lock_guard lock(mu_);
    auto it = bakes_.find(build_dir);
    if (it != bakes_.end()) {
      bake = it->second;
    } else {
      bake = promise.get_future().share();
      bakes_.emplace(build_dir, bake);
      mine = true;
    }
  }
  if (mine) {
    Result<std::string> r = Bake(t, build_dir);
    promise.set_value(r);
    std::lock_guard lock(mu_);
    bakes_.erase(build_dir);
  }
  return bake.get();
}

Result<std::string> TemplateStore::Bake(const TemplateSpec& t, const std::string& build_dir) {
  auto t0 = Clock::now();
  MOAT_RETURN_IF_ERROR(MakeDirs(dir_ + "/" + t.name, 0711));
  // Built under a temporary name and renamed when complete: a bake killed half-way is never
  // used (the agent removes leftovers of this form on start).
  MOAT_ASSIGN_OR_RETURN(std::string tmp, MakeTempDir(dir_ + "/" + t.name, ".bake-"));
  Cleanup remove_tmp([&] { (void)RemoveTree(tmp); });
  ::chmod(tmp.c_str(), 0711);
  SnapshotFiles f(tmp);
  std::string base = tmp + "/disk.raw";
  // The template keeps its own copy of the rootfs (shared blocks where the filesystem can), so
  // a rebuilt guest image never changes the disk under existing snapshots.
  MOAT_RETURN_IF_ERROR(CopyFile(t.rootfs_path, base));
  ::chmod(base.c_str(), 0644);
  MOAT_RETURN_IF_ERROR(CreateOverlay(base, f.overlay));

  vmm::VmSpec spec;
  spec.name = BakeVmName(t.name, tmp);
  spec.vcpus = t.vcpus;
  spec.memory_mib = t.memory_mib;
  spec.accel = env_.accel;
  spec.boot_mode = vmm::BootMode::kColdBoot;
  spec.kernel_path = t.kernel_path;
  spec.rootfs = {.path = base, .read_only = false, .overlay_path = f.overlay};
  spec.memory_path = f.memory;
  spec.memory_shared = true;
  spec.console_log_path = tmp + "/console.log";
  spec.vmm_log_path = tmp + "/vmm.log";
  spec.guest_socket_path = tmp + "/guest.sock";
  spec.qmp_socket_path = tmp + "/qmp.sock";
  // With networking, the template has the NIC every clone will have (the device state holds
  // it). The bake's slot only lends the VM a tap: it is released once the VM is gone.
  std::unique_ptr<net::NetworkSlot> slot;
  Cleanup release_slot([&] {
    if (slot) (void)slot->Release();
  });
  if (env_.slots != nullptr) {
    MOAT_ASSIGN_OR_RETURN(slot, env_.slots->Acquire());
    spec.net = vmm::NetDeviceSpec{.tap_fd = slot->tap_fd(), .mac = net::NetworkSlot::guest_mac()};
  }
  uint32_t uid = 0;
  Cleanup release_uid([&] {
    if (uid != 0 && env_.jail_ids != nullptr) env_.jail_ids->Release(uid);
  });
  if (env_.jail_ids != nullptr) {
    MOAT_ASSIGN_OR_RETURN(uid, env_.jail_ids->Allocate());
    vmm::JailSpec jail;
    jail.uid = uid;
    jail.gid = kTemplateGid;
    jail.binds = {{.path = t.kernel_path, .writable = false}};
    spec.jail = jail;
    // The memory file must exist for the driver to hand it to the VM's uid and template gid.
    UniqueFd mem(::open(f.memory.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0660));
    if (!mem) return ErrnoError("open(" + f.memory + ")");
  }
  vmm::qemu::QemuDriver vm;
  Cleanup kill_vm([&] { vm.Kill(); });
  MOAT_RETURN_IF_ERROR(vm.Start(spec).Annotate("baking template " + t.name));
  // If the agent dies during the bake, the next one finds this and kills the VMM (Recover).
  SandboxState record{.id = std::string(kSandboxIdLength, '0'),
                      .template_name = t.name,
                      .vmm_pid = vm.pid(),
                      .vm_name = spec.name};
  if (auto st = ProcessStartTime(vm.pid()); st.ok()) record.vmm_start_time = *st;
  MOAT_RETURN_IF_ERROR(WriteFileAtomic(tmp + "/state.json", SerializeSandboxState(record), 0600));
  MOAT_ASSIGN_OR_RETURN(UniqueFd sock, ConnectUnix(spec.guest_socket_path, env_.ready_timeout));
  auto guest = channel::GuestClient::Connect(std::move(sock), env_.ready_timeout);
  if (!guest.ok()) {
    return guest.status().Annotate("baking template " + t.name + ": moat-guest never answered (" +
                                   spec.console_log_path + ")");
  }
  nlohmann::json guest_network = nullptr;
  if (slot) {
    // Configured as every clone will be (every slot looks the same from inside): a clone
    // restored into a slot with this same config needs no `network` op at all.
    guest_network = channel::proto::Encode(slot->GuestConfig());
    Status net =
        channel::ops::Unary(**guest, slot->GuestConfig(), Clock::now() + std::chrono::seconds(10));
    MOAT_RETURN_IF_ERROR(net.Annotate("baking template " + t.name + ": network"));
  }
  // Saved while the guest waits on a connected port: after a restore the host's HELLO wakes it
  // at once (a disconnected port would leave it polling).
  MOAT_RETURN_IF_ERROR(
      vm.SaveDeviceState(f.state, /*durable=*/true).Annotate("baking template " + t.name));
  guest->reset();
  vm.Kill();
  kill_vm.Cancel();
  // Clones only read these; nobody writes the template again. The memory file was the bake
  // VM's (its uid goes back to the pool): now root's, readable by the clones' group only.
  ::chmod(f.state.c_str(), 0644);
  ::chmod(f.overlay.c_str(), 0644);
  if (env_.jail_ids != nullptr &&
      (::chown(f.memory.c_str(), 0, kTemplateGid) < 0 || ::chmod(f.memory.c_str(), 0640) < 0)) {
    return ErrnoError("giving " + f.memory + " to the sandboxes' group");
  }
  for (const char* leftover : {"/guest.sock", "/qmp.sock", "/jail", "/state.json"}) {
    (void)RemoveTree(tmp + leftover);
  }
  // The bake VM owned its directory; the finished template belongs to the agent again.
  if (::chown(tmp.c_str(), 0, 0) < 0 || ::chmod(tmp.c_str(), 0755) < 0) {
    return ErrnoError("chown(" + tmp + ")");
  }
  SnapshotManifest m{.kind = "template",
                     .name = t.name,
                     .source = t.name,
                     .vcpus = t.vcpus,
                     .memory_mib = t.memory_mib,
                     .accel = std::string(vmm::AccelName(env_.accel)),
                     .base_disk = build_dir + "/disk.raw",
                     .created_unix_ms = static_cast<int64_t>(::time(nullptr)) * 1000,
                     .network = spec.net.has_value(),
                     .guest_network = guest_network,
                     .qemu_version = vm.VersionNumber()};
  MOAT_RETURN_IF_ERROR(WriteManifest(tmp, m));
  if (::rename(tmp.c_str(), build_dir.c_str()) < 0) {
    return ErrnoError("rename(" + tmp + ", " + build_dir + ")");
  }
  remove_tmp.Cancel();
  LogInfo(
      "template.baked",
      {{"template", t.name},
       {"dir", build_dir},
       {"ms",
        static_cast<long>(
            std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count())}});
  return build_dir;
}

}  // namespace moat::agent
