#include "guest/files.h"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include "common/fs.h"
#include "common/unique_fd.h"

namespace moat::guest {
namespace {

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

Status ListInto(const std::string& dir, int depth, const UserTable& users, size_t max_entries,
                std::vector<Json>& out) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd) return ErrnoError("open(" + dir + ")");
  DIR* d = ::fdopendir(fd.get());
  if (d == nullptr) return ErrnoError("fdopendir(" + dir + ")");
  fd.Release();  // owned by the DIR stream now
  std::vector<std::string> subdirs;
  Status status;
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    std::string path = JoinPath(dir, name);
    struct stat st {};
    if (::fstatat(::dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) continue;  // raced
    if (out.size() >= max_entries) {
      status = ResourceExhausted("list(" + dir + "): more than " + std::to_string(max_entries) +
                                 " entries");
      break;
    }
    out.push_back(EntryJson(path, st, users));
    if (S_ISDIR(st.st_mode) && depth > 1) subdirs.push_back(path);
  }
  ::closedir(d);
  MOAT_RETURN_IF_ERROR(status);
  for (const auto& sub : subdirs) {
    Status s = ListInto(sub, depth - 1, users, max_entries, out);
    // A subdirectory that vanished or is unreadable does not fail the whole listing.
    if (s.code() == ErrorCode::kResourceExhausted) return s;
  }
  return Status::Ok();
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
    ssize_t n = ::readlink(path.c_str(), target, sizeof target);
    if (n >= 0) e["symlink_target"] = std::string(target, static_cast<size_t>(n));
  }
  return e;
}

Result<Json> StatPath(const std::string& path, const UserTable& users) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) < 0) return ErrnoError("stat(" + path + ")");
  return EntryJson(path, st, users);
}

Result<std::vector<Json>> ListDir(const std::string& path, int depth, const UserTable& users,
                                  size_t max_entries) {
  struct stat st {};
  if (::stat(path.c_str(), &st) < 0) return ErrnoError("stat(" + path + ")");
  if (!S_ISDIR(st.st_mode)) return InvalidArgument("list(" + path + "): not a directory");
  std::vector<Json> out;
  MOAT_RETURN_IF_ERROR(ListInto(path, depth, users, max_entries, out));
  return out;
}

Result<bool> MakeDirsOwned(const std::string& path, uid_t uid, gid_t gid, mode_t mode) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) return FailedPrecondition("mkdir(" + path + "): not a directory");
    return false;
  }
  if (path != "/") {
    MOAT_ASSIGN_OR_RETURN(bool parent_created, MakeDirsOwned(ParentDir(path), uid, gid, mode));
    (void)parent_created;
  }
  if (::mkdir(path.c_str(), mode) < 0) {
    if (errno == EEXIST) return false;  // raced with another creator
    return ErrnoError("mkdir(" + path + ")");
  }
  if (::lchown(path.c_str(), uid, gid) < 0) return ErrnoError("chown(" + path + ")");
  return true;
}

Status MovePath(const std::string& from, const std::string& to, uid_t uid, gid_t gid) {
  struct stat st {};
  if (::lstat(from.c_str(), &st) < 0) return ErrnoError("stat(" + from + ")");
  MOAT_ASSIGN_OR_RETURN(bool created, MakeDirsOwned(ParentDir(to), uid, gid));
  (void)created;
  if (::rename(from.c_str(), to.c_str()) < 0) {
    return ErrnoError("rename(" + from + ", " + to + ")");
  }
  return Status::Ok();
}

Status RemovePath(const std::string& path) {
  if (path == "/") return InvalidArgument("refusing to remove /");
  if (!PathExists(path)) return NotFound("remove(" + path + "): No such file or directory");
  return RemoveTree(path);
}

}  // namespace moat::guest
