#include "guest/event_loop.h"

#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>

namespace moat::guest {
namespace {

// The timer's registration id in epoll_data; real registrations start at 1.
constexpr uint64_t kTimerToken = 0;

}  // namespace

Result<std::unique_ptr<EventLoop>> EventLoop::Create() {
  UniqueFd ep(::epoll_create1(EPOLL_CLOEXEC));
  if (!ep) return ErrnoError("epoll_create1");
  UniqueFd timer(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
  if (!timer) return ErrnoError("timerfd_create");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kTimerToken;
  if (::epoll_ctl(ep.get(), EPOLL_CTL_ADD, timer.get(), &ev) < 0) {
    return ErrnoError("epoll_ctl(timerfd)");
  }
  return std::unique_ptr<EventLoop>(new EventLoop(std::move(ep), std::move(timer)));
}

Result<EventLoop::Id> EventLoop::Add(int fd, uint32_t events, Handler handler) {
  Id id = next_id_++;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = id;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) < 0) {
    return ErrnoError("epoll_ctl(ADD, fd " + std::to_string(fd) + ")");
  }
  regs_[id] = Registration{fd, events, std::make_shared<Handler>(std::move(handler))};
  return id;
}

Status EventLoop::Modify(Id id, uint32_t events) {
  auto it = regs_.find(id);
  if (it == regs_.end()) return Internal("epoll modify of an unknown registration");
  if (it->second.events == events) return Status::Ok();
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = id;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, it->second.fd, &ev) < 0) {
    return ErrnoError("epoll_ctl(MOD)");
  }
  it->second.events = events;
  return Status::Ok();
}

void EventLoop::Remove(Id id) {
  auto it = regs_.find(id);
  if (it == regs_.end()) return;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, it->second.fd, nullptr);
  regs_.erase(it);
}

EventLoop::Id EventLoop::AddTimer(Clock::duration after, std::function<void()> callback) {
  Id id = next_id_++;
  auto when = Clock::now() + after;
  timers_.emplace(std::make_pair(when, id), std::move(callback));
  timer_deadlines_[id] = when;
  ArmTimer();
  return id;
}

void EventLoop::CancelTimer(Id id) {
  auto it = timer_deadlines_.find(id);
  if (it == timer_deadlines_.end()) return;
  timers_.erase(std::make_pair(it->second, id));
  timer_deadlines_.erase(it);
}

void EventLoop::ArmTimer() {
  itimerspec spec{};
  if (!timers_.empty()) {
    // steady_clock is CLOCK_MONOTONIC on Linux, so its epoch is the timerfd's.
    auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                  timers_.begin()->first.first.time_since_epoch())
                  .count();
    if (ns <= 0) ns = 1;
    spec.it_value.tv_sec = ns / 1000000000;
    spec.it_value.tv_nsec = ns % 1000000000;
  }
  ::timerfd_settime(timer_.get(), TFD_TIMER_ABSTIME, &spec, nullptr);
}

void EventLoop::RunTimers() {
  uint64_t expirations = 0;
  ssize_t unused = ::read(timer_.get(), &expirations, sizeof expirations);
  (void)unused;
  auto now = Clock::now();
  while (!timers_.empty() && timers_.begin()->first.first <= now) {
    auto node = timers_.extract(timers_.begin());
    timer_deadlines_.erase(node.key().second);
    node.mapped()();
  }
  ArmTimer();
}

Status EventLoop::RunOnce() {
  epoll_event events[64];
  int n = ::epoll_wait(epoll_.get(), events, 64, -1);
  if (n < 0) {
    if (errno == EINTR) return Status::Ok();
    return ErrnoError("epoll_wait");
  }
  for (int i = 0; i < n; ++i) {
    Id id = events[i].data.u64;
    if (id == kTimerToken) {
      RunTimers();
      continue;
    }
    auto it = regs_.find(id);
    if (it == regs_.end()) continue;  // removed by an earlier handler of this batch
    // Hold the handler: it may remove its own registration while it runs.
    std::shared_ptr<Handler> handler = it->second.handler;
    (*handler)(events[i].events);
  }
  for (auto& idle : idle_) idle();
  return Status::Ok();
}

}  // namespace moat::guest
