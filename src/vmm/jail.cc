#include "vmm/jail.h"

#include <fcntl.h>
#include <linux/capability.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>

#include "common/fs.h"

namespace moat::vmm {
namespace {

// The host's system directories QEMU needs: its binary, shared libraries and /usr/share/qemu.
// On merged-/usr systems all but /usr are symlinks, recreated as such.
constexpr const char* kSystemDirs[] = {"/usr", "/lib", "/lib64", "/bin", "/sbin"};
constexpr const char* kSystemFiles[] = {"/etc/ld.so.cache"};
struct HostDev {
  const char* path;
  bool owned_by_vm;
};
constexpr HostDev kBaseDevs[] = {
    {"/dev/null", false}, {"/dev/zero", false}, {"/dev/urandom", false}, {"/dev/random", false}};

std::string Normalize(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

// Every directory between root (exclusive) and `target`'s parent, parents first.
void AddAncestors(const std::string& root, const std::string& path,
                  std::vector<std::string>* dirs) {
  for (size_t pos = path.find('/', 1); pos != std::string::npos; pos = path.find('/', pos + 1)) {
    std::string d = root + path.substr(0, pos);
    if (std::find(dirs->begin(), dirs->end(), d) == dirs->end()) dirs->push_back(d);
  }
}

// Decimal digits of `v` into buf (no allocation: used between fork and exec).
size_t FormatPid(pid_t v, char* buf, size_t cap) {
  char tmp[24];
  size_t n = 0;
  do {
    tmp[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v > 0 && n < sizeof tmp);
  for (size_t i = 0; i < n && i < cap; ++i) buf[i] = tmp[n - 1 - i];
  return n;
}

}  // namespace

Result<uint32_t> JailIdAllocator::Allocate() {
  std::lock_guard<std::mutex> lock(mu_);
  if (used_.size() != count_) used_.assign(count_, false);
  for (uint32_t i = 0; i < count_; ++i) {
    uint32_t slot = (next_ + i) % count_;
    if (!used_[slot]) {
      used_[slot] = true;
      next_ = (slot + 1) % count_;  // reuse released ids last
      return first_ + slot;
    }
  }
  return ResourceExhausted("all " + std::to_string(count_) + " jail ids from " +
                           std::to_string(first_) + " are in use");
}

Status JailIdAllocator::Reserve(uint32_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (id < first_ || id - first_ >= count_) {
    return InvalidArgument("jail id " + std::to_string(id) + " is outside [" +
                           std::to_string(first_) + ", " + std::to_string(first_ + count_) + ")");
  }
  if (used_.size() != count_) used_.assign(count_, false);
  if (used_[id - first_]) {
    return Status(ErrorCode::kAlreadyExists, "jail id " + std::to_string(id) + " is in use");
  }
  used_[id - first_] = true;
  return Status::Ok();
}

void JailIdAllocator::Release(uint32_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (id >= first_ && id - first_ < count_ && used_.size() == count_) used_[id - first_] = false;
}

Result<std::unique_ptr<PreparedJail>> PreparedJail::Prepare(const JailSpec& spec,
                                                            const Cgroup* cgroup) {
  if (spec.uid == 0 || spec.gid == 0) {
    return InvalidArgument("jail: uid and gid must not be 0 (got " + std::to_string(spec.uid) +
                           ":" + std::to_string(spec.gid) + ")");
  }
  if (spec.root_dir.empty() || spec.root_dir[0] != '/') {
    return InvalidArgument("jail: root_dir must be an absolute path: \"" + spec.root_dir + "\"");
  }
  struct stat st {};
  if (::stat(spec.root_dir.c_str(), &st) < 0) return ErrnoError("stat(" + spec.root_dir + ")");
  if (!S_ISDIR(st.st_mode)) return InvalidArgument("jail: root_dir is not a directory");

  std::unique_ptr<PreparedJail> j(new PreparedJail());
  j->uid_ = spec.uid;
  j->gid_ = spec.gid;
  j->root_ = Normalize(spec.root_dir);
  auto last_cap = ReadFile("/proc/sys/kernel/cap_last_cap");
  if (last_cap.ok()) j->last_cap_ = std::atoi(last_cap->c_str());

  std::vector<JailBind> binds;
  for (const char* d : kSystemDirs) {
    char link[PATH_MAX];
    ssize_t n = ::readlink(d, link, sizeof link - 1);
    if (n > 0) {
      j->symlinks_.push_back({std::string(link, static_cast<size_t>(n)), j->root_ + d});
    } else if (PathExists(d)) {
      binds.push_back({d, false});
    }
  }
  for (const char* f : kSystemFiles) {
    if (PathExists(f)) binds.push_back({f, false});
  }
  for (const auto& b : spec.binds) {
    if (b.path.empty() || b.path[0] != '/' || b.path.find("/../") != std::string::npos) {
      return InvalidArgument("jail: bind path must be absolute and without ..: \"" + b.path + "\"");
    }
    std::string p = Normalize(b.path);
    if (p == "/") return InvalidArgument("jail: cannot bind the host's root");
    auto same =
        std::find_if(binds.begin(), binds.end(), [&](const JailBind& x) { return x.path == p; });
    if (same != binds.end()) {
      same->writable = same->writable || b.writable;
    } else {
      binds.push_back({p, b.writable});
    }
  }
  // Parents before children: a file inside a bound directory is bound on top of it.
  std::sort(binds.begin(), binds.end(),
            [](const JailBind& a, const JailBind& b) { return a.path < b.path; });
  for (const auto& b : binds) {
    struct stat bs {};
    if (::stat(b.path.c_str(), &bs) < 0) return ErrnoError("jail: stat(" + b.path + ")");
    bool is_dir = S_ISDIR(bs.st_mode);
    if (!is_dir && !S_ISREG(bs.st_mode)) {
      return InvalidArgument("jail: bind source is neither a file nor a directory: " + b.path);
    }
    std::string target = j->root_ + b.path;
    AddAncestors(j->root_, b.path, &j->dirs_);
    if (is_dir) {
      if (std::find(j->dirs_.begin(), j->dirs_.end(), target) == j->dirs_.end()) {
        j->dirs_.push_back(target);
      }
    } else {
      j->files_.push_back(target);
    }
    j->binds_.push_back({b.path, target, b.writable, is_dir});
  }

  std::vector<HostDev> devs(std::begin(kBaseDevs), std::end(kBaseDevs));
  if (spec.dev_kvm) devs.push_back({"/dev/kvm", true});
  if (spec.dev_tun) devs.push_back({"/dev/net/tun", true});
  for (const auto& d : devs) {
    struct stat ds {};
    if (::stat(d.path, &ds) < 0) return ErrnoError(std::string("jail: stat(") + d.path + ")");
    if (!S_ISCHR(ds.st_mode)) {
      return InvalidArgument(std::string("jail: not a character device: ") + d.path);
    }
    AddAncestors(j->root_, d.path, &j->dirs_);
    j->dev_nodes_.push_back({j->root_ + d.path,
                             static_cast<mode_t>(S_IFCHR | (d.owned_by_vm ? 0600 : 0666)),
                             ds.st_rdev, d.owned_by_vm});
  }
  if (cgroup != nullptr) {
    // Copies numbered 1024 and up: the child's fd mapping (SpawnOptions::fds, e.g. a tap as
    // fd 3) dup2s onto low numbers before pre_exec runs and would otherwise clobber these.
    for (int fd : cgroup->procs_fds()) {
      UniqueFd copy(::fcntl(fd, F_DUPFD_CLOEXEC, 1024));
      if (!copy) return ErrnoError("jail: fcntl(F_DUPFD_CLOEXEC, cgroup.procs)");
      j->cgroup_procs_fds_.push_back(copy.get());
      j->owned_fds_.push_back(std::move(copy));
    }
  }
  return j;
}

std::function<int()> PreparedJail::PreExec() const {
  return [this] { return RunInChild(); };
}

// Between fork and exec: system calls only, on data prepared by Prepare(). Raw syscalls for
// the credential changes: glibc's wrappers would try to synchronise threads the child does
// not have.
int PreparedJail::RunInChild() const {
  // 1. Join the cgroup while still root and before the cgroup filesystem leaves our view.
  char pid_buf[24];
  size_t pid_len = FormatPid(::getpid(), pid_buf, sizeof pid_buf);
  for (int fd : cgroup_procs_fds_) {
    if (::write(fd, pid_buf, pid_len) < 0) return errno;
  }
  // 2. A private mount namespace: nothing below propagates to the host.
  if (::unshare(CLONE_NEWNS) < 0) return errno;
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) < 0) return errno;
  // 3. The new root: a small tmpfs (device nodes allowed: we create them with mknod).
  if (::mount("moat-jail", root_.c_str(), "tmpfs", MS_NOSUID | MS_NOEXEC,
              "mode=0755,size=1m,nr_inodes=256") < 0) {
    return errno;
  }
  ::umask(0);
  for (const auto& d : dirs_) {
    if (::mkdir(d.c_str(), 0755) < 0 && errno != EEXIST) return errno;
  }
  for (const auto& s : symlinks_) {
    if (::symlink(s.target.c_str(), s.path.c_str()) < 0) return errno;
  }
  for (const auto& f : files_) {
    int fd = ::open(f.c_str(), O_RDONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0444);
    if (fd < 0) return errno;
    ::close(fd);
  }
  for (const auto& b : binds_) {
    if (::mount(b.source.c_str(), b.target.c_str(), nullptr, MS_BIND, nullptr) < 0) return errno;
    // A bind mount takes its flags only from a remount. Only /usr and friends may hold
    // programs; the VM's own files are data.
    unsigned long flags = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV;
    if (!b.writable) flags |= MS_RDONLY;
    if (b.writable) flags |= MS_NOEXEC;
    if (::mount(nullptr, b.target.c_str(), nullptr, flags, nullptr) < 0) return errno;
  }
  for (const auto& n : dev_nodes_) {
    if (::mknod(n.path.c_str(), n.mode, n.rdev) < 0) return errno;
    if (n.owned_by_vm && ::chown(n.path.c_str(), uid_, gid_) < 0) return errno;
  }
  // 4. pivot_root(".", ".") stacks the old root on top of the new one; detaching it leaves
  // only the jail visible.
  if (::chdir(root_.c_str()) < 0) return errno;
  if (::syscall(SYS_pivot_root, ".", ".") < 0) return errno;
  if (::umount2(".", MNT_DETACH) < 0) return errno;
  if (::chdir("/") < 0) return errno;
  if (::mount(nullptr, "/", nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NOEXEC,
              nullptr) < 0) {
    return errno;
  }
  ::umask(0077);
  // 5. Drop privileges: empty bounding set, no supplementary groups, uid/gid, no_new_privs.
  for (int cap = 0; cap <= last_cap_; ++cap) {
    if (::prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL) return errno;
  }
  if (::syscall(SYS_setgroups, 0, nullptr) < 0) return errno;
  if (::syscall(SYS_setresgid, gid_, gid_, gid_) < 0) return errno;
  if (::syscall(SYS_setresuid, uid_, uid_, uid_) < 0) return errno;
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) return errno;
  // No parent-death signal: it fires when the *thread* that spawned the VMM exits (an API
  // connection's thread, say), not the agent. The agent supervises VMMs itself and a restarted
  // agent kills the ones it finds (pid and start time recorded in state.json).
  // 6. Verify: setresuid from root to non-root must have cleared every capability.
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2]{};
  if (::syscall(SYS_capget, &hdr, data) < 0) return errno;
  for (const auto& d : data) {
    if (d.effective != 0 || d.permitted != 0 || d.inheritable != 0) return EPERM;
  }
  return 0;
}

}  // namespace moat::vmm
