#include "guest/path_open.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

#include "common/log.h"
#include "guest/files.h"

namespace moat::guest {
namespace {

RateLimiter g_no_openat2_log(1, 3600);

Status OpenError(std::string_view op, const std::string& path, int err) {
  std::string context = std::string(op) + "(" + path + ")";
  if (err == ELOOP) {
    return InvalidArgument(context +
                           ": too many levels of symbolic links, or a link under /proc that "
                           "file operations do not follow");
  }
  return ErrnoError(context, err);
}

}  // namespace

Result<UniqueFd> OpenPath(const std::string& path, int flags, mode_t mode, std::string_view op) {
  open_how how{};
  how.flags = static_cast<uint64_t>(flags | O_CLOEXEC);
  how.mode = (flags & (O_CREAT | O_TMPFILE)) != 0 ? mode : 0;
  how.resolve = RESOLVE_NO_MAGICLINKS;
  for (;;) {
    long fd = ::syscall(SYS_openat2, AT_FDCWD, path.c_str(), &how, sizeof how);
    if (fd >= 0) return UniqueFd(static_cast<int>(fd));
    if (errno == EINTR) continue;
    if (errno != ENOSYS) return OpenError(op, path, errno);
    break;
  }
  // Linux < 5.6: no way to refuse magic links while following ordinary symlinks.
  if (g_no_openat2_log.Allow()) LogWarn("guest.no_openat2", {{"path", path}});
  int fd = ::openat(AT_FDCWD, path.c_str(), flags | O_CLOEXEC, mode);
  if (fd < 0) return OpenError(op, path, errno);
  return UniqueFd(fd);
}

Result<ParentDirFd> OpenParentDir(const std::string& path, std::string_view op) {
  ParentDirFd out;
  std::string dir;
  if (path == "/") {
    dir = "/";
    out.name = ".";
  } else {
    dir = ParentDir(path);
    out.name = path.substr(path.rfind('/') + 1);
  }
  MOAT_ASSIGN_OR_RETURN(out.dir, OpenPath(dir, O_PATH | O_DIRECTORY, 0, op));
  return out;
}

Result<UniqueFd> ReopenForIo(const UniqueFd& path_fd, const struct stat& st,
                             const std::string& path, int flags, std::string_view op) {
  std::string self = "/proc/self/fd/" + std::to_string(path_fd.get());
  int fd = ::open(self.c_str(), flags | O_CLOEXEC);
  if (fd >= 0) return UniqueFd(fd);
  if (errno != ENOENT) return OpenError(op, path, errno);
  // No /proc: open the path again and make sure it is still the same file.
  MOAT_ASSIGN_OR_RETURN(UniqueFd again, OpenPath(path, flags, 0, op));
  struct stat now {};
  if (::fstat(again.get(), &now) < 0) return OpenError(op, path, errno);
  if (now.st_dev != st.st_dev || now.st_ino != st.st_ino) {
    return Status(ErrorCode::kAborted, std::string(op) + "(" + path + "): changed while opening");
  }
  return again;
}

}  // namespace moat::guest
