#include "guest/file_transfer.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

#include "guest/files.h"

namespace moat::guest {

Result<std::unique_ptr<FileDownload>> FileDownload::Open(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (!fd) return ErrnoError("open(" + path + ")");
  struct stat st {};
  if (::fstat(fd.get(), &st) < 0) return ErrnoError("stat(" + path + ")");
  if (!S_ISREG(st.st_mode)) return InvalidArgument("read_file(" + path + "): not a regular file");
  return std::unique_ptr<FileDownload>(
      new FileDownload(std::move(fd), static_cast<uint64_t>(st.st_size), path));
}

Result<std::string> FileDownload::Read(size_t max) {
  std::string buf(max, '\0');
  for (;;) {
    ssize_t n = ::read(fd_.get(), buf.data(), max);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("read(" + path_ + ")");
    }
    buf.resize(static_cast<size_t>(n));
    return buf;
  }
}

Result<std::unique_ptr<FileUpload>> FileUpload::Begin(const std::string& path, const UserInfo& user,
                                                      mode_t mode) {
  if (path == "/") return InvalidArgument("write_file(/): is a directory");
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    return InvalidArgument("write_file(" + path + "): is a directory");
  }
  std::string dir = ParentDir(path);
  MOAT_ASSIGN_OR_RETURN(bool created, MakeDirsOwned(dir, user.uid, user.gid));
  (void)created;
  std::string base = path.substr(path.rfind('/') + 1);
  std::string tmpl = (dir == "/" ? "" : dir) + "/." + base + ".moat-XXXXXX";
  std::vector<char> name(tmpl.begin(), tmpl.end());
  name.push_back('\0');
  UniqueFd fd(::mkostemp(name.data(), O_CLOEXEC));
  if (!fd) return ErrnoError("mkstemp(" + tmpl + ")");
  std::string tmp(name.data());
  if (::fchown(fd.get(), user.uid, user.gid) < 0) {
    Status s = ErrnoError("chown(" + tmp + ")");
    ::unlink(tmp.c_str());
    return s;
  }
  return std::unique_ptr<FileUpload>(new FileUpload(std::move(fd), path, std::move(tmp), mode));
}

FileUpload::~FileUpload() {
  if (!committed_) ::unlink(tmp_.c_str());
}

Status FileUpload::Write(std::string_view bytes) {
  size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = ::write(fd_.get(), bytes.data() + off, bytes.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("write(" + tmp_ + ")");
    }
    off += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status FileUpload::Commit() {
  // fchmod after creation: the mode is exactly what was asked for, whatever the umask.
  if (::fchmod(fd_.get(), mode_) < 0) return ErrnoError("chmod(" + tmp_ + ")");
  if (::fsync(fd_.get()) < 0) return ErrnoError("fsync(" + tmp_ + ")");
  if (::rename(tmp_.c_str(), path_.c_str()) < 0) {
    return ErrnoError("rename(" + tmp_ + ", " + path_ + ")");
  }
  committed_ = true;
  fd_.Reset();
  return Status::Ok();
}

}  // namespace moat::guest
