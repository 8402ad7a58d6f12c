// The build context of `moat template build`: the files a COPY step names, their filesHash and
// the gzipped tar that uploads them (E2B-TEMPLATES §4). Sources are relative to the context
// directory and never leave it; <context>/.dockerignore applies as in Docker.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace moat::cli {

// A COPY source cleaned lexically: "./app//src/" → "app/src", "" or "./" → ".". invalid_argument
// for an absolute path or one that leaves the context ("../x", "a/../../x").
Result<std::string> CleanContextPath(std::string_view path);

// <context>/.dockerignore as Docker reads it: one pattern a line (`#` comments), matched against
// paths relative to the context with *, ?, [...] within a component and ** across components; a
// leading ! makes an exception; the last line that matches a path or one of its parent
// directories decides.
class DockerIgnore {
 public:
  static DockerIgnore Parse(std::string_view text);
  bool Excludes(std::string_view path) const;
  bool has_exceptions() const { return has_exceptions_; }
  bool empty() const { return patterns_.empty(); }

 private:
  struct Pattern {
    std::vector<std::string> parts;
    bool exception = false;
  };
  std::vector<Pattern> patterns_;
  bool has_exceptions_ = false;
};

// A file, directory or symlink of the context. Other kinds (sockets, fifos, devices) are skipped.
struct ContextEntry {
  std::string path;  // relative to the context, '/'-separated; "" for the context itself
  mode_t mode = 0;   // lstat's st_mode: type and permissions
  uint64_t size = 0;
  int64_t mtime = 0;
  std::string link_target;  // symlinks only

  bool is_dir() const;
  bool is_symlink() const;
};

class BuildContext {
 public:
  // The directory (made absolute, symlinks resolved) and its .dockerignore, if any.
  static Result<BuildContext> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const DockerIgnore& ignore() const { return ignore_; }

  // What a cleaned COPY source names: its matches (each component may hold * ? [...]; a match is
  // never reached through a symlink) and everything below the directories among them, without
  // what .dockerignore excludes; sorted by path, no duplicates. not_found "no files found" when
  // nothing is left.
  Result<std::vector<ContextEntry>> Match(std::string_view source) const;

  // The step's filesHash: hex SHA-256 of "COPY <source> <dest>", then for each entry in order its
  // path, decimal st_mode and size, and its content (regular files) or link target (symlinks).
  // Unchanged files give the same hash; timestamps do not count.
  Result<std::string> FilesHash(std::string_view source, std::string_view dest,
                                const std::vector<ContextEntry>& entries) const;

  // The entries as a gzipped tar with paths relative to the context (the context directory
  // itself is not an entry; directories are entries of their own; symlinks stay links), written
  // to `fd` from its current offset.
  Status WriteArchive(const std::vector<ContextEntry>& entries, int fd) const;

 private:
  BuildContext(std::string dir, DockerIgnore ignore)
      : dir_(std::move(dir)), ignore_(std::move(ignore)) {}
  std::string Absolute(std::string_view path) const;
  Result<ContextEntry> Stat(const std::string& path) const;
  // Adds `entry` and, for a directory, what is below it, skipping what .dockerignore excludes.
  Status Collect(ContextEntry entry, std::vector<ContextEntry>& out) const;

  std::string dir_;
  DockerIgnore ignore_;
};

}  // namespace moat::cli
