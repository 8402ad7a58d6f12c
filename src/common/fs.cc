#include "common/fs.h"

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <vector>

#include "common/unique_fd.h"

namespace moat {

Result<std::string> ReadFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError("open(" + path + ")");
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("read(" + path + ")");
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

Status WriteFileAtomic(const std::string& path, std::string_view data, mode_t mode) {
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode));
  if (!fd) return ErrnoError("open(" + tmp + ")");
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd.get(), data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      Status s = ErrnoError("write(" + tmp + ")");
      ::unlink(tmp.c_str());
      return s;
    }
    off += static_cast<size_t>(n);
  }
  if (::fsync(fd.get()) < 0 || ::fchmod(fd.get(), mode) < 0) {
    Status s = ErrnoError("fsync(" + tmp + ")");
    ::unlink(tmp.c_str());
    return s;
  }
  fd.Reset();
  if (::rename(tmp.c_str(), path.c_str()) < 0) {
    Status s = ErrnoError("rename(" + tmp + ", " + path + ")");
    ::unlink(tmp.c_str());
    return s;
  }
  return Status::Ok();
}

Status MakeDirs(const std::string& path, mode_t mode) {
  if (path.empty()) return InvalidArgument("mkdir: empty path");
  std::string cur;
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    cur = path.substr(0, pos);
    if (cur.empty()) continue;
    if (::mkdir(cur.c_str(), mode) < 0 && errno != EEXIST) {
      return ErrnoError("mkdir(" + cur + ")");
    }
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) < 0) return ErrnoError("stat(" + path + ")");
  if (!S_ISDIR(st.st_mode)) return InvalidArgument("mkdir(" + path + "): not a directory");
  return Status::Ok();
}

Status RemoveTree(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) < 0) {
    if (errno == ENOENT) return Status::Ok();
    return ErrnoError("lstat(" + path + ")");
  }
  if (!S_ISDIR(st.st_mode)) {
    if (::unlink(path.c_str()) < 0 && errno != ENOENT) return ErrnoError("unlink(" + path + ")");
    return Status::Ok();
  }
  static thread_local int first_errno;
  first_errno = 0;
  auto cb = [](const char* p, const struct stat* sb, int flag, FTW*) -> int {
    (void)sb;
    int r = (flag == FTW_DP) ? ::rmdir(p) : ::unlink(p);
    if (r < 0 && errno != ENOENT && first_errno == 0) first_errno = errno;
    return 0;
  };
  if (::nftw(path.c_str(), cb, 32, FTW_DEPTH | FTW_PHYS | FTW_MOUNT) < 0) {
    return ErrnoError("nftw(" + path + ")");
  }
  if (first_errno != 0) return ErrnoError("remove(" + path + ")", first_errno);
  return Status::Ok();
}

std::vector<std::string> DirNames(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return names;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(std::move(n));
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

bool PathExists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

Result<std::string> MakeTempDir(const std::string& parent, std::string_view prefix) {
  std::string tmpl = parent + "/" + std::string(prefix) + "XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) return ErrnoError("mkdtemp(" + tmpl + ")");
  return std::string(buf.data());
}

}  // namespace moat
