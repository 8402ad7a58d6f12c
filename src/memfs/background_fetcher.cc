#include "memfs/background_fetcher.h"

#include <algorithm>

#include "common/log.h"

namespace moat::memfs {

BackgroundFetcher::BackgroundFetcher(storage::ChunkFetcher& fetcher, size_t threads,
                                     size_t max_fill_in_flight)
    : fetcher_(fetcher), max_fill_in_flight_(std::max<size_t>(1, max_fill_in_flight)) {
  threads = std::max<size_t>(1, threads);
  threads_.reserve(threads);
  for (size_t i = 0; i < threads; ++i) threads_.emplace_back([this] { Work(); });
}

BackgroundFetcher::~BackgroundFetcher() {
  Stop();
}

void BackgroundFetcher::Enqueue(Priority priority, std::vector<std::string> hashes,
                                const CancelToken& cancel,
                                std::chrono::steady_clock::time_point not_before) {
  if (hashes.empty()) return;
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    auto& queue = priority == Priority::kPrefetch ? prefetch_ : fill_;
    for (auto& h : hashes) queue.push_back(Task{std::move(h), cancel, not_before});
    (priority == Priority::kPrefetch ? stats_.prefetch_queued : stats_.fill_queued) +=
        hashes.size();
  }
  cv_.notify_all();
}

void BackgroundFetcher::Work() {
  std::unique_lock lock(mu_);
  for (;;) {
    auto fill_ready = [&] {
      return !fill_.empty() && fill_in_flight_ < max_fill_in_flight_ &&
             fill_.front().not_before <= std::chrono::steady_clock::now();
    };
    if (!stopping_ && prefetch_.empty() && !fill_ready()) {
      // A fill that waits for its time wakes this thread then (or an Enqueue/Stop earlier).
      if (!fill_.empty() && fill_in_flight_ < max_fill_in_flight_) {
        cv_.wait_until(lock, fill_.front().not_before);
      } else {
        cv_.wait(lock);
      }
      continue;
    }
    if (stopping_) return;
    bool is_fill = prefetch_.empty();
    auto& queue = is_fill ? fill_ : prefetch_;
    Task task = std::move(queue.front());
    queue.pop_front();
    if (task.cancel && task.cancel->load()) {
      ++stats_.cancelled;
      continue;
    }
    if (is_fill) ++fill_in_flight_;
    lock.unlock();
    Status s = fetcher_.Ensure(task.hash);
    if (!s.ok()) {
      static RateLimiter limiter(1, 10);
      unsigned long suppressed = 0;
      if (limiter.Allow(&suppressed)) {
        LogWarn("memfs.background_fetch_failed",
                {{"chunk", task.hash},
                 {"kind", is_fill ? "fill" : "prefetch"},
                 {"error", s.ToString()},
                 {"suppressed", static_cast<uint64_t>(suppressed)}});
      }
    }
    lock.lock();
    if (is_fill) {
      --fill_in_flight_;
      ++(s.ok() ? stats_.fill_done : stats_.fill_failed);
      cv_.notify_all();  // a fill slot is free
    } else {
      ++(s.ok() ? stats_.prefetch_done : stats_.prefetch_failed);
    }
  }
}

void BackgroundFetcher::Stop() {
  {
    std::lock_guard lock(mu_);
    if (stopping_ && threads_.empty()) return;
    stopping_ = true;
    stats_.cancelled += prefetch_.size() + fill_.size();
    prefetch_.clear();
    fill_.clear();
  }
  cv_.notify_all();
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
}

BackgroundFetchStats BackgroundFetcher::stats() {
  std::lock_guard lock(mu_);
  BackgroundFetchStats s = stats_;
  s.pending = prefetch_.size() + fill_.size();
  return s;
}

}  // namespace moat::memfs
