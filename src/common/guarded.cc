#include "common/guarded.h"

#include <atomic>
#include <exception>

#include "common/log.h"

namespace moat {
namespace {

std::atomic<uint64_t> g_caught{0};

RateLimiter& CaughtLog() {
  static RateLimiter limiter(1, 10);
  return limiter;
}

}  // namespace

Status CatchAll(std::string_view where, const std::function<void()>& fn) noexcept {
  std::string what;
  try {
    fn();
    return Status::Ok();
  } catch (const std::exception& e) {
    what = e.what();
  } catch (...) {
    what = "an exception of unknown type";
  }
  g_caught.fetch_add(1, std::memory_order_relaxed);
  unsigned long suppressed = 0;
  if (CaughtLog().Allow(&suppressed)) {
    LogError("bug.uncaught_exception",
             {{"where", where}, {"what", what}, {"suppressed", suppressed}});
  }
  return Internal(std::string(where) + ": internal error (" + what + ")");
}

std::thread GuardedThread(std::string name, std::function<void()> fn,
                          std::function<void(const Status&)> on_exception) {
  return std::thread(
      [name = std::move(name), fn = std::move(fn), on_exception = std::move(on_exception)] {
        Status s = CatchAll(name, fn);
        if (!s.ok() && on_exception) (void)CatchAll(name, [&] { on_exception(s); });
      });
}

uint64_t CaughtExceptions() {
  return g_caught.load(std::memory_order_relaxed);
}

}  // namespace moat
