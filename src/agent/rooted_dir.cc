#include "agent/rooted_dir.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

#include "common/log.h"

namespace moat::agent {
namespace {

// "/etc//passwd/" → "etc/passwd"; "" is the root itself. ".." components are refused: the
// paths given here are the caller's own, and a ".." would only be a mistake.
Result<std::string> Clean(std::string_view path) {
  std::string out;
  size_t i = 0;
  while (i < path.size()) {
    while (i < path.size() && path[i] == '/') ++i;
    size_t end = path.find('/', i);
    if (end == std::string_view::npos) end = path.size();
    std::string_view part = path.substr(i, end - i);
    i = end;
    if (part.empty() || part == ".") continue;
    if (part == "..") return InvalidArgument("path with '..': " + std::string(path));
    if (!out.empty()) out += '/';
    out += part;
  }
  return out;
}

std::pair<std::string, std::string> SplitLast(const std::string& clean) {
  size_t slash = clean.rfind('/');
  if (slash == std::string::npos) return {"", clean};
  return {clean.substr(0, slash), clean.substr(slash + 1)};
}

}  // namespace

Result<RootedDir> RootedDir::Open(const std::string& root) {
  UniqueFd fd(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd) return ErrnoError("open(" + root + ")");
  return RootedDir(std::move(fd), root);
}

long RootedDir::OpenAt2(const std::string& clean, int flags) const {
  open_how how{};
  how.flags = static_cast<uint64_t>(flags | O_CLOEXEC);
  // IN_ROOT: "/" and ".." stop at the root; NO_MAGICLINKS: no /proc/*/fd-style jumps;
  // NO_XDEV: nothing mounted inside the tree is reached.
  how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV;
  for (;;) {
    // openat2 has no glibc wrapper; the kernel reads `how` (sizeof how bytes) and the path.
    long fd =
        ::syscall(SYS_openat2, root_.get(), clean.empty() ? "." : clean.c_str(), &how, sizeof how);
    if (fd >= 0) return fd;
    if (errno == EINTR || errno == EAGAIN) continue;  // EAGAIN: a rename raced the lookup
    return -errno;
  }
}

Result<UniqueFd> RootedDir::Resolve(std::string_view path, int flags) const {
  MOAT_ASSIGN_OR_RETURN(std::string clean, Clean(path));
  long fd = OpenAt2(clean, flags);
  if (fd < 0) return ErrnoError("openat2(" + path_ + "/" + clean + ")", static_cast<int>(-fd));
  return UniqueFd(static_cast<int>(fd));
}

Result<UniqueFd> RootedDir::MakeDirs(std::string_view path, mode_t mode) const {
  created_last_ = false;
  MOAT_ASSIGN_OR_RETURN(std::string clean, Clean(path));
  auto existing = Resolve(clean, O_RDONLY | O_DIRECTORY);
  if (existing.ok() || clean.empty()) return existing;
  auto [parent_path, name] = SplitLast(clean);
  MOAT_ASSIGN_OR_RETURN(UniqueFd parent, MakeDirs(parent_path, 0755));
  struct stat st {};
  if (::fstatat(parent.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
    if (S_ISDIR(st.st_mode)) {
      // A real directory that the whole path did not resolve to: only a race could do that.
      return existing.status();
    }
    LogWarn("rootfs.replaced_non_directory",
            {{"path", "/" + clean}, {"type", S_ISLNK(st.st_mode) ? "symlink" : "file"}});
    if (::unlinkat(parent.get(), name.c_str(), 0) < 0) {
      return ErrnoError("unlink(" + path_ + "/" + clean + ")");
    }
  }
  if (::mkdirat(parent.get(), name.c_str(), 0700) < 0) {
    return ErrnoError("mkdir(" + path_ + "/" + clean + ")");
  }
  UniqueFd dir(
      ::openat(parent.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!dir) return ErrnoError("open(" + path_ + "/" + clean + ")");
  // The umask shaped mkdir's mode: set the wanted one (sticky bit included) explicitly.
  if (::fchown(dir.get(), 0, 0) < 0 || ::fchmod(dir.get(), mode) < 0) {
    return ErrnoError("chmod(" + path_ + "/" + clean + ")");
  }
  created_last_ = true;
  return dir;
}

Result<std::optional<RootedFile>> RootedDir::ReadFile(std::string_view path,
                                                      size_t max_bytes) const {
  MOAT_ASSIGN_OR_RETURN(std::string clean, Clean(path));
  // O_NONBLOCK: a FIFO in place of the file must not block the open.
  long raw = OpenAt2(clean, O_RDONLY | O_NONBLOCK | O_NOCTTY);
  if (raw == -ENOENT || raw == -ENOTDIR || raw == -ELOOP || raw == -EXDEV) {
    return std::optional<RootedFile>();
  }
  if (raw < 0) return ErrnoError("openat2(" + path_ + "/" + clean + ")", static_cast<int>(-raw));
  UniqueFd fd(static_cast<int>(raw));
  struct stat st {};
  if (::fstat(fd.get(), &st) < 0) return ErrnoError("fstat(" + std::string(path) + ")");
  if (!S_ISREG(st.st_mode)) return std::optional<RootedFile>();
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    return InvalidArgument(std::string(path) + " in the image is larger than " +
                           std::to_string(max_bytes) + " bytes");
  }
  RootedFile f;
  f.mode = st.st_mode & 07777;
  f.uid = st.st_uid;
  f.gid = st.st_gid;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("read(" + std::string(path) + ")");
    if (n == 0) break;
    f.data.append(buf, static_cast<size_t>(n));
    if (f.data.size() > max_bytes) return InvalidArgument(std::string(path) + " grew too large");
  }
  return std::optional<RootedFile>(std::move(f));
}

Status RootedDir::WriteFile(std::string_view path, std::string_view data, mode_t mode, uid_t uid,
                            gid_t gid) const {
  MOAT_ASSIGN_OR_RETURN(std::string clean, Clean(path));
  auto [parent_path, name] = SplitLast(clean);
  if (name.empty()) return InvalidArgument("WriteFile: no file name");
  MOAT_ASSIGN_OR_RETURN(UniqueFd parent, MakeDirs(parent_path, 0755));
  const std::string tmp = ".moat-new." + name;
  const std::string shown = path_ + "/" + clean;
  ::unlinkat(parent.get(), tmp.c_str(), 0);  // a leftover (or an image's file of that name)
  UniqueFd fd(::openat(parent.get(), tmp.c_str(),
                       O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd) return ErrnoError("create(" + shown + ")");
  auto fail = [&](std::string_view what) {
    Status s = ErrnoError(std::string(what) + "(" + shown + ")");
    ::unlinkat(parent.get(), tmp.c_str(), 0);
    return s;
  };
  for (size_t off = 0; off < data.size();) {
    ssize_t n = ::write(fd.get(), data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail("write");
    off += static_cast<size_t>(n);
  }
  if (::fchown(fd.get(), uid, gid) < 0) return fail("chown");
  if (::fchmod(fd.get(), mode) < 0) return fail("chmod");
  fd.Reset();
  if (::renameat(parent.get(), tmp.c_str(), parent.get(), name.c_str()) < 0) return fail("rename");
  return Status::Ok();
}

bool RootedDir::IsExecutableFile(std::string_view path) const {
  auto fd = Resolve(path, O_PATH);
  struct stat st {};
  return fd.ok() && ::fstat(fd->get(), &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 0111) != 0;
}

}  // namespace moat::agent
