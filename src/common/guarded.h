// The last line of defence of the error policy (docs/errors.md): no exception may cross a
// module boundary, and third-party exceptions are caught in the adapter that calls the library.
// Should one escape anyway — a bug — these keep it from taking the whole process down
// (std::terminate, and with it every team's sandboxes and streams): the request or the thread
// it escaped from fails, it is logged (rate-limited), and everything else goes on.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <thread>

#include "common/status.h"

namespace moat {

// Runs `fn`; an exception escaping it is logged with `where` and returned as Internal.
Status CatchAll(std::string_view where, const std::function<void()>& fn) noexcept;

// A thread running `fn` under CatchAll; `on_exception` (optional) runs after an escaped
// exception, to leave the thread's object in a state others can see (e.g. a failed channel).
std::thread GuardedThread(std::string name, std::function<void()> fn,
                          std::function<void(const Status&)> on_exception = nullptr);

// How many exceptions CatchAll has caught in this process (metrics, tests).
uint64_t CaughtExceptions();

}  // namespace moat
