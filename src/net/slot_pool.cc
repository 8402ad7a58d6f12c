#include "net/slot_pool.h"

#include "common/child_process.h"
#include "common/guarded.h"
#include "common/log.h"

namespace moat::net {

SlotPool::SlotPool(HostNetwork& host, size_t target) : host_(host), target_(target) {
  if (target_ > 0) thread_ = GuardedThread("slot pool refill", [this] { RefillLoop(); });
}

SlotPool::~SlotPool() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  std::deque<std::unique_ptr<NetworkSlot>> slots;
  {
    std::lock_guard lock(mu_);
    slots.swap(ready_);
  }
  slots.clear();  // each slot's destructor tears it down
}

Result<std::unique_ptr<NetworkSlot>> SlotPool::Acquire() {
  {
    std::lock_guard lock(mu_);
    if (!ready_.empty()) {
      auto slot = std::move(ready_.front());
      ready_.pop_front();
      cv_.notify_all();
      return slot;
    }
  }
  cv_.notify_all();
  return host_.CreateSlot();
}

size_t SlotPool::ready() const {
  std::lock_guard lock(mu_);
  return ready_.size();
}

Status SlotPool::WaitReady(size_t n, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  bool done = ready_cv_.wait_for(lock, timeout, [&] { return ready_.size() >= n; });
  if (done) return Status::Ok();
  if (!last_error_.ok()) return last_error_;
  return DeadlineExceeded("only " + std::to_string(ready_.size()) + " of " + std::to_string(n) +
                          " network slots ready");
}

void SlotPool::RefillLoop() {
  // Background work: requests that take a slot (or make one when none is ready) come first.
  (void)SetThreadNice(kBackgroundNice);
  auto backoff = std::chrono::milliseconds(100);
  std::unique_lock lock(mu_);
  while (!stop_) {
    if (ready_.size() >= target_) {
      cv_.wait(lock, [&] { return stop_ || ready_.size() < target_; });
      continue;
    }
    lock.unlock();
    auto slot = host_.CreateSlot();
    lock.lock();
    if (slot.ok()) {
      ready_.push_back(std::move(*slot));
      last_error_ = Status::Ok();
      backoff = std::chrono::milliseconds(100);
      ready_cv_.notify_all();
      continue;
    }
    last_error_ = slot.status();
    LogError("net.pool_refill_failed", {{"error", slot.status().ToString()}});
    ready_cv_.notify_all();
    cv_.wait_for(lock, backoff, [&] { return stop_; });
    backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
  }
}

}  // namespace moat::net
