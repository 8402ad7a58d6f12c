// The bulk halves of read_file and write_file: a file read in credit-sized pieces, and an upload
// written to a temporary file beside its destination and renamed into place when complete.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "common/status.h"
#include "common/unique_fd.h"
#include "guest/users.h"

namespace moat::guest {

class FileDownload {
 public:
  // Regular files only (a directory or device is InvalidArgument).
  static Result<std::unique_ptr<FileDownload>> Open(const std::string& path);
  uint64_t size() const { return size_; }
  // Up to `max` bytes; an empty string at the end of the file.
  Result<std::string> Read(size_t max);

 private:
  FileDownload(UniqueFd fd, uint64_t size, std::string path)
      : fd_(std::move(fd)), size_(size), path_(std::move(path)) {}
  UniqueFd fd_;
  uint64_t size_;
  std::string path_;
};

class FileUpload {
 public:
  // Creates missing parents (owned by `user`) and the temporary file.
  static Result<std::unique_ptr<FileUpload>> Begin(const std::string& path, const UserInfo& user,
                                                   mode_t mode);
  // Removes the temporary file unless committed.
  ~FileUpload();
  FileUpload(const FileUpload&) = delete;
  FileUpload& operator=(const FileUpload&) = delete;

  Status Write(std::string_view bytes);
  // fsync, then rename over the destination.
  Status Commit();
  const std::string& path() const { return path_; }

 private:
  FileUpload(UniqueFd fd, std::string path, std::string tmp, mode_t mode)
      : fd_(std::move(fd)), path_(std::move(path)), tmp_(std::move(tmp)), mode_(mode) {}
  UniqueFd fd_;
  std::string path_;
  std::string tmp_;
  mode_t mode_;
  bool committed_ = false;
};

}  // namespace moat::guest
