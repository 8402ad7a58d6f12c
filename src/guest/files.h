// Filesystem operations of the channel (stat, list, mkdir, move, remove) and the entry JSON they
// report. The caller holds the requesting user's FsCredentials around each of them: the kernel
// checks every access as that user, and what they create belongs to that user. Paths are resolved
// without /proc magic links (path_open.h); the final component is never followed except where the
// operation means to (list, mkdir's existing directory).
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <string>
#include <string_view>
#include <vector>

#include "common/file_metadata.h"
#include "common/status.h"
#include "guest/request.h"
#include "guest/users.h"

namespace moat::guest {

// Absolute paths are kept; relative ones are taken relative to `home` ("/" if empty). The
// result is lexically normalised: no "." components, no empty components, no trailing slash;
// ".." is resolved lexically and never climbs above "/".
std::string ResolvePath(std::string_view path, std::string_view home);
// "rwxr-xr-x" style, with the file type letter first ("drwxr-xr-x").
std::string PermissionsString(mode_t mode);
// The entry JSON of the spec (`stat`): name, path, type, size, mode, permissions, owner, group,
// mtime_ns, symlink_target (symlinks only).
// A symlink's target is read with readlinkat(dir_fd, name) (by `path` when dir_fd is AT_FDCWD).
Json EntryJson(const std::string& path, const struct stat& st, const UserTable& users);
Json EntryJson(const std::string& path, const struct stat& st, const UserTable& users, int dir_fd,
               const std::string& name);

Result<Json> StatPath(const std::string& path, const UserTable& users);

// Sets each key of `metadata` (normalised: common/file_metadata.h) on the open file `fd` as
// `user.e2b.<key>` (`path` names it in errors).
Status SetMetadata(int fd, const FileMetadata& metadata, const std::string& path);
// The metadata of `name` in `dir_fd` (never followed): its `user.e2b.*` attributes whose names
// and values are printable ASCII, at most 8 KiB of them; an empty object when it has none.
Json ReadMetadata(int dir_fd, const std::string& name);
// Entries below `path` down to `depth` levels (1: the directory's own children), without
// following symlinks; at most `max_entries` (ResourceExhausted beyond that).
Result<std::vector<Json>> ListDir(const std::string& path, int depth, const UserTable& users,
                                  size_t max_entries);
// mkdir -p (the directories it creates belong to the current filesystem user). Returns whether
// `path` was created; an existing non-directory is FailedPrecondition.
Result<bool> MakeDirs(const std::string& path, mode_t mode = 0755);
// rename(2) of `from` itself (a symlink is moved, not followed); missing parents of `to` are
// created.
Status MovePath(const std::string& from, const std::string& to);
// rm -rf without following symlinks or crossing mounts, but a missing path is NotFound.
Status RemovePath(const std::string& path);
// The parent directory of a normalised absolute path ("/" for "/x").
std::string ParentDir(const std::string& path);

}  // namespace moat::guest
