// The guest's single-threaded epoll loop: fd handlers (level-triggered), one timerfd multiplexing
// every timer, and idle callbacks that run after each batch of events.
#pragma once

#include <sys/epoll.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "common/unique_fd.h"

namespace moat::guest {

class EventLoop {
 public:
  using Handler = std::function<void(uint32_t events)>;
  using Clock = std::chrono::steady_clock;
  // 0 is never a valid registration or timer id.
  using Id = uint64_t;

  static Result<std::unique_ptr<EventLoop>> Create();

  // Registers `fd` (which the caller keeps open until Remove) for `events`.
  Result<Id> Add(int fd, uint32_t events, Handler handler);
  Status Modify(Id id, uint32_t events);
  // Safe to call from inside any handler, its own included; pending events are dropped.
  void Remove(Id id);

  Id AddTimer(Clock::duration after, std::function<void()> callback);
  void CancelTimer(Id id);

  // Runs after every batch of events (work that no fd drives, like reading regular files).
  void AddIdle(std::function<void()> callback) { idle_.push_back(std::move(callback)); }

  // Waits for and dispatches one batch of events.
  Status RunOnce();

 private:
  struct Registration {
    int fd;
    uint32_t events;
    std::shared_ptr<Handler> handler;
  };
  EventLoop(UniqueFd epoll, UniqueFd timer) : epoll_(std::move(epoll)), timer_(std::move(timer)) {}
  void ArmTimer();
  void RunTimers();

  UniqueFd epoll_;
  UniqueFd timer_;
  Id next_id_ = 1;
  std::unordered_map<Id, Registration> regs_;
  std::map<std::pair<Clock::time_point, Id>, std::function<void()>> timers_;
  std::unordered_map<Id, Clock::time_point> timer_deadlines_;
  std::vector<std::function<void()>> idle_;
};

}  // namespace moat::guest
