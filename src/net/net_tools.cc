#include "net/net_tools.h"

#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <optional>
#include <thread>

#include "common/child_process.h"
#include "common/socket.h"

namespace moat::net {
namespace {

std::string Joined(const std::vector<std::string>& argv) {
  std::string s;
  for (const auto& a : argv) s += (s.empty() ? "" : " ") + a;
  return s;
}

}  // namespace

std::string NetnsPath(const std::string& name) {
  return "/run/netns/" + name;
}

Result<UniqueFd> OpenNetns(const std::string& name) {
  UniqueFd fd(::open(NetnsPath(name).c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError("open(" + NetnsPath(name) + ")");
  return fd;
}

Result<std::string> RunTool(const std::vector<std::string>& argv, std::string_view input,
                            int netns_fd, std::chrono::milliseconds timeout) {
  // The input goes into a pipe before the tool starts: it must fit the pipe (64 KiB by
  // default, raised to 1 MiB where allowed), so writing never waits for the child.
  int in[2];
  int out[2];
  if (::pipe2(in, O_CLOEXEC) < 0) return ErrnoError("pipe2");
  UniqueFd in_r(in[0]), in_w(in[1]);
  if (::pipe2(out, O_CLOEXEC) < 0) return ErrnoError("pipe2");
  UniqueFd out_r(out[0]), out_w(out[1]);
  if (input.size() > 60000) {
    if (::fcntl(in_w.get(), F_SETPIPE_SZ, 1 << 20) < static_cast<int>(input.size())) {
      return InvalidArgument("input for " + argv[0] + " is too large (" +
                             std::to_string(input.size()) + " bytes)");
    }
  }
  MOAT_RETURN_IF_ERROR(WriteAll(in_w.get(), input));
  in_w.Reset();
  SpawnOptions o;
  o.argv = argv;
  o.env = std::vector<std::string>{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"};
  o.fds = {{0, in_r.get()}, {1, out_w.get()}, {2, out_w.get()}};
  if (netns_fd >= 0) {
    // setns is a plain system call: async-signal-safe.
    o.pre_exec = [netns_fd]() -> int { return ::setns(netns_fd, CLONE_NEWNET) < 0 ? errno : 0; };
  }
  auto child = ChildProcess::Spawn(o);
  if (!child.ok()) return child.status().Annotate(Joined(argv));
  in_r.Reset();
  out_w.Reset();
  // Read until EOF (the tool exited, with any children of it) or the deadline.
  std::string output;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      child->Kill();
      return DeadlineExceeded(Joined(argv) + ": no exit within " + std::to_string(timeout.count()) +
                              " ms");
    }
    pollfd p{out_r.get(), POLLIN, 0};
    int n = ::poll(&p, 1, static_cast<int>(left.count()));
    if (n < 0 && errno != EINTR) return ErrnoError("poll");
    if (n <= 0) continue;
    char buf[4096];
    ssize_t got = ::read(out_r.get(), buf, sizeof buf);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    if (output.size() < 64 * 1024) output.append(buf, static_cast<size_t>(got));
  }
  MOAT_ASSIGN_OR_RETURN(int status, child->Wait(timeout));
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    while (!output.empty() && output.back() == '\n') output.pop_back();
    return Internal(Joined(argv) + ": " + DescribeWaitStatus(status) +
                    (output.empty() ? "" : ": " + output.substr(0, 2000)));
  }
  return output;
}

Status WriteNetSysctl(int netns_fd, const std::string& path, std::string_view value) {
  if (path.rfind("/proc/sys/net/", 0) != 0) return InvalidArgument("not a net sysctl: " + path);
  auto r = InNetns<bool>(netns_fd, [&]() -> Result<bool> {
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd) return ErrnoError("open(" + path + ")");
    MOAT_RETURN_IF_ERROR(WriteAll(fd.get(), value));
    return true;
  });
  return r.status();
}

Result<UniqueFd> CreateTap(int netns_fd, const std::string& name) {
  if (name.empty() || name.size() >= IFNAMSIZ) return InvalidArgument("bad tap name: " + name);
  return InNetns<UniqueFd>(netns_fd, [&]() -> Result<UniqueFd> {
    // /dev/net/tun binds the device it creates to the opening thread's network namespace.
    UniqueFd fd(::open("/dev/net/tun", O_RDWR | O_CLOEXEC));
    if (!fd) return ErrnoError("open(/dev/net/tun)");
    ifreq ifr{};
    std::strncpy(ifr.ifr_name, name.c_str(), IFNAMSIZ - 1);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    // TUNSETIFF reads ifr_name/ifr_flags and writes the final name back into our ifreq.
    if (::ioctl(fd.get(), TUNSETIFF, &ifr) < 0) return ErrnoError("ioctl(TUNSETIFF, " + name + ")");
    return fd;
  });
}

}  // namespace moat::net
