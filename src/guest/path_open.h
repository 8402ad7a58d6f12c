// How moat-guest opens paths that a client names. Symlinks are followed as the kernel does for any
// process (and checked under the caller's FsCredentials), but never /proc's "magic links"
// (/proc/self/fd/N, /proc/self/cwd, …): through them a client could reach descriptors and
// directories that moat-guest itself holds open, skipping the permission checks of the path that
// led to them.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <string>

#include "common/status.h"
#include "common/unique_fd.h"

namespace moat::guest {

// openat2(path, flags, mode, RESOLVE_NO_MAGICLINKS) relative to the current directory (paths are
// absolute here). On a kernel without openat2 (before 5.6) it falls back to openat. ELOOP (a
// magic link or a symlink loop) is InvalidArgument. `op` names the operation in errors.
Result<UniqueFd> OpenPath(const std::string& path, int flags, mode_t mode, std::string_view op);

// The directory that holds the last component of a normalised absolute path (opened O_PATH) and
// that component's name: for "/a/b", "/a" and "b"; for "/", "/" and ".". For the *at syscalls,
// which then never follow a symlink in the final component unless asked to.
struct ParentDirFd {
  UniqueFd dir;
  std::string name;
};
Result<ParentDirFd> OpenParentDir(const std::string& path, std::string_view op);

// Opens for I/O the file that an O_PATH descriptor refers to, with `flags`, through
// /proc/self/fd (the same inode, so no race with a rename; the kernel checks the file's
// permissions as for any open). Without /proc it opens `path` again and insists on the same inode
// as `st`.
Result<UniqueFd> ReopenForIo(const UniqueFd& path_fd, const struct stat& st,
                             const std::string& path, int flags, std::string_view op);

}  // namespace moat::guest
