#include "storage/local_object_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>

#include "common/fs.h"
#include "common/unique_fd.h"

namespace moat::storage {
namespace {

// A temporary file's name has a '~', which no key may have: List never reports one, and no Put
// can overwrite one. The counter keeps concurrent Puts of one key (threads of this process, or
// other processes: the pid) apart.
std::string TempNameFor(const std::string& path) {
  static std::atomic<uint64_t> counter{0};
  return path + ".~tmp~" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
}

Status WriteAll(int fd, std::string_view data, const std::string& path) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("write(" + path + ")");
    }
    off += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status BadKey(const std::string& key) {
  return InvalidArgument("object key \"" + key +
                         "\" is not valid (segments of [A-Za-z0-9._-], no \".\" or \"..\", at "
                         "most 512 bytes)");
}

// Opens the object's file for reading; not_found unless it is a regular file.
Result<UniqueFd> OpenObject(const std::string& path, const std::string& key, uint64_t* size) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd) {
    if (errno == ENOENT || errno == ENOTDIR || errno == ELOOP) {
      return NotFound("object " + key + ": not found");
    }
    return ErrnoError("open(" + path + ")");
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) < 0) return ErrnoError("fstat(" + path + ")");
  if (!S_ISREG(st.st_mode)) return NotFound("object " + key + ": not found (not a file)");
  *size = static_cast<uint64_t>(st.st_size);
  return fd;
}

// Reads up to `length` bytes at `offset` (fewer where the file ends first).
Result<std::string> ReadAt(int fd, uint64_t offset, uint64_t length, const std::string& path) {
  std::string out;
  out.resize(length);
  size_t done = 0;
  while (done < length) {
    ssize_t n = ::pread(fd, out.data() + done, length - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("read(" + path + ")");
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  out.resize(done);
  return out;
}

// Appends every regular file under `dir` (whose key is `rel`, "" for the store's root) whose
// key is valid and starts with `prefix`.
Status Walk(const std::string& dir, const std::string& rel, const std::string& prefix,
            std::vector<ObjectInfo>* out) {
  for (const std::string& name : DirNames(dir)) {
    std::string path = dir + "/" + name;
    std::string key = rel.empty() ? name : rel + "/" + name;
    // Only descend where keys below can still match the prefix.
    size_t common = std::min(key.size(), prefix.size());
    if (key.compare(0, common, prefix, 0, common) != 0) continue;
    struct stat st {};
    if (::lstat(path.c_str(), &st) < 0) {
      if (errno == ENOENT) continue;  // deleted while we walked
      return ErrnoError("lstat(" + path + ")");
    }
    if (S_ISDIR(st.st_mode)) {
      MOAT_RETURN_IF_ERROR(Walk(path, key, prefix, out));
    } else if (S_ISREG(st.st_mode) && IsValidObjectKey(key) && key.size() >= prefix.size()) {
      out->push_back(ObjectInfo{key, static_cast<uint64_t>(st.st_size)});
    }
  }
  return Status::Ok();
}

}  // namespace

Result<std::unique_ptr<LocalObjectStore>> LocalObjectStore::Make(const std::string& dir) {
  if (dir.empty()) return InvalidArgument("local object store: empty directory");
  std::string clean = dir;
  while (clean.size() > 1 && clean.back() == '/') clean.pop_back();
  MOAT_RETURN_IF_ERROR(MakeDirs(clean).Annotate("local object store"));
  return std::unique_ptr<LocalObjectStore>(new LocalObjectStore(std::move(clean)));
}

std::string LocalObjectStore::Describe() const {
  return "local directory " + dir_;
}

Status LocalObjectStore::Put(const std::string& key, std::string_view body) {
  if (!IsValidObjectKey(key)) return BadKey(key);
  std::string path = dir_ + "/" + key;
  size_t slash = path.rfind('/');
  MOAT_RETURN_IF_ERROR(MakeDirs(path.substr(0, slash)).Annotate("put " + key));
  std::string tmp = TempNameFor(path);
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (!fd) {
    stats_.failures++;
    return ErrnoError("open(" + tmp + ")");
  }
  Status s = WriteAll(fd.get(), body, tmp);
  // fsync before the rename: after a crash the key names the whole object or nothing.
  if (s.ok() && ::fsync(fd.get()) < 0) s = ErrnoError("fsync(" + tmp + ")");
  fd.Reset();
  if (s.ok() && ::rename(tmp.c_str(), path.c_str()) < 0) {
    s = ErrnoError("rename(" + tmp + ", " + path + ")");
  }
  if (!s.ok()) {
    ::unlink(tmp.c_str());
    stats_.failures++;
    return s;
  }
  stats_.puts++;
  stats_.put_bytes += body.size();
  return Status::Ok();
}

Result<std::string> LocalObjectStore::Get(const std::string& key) {
  if (!IsValidObjectKey(key)) return BadKey(key);
  std::string path = dir_ + "/" + key;
  uint64_t size = 0;
  MOAT_ASSIGN_OR_RETURN(UniqueFd fd, OpenObject(path, key, &size));
  MOAT_ASSIGN_OR_RETURN(std::string body, ReadAt(fd.get(), 0, size, path));
  stats_.gets++;
  stats_.get_bytes += body.size();
  return body;
}

Result<std::string> LocalObjectStore::GetRange(const std::string& key, uint64_t offset,
                                               uint64_t length) {
  if (!IsValidObjectKey(key)) return BadKey(key);
  if (length == 0 || offset + length < offset) {
    return InvalidArgument("get " + key + ": bad range offset=" + std::to_string(offset) +
                           " length=" + std::to_string(length));
  }
  std::string path = dir_ + "/" + key;
  uint64_t size = 0;
  MOAT_ASSIGN_OR_RETURN(UniqueFd fd, OpenObject(path, key, &size));
  std::string body;
  if (offset < size) {
    MOAT_ASSIGN_OR_RETURN(body, ReadAt(fd.get(), offset, std::min(length, size - offset), path));
  }
  stats_.gets++;
  stats_.get_bytes += body.size();
  return body;
}

Result<std::optional<uint64_t>> LocalObjectStore::Head(const std::string& key) {
  if (!IsValidObjectKey(key)) return BadKey(key);
  std::string path = dir_ + "/" + key;
  struct stat st {};
  if (::lstat(path.c_str(), &st) < 0) {
    if (errno == ENOENT || errno == ENOTDIR) {
      stats_.heads++;
      return std::optional<uint64_t>();
    }
    return ErrnoError("lstat(" + path + ")");
  }
  stats_.heads++;
  if (!S_ISREG(st.st_mode)) return std::optional<uint64_t>();
  return std::optional<uint64_t>(static_cast<uint64_t>(st.st_size));
}

Status LocalObjectStore::Delete(const std::string& key) {
  if (!IsValidObjectKey(key)) return BadKey(key);
  std::string path = dir_ + "/" + key;
  // Empty directories are left behind: removing them would race with a Put into them.
  if (::unlink(path.c_str()) < 0 && errno != ENOENT && errno != ENOTDIR) {
    stats_.failures++;
    return ErrnoError("unlink(" + path + ")");
  }
  stats_.deletes++;
  return Status::Ok();
}

Result<std::vector<ObjectInfo>> LocalObjectStore::List(const std::string& prefix) {
  std::vector<ObjectInfo> out;
  MOAT_RETURN_IF_ERROR(Walk(dir_, "", prefix, &out).Annotate("list " + dir_));
  std::sort(out.begin(), out.end(),
            [](const ObjectInfo& a, const ObjectInfo& b) { return a.key < b.key; });
  stats_.lists++;
  return out;
}

}  // namespace moat::storage
