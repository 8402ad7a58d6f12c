// SlotPool: a few network slots set up ahead of time, so that creating a sandbox takes a ready
// slot (microseconds) instead of setting one up (tens of milliseconds). A background thread
// refills the pool to its target; Acquire() falls back to setting a slot up inline when the
// pool is empty. Ready slots carry the default policy; the caller applies the sandbox's own.
#pragma once

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>

#include "common/status.h"
#include "net/network_slot.h"

namespace moat::net {

class SlotPool {
 public:
  // `host` must outlive the pool. `target`: how many ready slots to keep (0: no thread).
  SlotPool(HostNetwork& host, size_t target);
  // Stops the refill thread and releases every ready slot.
  ~SlotPool();
  SlotPool(const SlotPool&) = delete;
  SlotPool& operator=(const SlotPool&) = delete;

  // A ready slot with the default policy (internet on), or a new one.
  Result<std::unique_ptr<NetworkSlot>> Acquire();
  size_t ready() const;
  // Blocks until `n` slots are ready (or the refill thread keeps failing); for start-up and
  // benchmarks. Returns the last refill error if it gave up.
  Status WaitReady(size_t n, std::chrono::milliseconds timeout);

 private:
  void RefillLoop();

  HostNetwork& host_;
  const size_t target_;
  mutable std::mutex mu_;
  std::condition_variable cv_;        // the refill thread waits for a taken slot or stop
  std::condition_variable ready_cv_;  // WaitReady waits for a new ready slot
  std::deque<std::unique_ptr<NetworkSlot>> ready_;
  Status last_error_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace moat::net
