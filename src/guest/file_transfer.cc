#include "guest/file_transfer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>

#include "common/log.h"
#include "guest/files.h"
#include "guest/fs_credentials.h"
#include "guest/path_open.h"

namespace moat::guest {
namespace {

// Temporary names need not be secret, only fresh: they are created with O_EXCL | O_NOFOLLOW,
// so a name planted in advance (even as a symlink) only costs another try.
constexpr int kTempNameTries = 64;
// ".<name>.moat-KXXXXXXXX" must stay within NAME_MAX (255).
constexpr size_t kMaxTempBase = 200;
constexpr std::string_view kTempMarker = ".moat-";
constexpr size_t kTempSuffixLen = 8;

std::string TempSuffix() {
  static uint64_t counter = 0;
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  uint64_t v = (static_cast<uint64_t>(ts.tv_nsec) ^ (static_cast<uint64_t>(ts.tv_sec) << 30)) *
                   0x9e3779b97f4a7c15ULL +
               ++counter;
  const char* alphabet = "abcdefghijklmnopqrstuvwxyz0123456789";
  std::string s;
  for (size_t i = 0; i < kTempSuffixLen; ++i) {
    s += alphabet[v % 36];
    v /= 36;
  }
  return s;
}

const char* FileKind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  return "not a regular file";
}

Status NotRegular(std::string_view op, const std::string& path, mode_t mode) {
  if (S_ISDIR(mode)) return InvalidArgument(std::string(op) + "(" + path + "): is a directory");
  return InvalidArgument(std::string(op) + "(" + path + "): is " + FileKind(mode) +
                         ", not a regular file");
}

}  // namespace

std::optional<UploadTempName> ParseUploadTempName(std::string_view name) {
  // "." + at least one byte of the name + marker + kind + suffix.
  size_t tail = kTempMarker.size() + 1 + kTempSuffixLen;
  if (name.size() < 2 + tail || name[0] != '.') return std::nullopt;
  std::string_view t = name.substr(name.size() - tail);
  if (t.substr(0, kTempMarker.size()) != kTempMarker) return std::nullopt;
  for (char c : t.substr(kTempMarker.size() + 1)) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) return std::nullopt;
  }
  switch (t[kTempMarker.size()]) {
    case 'c': return UploadTempName{false, false};
    case 'r': return UploadTempName{true, false};
    case 'm': return UploadTempName{false, true};
    case 'n': return UploadTempName{true, true};
    default: return std::nullopt;
  }
}

Result<std::unique_ptr<FileDownload>> FileDownload::Open(const std::string& path) {
  // O_PATH opens nothing: the type is checked before anything that could block (a FIFO) or act
  // (a device) is opened for reading.
  MOAT_ASSIGN_OR_RETURN(UniqueFd at, OpenPath(path, O_PATH, 0, "read_file"));
  struct stat st {};
  if (::fstat(at.get(), &st) < 0) return ErrnoError("stat(" + path + ")");
  if (!S_ISREG(st.st_mode)) return NotRegular("read_file", path, st.st_mode);
  MOAT_ASSIGN_OR_RETURN(UniqueFd fd,
                        ReopenForIo(at, st, path, O_RDONLY | O_NOCTTY | O_NONBLOCK, "read_file"));
  if (::fstat(fd.get(), &st) < 0) return ErrnoError("stat(" + path + ")");
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
                                                      mode_t mode, FileMetadata metadata) {
  if (path == "/") return InvalidArgument("write_file(/): is a directory");
  MOAT_ASSIGN_OR_RETURN(bool created, MakeDirs(ParentDir(path)));
  (void)created;
  MOAT_ASSIGN_OR_RETURN(ParentDirFd at, OpenParentDir(path, "write_file"));
  struct stat st {};
  // Followed, like any writer would: a link to a directory or a FIFO is refused as they are.
  bool replaces = ::fstatat(at.dir.get(), at.name.c_str(), &st, 0) == 0;
  if (replaces && !S_ISREG(st.st_mode)) return NotRegular("write_file", path, st.st_mode);
  char kind = metadata.empty() ? (replaces ? 'r' : 'c') : (replaces ? 'n' : 'm');
  std::string base = "." + at.name.substr(0, kMaxTempBase) + std::string(kTempMarker) + kind;
  for (int i = 0; i < kTempNameTries; ++i) {
    std::string tmp = base + TempSuffix();
    // 0600 until Commit sets the requested mode: nobody reads a half-written file.
    int fd = ::openat(at.dir.get(), tmp.c_str(),
                      O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd >= 0) {
      return std::unique_ptr<FileUpload>(new FileUpload(std::move(at.dir), UniqueFd(fd), path,
                                                        std::move(at.name), std::move(tmp), user,
                                                        mode, std::move(metadata)));
    }
    if (errno != EEXIST) return ErrnoError("write_file(" + path + "): create " + tmp);
  }
  return Internal("write_file(" + path + "): no free temporary name");
}

FileUpload::~FileUpload() {
  if (committed_) return;
  // As the user, in the directory it was created in: never anything else of the same name.
  auto creds = FsCredentials::Assume(user_);
  if (!creds.ok()) LogWarn("guest.upload_cleanup", {{"error", creds.status().ToString()}});
  ::unlinkat(dir_.get(), tmp_.c_str(), 0);
}

Status FileUpload::Write(std::string_view bytes) {
  size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = ::write(fd_.get(), bytes.data() + off, bytes.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("write(" + path_ + ")");
    }
    off += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status FileUpload::Commit() {
  MOAT_ASSIGN_OR_RETURN(FsCredentials creds, FsCredentials::Assume(user_));
  // fchmod after creation: the mode is exactly what was asked for, whatever the umask.
  if (::fchmod(fd_.get(), mode_) < 0) return ErrnoError("chmod(" + path_ + ")");
  MOAT_RETURN_IF_ERROR(SetMetadata(fd_.get(), metadata_, path_));
  if (::fsync(fd_.get()) < 0) return ErrnoError("fsync(" + path_ + ")");
  if (::renameat(dir_.get(), tmp_.c_str(), dir_.get(), name_.c_str()) < 0) {
    return ErrnoError("rename(" + tmp_ + ", " + path_ + ")");
  }
  committed_ = true;
  fd_.Reset();
  return Status::Ok();
}

}  // namespace moat::guest
