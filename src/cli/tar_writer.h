// TarWriter: a ustar archive written to a sink as it goes (the upload of a template's COPY files,
// E2B-TEMPLATES §4). A name or link target past ustar's 100 bytes gets a GNU long-name entry
// ('L', 'K') before its header, which GNU tar, busybox, bsdtar, Go and Python all read; a file
// past ustar's 8 GiB gets a base-256 size. Owners are root: the builder chowns what it copies.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "common/status.h"

namespace moat::cli {

class TarWriter {
 public:
  static constexpr size_t kBlock = 512;
  using Sink = std::function<Status(std::string_view)>;

  explicit TarWriter(Sink sink) : sink_(std::move(sink)) {}

  // `path` is relative, '/'-separated, without a trailing slash; `mode` holds the permission
  // bits (the file type bits are ignored); `mtime` is in seconds since the epoch.
  Status AddDirectory(std::string_view path, uint32_t mode, int64_t mtime);
  Status AddSymlink(std::string_view path, std::string_view target, uint32_t mode, int64_t mtime);
  // Exactly `size` bytes read from `fd` (from its current offset); failed_precondition if it
  // ends sooner (the file shrank while being archived).
  Status AddFile(std::string_view path, uint32_t mode, int64_t mtime, uint64_t size, int fd);
  // The two zero blocks that end an archive. Nothing may be added after it.
  Status Finish();

  uint64_t bytes_written() const { return written_; }

 private:
  Status Header(std::string_view path, char type, uint32_t mode, int64_t mtime, uint64_t size,
                std::string_view link);
  // A GNU 'L' or 'K' entry carrying a name too long for the header.
  Status LongName(char type, std::string_view name);
  Status Emit(std::string_view data);
  Status Pad(uint64_t size);

  Sink sink_;
  uint64_t written_ = 0;
};

}  // namespace moat::cli
