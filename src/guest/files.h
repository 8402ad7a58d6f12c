// Filesystem operations of the channel (stat, list, mkdir, move, remove) and the entry JSON they
// report. moat-guest runs as root; what it creates on a user's behalf is chowned to that user.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <string>
#include <string_view>
#include <vector>

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
Json EntryJson(const std::string& path, const struct stat& st, const UserTable& users);

Result<Json> StatPath(const std::string& path, const UserTable& users);
// Entries below `path` down to `depth` levels (1: the directory's own children), without
// following symlinks; at most `max_entries` (ResourceExhausted beyond that).
Result<std::vector<Json>> ListDir(const std::string& path, int depth, const UserTable& users,
                                  size_t max_entries);
// mkdir -p; directories it creates are chowned to uid:gid. Returns whether `path` was created.
Result<bool> MakeDirsOwned(const std::string& path, uid_t uid, gid_t gid, mode_t mode = 0755);
// rename(2); missing parents of `to` are created (owned by uid:gid).
Status MovePath(const std::string& from, const std::string& to, uid_t uid, gid_t gid);
// rm -rf, but a missing path is NotFound.
Status RemovePath(const std::string& path);
// The parent directory of a normalised absolute path ("/" for "/x").
std::string ParentDir(const std::string& path);

}  // namespace moat::guest
