#include "memfs/memory_files.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <unordered_set>

#include "common/fs.h"
#include "common/log.h"

namespace moat::memfs {

struct MemoryFiles::File {
  Ino ino = 0;
  MemfsFileSpec spec;
  Identity identity;
  struct timespec mtime {};
  uint64_t nlookup = 0;  // under MemoryFiles::mu_

  std::mutex mu;  // everything below
  uint64_t opens = 0;
  bool ever_opened = false;
  BackgroundFetcher::CancelToken cancel;
  enum class TraceState { kNotStarted, kRecording, kDone };
  TraceState trace_state = TraceState::kNotStarted;
  // Read without mu on the read path: true only while recording.
  std::atomic<bool> tracing{false};
  std::chrono::steady_clock::time_point trace_until;
  std::vector<uint32_t> trace;
  std::vector<bool> touched;
};

namespace {

// Errors a guest can cause by touching its memory: logged at most once a second (with a burst).
RateLimiter& ReadErrorLimiter() {
  static RateLimiter limiter(1, 5);
  return limiter;
}

}  // namespace

MemoryFiles::MemoryFiles(MemoryFilesOptions options, storage::ChunkCache& cache,
                         storage::ChunkFetcher& fetcher)
    : options_(std::move(options)),
      cache_(cache),
      fetcher_(fetcher),
      background_(fetcher, options_.background_threads, options_.max_fill_in_flight) {}

MemoryFiles::~MemoryFiles() {
  Shutdown();
}

Result<std::shared_ptr<MemoryFiles::File>> MemoryFiles::Load(std::string_view name) {
  if (!IsValidMemfsName(name)) return NotFound("no memfs file '" + std::string(name) + "'");
  std::string path = MemfsSpecPath(options_.control_dir, name);
  // stat, read, stat again: the spec read is the version the identity names (a control file is
  // replaced by rename, never rewritten in place, so a change shows in the identity).
  for (int attempt = 0; attempt < 3; ++attempt) {
    int err = 0;
    std::optional<Identity> current = ControlIdentity(name, &err);
    if (!current) {
      if (err == ENOENT) {
        DropName(name);
        return NotFound("no memfs file '" + std::string(name) + "'");
      }
      return ErrnoError("stat(" + path + ")", err);
    }
    const Identity id = *current;
    {
      std::lock_guard lock(mu_);
      auto it = by_name_.find(name);
      if (it != by_name_.end() && it->second->identity == id) return it->second;
    }
    auto spec = ReadMemfsFile(options_.control_dir, name);
    if (!spec.ok()) {
      if (spec.status().code() == ErrorCode::kNotFound) continue;  // removed meanwhile
      return spec.status();
    }
    if (ControlIdentity(name, &err) != current) continue;  // replaced while read
    std::lock_guard lock(mu_);
    auto it = by_name_.find(name);
    if (it != by_name_.end()) {
      if (it->second->identity == id) return it->second;  // a concurrent lookup loaded it
      // An older version: it goes once the kernel forgets it.
      if (it->second->nlookup == 0) by_ino_.erase(it->second->ino);
      by_name_.erase(it);
    }
    auto file = std::make_shared<File>();
    file->ino = next_ino_++;
    file->spec = std::move(*spec);
    file->identity = id;
    file->mtime = timespec{static_cast<time_t>(id.mtime_ns / 1000000000),
                           static_cast<long>(id.mtime_ns % 1000000000)};
    file->touched.assign(file->spec.chunks.chunks.size(), false);
    by_name_.emplace(std::string(name), file);
    by_ino_.emplace(file->ino, file);
    LogInfo("memfs.file_loaded", {{"name", std::string(name)},
                                  {"ino", file->ino},
                                  {"size", file->spec.chunks.size},
                                  {"non_zero_bytes", file->spec.chunks.NonZeroBytes()}});
    return file;
  }
  return Unavailable("memfs file '" + std::string(name) + "': its control file keeps changing");
}

std::optional<MemoryFiles::Identity> MemoryFiles::ControlIdentity(std::string_view name, int* err) {
  std::string path = MemfsSpecPath(options_.control_dir, name);
  struct stat st {};
  if (::stat(path.c_str(), &st) < 0) {
    *err = errno;
    return std::nullopt;
  }
  return Identity{st.st_dev, st.st_ino, st.st_size,
                  int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec};
}

bool MemoryFiles::Revalidate(std::string_view name) {
  int err = 0;
  std::optional<Identity> current = ControlIdentity(name, &err);
  std::lock_guard lock(mu_);
  auto it = by_name_.find(name);
  if (it == by_name_.end()) return false;
  if (current && it->second->identity == *current) return false;
  if (it->second->nlookup == 0) by_ino_.erase(it->second->ino);
  by_name_.erase(it);
  return true;
}

std::vector<std::string> MemoryFiles::Names() {
  std::lock_guard lock(mu_);
  std::vector<std::string> out;
  out.reserve(by_name_.size());
  for (const auto& [name, file] : by_name_) out.push_back(name);
  return out;
}

std::shared_ptr<MemoryFiles::File> MemoryFiles::Find(Ino ino) {
  std::lock_guard lock(mu_);
  auto it = by_ino_.find(ino);
  return it == by_ino_.end() ? nullptr : it->second;
}

Result<MemoryFiles::Attr> MemoryFiles::Lookup(std::string_view name) {
  MOAT_ASSIGN_OR_RETURN(std::shared_ptr<File> file, Load(name));
  std::lock_guard lock(mu_);
  ++file->nlookup;
  // A file dropped between Load and here is still answered: the kernel will forget it.
  by_ino_.emplace(file->ino, file);
  return Attr{file->ino, file->spec.chunks.size, file->mtime};
}

void MemoryFiles::Forget(Ino ino, uint64_t count) {
  std::lock_guard lock(mu_);
  auto it = by_ino_.find(ino);
  if (it == by_ino_.end()) return;
  File& file = *it->second;
  file.nlookup -= std::min(file.nlookup, count);
  if (file.nlookup > 0) return;
  auto named = by_name_.find(file.spec.name);
  if (named == by_name_.end() || named->second.get() != &file) by_ino_.erase(it);
}

bool MemoryFiles::DropName(std::string_view name) {
  std::lock_guard lock(mu_);
  auto it = by_name_.find(name);
  if (it == by_name_.end()) return false;
  if (it->second->nlookup == 0) by_ino_.erase(it->second->ino);
  by_name_.erase(it);
  return true;
}

Result<MemoryFiles::Attr> MemoryFiles::GetAttr(Ino ino) {
  std::shared_ptr<File> file = Find(ino);
  if (!file) return NotFound("no inode " + std::to_string(ino));
  return Attr{file->ino, file->spec.chunks.size, file->mtime};
}

std::vector<std::pair<std::string, MemoryFiles::Ino>> MemoryFiles::List() {
  std::vector<std::pair<std::string, Ino>> out;
  for (const std::string& entry : DirNames(options_.control_dir)) {
    constexpr std::string_view kSuffix = ".json";
    if (entry.size() <= kSuffix.size() || !entry.ends_with(kSuffix)) continue;
    std::string name = entry.substr(0, entry.size() - kSuffix.size());
    if (!IsValidMemfsName(name)) continue;
    auto file = Load(name);
    if (file.ok()) out.emplace_back(name, (*file)->ino);
  }
  return out;
}

Status MemoryFiles::Open(Ino ino) {
  std::shared_ptr<File> file = Find(ino);
  if (!file) return NotFound("no inode " + std::to_string(ino));
  std::lock_guard lock(file->mu);
  if (file->opens++ > 0) return Status::Ok();
  open_files_.fetch_add(1);
  const auto& chunks = file->spec.chunks.chunks;
  for (const auto& hash : chunks) {
    if (hash) cache_.Pin(*hash);
  }
  if (!file->ever_opened) {
    file->ever_opened = true;
    file->trace_state = File::TraceState::kRecording;
    file->trace_until = std::chrono::steady_clock::now() + options_.trace_window;
    file->tracing.store(true);
  }
  // Prefetch in the spec's order, then (fill) every other non-zero chunk in index order.
  file->cancel = std::make_shared<std::atomic<bool>>(false);
  std::vector<std::string> prefetch;
  std::unordered_set<uint32_t> prefetched;
  for (uint32_t index : file->spec.prefetch) {
    if (index < chunks.size() && chunks[index]) {
      prefetch.push_back(*chunks[index]);
      prefetched.insert(index);
    }
  }
  background_.Enqueue(BackgroundFetcher::Priority::kPrefetch, std::move(prefetch), file->cancel);
  if (file->spec.fill) {
    std::vector<std::string> fill;
    for (uint32_t i = 0; i < chunks.size(); ++i) {
      if (chunks[i] && !prefetched.contains(i)) fill.push_back(*chunks[i]);
    }
    background_.Enqueue(BackgroundFetcher::Priority::kFill, std::move(fill), file->cancel,
                        std::chrono::steady_clock::now() + options_.fill_delay);
  }
  return Status::Ok();
}

void MemoryFiles::Release(Ino ino) {
  std::shared_ptr<File> file = Find(ino);
  if (!file) return;
  std::optional<std::vector<uint32_t>> trace;
  {
    std::lock_guard lock(file->mu);
    if (file->opens == 0 || --file->opens > 0) return;
    open_files_.fetch_sub(1);
    if (file->cancel) file->cancel->store(true);
    file->cancel.reset();
    for (const auto& hash : file->spec.chunks.chunks) {
      if (hash) cache_.Unpin(*hash);
    }
    trace = EndTraceLocked(*file);
  }
  if (trace) WriteTrace(file->spec.name, *trace);
}

std::optional<std::vector<uint32_t>> MemoryFiles::EndTraceLocked(File& file) {
  if (file.trace_state != File::TraceState::kRecording) return std::nullopt;
  file.trace_state = File::TraceState::kDone;
  file.tracing.store(false);
  file.touched = {};
  return std::exchange(file.trace, {});
}

void MemoryFiles::WriteTrace(const std::string& name, const std::vector<uint32_t>& trace) {
  // An empty trace says nothing: leave the name free for a later first open to record one.
  if (trace.empty()) return;
  auto written = WriteMemfsTraceIfAbsent(options_.control_dir, name, trace);
  if (!written.ok()) {
    LogWarn("memfs.trace_failed", {{"name", name}, {"error", written.status().ToString()}});
  } else if (*written) {
    traces_written_.fetch_add(1);
    LogInfo("memfs.trace_written", {{"name", name}, {"chunks", trace.size()}});
  }
}

Status MemoryFiles::ReadChunkPart(const std::string& hash, uint64_t offset, size_t length,
                                  char* out) {
  // The chunk is pinned (its file is open), so it stays once ensured; a second try covers a
  // chunk dropped meanwhile anyway (a corrupt one removed by another reader).
  for (int attempt = 0; attempt < 2; ++attempt) {
    MOAT_RETURN_IF_ERROR(fetcher_.Ensure(hash));
    auto n = cache_.Read(hash, offset, out, length);
    if (n.ok()) {
      if (*n != length) {
        return Internal("chunk " + hash + ": " + std::to_string(*n) + " bytes at offset " +
                        std::to_string(offset) + ", want " + std::to_string(length));
      }
      return Status::Ok();
    }
    if (n.status().code() != ErrorCode::kNotFound) return n.status();
  }
  return Internal("chunk " + hash + ": left the cache as soon as it was fetched, twice");
}

Result<size_t> MemoryFiles::Read(Ino ino, uint64_t offset, size_t size, char* out) {
  std::shared_ptr<File> file = Find(ino);
  if (!file) return NotFound("no inode " + std::to_string(ino));
  const storage::ChunkMap& map = file->spec.chunks;
  if (offset >= map.size || size == 0) {
    reads_.fetch_add(1);
    return size_t{0};
  }
  uint64_t end = std::min<uint64_t>(map.size, offset + size);
  size_t first = offset / storage::kChunkSize;
  size_t last = (end - 1) / storage::kChunkSize;

  if (file->tracing.load(std::memory_order_relaxed)) {
    std::optional<std::vector<uint32_t>> ended;
    {
      std::lock_guard lock(file->mu);
      if (file->trace_state == File::TraceState::kRecording) {
        if (std::chrono::steady_clock::now() >= file->trace_until) {
          ended = EndTraceLocked(*file);
        } else {
          for (size_t i = first; i <= last; ++i) {
            if (map.chunks[i] && !file->touched[i]) {
              file->touched[i] = true;
              file->trace.push_back(static_cast<uint32_t>(i));
            }
          }
        }
      }
    }
    if (ended) WriteTrace(file->spec.name, *ended);
  }

  uint64_t pos = offset;
  for (size_t i = first; i <= last; ++i) {
    uint64_t chunk_start = uint64_t{i} * storage::kChunkSize;
    uint64_t in_chunk = pos - chunk_start;
    size_t length = static_cast<size_t>(std::min(end, chunk_start + map.ChunkLength(i)) - pos);
    char* dest = out + (pos - offset);
    if (!map.chunks[i]) {
      std::memset(dest, 0, length);
      zero_chunk_reads_.fetch_add(1);
    } else {
      Status s = ReadChunkPart(*map.chunks[i], in_chunk, length, dest);
      if (!s.ok()) {
        read_errors_.fetch_add(1);
        unsigned long suppressed = 0;
        if (ReadErrorLimiter().Allow(&suppressed)) {
          LogError("memfs.read_failed", {{"name", file->spec.name},
                                         {"chunk_index", i},
                                         {"offset", offset},
                                         {"error", s.ToString()},
                                         {"suppressed", static_cast<uint64_t>(suppressed)}});
        }
        return s;
      }
    }
    pos += length;
  }
  reads_.fetch_add(1);
  read_bytes_.fetch_add(end - offset);
  return static_cast<size_t>(end - offset);
}

void MemoryFiles::Tick() {
  std::vector<std::shared_ptr<File>> files;
  {
    std::lock_guard lock(mu_);
    for (const auto& [ino, file] : by_ino_) {
      if (file->tracing.load()) files.push_back(file);
    }
  }
  auto now = std::chrono::steady_clock::now();
  for (const auto& file : files) {
    std::optional<std::vector<uint32_t>> ended;
    {
      std::lock_guard lock(file->mu);
      if (file->trace_state == File::TraceState::kRecording && now >= file->trace_until) {
        ended = EndTraceLocked(*file);
      }
    }
    if (ended) WriteTrace(file->spec.name, *ended);
  }
}

void MemoryFiles::Shutdown() {
  std::vector<std::shared_ptr<File>> files;
  {
    std::lock_guard lock(mu_);
    if (shut_down_) return;
    shut_down_ = true;
    for (const auto& [ino, file] : by_ino_) files.push_back(file);
  }
  background_.Stop();
  for (const auto& file : files) {
    std::optional<std::vector<uint32_t>> ended;
    {
      std::lock_guard lock(file->mu);
      ended = EndTraceLocked(*file);
    }
    if (ended) WriteTrace(file->spec.name, *ended);
  }
}

MemoryFilesStats MemoryFiles::stats() {
  MemoryFilesStats s;
  s.reads = reads_.load();
  s.read_bytes = read_bytes_.load();
  s.zero_chunk_reads = zero_chunk_reads_.load();
  s.read_errors = read_errors_.load();
  s.open_files = open_files_.load();
  s.traces_written = traces_written_.load();
  {
    std::lock_guard lock(mu_);
    s.files = by_ino_.size();
  }
  s.background = background_.stats();
  return s;
}

}  // namespace moat::memfs
