// The local side of the stores' template files (Store::PutTemplateFile / ReadTemplateFile): a
// file read in pieces of at most kTemplateFileChunk bytes, and a file written under a temporary
// name beside its destination and renamed over it once complete. Shared by SqliteStore and
// PgStore; neither ever holds more than one piece of a file in memory.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>

#include "common/status.h"
#include "common/unique_fd.h"

namespace moat::api::store {

// The largest piece of a template file one row holds.
inline constexpr size_t kTemplateFileChunk = size_t{1} << 20;

// A local file read from the start, one piece at a time.
class TemplateFileReader {
 public:
  static Result<TemplateFileReader> Open(const std::string& path);

  // Fills `buf` (resized) with the next kTemplateFileChunk bytes, fewer only at the end of the
  // file: an empty `buf` once it is all read.
  Status Next(std::string& buf);

 private:
  TemplateFileReader(UniqueFd fd, std::string path) : fd_(std::move(fd)), path_(std::move(path)) {}
  UniqueFd fd_;
  std::string path_;
};

// A file written to a fresh temporary name in the destination's directory (mode 0600), renamed
// over the destination by Commit(); removed by the destructor when not committed, so that a
// failed read leaves no partial file behind.
class TemplateFileWriter {
 public:
  static Result<TemplateFileWriter> Create(const std::string& dest_path);
  TemplateFileWriter(TemplateFileWriter&& other) noexcept;
  TemplateFileWriter& operator=(TemplateFileWriter&&) = delete;
  ~TemplateFileWriter();

  Status Write(std::string_view data);
  // fsync, then rename over the destination.
  Status Commit();

 private:
  TemplateFileWriter(UniqueFd fd, std::string tmp, std::string dest)
      : fd_(std::move(fd)), tmp_(std::move(tmp)), dest_(std::move(dest)) {}
  UniqueFd fd_;
  std::string tmp_;  // "" once committed or moved from
  std::string dest_;
};

}  // namespace moat::api::store
