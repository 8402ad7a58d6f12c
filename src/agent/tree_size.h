// What a directory tree will take on ext4: the sizing of guest disk images made from it.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"

namespace moat::agent {

struct TreeSize {
  // Bytes in 4 KiB blocks: regular files and directories rounded up, symlinks of 60 bytes or
  // more one block (shorter ones live in the inode), each hard-linked file once.
  uint64_t bytes = 0;
  uint64_t inodes = 0;  // entries, `dir` itself included, each hard-linked file once
};

// Walks `dir` without following symlinks or crossing into other filesystems.
Result<TreeSize> TreeUsage(const std::string& dir);

}  // namespace moat::agent
