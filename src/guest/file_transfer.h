// The bulk halves of read_file and write_file: a file read in credit-sized pieces, and an upload
// written to a temporary file beside its destination and renamed into place when complete.
//
// Both are begun under the requesting user's FsCredentials (the caller's), so the kernel checks
// the open as that user and the temporary file belongs to them. Later reads and writes go to the
// descriptor opened then; the upload's final rename (and the removal of an abandoned temporary
// file) switch to the user again themselves.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "common/file_metadata.h"
#include "common/status.h"
#include "common/unique_fd.h"
#include "guest/users.h"

namespace moat::guest {

class FileDownload {
 public:
  // Regular files only: a directory, FIFO, socket or device is InvalidArgument, and is never
  // opened (so a FIFO without a writer cannot block moat-guest).
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

// What an upload's temporary name says of it, for watchers (watch.h): an upload is one rename
// into place, and a watcher shows it as the events E2B's envd gives a write in place.
struct UploadTempName {
  bool replaces = false;      // the destination existed when the upload began
  bool has_metadata = false;  // metadata was set on it
};
// ".<name>.moat-<kind><8 of [a-z0-9]>", kind c (new), r (replaces), m/n the same with metadata;
// nullopt for any other name.
std::optional<UploadTempName> ParseUploadTempName(std::string_view name);

class FileUpload {
 public:
  // Creates missing parents and the temporary file (never through a symlink). An existing
  // destination that is a directory or not a regular file (FIFO, socket, device) is
  // InvalidArgument. `metadata` (normalised) is set on the file before it is renamed into
  // place; the destination's earlier metadata goes with the file it replaces.
  static Result<std::unique_ptr<FileUpload>> Begin(const std::string& path, const UserInfo& user,
                                                   mode_t mode, FileMetadata metadata);
  // Removes the temporary file unless committed.
  ~FileUpload();
  FileUpload(const FileUpload&) = delete;
  FileUpload& operator=(const FileUpload&) = delete;

  Status Write(std::string_view bytes);
  // fsync, then rename over the destination (a symlink there is replaced, not followed).
  Status Commit();
  const std::string& path() const { return path_; }

 private:
  FileUpload(UniqueFd dir, UniqueFd fd, std::string path, std::string name, std::string tmp,
             UserInfo user, mode_t mode, FileMetadata metadata)
      : dir_(std::move(dir)),
        fd_(std::move(fd)),
        path_(std::move(path)),
        name_(std::move(name)),
        tmp_(std::move(tmp)),
        user_(std::move(user)),
        mode_(mode),
        metadata_(std::move(metadata)) {}
  UniqueFd dir_;  // the destination's directory (O_PATH): the rename happens there, whatever
                  // becomes of the path to it meanwhile
  UniqueFd fd_;
  std::string path_;
  std::string name_;  // the destination's name in dir_
  std::string tmp_;   // the temporary file's name in dir_
  UserInfo user_;
  mode_t mode_;
  FileMetadata metadata_;
  bool committed_ = false;
};

}  // namespace moat::guest
