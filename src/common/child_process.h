// ChildProcess: fork+exec with the child's fds, environment and set-up spelled out, and one owner
// of the result: the destructor kills (SIGKILL) and reaps a child that is still running.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "common/unique_fd.h"

namespace moat {

struct SpawnOptions {
  std::vector<std::string> argv;  // argv[0] is the program; a path, or looked up in PATH
  // Replaces the environment when set; otherwise the child inherits the parent's.
  std::optional<std::vector<std::string>> env;
  // {fd in the child, fd in the parent}: each is dup2'ed into place; every other fd of the
  // parent is closed in the child (close-on-exec).
  std::vector<std::pair<int, int>> fds;
  std::string cwd;
  bool new_session = true;            // setsid(): the child leads its own process group
  int parent_death_signal = SIGKILL;  // 0: none
  // Runs in the child just before exec. It must only make async-signal-safe calls (the parent
  // may be multi-threaded): no allocation, no locks. Returns 0, or an errno that fails Spawn.
  std::function<int()> pre_exec;
};

class ChildProcess {
 public:
  ChildProcess() = default;
  ~ChildProcess();
  ChildProcess(ChildProcess&& other) noexcept;
  ChildProcess& operator=(ChildProcess&& other) noexcept;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // Starts the child; fails (with the child's errno) if exec or pre_exec failed.
  static Result<ChildProcess> Spawn(const SpawnOptions& options);
  // Takes ownership of an existing child (for example one re-adopted after a restart). The
  // process need not be our child: then its exit status is unknown (reported as -1).
  static Result<ChildProcess> Adopt(pid_t pid);

  pid_t pid() const { return pid_; }
  // A pidfd: readable once the process has exited. Usable with poll/epoll.
  int pidfd() const { return pidfd_.get(); }
  bool valid() const { return pid_ > 0; }

  // Has it exited? Reaps it if so (the exit status becomes available).
  bool Exited();
  // Waits until exit or timeout; returns the wait status (as waitpid) or DeadlineExceeded.
  Result<int> Wait(std::optional<std::chrono::milliseconds> timeout = std::nullopt);
  Status Signal(int sig);
  // SIGKILL and reap. Safe to call on an exited or empty object.
  void Kill();
  // Gives up ownership: the process is no longer killed on destruction. Returns its pid.
  pid_t Release();
  std::optional<int> exit_status() const { return status_; }

 private:
  pid_t pid_ = -1;
  UniqueFd pidfd_;
  bool is_child_ = true;
  std::optional<int> status_;
};

// "exited with 3", "killed by SIGKILL".
std::string DescribeWaitStatus(int status);

// Runs a tool to completion (argv[0] looked up in /usr/sbin:/usr/bin:/sbin:/bin, no shell),
// its stdout and stderr together collected (the last `keep_bytes` of them); killed past
// `timeout`. The output, or an error naming the tool, how it ended and its last output lines.
Result<std::string> RunTool(const std::vector<std::string>& argv,
                            std::chrono::milliseconds timeout = std::chrono::minutes(10),
                            size_t keep_bytes = 64 * 1024);

// A live process's times from /proc/<pid>/stat, in clock ticks (sysconf(_SC_CLK_TCK)), or
// NotFound if it is gone or has exited (a zombie, not yet reaped).
struct ProcessTimes {
  uint64_t user = 0;        // field 14: CPU time in user mode
  uint64_t system = 0;      // field 15: CPU time in the kernel
  uint64_t start_time = 0;  // field 22: since boot
};
Result<ProcessTimes> ReadProcessTimes(pid_t pid);

// The start time of a process (clock ticks since boot), or NotFound if it is gone or has
// exited. With the pid it names one process for good: a later process reusing the pid starts
// later.
Result<uint64_t> ProcessStartTime(pid_t pid);

// Sets the nice value of every thread of process `pid` (nice is per thread on Linux; threads
// it starts later inherit their creator's). A thread gone meanwhile is skipped; NotFound if the
// process is.
Status SetProcessNice(pid_t pid, int nice);
// The nice value of background refills (warm clones, ready network slots).
inline constexpr int kBackgroundNice = 19;
// The calling thread's nice value (processes it forks inherit it).
Status SetThreadNice(int nice);

}  // namespace moat
