// RootedDir: file operations inside a directory tree that someone else filled (an unpacked OCI
// image), none of which can reach outside it. Every path is resolved by openat2 with
// RESOLVE_IN_ROOT: symlinks in the tree, absolute or with "..", resolve as if the tree were "/"
// (as the guest kernel will resolve them), never to the host's files. Writes create a new file
// beside the target and rename it over, so a symlink at the target is replaced, not followed.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "common/status.h"
#include "common/unique_fd.h"

namespace moat::agent {

struct RootedFile {
  std::string data;
  mode_t mode = 0;  // permission bits
  uid_t uid = 0;
  gid_t gid = 0;
};

class RootedDir {
 public:
  // `root` is trusted (the caller's); what is below it is not. Needs Linux 5.6 (openat2).
  static Result<RootedDir> Open(const std::string& root);

  // Opens `path` ("etc/passwd" or "/etc/passwd": always relative to the root) with `flags`.
  // Errors are errno errors (NotFound for ENOENT); ELOOP for a symlink loop.
  Result<UniqueFd> Resolve(std::string_view path, int flags) const;
  // mkdir -p inside the tree; returns the directory (O_RDONLY). A directory it creates gets
  // `mode` (parents 0755) and owner root. A component that is not a directory, or a symlink
  // that does not resolve to one inside the tree (a loop, dangling, to a file), is replaced by
  // an empty directory: its target was never inside the tree's reach.
  Result<UniqueFd> MakeDirs(std::string_view path, mode_t mode = 0755) const;
  // Was the last MakeDirs' final directory created by it?
  bool created_last() const { return created_last_; }
  // A regular file's contents, owner and mode; nullopt when it is missing, not a regular file
  // or behind a broken symlink. Larger than `max_bytes` is an error.
  Result<std::optional<RootedFile>> ReadFile(std::string_view path, size_t max_bytes) const;
  // Writes `data` to `path` (parents made by MakeDirs) with the given mode and owner, by
  // creating a new file and renaming it over `path`.
  Status WriteFile(std::string_view path, std::string_view data, mode_t mode, uid_t uid = 0,
                   gid_t gid = 0) const;
  // Is `path` (symlinks followed within the tree) an executable regular file?
  bool IsExecutableFile(std::string_view path) const;

  int fd() const { return root_.get(); }
  const std::string& path() const { return path_; }

 private:
  RootedDir(UniqueFd root, std::string path) : root_(std::move(root)), path_(std::move(path)) {}
  // openat2 of a cleaned path below the root: the fd, or -errno.
  long OpenAt2(const std::string& clean, int flags) const;

  UniqueFd root_;
  std::string path_;
  mutable bool created_last_ = false;
};

}  // namespace moat::agent
