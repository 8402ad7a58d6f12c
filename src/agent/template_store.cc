#include "agent/template_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ctime>
#include <map>
#include <mutex>
#include <thread>
#include <variant>

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

Status GiveMemoryFileToSandboxes(const std::string& path) {
  if (::chown(path.c_str(), 0, kTemplateGid) < 0 || ::chmod(path.c_str(), 0640) < 0) {
    return ErrnoError("giving " + path + " to the sandboxes' group");
  }
  return Status::Ok();
}
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

// What of a bake's files makes its identity: their paths (their content is the first bake's:
// equal builds share one snapshot).
std::vector<std::string> BakeFileNames(const std::map<std::string, std::string>& files) {
  std::vector<std::string> names;
  for (const auto& [path, content] : files) names.push_back(path);
  return names;
}

std::string Dir(const std::string& path) {
  return path.substr(0, path.rfind('/'));
}

// The content key build-rootfs.sh writes beside an image: <dir>/<name without extension>.key
// (rootfs.ext4 -> rootfs.key, code-interpreter.ext4 -> code-interpreter.key).
std::string KeyFileOf(const std::string& image) {
  std::string name = image.substr(image.rfind('/') + 1);
  return Dir(image) + "/" + name.substr(0, name.rfind('.')) + ".key";
}

}  // namespace

std::string BakeVmName(const std::string& template_name, const std::string& bake_dir) {
  std::string base = bake_dir.substr(bake_dir.rfind('/') + 1);  // ".bake-XXXXXX"
  return "moat-bake-" + template_name + "-" + base.substr(std::string_view(".bake-").size());
}

Result<std::string> TemplateStore::BuildId(const TemplateSpec& t) const {
  if (!PathExists(t.kernel_path)) return NotFound("template kernel " + t.kernel_path);
  if (!PathExists(t.rootfs_path)) return NotFound("template rootfs " + t.rootfs_path);
  std::string in =
      ArtifactKey(t.kernel_path, Dir(t.kernel_path) + "/vmlinux.key") + "|" +
      ArtifactKey(t.rootfs_path, KeyFileOf(t.rootfs_path)) + "|" + std::to_string(t.vcpus) + "|" +
      std::to_string(t.memory_mib) + "|" + std::string(vmm::AccelName(env_.accel)) + "|" +
      ArtifactKey("/usr/bin/qemu-system-x86_64", "") + "|" + vmm::qemu::kBaseKernelCmdline +
      "|moat-snapshot-v2|warmed-v1" + (env_.slots != nullptr ? "|nic" : "");
  if (!t.start_cmd.empty() || !t.defaults.user.empty() || !t.defaults.workdir.empty() ||
      !t.bake_files.empty() || t.resize_root_fs) {
    nlohmann::json start = {{"start", t.start_cmd},
                            {"ready", t.ready_cmd},
                            {"identity", IdentityToJson(t.defaults)},
                            {"env", t.start_env},
                            {"files", BakeFileNames(t.bake_files)},
                            {"resize", t.resize_root_fs}};
    in += "|" + start.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(Fnv(in)));
  return std::string(hex);
}

Result<std::string> TemplateStore::Ensure(const TemplateSpec& t, const BakeLog& log) {
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
    Result<std::string> r = Bake(t, build_dir, log);
    promise.set_value(r);
    std::lock_guard lock(mu_);
    bakes_.erase(build_dir);
  }
  return bake.get();
}

Result<std::string> TemplateStore::Bake(const TemplateSpec& t, const std::string& build_dir,
                                        const BakeLog& log) {
  auto t0 = Clock::now();
  if (aborted_) return Unavailable("baking template " + t.name + ": the agent is stopping");
  MOAT_RETURN_IF_ERROR(MakeDirs(dir_ + "/" + t.name, 0711));
  // Built under a temporary name and renamed when complete: a bake killed half-way is never
  // used (the agent removes leftovers of this form on start).
  MOAT_ASSIGN_OR_RETURN(std::string tmp, MakeTempDir(dir_ + "/" + t.name, ".bake-"));
  Cleanup remove_tmp([&] { (void)RemoveTree(tmp); });
  ::chmod(tmp.c_str(), 0711);
  // A fleet bakes a template once: another host's bake, from the object store, restores here
  // like one of this host's own (same build id: same kernel, rootfs, resources, QEMU).
  if (env_.replication != nullptr) {
    auto fetched =
        env_.replication->FetchTemplate(t.name, build_dir.substr(build_dir.rfind('/') + 1), tmp);
    if (!fetched.ok()) {
      LogWarn("template.fetch_failed",
              {{"template", t.name}, {"error", fetched.status().ToString()}});
    } else if (*fetched) {
      if (::rename(tmp.c_str(), build_dir.c_str()) < 0) {
        return ErrnoError("rename(" + tmp + ", " + build_dir + ")");
      }
      remove_tmp.Cancel();
      LogInfo("template.fetched",
              {{"template", t.name},
               {"ms", static_cast<long>(
                          std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0)
                              .count())}});
      return build_dir;
    }
    // Whatever a failed fetch left goes; the bake starts from an empty directory.
    (void)RemoveTree(tmp);
    MOAT_RETURN_IF_ERROR(MakeDirs(tmp, 0711));
  }
  SnapshotFiles f(tmp);
  std::string base = tmp + "/disk.raw";
  // The template keeps its own copy of the rootfs (shared blocks where the filesystem can), so
  // a rebuilt guest image never changes the disk under existing snapshots.
  // A custom template's image is never written after its build: shared by a hard link.
  if (!t.rootfs_immutable || ::link(t.rootfs_path.c_str(), base.c_str()) < 0) {
    MOAT_RETURN_IF_ERROR(CopyFile(t.rootfs_path, base));
  }
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
  if (!t.defaults.user.empty() || !t.defaults.workdir.empty()) {
    // The defaults every clone starts with (a clone's identity leaves empty fields as they are).
    MOAT_ASSIGN_OR_RETURN(channel::proto::IdentityOp op, IdentityOpFor(t.defaults));
    MOAT_RETURN_IF_ERROR(channel::ops::Unary(**guest, op, Clock::now() + std::chrono::seconds(10))
                             .Annotate("baking template " + t.name + ": defaults"));
  }
  if (t.resize_root_fs || !t.bake_files.empty()) {
    MOAT_RETURN_IF_ERROR(PrepareGuest(**guest, t).Annotate("baking template " + t.name));
  }
  if (!t.start_cmd.empty() || !t.ready_cmd.empty()) {
    MOAT_RETURN_IF_ERROR(StartAndWait(**guest, t, log));
  }
  // What a user's first calls read is in the page cache of every clone (the memory file's pages
  // are shared by all of them): a clone restored on a create's path, not warmed up in a pool,
  // then reads nothing from its disk for them.
  MOAT_RETURN_IF_ERROR(WarmGuestPaths(**guest, /*python3=*/true)
                           .Annotate("baking template " + t.name + ": warm-up"));
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
  if (env_.jail_ids != nullptr) MOAT_RETURN_IF_ERROR(GiveMemoryFileToSandboxes(f.memory));
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
  if (!t.defaults.user.empty() || !t.defaults.workdir.empty()) m.identity = t.defaults;
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
  if (env_.replication != nullptr) {
    env_.replication->Written("template", t.name + "/" + build_dir.substr(build_dir.rfind('/') + 1),
                              build_dir);
  }
  return build_dir;
}

Status TemplateStore::StartAndWait(channel::GuestClient& guest, const TemplateSpec& t,
                                   const BakeLog& log) {
  auto say = [&](const std::string& level, const std::string& msg) {
    if (log) log(level, msg);
  };
  std::map<std::string, std::string> env;
  for (const auto& [k, v] : t.start_env) env[k] = v;
  // The start command runs on, detached, once the stream is dropped: the snapshot has it.
  std::unique_ptr<channel::GuestClient::Stream> start;
  std::thread reader;
  std::mutex mu;
  std::optional<int> start_exit;
  std::string start_tail;
  Cleanup stop_reader([&] {
    if (start) start->Cancel();
    if (reader.joinable()) reader.join();
  });
  if (!t.start_cmd.empty()) {
    channel::proto::ExecOp op;
    op.cmd = t.start_cmd;
    op.env = env;
    op.user = t.defaults.user;
    op.cwd = t.defaults.workdir;
    op.tag = "start";
    MOAT_ASSIGN_OR_RETURN(start, guest.Open(channel::proto::Request(op)));
    reader = std::thread([&] {
      std::string partial;
      for (;;) {
        auto ev = start->Next();
        if (!ev.ok() || ev->kind == channel::StreamEvent::Kind::kEnd) return;
        if (ev->kind == channel::StreamEvent::Kind::kData) {
          partial += ev->data;
          if (partial.size() > 8192 && partial.find('\n') == std::string::npos) {
            partial += '\n';  // a line without end is cut (output is any bytes, any length)
          }
          size_t nl;
          while ((nl = partial.find('\n')) != std::string::npos) {
            std::string line = partial.substr(0, nl);
            partial.erase(0, nl + 1);
            say("info", "[start] " + line);
            std::lock_guard lock(mu);
            start_tail = (start_tail + line + "\n");
            if (start_tail.size() > 4096) start_tail.erase(0, start_tail.size() - 4096);
          }
        } else if (ev->kind == channel::StreamEvent::Kind::kMessage) {
          auto e = channel::proto::DecodeExecEvent(ev->message);
          if (e.ok()) {
            if (auto* x = std::get_if<channel::proto::ExecExited>(&*e)) {
              std::lock_guard lock(mu);
              start_exit = x->exit_code.value_or(128 + x->signal.value_or(0));
              return;
            }
          }
        }
      }
    });
  }
  std::string ready = t.ready_cmd.empty() ? "true" : t.ready_cmd;
  say("info", "Waiting for the ready command: " + ready);
  auto t0 = Clock::now();
  std::string last;
  for (int attempt = 1;; ++attempt) {
    {
      std::lock_guard lock(mu);
      if (start_exit && *start_exit != 0) {
        return FailedPrecondition("the start command exited with status " +
                                  std::to_string(*start_exit) +
                                  (start_tail.empty() ? "" : "; last output:\n" + start_tail));
      }
    }
    channel::ExecRequest req;
    req.cmd = ready;
    req.env = env;
    req.user = t.defaults.user;
    req.cwd = t.defaults.workdir;
    req.timeout_ms = 60000;
    req.max_output_bytes = 1 << 20;
    auto r = guest.Run(req, Clock::now() + std::chrono::seconds(70));
    if (!r.ok()) return r.status().Annotate("running the ready command");
    if (r->exit_code == 0) break;
    if (aborted_) return Unavailable("baking template " + t.name + ": the agent is stopping");
    last = r->stdout_data + r->stderr_data;
    if (Clock::now() - t0 > t.ready_timeout) {
      return DeadlineExceeded("ready command timed out after " +
                              std::to_string(t.ready_timeout.count()) + "s: " + ready +
                              (last.empty() ? "" : "; its last output:\n" + last));
    }
    if (attempt % 10 == 0) {
      say("info",
          "Still waiting for the ready command (" +
              std::to_string(
                  std::chrono::duration_cast<std::chrono::seconds>(Clock::now() - t0).count()) +
              " s)");
    }
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  say("info",
      "Ready after " +
          std::to_string(
              std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count()) +
          " ms");
  return Status::Ok();
}

Status TemplateStore::PrepareGuest(channel::GuestClient& guest, const TemplateSpec& t) {
  auto run = [&](std::vector<std::string> argv, const std::string& what) -> Status {
    channel::ExecRequest req;
    req.argv = std::move(argv);
    req.user = "root";
    req.cwd = "/";
    req.timeout_ms = 300000;
    auto r = guest.Run(req, Clock::now() + std::chrono::seconds(310));
    if (!r.ok()) return r.status().Annotate(what);
    if (r->exit_code != 0) {
      return FailedPrecondition(what + " exited with status " +
                                std::to_string(r->exit_code.value_or(-1)) + ": " + r->stdout_data +
                                r->stderr_data);
    }
    return Status::Ok();
  };
  if (t.resize_root_fs) {
    MOAT_RETURN_IF_ERROR(run({"/bin/sh", "-c",
                              "command -v resize2fs >/dev/null || { echo 'the image has no "
                              "resize2fs (e2fsprogs), which minFreeDiskMb needs' >&2; exit 1; }; "
                              "resize2fs /dev/vda"},
                             "growing the root filesystem"));
  }
  for (const auto& [path, content] : t.bake_files) {
    MOAT_RETURN_IF_ERROR(
        run({"/bin/sh", "-c", "printf '%s' \"$2\" > \"$1\"", "write", path, content},
            "writing " + path));
  }
  return Status::Ok();
}

}  // namespace moat::agent
