// ChunkFetcher: gets chunks into a ChunkCache from an ObjectStore, one fetch per chunk at a time
// however many callers want it (single flight: the others wait for that fetch's outcome). A
// fetched chunk whose bytes do not hash to its name is refused (data_loss-like: internal, naming
// the chunk) and never cached. Records fetch latency and bytes for metrics.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "storage/chunk_cache.h"
#include "storage/object_store.h"

namespace moat::storage {

// Fetch latency buckets, in milliseconds (upper bounds, Prometheus-style; the last is +Inf).
inline constexpr double kFetchLatencyBucketsMs[] = {1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500};

struct ChunkFetchStats {
  uint64_t fetches = 0;      // chunks fetched from the store
  uint64_t fetch_bytes = 0;  // their bytes
  uint64_t failures = 0;
  uint64_t waits = 0;  // callers that waited on another caller's fetch of the same chunk
  // Counts per bucket of kFetchLatencyBucketsMs, then +Inf; and their sum.
  std::vector<uint64_t> latency_buckets;
  double latency_sum_ms = 0;
};

class ChunkFetcher {
 public:
  ChunkFetcher(ChunkCache& cache, ObjectStore& store) : cache_(cache), store_(store) {}

  // Ok once the chunk is in the cache (at once when it already is).
  Status Ensure(const std::string& hash);
  ChunkFetchStats stats();

 private:
  struct Impl;
  ChunkCache& cache_;
  ObjectStore& store_;
  std::shared_ptr<Impl> impl_ = MakeImpl();
  static std::shared_ptr<Impl> MakeImpl();
};

}  // namespace moat::storage
