// FsCredentials: the identity under which moat-guest makes filesystem syscalls on a user's
// behalf. moat-guest is root; a file op for `user` must get exactly the access that user has, so
// the kernel's own permission checks (DAC, sticky directories, protected symlinks) decide.
#pragma once

#include <sys/types.h>

#include <vector>

#include "common/status.h"
#include "guest/users.h"

namespace moat::guest {

// Switches the calling thread's filesystem uid and gid (setfsuid/setfsgid) and its supplementary
// groups to a user's for as long as it lives, and restores moat-guest's own on destruction.
//
// Why fsuid rather than seteuid: it changes only what the kernel checks for file access (and
// owns new files as), not who may signal or ptrace moat-guest, and it is per thread. moat-guest
// is single-threaded and its file syscalls are synchronous, so holding one of these across an
// op's syscalls covers exactly that op. Leaving root's fsuid drops the filesystem capabilities
// (CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_CHOWN, …) from the effective set; returning to 0 restores
// them. Raw syscalls are used so that no libc broadcasts the change to other threads.
//
// Not copyable; movable so that it can be returned in a Result. Never nest two with different
// users across an event-loop turn: the op that made one destroys it before returning.
class FsCredentials {
 public:
  // `user` acting as themselves (moat-guest's own uid and gid: root for root) switches nothing.
  // A moat-guest that is not root (a development run with --listen-unix) cannot act as anyone
  // else: PermissionDenied.
  static Result<FsCredentials> Assume(const UserInfo& user);

  FsCredentials(FsCredentials&& other) noexcept;
  FsCredentials& operator=(FsCredentials&&) = delete;
  FsCredentials(const FsCredentials&) = delete;
  FsCredentials& operator=(const FsCredentials&) = delete;
  ~FsCredentials();

  bool switched() const { return switched_; }

 private:
  FsCredentials() = default;
  void Restore();

  bool switched_ = false;
  uid_t saved_uid_ = 0;
  gid_t saved_gid_ = 0;
  std::vector<gid_t> saved_groups_;
};

}  // namespace moat::guest
