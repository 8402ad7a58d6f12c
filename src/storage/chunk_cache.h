// ChunkCache: a host's chunks on local disk (DATA_DIR/chunk-cache/<hh>/<sha256>), bounded in
// size, least recently used first out. A chunk is present only once its whole content has been
// verified against its hash and renamed into place, so the directory itself is the crash-safe
// record of what is cached: Open() rebuilds the index from it (recency from mtime) and removes
// temporaries a crash left.
//
// Pinned chunks (those of files mapped by live VMs: memfs pins every chunk of an open file) are
// never evicted; the cache may then exceed its bound until they are unpinned. One process owns a
// cache directory; it is thread-safe within that process.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "common/status.h"

namespace moat::storage {

struct ChunkCacheStats {
  uint64_t bytes = 0;  // on disk now
  uint64_t chunks = 0;
  uint64_t max_bytes = 0;
  uint64_t hits = 0;    // Read/ReadAll that found the chunk
  uint64_t misses = 0;  // Read/ReadAll that did not (Contains counts neither)
  uint64_t inserts = 0;
  uint64_t evictions = 0;
  uint64_t pinned = 0;  // chunks pinned now (present or not)
};

class ChunkCache {
 public:
  static Result<std::unique_ptr<ChunkCache>> Open(const std::string& dir, uint64_t max_bytes);
  ~ChunkCache();

  bool Contains(const std::string& hash);
  // Verifies SHA-256(data) == hash (else invalid_argument, nothing stored), stores it, then
  // evicts least recently used unpinned chunks beyond the bound. Inserting a present chunk is ok.
  Status Insert(const std::string& hash, std::string_view data);
  // Copies up to `length` bytes from `offset` of the cached chunk into `out` and marks it used;
  // returns how many were copied. not_found when the chunk is not cached (a miss).
  Result<size_t> Read(const std::string& hash, uint64_t offset, void* out, size_t length);
  // The whole chunk (not_found on a miss).
  Result<std::string> ReadAll(const std::string& hash);
  // Pins are counted: a chunk stays until each Pin has its Unpin. Pinning an absent chunk
  // protects it from the moment it is inserted.
  void Pin(const std::string& hash);
  void Unpin(const std::string& hash);
  // Drops a chunk (a corrupt one found on read); ok if absent.
  void Remove(const std::string& hash);
  ChunkCacheStats stats();
  const std::string& dir() const;

 private:
  struct Impl;
  explicit ChunkCache(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace moat::storage
