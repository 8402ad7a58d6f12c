#include "cli/template_archive.h"

#include <dirent.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <memory>

#include "api/codec/gzip.h"
#include "cli/tar_writer.h"
#include "common/fs.h"
#include "common/unique_fd.h"

namespace moat::cli {
namespace {

std::vector<std::string> SplitPath(std::string_view path) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= path.size()) {
    size_t slash = path.find('/', start);
    if (slash == std::string_view::npos) slash = path.size();
    std::string_view part = path.substr(start, slash - start);
    if (!part.empty() && part != ".") parts.emplace_back(part);
    start = slash + 1;
  }
  return parts;
}

std::string JoinPath(std::string_view base, std::string_view name) {
  return base.empty() ? std::string(name) : std::string(base) + "/" + std::string(name);
}

bool HasGlob(std::string_view part) {
  return part.find_first_of("*?[") != std::string_view::npos;
}

bool MatchPart(const std::string& pattern, const std::string& name) {
  // No FNM_PERIOD: `*` matches dotfiles, as Go's filepath.Match does for Docker.
  return ::fnmatch(pattern.c_str(), name.c_str(), 0) == 0;
}

// Pattern components against path components; "**" spans any number of them (none included).
bool MatchParts(const std::vector<std::string>& pattern, size_t pi,
                const std::vector<std::string>& path, size_t si, size_t path_end) {
  if (pi == pattern.size()) return si == path_end;
  if (pattern[pi] == "**") {
    for (size_t k = si; k <= path_end; ++k) {
      if (MatchParts(pattern, pi + 1, path, k, path_end)) return true;
    }
    return false;
  }
  if (si == path_end || !MatchPart(pattern[pi], path[si])) return false;
  return MatchParts(pattern, pi + 1, path, si + 1, path_end);
}

// The names in `dir`, sorted; unlike DirNames, a directory that cannot be read is an error (a
// template silently missing files is worse than a refusal).
Result<std::vector<std::string>> ListDir(const std::string& dir) {
  std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), ::closedir);
  if (!d) return ErrnoError("opendir(" + dir + ")");
  std::vector<std::string> names;
  errno = 0;
  while (dirent* e = ::readdir(d.get())) {
    std::string_view name = e->d_name;
    if (name != "." && name != "..") names.emplace_back(name);
  }
  if (errno != 0) return ErrnoError("readdir(" + dir + ")");
  std::sort(names.begin(), names.end());
  return names;
}

Status WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("writing the archive");
    data.remove_prefix(static_cast<size_t>(n));
  }
  return Status::Ok();
}

Result<UniqueFd> OpenRegular(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return ErrnoError("open(" + path + ")");
  return UniqueFd(fd);
}

}  // namespace

Result<std::string> CleanContextPath(std::string_view path) {
  const std::string quoted = "source " + std::string(path);
  if (!path.empty() && path.front() == '/') {
    return InvalidArgument(quoted + " is absolute: sources are relative to the context directory");
  }
  std::vector<std::string> parts;
  for (auto& part : SplitPath(path)) {
    if (part != "..") {
      parts.push_back(std::move(part));
    } else if (parts.empty()) {
      return InvalidArgument(quoted + " is outside the context directory");
    } else {
      parts.pop_back();
    }
  }
  if (parts.empty()) return std::string(".");
  std::string out;
  for (const auto& part : parts) out = JoinPath(out, part);
  return out;
}

DockerIgnore DockerIgnore::Parse(std::string_view text) {
  DockerIgnore out;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    start = end + 1;
    auto trim = [](std::string_view s) {
      size_t a = s.find_first_not_of(" \t\r");
      if (a == std::string_view::npos) return std::string_view();
      return s.substr(a, s.find_last_not_of(" \t\r") - a + 1);
    };
    line = trim(line);
    if (line.empty() || line.front() == '#') continue;
    Pattern pattern;
    if (line.front() == '!') {
      pattern.exception = true;
      line = trim(line.substr(1));
    }
    // Cleaned as Docker cleans it; a pattern reaching above the context can never match.
    bool above = false;
    for (auto& part : SplitPath(line)) {
      if (part != "..") {
        pattern.parts.push_back(std::move(part));
      } else if (pattern.parts.empty()) {
        above = true;
      } else {
        pattern.parts.pop_back();
      }
    }
    if (above || pattern.parts.empty()) continue;
    out.has_exceptions_ = out.has_exceptions_ || pattern.exception;
    out.patterns_.push_back(std::move(pattern));
  }
  return out;
}

bool DockerIgnore::Excludes(std::string_view path) const {
  const std::vector<std::string> parts = SplitPath(path);
  if (parts.empty()) return false;
  bool excluded = false;
  for (const auto& p : patterns_) {
    // Only a pattern that could change the answer is tried (Docker's MatchesOrParentMatches).
    if (p.exception != excluded) continue;
    bool match = false;
    for (size_t end = 1; end <= parts.size() && !match; ++end) {
      match = MatchParts(p.parts, 0, parts, 0, end);
    }
    if (match) excluded = !p.exception;
  }
  return excluded;
}

bool ContextEntry::is_dir() const {
  return S_ISDIR(mode);
}
bool ContextEntry::is_symlink() const {
  return S_ISLNK(mode);
}

Result<BuildContext> BuildContext::Open(const std::string& dir) {
  char resolved[PATH_MAX];
  if (::realpath(dir.c_str(), resolved) == nullptr) {
    return ErrnoError("the context directory " + dir);
  }
  struct stat st {};
  if (::stat(resolved, &st) != 0) return ErrnoError("stat(" + std::string(resolved) + ")");
  if (!S_ISDIR(st.st_mode)) {
    return InvalidArgument("the context " + dir + " is not a directory");
  }
  std::string root = resolved;
  DockerIgnore ignore;
  const std::string ignore_path = JoinPath(root == "/" ? "" : root, ".dockerignore");
  if (PathExists(ignore_path)) {
    MOAT_ASSIGN_OR_RETURN(std::string text, ReadFile(ignore_path));
    ignore = DockerIgnore::Parse(text);
  }
  return BuildContext(std::move(root), std::move(ignore));
}

std::string BuildContext::Absolute(std::string_view path) const {
  if (path.empty()) return dir_;
  return (dir_ == "/" ? "" : dir_) + "/" + std::string(path);
}

Result<ContextEntry> BuildContext::Stat(const std::string& path) const {
  const std::string abs = Absolute(path);
  struct stat st {};
  if (::lstat(abs.c_str(), &st) != 0) return ErrnoError("lstat(" + abs + ")");
  ContextEntry e{.path = path,
                 .mode = st.st_mode,
                 .size = static_cast<uint64_t>(st.st_size),
                 .mtime = static_cast<int64_t>(st.st_mtime),
                 .link_target = {}};
  if (S_ISLNK(st.st_mode)) {
    std::string target(static_cast<size_t>(st.st_size) + 1, '\0');
    ssize_t n = ::readlink(abs.c_str(), target.data(), target.size());
    if (n < 0) return ErrnoError("readlink(" + abs + ")");
    target.resize(static_cast<size_t>(n));
    e.link_target = std::move(target);
  }
  return e;
}

Status BuildContext::Collect(ContextEntry entry, std::vector<ContextEntry>& out) const {
  if (!entry.is_dir() && !entry.is_symlink() && !S_ISREG(entry.mode)) return Status::Ok();
  const bool excluded = !entry.path.empty() && ignore_.Excludes(entry.path);
  // An excluded directory is still walked when an exception might bring back what is below it.
  if (excluded && !(entry.is_dir() && ignore_.has_exceptions())) return Status::Ok();
  const bool dir = entry.is_dir();
  const std::string path = entry.path;
  if (!excluded) out.push_back(std::move(entry));
  if (!dir) return Status::Ok();
  MOAT_ASSIGN_OR_RETURN(auto names, ListDir(Absolute(path)));
  for (const auto& name : names) {
    MOAT_ASSIGN_OR_RETURN(ContextEntry child, Stat(JoinPath(path, name)));
    MOAT_RETURN_IF_ERROR(Collect(std::move(child), out));
  }
  return Status::Ok();
}

Result<std::vector<ContextEntry>> BuildContext::Match(std::string_view source) const {
  const std::vector<std::string> parts = SplitPath(source);
  std::vector<std::string> current = {""};
  for (size_t i = 0; i < parts.size(); ++i) {
    const std::string& part = parts[i];
    const bool last = i + 1 == parts.size();
    std::vector<std::string> next;
    for (const auto& base : current) {
      if (!HasGlob(part)) {
        next.push_back(JoinPath(base, part));
        continue;
      }
      MOAT_ASSIGN_OR_RETURN(auto names, ListDir(Absolute(base)));
      for (const auto& name : names) {
        if (MatchPart(part, name)) next.push_back(JoinPath(base, name));
      }
    }
    current.clear();
    for (auto& path : next) {
      struct stat st {};
      if (::lstat(Absolute(path).c_str(), &st) != 0) continue;
      if (!last && S_ISLNK(st.st_mode) && !HasGlob(part)) {
        return InvalidArgument("source " + std::string(source) +
                               " goes through the symbolic link " + path +
                               ": sources must be reached without symlinks");
      }
      if (!last && !S_ISDIR(st.st_mode)) continue;
      current.push_back(std::move(path));
    }
  }
  std::vector<ContextEntry> out;
  for (const auto& path : current) {
    MOAT_ASSIGN_OR_RETURN(ContextEntry entry, Stat(path));
    MOAT_RETURN_IF_ERROR(Collect(std::move(entry), out));
  }
  std::sort(out.begin(), out.end(),
            [](const ContextEntry& a, const ContextEntry& b) { return a.path < b.path; });
  out.erase(
      std::unique(out.begin(), out.end(),
                  [](const ContextEntry& a, const ContextEntry& b) { return a.path == b.path; }),
      out.end());
  if (out.empty()) {
    return NotFound("no files found for " + std::string(source) + " in " + dir_ +
                    (ignore_.empty() ? "" : " (after .dockerignore)"));
  }
  return out;
}

Result<std::string> BuildContext::FilesHash(std::string_view source, std::string_view dest,
                                            const std::vector<ContextEntry>& entries) const {
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) {
    return Internal("SHA-256: cannot initialise a digest");
  }
  auto update = [&ctx](std::string_view data) {
    EVP_DigestUpdate(ctx.get(), data.data(), data.size());
  };
  update("COPY " + std::string(source) + " " + std::string(dest));
  std::string buf(64 * 1024, '\0');
  for (const auto& e : entries) {
    update(e.path);
    update(std::to_string(e.mode));
    update(std::to_string(e.size));
    if (e.is_symlink()) {
      update(e.link_target);
      continue;
    }
    if (!S_ISREG(e.mode)) continue;
    const std::string abs = Absolute(e.path);
    MOAT_ASSIGN_OR_RETURN(UniqueFd fd, OpenRegular(abs));
    while (true) {
      ssize_t n = ::read(fd.get(), buf.data(), buf.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return ErrnoError("read(" + abs + ")");
      if (n == 0) break;
      update(std::string_view(buf.data(), static_cast<size_t>(n)));
    }
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(ctx.get(), digest, &len) != 1) return Internal("SHA-256: final failed");
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned i = 0; i < len; ++i) {
    hex += kHex[digest[i] >> 4];
    hex += kHex[digest[i] & 15];
  }
  return hex;
}

Status BuildContext::WriteArchive(const std::vector<ContextEntry>& entries, int fd) const {
  api::codec::GzipWriter gzip(6);
  TarWriter tar([&](std::string_view data) -> Status {
    MOAT_ASSIGN_OR_RETURN(std::string compressed, gzip.Write(data));
    return WriteAll(fd, compressed);
  });
  for (const auto& e : entries) {
    if (e.path.empty()) continue;  // the context itself: the builder unpacks into its own dir
    const uint32_t mode = static_cast<uint32_t>(e.mode);
    if (e.is_dir()) {
      MOAT_RETURN_IF_ERROR(tar.AddDirectory(e.path, mode, e.mtime));
    } else if (e.is_symlink()) {
      MOAT_RETURN_IF_ERROR(tar.AddSymlink(e.path, e.link_target, mode, e.mtime));
    } else {
      MOAT_ASSIGN_OR_RETURN(UniqueFd file, OpenRegular(Absolute(e.path)));
      MOAT_RETURN_IF_ERROR(tar.AddFile(e.path, mode, e.mtime, e.size, file.get()));
    }
  }
  MOAT_RETURN_IF_ERROR(tar.Finish());
  MOAT_ASSIGN_OR_RETURN(std::string tail, gzip.Finish());
  return WriteAll(fd, tail);
}

}  // namespace moat::cli
