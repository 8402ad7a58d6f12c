// Runs the `ip` and `nft` tools (iproute2, nftables) with errors as values: a failure carries
// the command and what the tool printed. Optionally inside a network namespace, entered
// between fork and exec.
#pragma once

#include <sched.h>

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/status.h"
#include "common/unique_fd.h"

namespace moat::net {

// Runs argv with `input` on stdin; Ok if it exits 0. `netns_fd` (an open /run/netns/<name>,
// or -1 for the caller's namespace) is entered with setns before exec. Killed after `timeout`.
Result<std::string> RunTool(const std::vector<std::string>& argv, std::string_view input = {},
                            int netns_fd = -1,
                            std::chrono::milliseconds timeout = std::chrono::seconds(10));

// Runs `fn` on a new thread that first entered the namespace `netns_fd` (-1: stays in ours).
// setns(CLONE_NEWNET) changes only the calling thread, which then exits; the caller's threads
// never change namespace.
template <typename T>
Result<T> InNetns(int netns_fd, const std::function<Result<T>()>& fn) {
  std::optional<Result<T>> out;
  std::thread t([&] {
    if (netns_fd >= 0 && ::setns(netns_fd, CLONE_NEWNET) < 0) {
      out.emplace(ErrnoError("setns(CLONE_NEWNET)"));
      return;
    }
    out.emplace(fn());
  });
  t.join();
  return std::move(*out);
}

// Opens /run/netns/<name> (O_CLOEXEC).
Result<UniqueFd> OpenNetns(const std::string& name);
std::string NetnsPath(const std::string& name);

// Writes a sysctl file under /proc/sys/net as seen from `netns_fd` (or the caller's namespace
// when -1): /proc/sys/net is per network namespace, resolved at open time by the opening
// thread's namespace, so the open happens on a short-lived thread that entered it.
Status WriteNetSysctl(int netns_fd, const std::string& path, std::string_view value);

// Creates tap `name` (IFF_TAP | IFF_NO_PI) inside the namespace and returns its fd: the only
// owner of the (non-persistent) device, which disappears when the last fd to it closes.
Result<UniqueFd> CreateTap(int netns_fd, const std::string& name);

}  // namespace moat::net
