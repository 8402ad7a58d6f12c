// The VMM jail: QEMU never runs as root. Between fork and exec the child joins its cgroup,
// enters a private mount namespace whose root is a small tmpfs holding only what QEMU needs
// (read-only /usr, the VM's own files, a few device nodes), pivots into it and drops to a
// per-sandbox unprivileged uid/gid with no capabilities and no_new_privs. docs/jail.md explains
// what is isolated and what is not.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/unique_fd.h"
#include "vmm/cgroup.h"

namespace moat::vmm {

// A host path that appears at the same path inside the jail. Paths are kept identical so that
// the QEMU command line needs no translation; the jail reveals the names of the directories
// leading to them, never their other contents.
struct JailBind {
  std::string path;
  bool writable = false;
};

struct JailSpec {
  uid_t uid = 0;  // must not be 0
  gid_t gid = 0;  // must not be 0; a template's clones may share one (see docs/jail.md)
  // An existing empty directory on the host. In the child's namespace a tmpfs is mounted on it
  // and becomes the root; on the host it stays empty.
  std::string root_dir;
  std::vector<JailBind> binds;
  bool dev_kvm = false;  // create /dev/kvm (owned by uid) inside the jail
  bool dev_tun = false;  // create /dev/net/tun
  // cgroup: `cgroup_parent` as in CgroupDirsFor (empty: <agent's cgroup>/moat); no cgroup at
  // all when `use_cgroup` is false.
  bool use_cgroup = true;
  std::string cgroup_parent;
  CgroupLimits limits;
};

// Per-sandbox uids/gids from a configured range, e.g. [900000, 900000 + 65536). Thread-safe.
class JailIdAllocator {
 public:
  JailIdAllocator(uint32_t first, uint32_t count) : first_(first), count_(count) {}
  // ResourceExhausted when every id is taken.
  Result<uint32_t> Allocate();
  // Marks `id` taken (the jail id of a VMM re-adopted after a restart). AlreadyExists if it is
  // taken, InvalidArgument if it is outside the range.
  Status Reserve(uint32_t id);
  void Release(uint32_t id);

 private:
  std::mutex mu_;
  uint32_t first_;
  uint32_t count_;
  uint32_t next_ = 0;
  std::vector<bool> used_;
};

// Everything the child needs, computed in the parent so that the child only makes system calls.
// Build it, Spawn with pre_exec = PreExec(), keep it alive until Spawn returns.
class PreparedJail {
 public:
  // `cgroup` may be null (no cgroup). Fails on a bad spec (uid 0, a missing bind source...).
  static Result<std::unique_ptr<PreparedJail>> Prepare(const JailSpec& spec, const Cgroup* cgroup);
  // Async-signal-safe; returns 0 or the errno of the first failed step, which ChildProcess
  // reports as Spawn's error. The returned callable refers to this object.
  std::function<int()> PreExec() const;

  // The plan, for tests and logs.
  const std::vector<std::string>& dirs() const { return dirs_; }
  struct Bind {
    std::string source;
    std::string target;  // under root
    bool writable;
    bool is_dir;
  };
  const std::vector<Bind>& binds() const { return binds_; }

 private:
  PreparedJail() = default;
  int RunInChild() const;

  struct Symlink {
    std::string target;  // what the link points to
    std::string path;    // under root
  };
  struct DevNode {
    std::string path;  // under root
    mode_t mode;
    dev_t rdev;
    bool owned_by_vm;  // chown to uid/gid (kvm, tun); else 0666 root-owned
  };
  uid_t uid_ = 0;
  gid_t gid_ = 0;
  int last_cap_ = 40;
  std::string root_;
  std::vector<std::string> dirs_;  // created under root, parents first
  std::vector<Symlink> symlinks_;
  std::vector<std::string> files_;  // empty files created as bind targets
  std::vector<Bind> binds_;
  std::vector<DevNode> dev_nodes_;
  std::vector<int> cgroup_procs_fds_;  // numbers of owned_fds_, read by the child
  std::vector<UniqueFd> owned_fds_;
};

}  // namespace moat::vmm
