#include "api/store/template_file_io.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

namespace moat::api::store {

Result<TemplateFileReader> TemplateFileReader::Open(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError("open(" + path + ")");
  return TemplateFileReader(std::move(fd), path);
}

Status TemplateFileReader::Next(std::string& buf) {
  buf.resize(kTemplateFileChunk);
  size_t got = 0;
  while (got < buf.size()) {
    ssize_t n = ::read(fd_.get(), buf.data() + got, buf.size() - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      buf.clear();
      return ErrnoError("read(" + path_ + ")");
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  buf.resize(got);
  return Status::Ok();
}

Result<TemplateFileWriter> TemplateFileWriter::Create(const std::string& dest_path) {
  size_t slash = dest_path.rfind('/');
  std::string dir = slash == std::string::npos ? "" : dest_path.substr(0, slash + 1);
  std::string base = slash == std::string::npos ? dest_path : dest_path.substr(slash + 1);
  std::string tmp = dir + "." + base + ".tmp-XXXXXX";
  // mkstemp creates the file with mode 0600.
  UniqueFd fd(::mkostemp(tmp.data(), O_CLOEXEC));
  if (!fd) return ErrnoError("mkstemp(" + tmp + ")");
  return TemplateFileWriter(std::move(fd), std::move(tmp), dest_path);
}

TemplateFileWriter::TemplateFileWriter(TemplateFileWriter&& other) noexcept
    : fd_(std::move(other.fd_)),
      tmp_(std::exchange(other.tmp_, std::string())),
      dest_(std::move(other.dest_)) {}

TemplateFileWriter::~TemplateFileWriter() {
  if (!tmp_.empty()) ::unlink(tmp_.c_str());
}

Status TemplateFileWriter::Write(std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::write(fd_.get(), data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("write(" + tmp_ + ")");
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return Status::Ok();
}

Status TemplateFileWriter::Commit() {
  if (tmp_.empty()) return FailedPrecondition("template file already committed");
  if (::fchmod(fd_.get(), 0600) < 0) return ErrnoError("fchmod(" + tmp_ + ")");
  if (::fsync(fd_.get()) < 0) return ErrnoError("fsync(" + tmp_ + ")");
  fd_.Reset();
  if (::rename(tmp_.c_str(), dest_.c_str()) < 0) {
    return ErrnoError("rename(" + tmp_ + ", " + dest_ + ")");
  }
  tmp_.clear();
  return Status::Ok();
}

}  // namespace moat::api::store
