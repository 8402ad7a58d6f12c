#include "guest/fs_credentials.h"

#include <sys/fsuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <string>
#include <utility>

#include "common/log.h"

namespace moat::guest {
namespace {

// setgroups(2) straight to the kernel, where it is per thread (libc wrappers may broadcast it).
int SetGroups(const std::vector<gid_t>& groups) {
  return static_cast<int>(::syscall(SYS_setgroups, groups.size(), groups.data()));
}

// setfsuid/setfsgid report no errors; they return the previous value. Asking again with an
// invalid id (-1) changes nothing and returns the current one.
uid_t CurrentFsUid() {
  return static_cast<uid_t>(::setfsuid(static_cast<uid_t>(-1)));
}
gid_t CurrentFsGid() {
  return static_cast<gid_t>(::setfsgid(static_cast<gid_t>(-1)));
}

}  // namespace

Result<FsCredentials> FsCredentials::Assume(const UserInfo& user) {
  FsCredentials creds;
  if (user.uid == ::geteuid() && user.gid == ::getegid()) return creds;
  if (::geteuid() != 0) {
    return Status(ErrorCode::kPermissionDenied, "moat-guest runs as uid " +
                                                    std::to_string(::geteuid()) +
                                                    " and cannot act as user " + user.name);
  }
  creds.saved_uid_ = CurrentFsUid();
  creds.saved_gid_ = CurrentFsGid();
  int n = ::getgroups(0, nullptr);
  if (n < 0) return ErrnoError("getgroups");
  creds.saved_groups_.resize(static_cast<size_t>(n));
  if (n > 0 && ::getgroups(n, creds.saved_groups_.data()) < 0) return ErrnoError("getgroups");

  std::vector<gid_t> groups = user.groups;
  if (groups.empty()) groups.push_back(user.gid);
  if (SetGroups(groups) < 0) return ErrnoError("setgroups(" + user.name + ")");
  creds.switched_ = true;  // from here on the destructor restores
  ::setfsgid(user.gid);
  ::setfsuid(user.uid);
  if (CurrentFsGid() != user.gid || CurrentFsUid() != user.uid) {
    return Internal("setfsuid/setfsgid(" + user.name + ") did not take effect");
  }
  return creds;
}

FsCredentials::FsCredentials(FsCredentials&& other) noexcept
    : switched_(std::exchange(other.switched_, false)),
      saved_uid_(other.saved_uid_),
      saved_gid_(other.saved_gid_),
      saved_groups_(std::move(other.saved_groups_)) {}

FsCredentials::~FsCredentials() {
  if (switched_) Restore();
}

void FsCredentials::Restore() {
  // The uid first: returning to fsuid 0 gives back the filesystem capabilities.
  ::setfsuid(saved_uid_);
  ::setfsgid(saved_gid_);
  int groups_status = SetGroups(saved_groups_);
  if (CurrentFsUid() != saved_uid_ || CurrentFsGid() != saved_gid_ || groups_status < 0) {
    // Impossible while the effective uid is 0 (it always may set any fsuid and groups); going on
    // would run later ops under a user's identity, so stop rather than guess.
    LogError("guest.fs_credentials_restore_failed", {{"errno", errno}});
    std::abort();
  }
  switched_ = false;
}

}  // namespace moat::guest
