#include "agent/sandbox.h"

#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ctime>

#include "agent/disk.h"
#include "agent/sandbox_state.h"
#include "common/cleanup.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/socket.h"
#include "vmm/qemu/qemu_driver.h"

namespace moat::agent {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

SandboxPaths::SandboxPaths(const std::string& d)
    : dir(d),
      disk(d + "/disk.qcow2"),
      memory(d + "/mem"),
      qmp_socket(d + "/qmp.sock"),
      guest_socket(d + "/guest.sock"),
      console_log(d + "/console.log"),
      state(d + "/state.json"),
      jail_root(d + "/root") {}

Sandbox::Sandbox(const SandboxEnv& env, std::string id, std::string template_name)
    : env_(env),
      id_(std::move(id)),
      template_name_(std::move(template_name)),
      paths_(env.sandboxes_dir + "/" + id_) {}

Sandbox::~Sandbox() {
  Kill();
}

pid_t Sandbox::vmm_pid() const {
  return vmm_ ? vmm_->pid() : -1;
}

Result<std::unique_ptr<Sandbox>> Sandbox::Boot(const SandboxEnv& env, const TemplateSpec& tmpl,
                                               const std::string& id,
                                               const GuestIdentity& identity) {
  auto start = Clock::now();
  std::unique_ptr<Sandbox> sb(new Sandbox(env, id, tmpl.name));
  const SandboxPaths& p = sb->paths_;
  if (PathExists(p.dir))
    return Status(ErrorCode::kAlreadyExists, "sandbox dir " + p.dir + " exists");
  // From here on, any failure releases what was made (the destructor runs Kill()).
  MOAT_RETURN_IF_ERROR(MakeDirs(p.dir, 0711));
  sb->owns_dir_ = true;
  MOAT_RETURN_IF_ERROR(MakeDirs(p.jail_root, 0755));
  MOAT_RETURN_IF_ERROR(CreateOverlay(tmpl.rootfs_path, p.disk));

  vmm::VmSpec spec;
  spec.name = "moat-" + id;
  spec.vcpus = tmpl.vcpus;
  spec.memory_mib = tmpl.memory_mib;
  spec.accel = env.accel;
  spec.boot_mode = vmm::BootMode::kColdBoot;
  spec.kernel_path = tmpl.kernel_path;
  spec.rootfs = {.path = tmpl.rootfs_path, .read_only = false, .overlay_path = p.disk};
  // A private mapping of an empty file: guest RAM is anonymous copy-on-write memory, never
  // written back to the data dir. (A template bake uses a shared mapping instead.)
  spec.memory_path = p.memory;
  spec.memory_shared = false;
  spec.console_log_path = p.console_log;
  spec.guest_socket_path = p.guest_socket;
  spec.qmp_socket_path = p.qmp_socket;
  if (env.jail_ids != nullptr) {
    MOAT_ASSIGN_OR_RETURN(sb->jail_id_, env.jail_ids->Allocate());
    vmm::JailSpec jail;
    jail.uid = sb->jail_id_;
    jail.gid = sb->jail_id_;
    jail.root_dir = p.jail_root;
    jail.binds = {{.path = tmpl.kernel_path, .writable = false},
                  {.path = tmpl.rootfs_path, .writable = false},
                  {.path = p.dir, .writable = true}};
    jail.dev_kvm = env.accel == vmm::Accel::kKvm;
    spec.jail = jail;
    // The jailed VMM writes its sockets, console log and overlay here.
    if (::chown(p.dir.c_str(), jail.uid, jail.gid) < 0 ||
        ::chown(p.disk.c_str(), jail.uid, jail.gid) < 0) {
      return ErrnoError("chown(" + p.dir + ")");
    }
  }

  auto driver = std::make_unique<vmm::qemu::QemuDriver>();
  Status started = driver->Start(spec);
  sb->vmm_ = std::move(driver);
  MOAT_RETURN_IF_ERROR(started.Annotate("starting the VMM of sandbox " + id));

  SandboxState state{.id = id,
                     .template_name = tmpl.name,
                     .created_unix_ms = static_cast<int64_t>(::time(nullptr)) * 1000,
                     .vmm_pid = sb->vmm_->pid(),
                     .vmm_start_time = 0,
                     .jail_id = sb->jail_id_,
                     .accel = std::string(vmm::AccelName(env.accel)),
                     .vm_name = spec.name};
  auto st = ProcessStartTime(state.vmm_pid);
  if (st.ok()) state.vmm_start_time = *st;
  MOAT_RETURN_IF_ERROR(WriteFileAtomic(p.state, SerializeSandboxState(state), 0600));

  MOAT_RETURN_IF_ERROR(sb->ConnectGuest(env.ready_timeout));
  MOAT_RETURN_IF_ERROR(sb->SendIdentity(identity));
  sb->boot_time_ = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
  LogInfo("sandbox.booted", {{"sandbox", id},
                             {"template", tmpl.name},
                             {"accel", std::string(vmm::AccelName(env.accel))},
                             {"vmm_pid", sb->vmm_->pid()},
                             {"ready_ms", static_cast<long>(sb->boot_time_.count())}});
  return sb;
}

Status Sandbox::ConnectGuest(std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  // QEMU creates the socket during start-up; the guest answers the HELLO once moat-guest runs.
  MOAT_ASSIGN_OR_RETURN(UniqueFd fd, ConnectUnix(paths_.guest_socket, timeout));
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  auto client =
      channel::GuestClient::Connect(std::move(fd), std::max(left, std::chrono::milliseconds(1)));
  if (!client.ok()) {
    return client.status().Annotate("waiting for moat-guest in sandbox " + id_ +
                                    " (console log: " + paths_.console_log + ")");
  }
  guest_ = std::move(client).value();
  return Status::Ok();
}

Status Sandbox::SendIdentity(const GuestIdentity& identity) {
  timespec now{};
  ::clock_gettime(CLOCK_REALTIME, &now);
  unsigned char entropy[64];
  if (::getrandom(entropy, sizeof entropy, 0) != static_cast<ssize_t>(sizeof entropy)) {
    return ErrnoError("getrandom");
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned char c : entropy) {
    hex.push_back(kHex[c >> 4]);
    hex.push_back(kHex[c & 15]);
  }
  json req = {{"op", "identity"},
              {"unix_ns", static_cast<int64_t>(now.tv_sec) * 1000000000 + now.tv_nsec},
              {"entropy", hex},
              {"env", identity.env}};
  if (!identity.user.empty()) req["user"] = identity.user;
  if (!identity.workdir.empty()) req["workdir"] = identity.workdir;
  auto r = guest_->Call(req, Clock::now() + std::chrono::seconds(10));
  return r.status().Annotate("sending the identity to sandbox " + id_);
}

Result<std::shared_ptr<channel::GuestClient>> Sandbox::Guest() {
  std::lock_guard lock(mu_);
  if (killed_) return NotFound("sandbox " + id_ + " was killed");
  if (guest_ && guest_->alive()) return guest_;
  if (!vmm_ || vmm_->WaitForExit(std::chrono::milliseconds(0)).ok()) {
    return Unavailable("the VMM of sandbox " + id_ + " has exited");
  }
  guest_.reset();
  MOAT_RETURN_IF_ERROR(ConnectGuest(std::chrono::seconds(10)));
  return guest_;
}

Status Sandbox::ReconnectGuest() {
  std::lock_guard lock(mu_);
  if (killed_) return NotFound("sandbox " + id_ + " was killed");
  guest_.reset();
  return ConnectGuest(std::chrono::seconds(10));
}

bool Sandbox::VmmExited() {
  std::lock_guard lock(mu_);
  return !vmm_ || vmm_->WaitForExit(std::chrono::milliseconds(0)).ok();
}

Result<SandboxUsage> Sandbox::Usage() {
  SandboxUsage u;
  pid_t pid = vmm_pid();
  if (pid <= 0) return FailedPrecondition("sandbox " + id_ + " has no VMM");
  MOAT_ASSIGN_OR_RETURN(std::string rollup,
                        ReadFile("/proc/" + std::to_string(pid) + "/smaps_rollup"));
  auto field = [&](std::string_view name) -> uint64_t {
    size_t at = rollup.find(std::string("\n") + std::string(name) + ":");
    if (at == std::string::npos) return 0;
    return std::strtoull(rollup.c_str() + at + name.size() + 2, nullptr, 10) * 1024;
  };
  u.pss_bytes = field("Pss");
  u.rss_bytes = field("Rss");
  MOAT_ASSIGN_OR_RETURN(u.disk_bytes, AllocatedBytes(paths_.disk));
  return u;
}

void Sandbox::Kill() {
  std::lock_guard lock(mu_);
  if (killed_) return;
  killed_ = true;
  guest_.reset();
  if (vmm_) {
    vmm_->Kill();  // the process, its cgroup and its jail directory
    vmm_.reset();
  }
  Status s = owns_dir_ ? RemoveTree(paths_.dir) : Status::Ok();
  if (!s.ok()) LogError("sandbox.cleanup_failed", {{"sandbox", id_}, {"error", s.ToString()}});
  if (jail_id_ != 0 && env_.jail_ids != nullptr) env_.jail_ids->Release(jail_id_);
  jail_id_ = 0;
}

}  // namespace moat::agent
