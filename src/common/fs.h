// Small filesystem helpers with errors as values.
#pragma once

#include <sys/types.h>

#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace moat {

Result<std::string> ReadFile(const std::string& path);
// Writes to a temporary file beside `path`, fsyncs it and renames it over `path`.
Status WriteFileAtomic(const std::string& path, std::string_view data, mode_t mode = 0644);
// mkdir -p.
Status MakeDirs(const std::string& path, mode_t mode = 0755);
// rm -rf: removes a file or a directory tree; a missing path is not an error. Does not follow
// symlinks and does not cross into other mounts.
Status RemoveTree(const std::string& path);
bool PathExists(const std::string& path);
// The names in `dir` (without "." and ".."), sorted; empty when it does not exist or cannot be
// read.
std::vector<std::string> DirNames(const std::string& dir);
// A fresh directory under `parent` named prefix + random suffix (mkdtemp).
Result<std::string> MakeTempDir(const std::string& parent, std::string_view prefix);

}  // namespace moat
