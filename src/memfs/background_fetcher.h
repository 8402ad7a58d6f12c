// BackgroundFetcher: memfs's fetches that no read waits for — a file's prefetch list and its
// fill — on a small pool of threads, in two queues: prefetch first (in the order given), fill
// only when no prefetch is waiting, and at most `max_fill_in_flight` fills at once so that
// reads, which fetch on their own threads, keep most of the store's bandwidth. A read that
// needs a chunk being fetched here shares that fetch (ChunkFetcher's single flight) and never
// waits behind the queues.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "storage/chunk_fetcher.h"

namespace moat::memfs {

struct BackgroundFetchStats {
  uint64_t prefetch_queued = 0;  // ever queued
  uint64_t prefetch_done = 0;    // ensured (fetched, or found in the cache)
  uint64_t prefetch_failed = 0;
  uint64_t fill_queued = 0;
  uint64_t fill_done = 0;
  uint64_t fill_failed = 0;
  uint64_t cancelled = 0;  // dropped because their file was closed (or at shutdown)
  uint64_t pending = 0;    // waiting now
};

class BackgroundFetcher {
 public:
  enum class Priority { kPrefetch, kFill };
  // Set when the file a task is for has been closed: its tasks still queued are dropped.
  using CancelToken = std::shared_ptr<std::atomic<bool>>;

  BackgroundFetcher(storage::ChunkFetcher& fetcher, size_t threads, size_t max_fill_in_flight);
  // Stop()s.
  ~BackgroundFetcher();
  BackgroundFetcher(const BackgroundFetcher&) = delete;
  BackgroundFetcher& operator=(const BackgroundFetcher&) = delete;

  // `not_before`: the tasks wait until then (a fill that must not compete with the restore's
  // own faults in its first seconds); default: at once.
  void Enqueue(Priority priority, std::vector<std::string> hashes, const CancelToken& cancel,
               std::chrono::steady_clock::time_point not_before = {});
  // Drops what is queued, waits for the fetches in progress, joins the threads.
  void Stop();
  BackgroundFetchStats stats();

 private:
  struct Task {
    std::string hash;
    CancelToken cancel;
    std::chrono::steady_clock::time_point not_before;
  };
  void Work();

  storage::ChunkFetcher& fetcher_;
  const size_t max_fill_in_flight_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Task> prefetch_;
  std::deque<Task> fill_;
  size_t fill_in_flight_ = 0;
  bool stopping_ = false;
  BackgroundFetchStats stats_;
  std::vector<std::thread> threads_;
};

}  // namespace moat::memfs
