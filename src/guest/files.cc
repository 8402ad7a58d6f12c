#include "guest/files.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/unique_fd.h"
#include "guest/path_open.h"

namespace moat::guest {
namespace {

// Bounds the recursion (and the descriptors it holds, one per level) of a removal.
constexpr int kMaxRemoveDepth = 512;

std::string TypeName(mode_t mode) {
  if (S_ISREG(mode)) return "file";
  if (S_ISDIR(mode)) return "dir";
  if (S_ISLNK(mode)) return "symlink";
  return "other";
}

std::string BaseName(const std::string& path) {
  if (path == "/") return "/";
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string JoinPath(const std::string& dir, const std::string& name) {
  return dir == "/" ? "/" + name : dir + "/" + name;
}

// Lists the directory open as `dir_fd` (named `dir`), and below it down to `depth` levels, as
// envd's walk does: names in byte order, each directory followed at once by what is in it.
// Subdirectories are opened relative to their parent and never through a symlink.
Status ListInto(UniqueFd dir_fd, const std::string& dir, int depth, const UserTable& users,
                size_t max_entries, std::vector<Json>& out) {
  DIR* d = ::fdopendir(dir_fd.get());
  if (d == nullptr) return ErrnoError("fdopendir(" + dir + ")");
  dir_fd.Release();  // owned by the DIR stream now
  std::vector<std::string> names;
  // Sorted, so read whole — but never more than the listing may still hold, plus one to know.
  size_t room = max_entries - std::min(max_entries, out.size());
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    if (names.size() > room) break;
    names.push_back(std::move(name));
  }
  std::sort(names.begin(), names.end());
  Status status;
  for (const auto& name : names) {
    std::string path = JoinPath(dir, name);
    struct stat st {};
    if (::fstatat(::dirfd(d), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0) continue;  // raced
    if (out.size() >= max_entries) {
      status = ResourceExhausted("list(" + dir + "): more than " + std::to_string(max_entries) +
                                 " entries");
      break;
    }
    out.push_back(EntryJson(path, st, users, ::dirfd(d), name));
    if (!S_ISDIR(st.st_mode) || depth <= 1) continue;
    UniqueFd sub(::openat(::dirfd(d), name.c_str(),
                          O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK));
    // A subdirectory that vanished or is unreadable does not fail the whole listing.
    if (!sub) continue;
    status = ListInto(std::move(sub), path, depth - 1, users, max_entries, out);
    if (!status.ok()) break;
  }
  ::closedir(d);
  return status;
}

// rm -rf of `name` in `parent`, relative all the way down: a symlink is removed, never followed,
// and a directory on another filesystem (a mount point) is not entered.
Status RemoveAt(int parent, const std::string& name, const std::string& path, dev_t dev,
                int depth) {
  struct stat st {};
  if (::fstatat(parent, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0) {
    if (errno == ENOENT) return Status::Ok();
    return ErrnoError("stat(" + path + ")");
  }
  if (!S_ISDIR(st.st_mode)) {
    if (::unlinkat(parent, name.c_str(), 0) < 0 && errno != ENOENT) {
      return ErrnoError("unlink(" + path + ")");
    }
    return Status::Ok();
  }
  Status first;
  if (st.st_dev == dev) {
    if (depth > kMaxRemoveDepth) {
      return InvalidArgument("remove(" + path + "): deeper than " +
                             std::to_string(kMaxRemoveDepth) + " levels");
    }
    UniqueFd fd(::openat(parent, name.c_str(),
                         O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK));
    if (!fd) return ErrnoError("open(" + path + ")");
    // The names first, then the DIR stream (and its buffer) closed: a level of recursion holds
    // only its descriptor.
    std::vector<std::string> names;
    {
      int copy = ::fcntl(fd.get(), F_DUPFD_CLOEXEC, 0);
      if (copy < 0) return ErrnoError("dup(" + path + ")");
      DIR* d = ::fdopendir(copy);
      if (d == nullptr) {
        Status s = ErrnoError("opendir(" + path + ")");
        ::close(copy);
        return s;
      }
      while (dirent* e = ::readdir(d)) {
        std::string child = e->d_name;
        if (child != "." && child != "..") names.push_back(std::move(child));
      }
      ::closedir(d);
    }
    for (const auto& child : names) {
      Status s = RemoveAt(fd.get(), child, JoinPath(path, child), dev, depth + 1);
      if (!s.ok() && first.ok()) first = s;
    }
  }
  if (::unlinkat(parent, name.c_str(), AT_REMOVEDIR) < 0 && errno != ENOENT && first.ok()) {
    first = ErrnoError("rmdir(" + path + ")");
  }
  return first;
}

}  // namespace

std::string ResolvePath(std::string_view path, std::string_view home) {
  std::string full;
  if (!path.empty() && path.front() == '/') {
    full = std::string(path);
  } else {
    full = home.empty() ? "/" : std::string(home);
    full += "/";
    full += path;
  }
  std::vector<std::string_view> parts;
  std::string_view rest = full;
  while (!rest.empty()) {
    size_t slash = rest.find('/');
    std::string_view part = rest.substr(0, slash);
    rest = slash == std::string_view::npos ? std::string_view() : rest.substr(slash + 1);
    if (part.empty() || part == ".") continue;
    if (part == "..") {
      if (!parts.empty()) parts.pop_back();
      continue;
    }
    parts.push_back(part);
  }
  std::string out;
  for (auto p : parts) {
    out += '/';
    out += p;
  }
  return out.empty() ? "/" : out;
}

std::string ParentDir(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos || slash == 0) return "/";
  return path.substr(0, slash);
}

std::string PermissionsString(mode_t mode) {
  std::string s(10, '-');
  if (S_ISDIR(mode)) s[0] = 'd';
  if (S_ISLNK(mode)) s[0] = 'l';
  const char* rwx = "rwxrwxrwx";
  for (int i = 0; i < 9; ++i) {
    if (mode & (1 << (8 - i))) s[1 + i] = rwx[i];
  }
  if (mode & S_ISUID) s[3] = (mode & S_IXUSR) ? 's' : 'S';
  if (mode & S_ISGID) s[6] = (mode & S_IXGRP) ? 's' : 'S';
  if (mode & S_ISVTX) s[9] = (mode & S_IXOTH) ? 't' : 'T';
  return s;
}

Json EntryJson(const std::string& path, const struct stat& st, const UserTable& users) {
  return EntryJson(path, st, users, AT_FDCWD, path);
}

Json EntryJson(const std::string& path, const struct stat& st, const UserTable& users, int dir_fd,
               const std::string& name) {
  Json e = {
      {"name", BaseName(path)},
      {"path", path},
      {"type", TypeName(st.st_mode)},
      {"size", static_cast<uint64_t>(st.st_size)},
      {"mode", static_cast<uint32_t>(st.st_mode & 07777)},
      {"permissions", PermissionsString(st.st_mode)},
      {"owner", users.UserName(st.st_uid)},
      {"group", users.GroupName(st.st_gid)},
      {"mtime_ns", static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec},
  };
  if (S_ISLNK(st.st_mode)) {
    char target[4096];
    ssize_t n = ::readlinkat(dir_fd, name.c_str(), target, sizeof target);
    if (n >= 0) e["symlink_target"] = std::string(target, static_cast<size_t>(n));
    // What it leads to, as the user sees it, resolved as every client path is (never through
    // /proc's magic links, which would name what moat-guest holds open): absent when it leads
    // nowhere (dangling, a loop, a magic link).
    auto to = OpenPath(path, O_PATH | O_CLOEXEC, 0, "stat");
    struct stat target_st {};
    if (to.ok() && ::fstat(to->get(), &target_st) == 0) {
      std::string link = "/proc/self/fd/" + std::to_string(to->get());
      char resolved[4096];
      ssize_t len = ::readlink(link.c_str(), resolved, sizeof resolved);
      if (len > 0 && static_cast<size_t>(len) < sizeof resolved && resolved[0] == '/') {
        e["target"] = {{"type", TypeName(target_st.st_mode)},
                       {"mode", static_cast<uint32_t>(target_st.st_mode & 07777)},
                       {"path", std::string(resolved, static_cast<size_t>(len))}};
      }
    }
  } else if (S_ISREG(st.st_mode) || S_ISDIR(st.st_mode)) {
    Json metadata = ReadMetadata(dir_fd, name);
    if (!metadata.empty()) e["metadata"] = std::move(metadata);
  }
  return e;
}

Status SetMetadata(int fd, const FileMetadata& metadata, const std::string& path) {
  for (const auto& [key, value] : metadata) {
    std::string name = std::string(kMetadataXattrPrefix) + key;
    if (::fsetxattr(fd, name.c_str(), value.data(), value.size(), 0) < 0) {
      // As envd: a filesystem without user attributes (tmpfs before Linux 6.6) keeps the file
      // and drops its metadata.
      if (errno == ENOTSUP) return Status::Ok();
      return ErrnoError("write_file(" + path + "): set metadata \"" + key + "\"");
    }
  }
  return Status::Ok();
}

Json ReadMetadata(int dir_fd, const std::string& name) {
  // Twice what an upload may set (set from inside the sandbox, it may be more): an entry stays
  // far within one message (64 KiB of JSON) with its paths, and within the host's bounds.
  constexpr size_t kMaxTotal = 2 * kMaxMetadataBytes;
  constexpr size_t kMaxKeys = 256;
  Json out = Json::object();
  // xattr calls take a path or an fd that O_PATH cannot give; the fd's /proc link names exactly
  // the inode opened (not followed past it), whatever happens to `name` meanwhile.
  UniqueFd fd(::openat(dir_fd, name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) return out;
  std::string proc = "/proc/self/fd/" + std::to_string(fd.get());
  char names[16 * 1024];  // moat-guest is single-threaded: on its stack, not the heap, per entry
  ssize_t n = ::listxattr(proc.c_str(), names, sizeof names);
  if (n <= 0) return out;  // none, not supported, or more names than any metadata holds
  size_t total = 0;
  char value[kMaxMetadataBytes];
  for (size_t off = 0; off < static_cast<size_t>(n);) {
    const char* attr = names + off;
    size_t len = ::strnlen(attr, static_cast<size_t>(n) - off);
    off += len + 1;
    std::string_view a(attr, len);
    if (a.size() <= kMetadataXattrPrefix.size() ||
        a.substr(0, kMetadataXattrPrefix.size()) != kMetadataXattrPrefix) {
      continue;
    }
    // `attr` is NUL-terminated in the list.
    ssize_t v = ::getxattr(proc.c_str(), attr, value, sizeof value);
    if (v < 0) continue;  // longer than any metadata value (ERANGE), or gone meanwhile
    std::string key(a.substr(kMetadataXattrPrefix.size()));
    std::string_view val(value, static_cast<size_t>(v));
    // Set from inside the sandbox they may hold anything; only what a header could carry shows.
    if (!IsPrintableAscii(key) || !IsPrintableAscii(val)) continue;
    total += key.size() + val.size();
    if (total > kMaxTotal || out.size() >= kMaxKeys) break;
    out[key] = std::string(val);
  }
  return out;
}

Result<Json> StatPath(const std::string& path, const UserTable& users) {
  MOAT_ASSIGN_OR_RETURN(ParentDirFd at, OpenParentDir(path, "stat"));
  struct stat st {};
  if (::fstatat(at.dir.get(), at.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0) {
    return ErrnoError("stat(" + path + ")");
  }
  return EntryJson(path, st, users, at.dir.get(), at.name);
}

Result<std::vector<Json>> ListDir(const std::string& path, int depth, const UserTable& users,
                                  size_t max_entries) {
  // O_PATH opens nothing (a FIFO cannot block it); "." below it then opens the directory itself,
  // which the kernel allows only to a user who may read it.
  MOAT_ASSIGN_OR_RETURN(UniqueFd at, OpenPath(path, O_PATH, 0, "list"));
  struct stat st {};
  if (::fstat(at.get(), &st) < 0) return ErrnoError("stat(" + path + ")");
  if (!S_ISDIR(st.st_mode)) return InvalidArgument("list(" + path + "): not a directory");
  UniqueFd fd(::openat(at.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd) return ErrnoError("open(" + path + ")");
  std::vector<Json> out;
  MOAT_RETURN_IF_ERROR(ListInto(std::move(fd), path, depth, users, max_entries, out));
  return out;
}

Result<bool> MakeDirs(const std::string& path, mode_t mode) {
  auto existing = OpenPath(path, O_PATH, 0, "mkdir");
  if (existing.ok()) {
    struct stat st {};
    if (::fstat(existing->get(), &st) < 0) return ErrnoError("stat(" + path + ")");
    if (!S_ISDIR(st.st_mode)) return FailedPrecondition("mkdir(" + path + "): not a directory");
    return false;
  }
  if (existing.status().code() != ErrorCode::kNotFound) return existing.status();
  if (path != "/") {
    MOAT_ASSIGN_OR_RETURN(bool parent_created, MakeDirs(ParentDir(path), mode));
    (void)parent_created;
  }
  MOAT_ASSIGN_OR_RETURN(ParentDirFd at, OpenParentDir(path, "mkdir"));
  if (::mkdirat(at.dir.get(), at.name.c_str(), mode) < 0) {
    if (errno == EEXIST) return false;  // raced with another creator, or a dangling symlink
    return ErrnoError("mkdir(" + path + ")");
  }
  return true;
}

Status MovePath(const std::string& from, const std::string& to) {
  MOAT_ASSIGN_OR_RETURN(ParentDirFd src, OpenParentDir(from, "move"));
  struct stat st {};
  if (::fstatat(src.dir.get(), src.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0) {
    return ErrnoError("stat(" + from + ")");
  }
  MOAT_ASSIGN_OR_RETURN(bool created, MakeDirs(ParentDir(to)));
  (void)created;
  MOAT_ASSIGN_OR_RETURN(ParentDirFd dst, OpenParentDir(to, "move"));
  if (::renameat(src.dir.get(), src.name.c_str(), dst.dir.get(), dst.name.c_str()) < 0) {
    return ErrnoError("rename(" + from + ", " + to + ")");
  }
  return Status::Ok();
}

Status RemovePath(const std::string& path) {
  if (path == "/") return InvalidArgument("refusing to remove /");
  MOAT_ASSIGN_OR_RETURN(ParentDirFd at, OpenParentDir(path, "remove"));
  struct stat st {};
  if (::fstatat(at.dir.get(), at.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0) {
    if (errno == ENOENT) return NotFound("remove(" + path + "): No such file or directory");
    return ErrnoError("stat(" + path + ")");
  }
  return RemoveAt(at.dir.get(), at.name, path, st.st_dev, 0);
}

}  // namespace moat::guest
