#include "storage/chunk_fetcher.h"

#include <chrono>
#include <condition_variable>
#include <iterator>
#include <mutex>
#include <unordered_map>

#include "common/cleanup.h"
#include "storage/chunking.h"

namespace moat::storage {
namespace {

constexpr size_t kLatencyBuckets = std::size(kFetchLatencyBucketsMs) + 1;  // and +Inf

}  // namespace

struct ChunkFetcher::Impl {
  // One fetch in progress: its outcome, for the callers that wait on it.
  struct Flight {
    std::condition_variable done_cv;
    bool done = false;
    Status status;
  };

  std::mutex mu;
  std::unordered_map<std::string, std::shared_ptr<Flight>> flights;
  ChunkFetchStats stats;

  // With mu held.
  void RecordLatencyLocked(double ms) {
    size_t bucket = 0;
    while (bucket < std::size(kFetchLatencyBucketsMs) && ms > kFetchLatencyBucketsMs[bucket]) {
      ++bucket;
    }
    stats.latency_buckets[bucket] += 1;
    stats.latency_sum_ms += ms;
  }

  void Finish(const std::string& hash, Flight& flight, const Status& status) {
    {
      std::lock_guard lock(mu);
      flight.status = status;
      flight.done = true;
      flights.erase(hash);
      if (!status.ok()) stats.failures += 1;
    }
    flight.done_cv.notify_all();
  }

  Status Fetch(ChunkCache& cache, ObjectStore& store, const std::string& hash) {
    // A fetch that ended between the caller's Contains and this flight has already cached it.
    if (cache.Contains(hash)) return Status::Ok();
    const auto start = std::chrono::steady_clock::now();
    Result<std::string> body = store.Get(ChunkKey(hash));
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    if (!body.ok()) {
      return body.status().Annotate("fetching chunk " + hash + " from " + store.Describe());
    }
    {
      std::lock_guard lock(mu);
      stats.fetches += 1;
      stats.fetch_bytes += body->size();
      RecordLatencyLocked(ms);
    }
    if (body->empty() || body->size() > kChunkSize) {
      return Internal("chunk " + hash + " from " + store.Describe() + ": " +
                      std::to_string(body->size()) + " bytes (a chunk has 1 to " +
                      std::to_string(kChunkSize) + "); not cached");
    }
    // Insert verifies the bytes against the hash (its only invalid_argument for a valid hash
    // and size), so that they are hashed once.
    Status inserted = cache.Insert(hash, *body);
    if (inserted.code() == ErrorCode::kInvalidArgument) {
      return Internal("chunk " + hash + " from " + store.Describe() + " is corrupt, not cached (" +
                      inserted.message() + ")");
    }
    return inserted;
  }
};

std::shared_ptr<ChunkFetcher::Impl> ChunkFetcher::MakeImpl() {
  auto impl = std::make_shared<Impl>();
  impl->stats.latency_buckets.assign(kLatencyBuckets, 0);
  return impl;
}

Status ChunkFetcher::Ensure(const std::string& hash) {
  if (!IsValidChunkHash(hash)) {
    return InvalidArgument("chunk fetch: " + hash.substr(0, 80) +
                           " is not a chunk hash (64 lowercase hex digits)");
  }
  if (cache_.Contains(hash)) return Status::Ok();

  std::shared_ptr<Impl::Flight> flight;
  {
    std::unique_lock lock(impl_->mu);
    auto it = impl_->flights.find(hash);
    if (it != impl_->flights.end()) {
      // Another caller is fetching it: wait for that outcome rather than fetch it twice.
      flight = it->second;
      impl_->stats.waits += 1;
      flight->done_cv.wait(lock, [&] { return flight->done; });
      return flight->status;
    }
    flight = std::make_shared<Impl::Flight>();
    impl_->flights.emplace(hash, flight);
  }

  // This caller fetches; the flight ends with its outcome and wakes its waiters, and the next
  // Ensure after a failure starts a new fetch. Should the fetch throw, the waiters still wake.
  Cleanup on_throw([&] {
    impl_->Finish(hash, *flight, Internal("chunk fetch: " + hash + ": ended without an outcome"));
  });
  Status status = impl_->Fetch(cache_, store_, hash);
  on_throw.Cancel();
  impl_->Finish(hash, *flight, status);
  return status;
}

ChunkFetchStats ChunkFetcher::stats() {
  std::lock_guard lock(impl_->mu);
  return impl_->stats;
}

}  // namespace moat::storage
