// The index is in memory (a recency list and a map) and the directory is its record: a chunk
// file exists under its final name only after its whole content was written (to a ".tmp-" name,
// then renamed). Open() checks each file's size, not its content: re-hashing a cache of many
// GiB would make a restart slow. Chunks are not fsynced either — a process crash leaves the
// written bytes in the page cache; after a power loss the file system may hold a renamed chunk
// with lost data (typically empty, which Open() removes); readers that find a corrupt chunk
// Remove() it.
//
// Recency lives in memory; a chunk's mtime is refreshed at most once per kTouchInterval when it
// is read, so that Open() after a restart finds roughly the same order.
#include "storage/chunk_cache.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <list>
#include <mutex>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/fs.h"
#include "common/unique_fd.h"
#include "storage/chunking.h"

namespace moat::storage {
namespace {

constexpr std::string_view kTempPrefix = ".tmp-";
constexpr int64_t kTouchIntervalSeconds = 60;

int64_t NowSeconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool IsHexPair(std::string_view name) {
  return name.size() == 2 && std::all_of(name.begin(), name.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

Status WriteAll(int fd, const std::string& path, std::string_view data) {
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

// Reads up to `length` bytes at `offset`; fewer only at the end of the file.
Result<size_t> PreadUpTo(int fd, const std::string& path, uint64_t offset, char* out,
                         size_t length) {
  size_t done = 0;
  while (done < length) {
    ssize_t n = ::pread(fd, out + done, length - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("pread(" + path + ")");
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

}  // namespace

struct ChunkCache::Impl {
  struct Entry {
    uint64_t size = 0;
    int64_t touched_s = 0;  // mtime as last set (seconds)
    // Position in `lru` while unpinned; pinned chunks are kept out of it, so eviction never
    // has to step over them.
    std::optional<std::list<std::string>::iterator> lru_pos;
  };

  std::string dir;
  uint64_t max_bytes = 0;
  std::atomic<uint64_t> temp_counter{0};

  std::mutex mu;
  std::list<std::string> lru;  // unpinned present chunks, most recently used first
  std::unordered_map<std::string, Entry> entries;
  std::unordered_map<std::string, uint64_t> pins;  // hash -> pin count (> 0)
  ChunkCacheStats stats;

  std::string PathOf(std::string_view hash) const {
    return dir + "/" + std::string(hash.substr(0, 2)) + "/" + std::string(hash);
  }

  // With mu held. Adds a present chunk as the most recently used.
  void AddLocked(const std::string& hash, uint64_t size, int64_t mtime_s) {
    Entry entry{.size = size, .touched_s = mtime_s, .lru_pos = std::nullopt};
    if (!pins.contains(hash)) entry.lru_pos = lru.insert(lru.begin(), hash);
    entries.emplace(hash, std::move(entry));
    stats.bytes += size;
    stats.chunks += 1;
  }

  // With mu held. Forgets a chunk and removes its file (readers that opened it keep reading it).
  void DropLocked(std::unordered_map<std::string, Entry>::iterator it) {
    if (it->second.lru_pos) lru.erase(*it->second.lru_pos);
    stats.bytes -= it->second.size;
    stats.chunks -= 1;
    ::unlink(PathOf(it->first).c_str());
    entries.erase(it);
  }

  // With mu held. Marks a chunk used now.
  void TouchLocked(Entry& entry) {
    if (entry.lru_pos) lru.splice(lru.begin(), lru, *entry.lru_pos);
  }

  // With mu held. Evicts least recently used unpinned chunks while over the bound, never `keep`
  // (the chunk an Insert has just stored, which its caller is about to read).
  void EvictLocked(std::string_view keep) {
    auto it = lru.end();
    while (stats.bytes > max_bytes && it != lru.begin()) {
      --it;
      if (*it == keep) continue;
      auto entry = entries.find(*it);
      it = std::next(it);  // DropLocked erases the node under `it`
      DropLocked(entry);
      stats.evictions += 1;
    }
  }
};

ChunkCache::ChunkCache(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ChunkCache::~ChunkCache() = default;

Result<std::unique_ptr<ChunkCache>> ChunkCache::Open(const std::string& dir, uint64_t max_bytes) {
  MOAT_RETURN_IF_ERROR(MakeDirs(dir, 0700));
  auto impl = std::make_unique<Impl>();
  impl->dir = dir;
  impl->max_bytes = max_bytes;
  impl->stats.max_bytes = max_bytes;

  struct Found {
    std::string hash;
    uint64_t size;
    int64_t mtime_s;
    int64_t mtime_ns;
  };
  std::vector<Found> found;
  for (const std::string& name : DirNames(dir)) {
    const std::string path = dir + "/" + name;
    if (name.starts_with(kTempPrefix)) {
      ::unlink(path.c_str());
      continue;
    }
    if (!IsHexPair(name)) continue;  // not ours: left alone
    for (const std::string& file : DirNames(path)) {
      const std::string file_path = path + "/" + file;
      if (file.starts_with(kTempPrefix)) {  // a write a crash interrupted
        ::unlink(file_path.c_str());
        continue;
      }
      if (!IsValidChunkHash(file) || !file.starts_with(name)) continue;
      struct stat st {};
      if (::lstat(file_path.c_str(), &st) < 0) continue;
      const auto size = static_cast<uint64_t>(st.st_size);
      // No chunk is empty (an all-zero chunk is never stored) or over kChunkSize.
      if (!S_ISREG(st.st_mode) || size == 0 || size > kChunkSize) {
        if (!S_ISDIR(st.st_mode)) ::unlink(file_path.c_str());
        continue;
      }
      found.push_back({file, size, st.st_mtim.tv_sec, st.st_mtim.tv_nsec});
    }
  }
  // Oldest first, so that each AddLocked puts a newer chunk in front of it.
  std::sort(found.begin(), found.end(), [](const Found& a, const Found& b) {
    return std::tie(a.mtime_s, a.mtime_ns, a.hash) < std::tie(b.mtime_s, b.mtime_ns, b.hash);
  });
  {
    std::lock_guard lock(impl->mu);
    for (const Found& f : found) impl->AddLocked(f.hash, f.size, f.mtime_s);
    impl->EvictLocked("");
  }
  return std::unique_ptr<ChunkCache>(new ChunkCache(std::move(impl)));
}

bool ChunkCache::Contains(const std::string& hash) {
  std::lock_guard lock(impl_->mu);
  return impl_->entries.contains(hash);
}

Status ChunkCache::Insert(const std::string& hash, std::string_view data) {
  if (!IsValidChunkHash(hash)) {
    return InvalidArgument("chunk cache: " + std::string(hash.substr(0, 80)) +
                           " is not a chunk hash (64 lowercase hex digits)");
  }
  if (data.empty() || data.size() > kChunkSize) {
    return InvalidArgument("chunk cache: chunk " + hash + " of " + std::to_string(data.size()) +
                           " bytes (1 to " + std::to_string(kChunkSize) + ")");
  }
  if (std::string actual = ChunkHash(data); actual != hash) {
    return InvalidArgument("chunk cache: chunk " + hash + ": its " + std::to_string(data.size()) +
                           " bytes hash to " + actual);
  }
  {
    std::lock_guard lock(impl_->mu);
    auto it = impl_->entries.find(hash);
    if (it != impl_->entries.end()) {
      impl_->TouchLocked(it->second);
      return Status::Ok();
    }
  }

  // Written outside the lock; two Inserts of one chunk write two temporaries and rename the same
  // bytes over each other.
  const std::string sub = impl_->dir + "/" + hash.substr(0, 2);
  if (::mkdir(sub.c_str(), 0700) < 0 && errno != EEXIST) return ErrnoError("mkdir(" + sub + ")");
  const std::string final_path = sub + "/" + hash;
  const std::string temp = sub + "/" + std::string(kTempPrefix) + hash + "." +
                           std::to_string(impl_->temp_counter.fetch_add(1));
  {
    UniqueFd fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd) return ErrnoError("open(" + temp + ")");
    if (Status s = WriteAll(fd.get(), temp, data); !s.ok()) {
      ::unlink(temp.c_str());
      return s;
    }
  }
  std::lock_guard lock(impl_->mu);
  if (::rename(temp.c_str(), final_path.c_str()) < 0) {
    Status s = ErrnoError("rename(" + temp + ", " + final_path + ")");
    ::unlink(temp.c_str());
    return s;
  }
  if (!impl_->entries.contains(hash)) {
    impl_->AddLocked(hash, data.size(), NowSeconds());
    impl_->stats.inserts += 1;
  }
  impl_->EvictLocked(hash);
  return Status::Ok();
}

Result<size_t> ChunkCache::Read(const std::string& hash, uint64_t offset, void* out,
                                size_t length) {
  if (!IsValidChunkHash(hash)) return InvalidArgument("chunk cache: not a chunk hash");
  UniqueFd fd;
  uint64_t size = 0;
  bool touch = false;
  const std::string path = impl_->PathOf(hash);
  {
    std::lock_guard lock(impl_->mu);
    auto it = impl_->entries.find(hash);
    if (it != impl_->entries.end()) {
      // Opened under the lock, so that an eviction cannot remove the file in between; once
      // open, it stays readable after an unlink.
      fd.Reset(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
      if (!fd) {
        int err = errno;
        if (err != ENOENT) return ErrnoError("open(" + path + ")", err);
        impl_->DropLocked(it);  // removed behind the cache's back: a miss
        it = impl_->entries.end();
      }
    }
    if (it == impl_->entries.end()) {
      impl_->stats.misses += 1;
      return NotFound("chunk " + hash + " is not in the cache");
    }
    impl_->stats.hits += 1;
    impl_->TouchLocked(it->second);
    size = it->second.size;
    const int64_t now = NowSeconds();
    if (now - it->second.touched_s >= kTouchIntervalSeconds) {
      it->second.touched_s = now;
      touch = true;
    }
  }
  // Best effort: a lost mtime update only blurs the order a restart rebuilds.
  if (touch) ::futimens(fd.get(), nullptr);
  if (offset >= size) return size_t{0};
  return PreadUpTo(fd.get(), path, offset, static_cast<char*>(out),
                   static_cast<size_t>(std::min<uint64_t>(length, size - offset)));
}

Result<std::string> ChunkCache::ReadAll(const std::string& hash) {
  if (!IsValidChunkHash(hash)) return InvalidArgument("chunk cache: not a chunk hash");
  // The size is read with the chunk; a chunk is at most kChunkSize bytes.
  std::string out(kChunkSize, '\0');
  MOAT_ASSIGN_OR_RETURN(size_t n, Read(hash, 0, out.data(), out.size()));
  out.resize(n);
  return out;
}

void ChunkCache::Pin(const std::string& hash) {
  std::lock_guard lock(impl_->mu);
  if (impl_->pins[hash]++ > 0) return;
  auto it = impl_->entries.find(hash);
  if (it != impl_->entries.end() && it->second.lru_pos) {
    impl_->lru.erase(*it->second.lru_pos);
    it->second.lru_pos.reset();
  }
}

void ChunkCache::Unpin(const std::string& hash) {
  std::lock_guard lock(impl_->mu);
  auto pin = impl_->pins.find(hash);
  if (pin == impl_->pins.end()) return;  // not pinned: nothing to undo
  if (--pin->second > 0) return;
  impl_->pins.erase(pin);
  auto it = impl_->entries.find(hash);
  if (it != impl_->entries.end()) {
    it->second.lru_pos = impl_->lru.insert(impl_->lru.begin(), hash);
  }
  // Pinned chunks may have kept the cache over its bound.
  impl_->EvictLocked("");
}

void ChunkCache::Remove(const std::string& hash) {
  std::lock_guard lock(impl_->mu);
  auto it = impl_->entries.find(hash);
  if (it != impl_->entries.end()) impl_->DropLocked(it);
}

ChunkCacheStats ChunkCache::stats() {
  std::lock_guard lock(impl_->mu);
  ChunkCacheStats out = impl_->stats;
  out.pinned = impl_->pins.size();
  return out;
}

const std::string& ChunkCache::dir() const {
  return impl_->dir;
}

}  // namespace moat::storage
