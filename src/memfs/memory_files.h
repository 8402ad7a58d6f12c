// MemoryFiles: what memfs's FUSE operations do, apart from FUSE (so that it is testable without
// a mount): the files the control directory describes, as inodes; reads that page chunks in
// from the chunk cache or the store; the pins that keep an open file's chunks in the cache; the
// prefetch and fill of a file when it is opened; the trace of its first reads.
//
// Invariants:
// - A file is immutable: an inode is one version of one control file (identified by the control
//   file's device, inode number, size and mtime). A control file replaced or removed makes the
//   name resolve to the new version, or to nothing, for later lookups; inodes already looked up
//   keep their spec (open files keep working).
// - While a file is open (from its first open to its last release) every non-zero chunk of it is
//   pinned in the cache: a VM mapping the file never loses a chunk to eviction.
// - A zero chunk is answered with zeros, never fetched.
// - The trace of a file records, in first-touch order, the non-zero chunks reads touch in the
//   `trace_window` after the file's first open; it is written when the window ends, at the
//   file's last release or at shutdown, whichever is first, once, and only when non-empty and
//   no trace exists for the name.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <ctime>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/status.h"
#include "memfs/background_fetcher.h"
#include "memfs/memfs_control.h"
#include "storage/chunk_cache.h"
#include "storage/chunk_fetcher.h"

namespace moat::memfs {

struct MemoryFilesOptions {
  std::string control_dir;
  std::chrono::milliseconds trace_window{10000};
  size_t background_threads = 8;
  size_t max_fill_in_flight = 2;
  // Fill starts this long after a file's open: the restore's own faults (and the prefetch) have
  // the store to themselves first, and a sandbox that runs one command and goes fetches little.
  std::chrono::milliseconds fill_delay{5000};
};

struct MemoryFilesStats {
  uint64_t reads = 0;             // read requests served
  uint64_t read_bytes = 0;        // bytes they returned
  uint64_t zero_chunk_reads = 0;  // pieces of reads answered from all-zero chunks (no fetch)
  uint64_t read_errors = 0;       // reads answered EIO (a fetch or the cache failed)
  uint64_t open_files = 0;        // files open now
  uint64_t files = 0;             // inodes known now
  uint64_t traces_written = 0;
  BackgroundFetchStats background;
};

class MemoryFiles {
 public:
  using Ino = uint64_t;
  static constexpr Ino kRootIno = 1;

  struct Attr {
    Ino ino = 0;
    uint64_t size = 0;
    struct timespec mtime {};  // the control file's
  };

  MemoryFiles(MemoryFilesOptions options, storage::ChunkCache& cache,
              storage::ChunkFetcher& fetcher);
  // Shutdown()s.
  ~MemoryFiles();
  MemoryFiles(const MemoryFiles&) = delete;
  MemoryFiles& operator=(const MemoryFiles&) = delete;

  // A name of the root directory: loads <control>/<name>.json (once per version of it) and
  // counts a lookup (FUSE's nlookup). not_found when there is no such control file (or the name
  // is not valid); invalid_argument (naming the file) for one that does not validate.
  Result<Attr> Lookup(std::string_view name);
  // FUSE's forget: `count` lookups fewer. An inode no longer named and no longer looked up goes.
  void Forget(Ino ino, uint64_t count);
  Result<Attr> GetAttr(Ino ino);
  // The control directory's files, by name (loads each as Lookup does, without counting).
  std::vector<std::pair<std::string, Ino>> List();
  // The control file of `name` was removed or replaced: the name no longer resolves to the
  // inode it did (open files keep working). Returns whether the name was resolved before.
  bool DropName(std::string_view name);
  // The control file of `name` may have changed (an inotify event): drops the name when its
  // control file is gone or is another version than the one loaded. Returns whether it did (the
  // kernel's dentry must then be invalidated).
  bool Revalidate(std::string_view name);
  // The names that resolve now.
  std::vector<std::string> Names();

  // Open and release are counted: the first open pins the file's chunks, starts its trace (the
  // first time ever) and queues its prefetch and fill; the last release unpins them, drops what
  // is still queued for it and ends its trace.
  Status Open(Ino ino);
  void Release(Ino ino);
  // Bytes [offset, offset + size) of the file into `out` (fewer at its end; 0 past it). An
  // error (a chunk that cannot be fetched) fails the whole read.
  Result<size_t> Read(Ino ino, uint64_t offset, size_t size, char* out);

  // Ends the trace windows that have run out (call about once a second).
  void Tick();
  // Writes the traces still being recorded and stops the background fetches. Idempotent.
  void Shutdown();

  MemoryFilesStats stats();

 private:
  struct File;
  struct Identity {
    dev_t dev = 0;
    ino_t ino = 0;
    off_t size = 0;
    int64_t mtime_ns = 0;
    bool operator==(const Identity&) const = default;
  };

  Result<std::shared_ptr<File>> Load(std::string_view name);
  // The control file's identity now; nullopt when it does not exist (or cannot be stat'ed).
  std::optional<Identity> ControlIdentity(std::string_view name, int* err);
  std::shared_ptr<File> Find(Ino ino);
  // Under file->mu: the trace, when it is being recorded, ends now; returns it to be written.
  std::optional<std::vector<uint32_t>> EndTraceLocked(File& file);
  void WriteTrace(const std::string& name, const std::vector<uint32_t>& trace);
  Status ReadChunkPart(const std::string& hash, uint64_t offset, size_t length, char* out);

  const MemoryFilesOptions options_;
  storage::ChunkCache& cache_;
  storage::ChunkFetcher& fetcher_;
  BackgroundFetcher background_;

  std::mutex mu_;  // the maps and every File's nlookup
  std::map<std::string, std::shared_ptr<File>, std::less<>> by_name_;
  std::unordered_map<Ino, std::shared_ptr<File>> by_ino_;
  Ino next_ino_ = kRootIno + 1;
  bool shut_down_ = false;

  std::atomic<uint64_t> reads_{0};
  std::atomic<uint64_t> read_bytes_{0};
  std::atomic<uint64_t> zero_chunk_reads_{0};
  std::atomic<uint64_t> read_errors_{0};
  std::atomic<uint64_t> open_files_{0};
  std::atomic<uint64_t> traces_written_{0};
};

}  // namespace moat::memfs
