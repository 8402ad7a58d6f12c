#include "agent/tree_size.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <set>
#include <string_view>
#include <utility>
#include <vector>

namespace moat::agent {
namespace {

constexpr uint64_t kBlock = 4096;

uint64_t Blocks(uint64_t bytes) {
  return (bytes + kBlock - 1) / kBlock * kBlock;
}

struct Walk {
  dev_t dev = 0;
  std::set<std::pair<dev_t, ino_t>> linked;  // hard-linked files seen so far
  TreeSize size;
};

// Adds `path` (lstat'ed as `st`) and, for a directory, everything below it. Paths rather than
// open directory fds: the depth of a tree is then bounded by PATH_MAX, not by the fd limit.
Status Add(Walk& w, const std::string& path, const struct stat& st) {
  if (S_ISREG(st.st_mode) && st.st_nlink > 1 && !w.linked.emplace(st.st_dev, st.st_ino).second) {
    return Status::Ok();
  }
  ++w.size.inodes;
  if (S_ISREG(st.st_mode)) {
    w.size.bytes += Blocks(static_cast<uint64_t>(st.st_size));
  } else if (S_ISLNK(st.st_mode)) {
    if (st.st_size >= 60) w.size.bytes += kBlock;
  } else if (S_ISDIR(st.st_mode)) {
    w.size.bytes += Blocks(std::max<uint64_t>(static_cast<uint64_t>(st.st_size), kBlock));
    if (st.st_dev != w.dev) return Status::Ok();
    std::vector<std::string> names;
    DIR* d = ::opendir(path.c_str());
    if (d == nullptr) return ErrnoError("opendir(" + path + ")");
    while (dirent* e = ::readdir(d)) {
      std::string_view n = e->d_name;
      if (n != "." && n != "..") names.emplace_back(n);
    }
    ::closedir(d);
    for (const auto& n : names) {
      std::string child = std::string(path).append("/").append(n);
      struct stat cst {};
      if (::lstat(child.c_str(), &cst) < 0) return ErrnoError("lstat(" + child + ")");
      MOAT_RETURN_IF_ERROR(Add(w, child, cst));
    }
  }
  return Status::Ok();
}

}  // namespace

Result<TreeSize> TreeUsage(const std::string& dir) {
  struct stat st {};
  if (::lstat(dir.c_str(), &st) < 0) return ErrnoError("lstat(" + dir + ")");
  if (!S_ISDIR(st.st_mode)) return InvalidArgument(dir + " is not a directory");
  Walk w;
  w.dev = st.st_dev;
  MOAT_RETURN_IF_ERROR(Add(w, dir, st));
  return w.size;
}

}  // namespace moat::agent
