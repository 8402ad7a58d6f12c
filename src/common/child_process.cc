#include "common/child_process.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include "common/fs.h"

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

namespace moat {
namespace {

int PidfdOpen(pid_t pid) {
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
}

// Child side of Spawn: only async-signal-safe calls from here to exec.
[[noreturn]] void RunChild(const SpawnOptions& o, char* const* argv, char* const* envp,
                           int err_fd) {
  auto fail = [err_fd](int err) {
    ssize_t unused = ::write(err_fd, &err, sizeof err);
    (void)unused;
    ::_exit(127);
  };
  sigset_t all;
  sigemptyset(&all);
  sigprocmask(SIG_SETMASK, &all, nullptr);
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP) signal(sig, SIG_DFL);
  }
  if (o.new_session && setsid() < 0) fail(errno);
  if (o.parent_death_signal != 0 && prctl(PR_SET_PDEATHSIG, o.parent_death_signal) < 0) {
    fail(errno);
  }
  // Move every source fd out of the way first so that one mapping cannot clobber another's
  // source; the copies are close-on-exec, so they vanish at exec.
  int moved[64];
  size_t n = o.fds.size() < 64 ? o.fds.size() : 64;
  for (size_t i = 0; i < n; ++i) {
    moved[i] = fcntl(o.fds[i].second, F_DUPFD_CLOEXEC, 512);
    if (moved[i] < 0) fail(errno);
  }
  for (size_t i = 0; i < n; ++i) {
    if (dup2(moved[i], o.fds[i].first) < 0) fail(errno);  // dup2 clears close-on-exec
  }
  // Everything above the mapped fds is closed at exec.
  int lowest = 3;
  for (size_t i = 0; i < n; ++i) {
    if (o.fds[i].first >= lowest) lowest = o.fds[i].first + 1;
  }
  if (syscall(SYS_close_range, lowest, ~0U, CLOSE_RANGE_CLOEXEC) < 0) fail(errno);
  for (int fd = 0; fd < 3; ++fd) {
    bool mapped = false;
    for (size_t i = 0; i < n; ++i) mapped = mapped || o.fds[i].first == fd;
    if (!mapped) {
      int null_fd = open("/dev/null", O_RDWR);
      if (null_fd >= 0 && null_fd != fd) {
        dup2(null_fd, fd);
        close(null_fd);
      }
    }
  }
  if (!o.cwd.empty() && chdir(o.cwd.c_str()) < 0) fail(errno);
  if (o.pre_exec) {
    int err = o.pre_exec();
    if (err != 0) fail(err);
  }
  if (envp != nullptr) {
    execvpe(argv[0], argv, envp);
  } else {
    execvp(argv[0], argv);
  }
  fail(errno);
  ::_exit(127);  // not reached: fail() exits
}

}  // namespace

ChildProcess::~ChildProcess() {
  Kill();
}

ChildProcess::ChildProcess(ChildProcess&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)),
      pidfd_(std::move(other.pidfd_)),
      is_child_(other.is_child_),
      status_(other.status_) {}

ChildProcess& ChildProcess::operator=(ChildProcess&& other) noexcept {
  if (this != &other) {
    Kill();
    pid_ = std::exchange(other.pid_, -1);
    pidfd_ = std::move(other.pidfd_);
    is_child_ = other.is_child_;
    status_ = other.status_;
  }
  return *this;
}

Result<ChildProcess> ChildProcess::Spawn(const SpawnOptions& options) {
  if (options.argv.empty()) return InvalidArgument("spawn: empty argv");
  if (options.fds.size() > 64) return InvalidArgument("spawn: more than 64 fds to map");
  std::vector<char*> argv;
  for (const auto& a : options.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  if (options.env) {
    for (const auto& e : *options.env) envp.push_back(const_cast<char*>(e.c_str()));
    envp.push_back(nullptr);
  }
  int err_pipe[2];
  if (pipe2(err_pipe, O_CLOEXEC) < 0) return ErrnoError("pipe2");
  UniqueFd err_read(err_pipe[0]);
  UniqueFd err_write(err_pipe[1]);

  pid_t pid = fork();
  if (pid < 0) return ErrnoError("fork");
  if (pid == 0) {
    RunChild(options, argv.data(), options.env ? envp.data() : nullptr, err_write.get());
  }
  err_write.Reset();
  ChildProcess child;
  child.pid_ = pid;
  child.pidfd_.Reset(PidfdOpen(pid));
  int child_errno = 0;
  ssize_t n;
  do {
    n = ::read(err_read.get(), &child_errno, sizeof child_errno);
  } while (n < 0 && errno == EINTR);
  if (n == sizeof child_errno) {
    (void)child.Wait();
    child.pid_ = -1;
    return ErrnoError("exec " + options.argv[0], child_errno);
  }
  if (!child.pidfd_.valid()) return ErrnoError("pidfd_open");
  return child;
}

Result<ChildProcess> ChildProcess::Adopt(pid_t pid) {
  int fd = PidfdOpen(pid);
  if (fd < 0) return ErrnoError("pidfd_open(" + std::to_string(pid) + ")");
  ChildProcess child;
  child.pid_ = pid;
  child.pidfd_.Reset(fd);
  child.is_child_ = (getppid() != pid) && (::waitpid(pid, nullptr, WNOHANG) >= 0);
  return child;
}

bool ChildProcess::Exited() {
  if (pid_ <= 0) return true;
  if (status_) return true;
  pollfd p{pidfd_.get(), POLLIN, 0};
  if (::poll(&p, 1, 0) <= 0) return false;
  return Wait(std::chrono::milliseconds(0)).ok();
}

Result<int> ChildProcess::Wait(std::optional<std::chrono::milliseconds> timeout) {
  if (status_) return *status_;
  if (pid_ <= 0) return FailedPrecondition("wait: no process");
  if (timeout && pidfd_.valid()) {
    pollfd p{pidfd_.get(), POLLIN, 0};
    int r;
    do {
      r = ::poll(&p, 1, static_cast<int>(timeout->count()));
    } while (r < 0 && errno == EINTR);
    if (r == 0) return DeadlineExceeded("process " + std::to_string(pid_) + " still running");
  }
  if (!is_child_) {
    // Not ours to reap: wait for the exit through the pidfd, the status stays unknown.
    if (!timeout && pidfd_.valid()) {
      pollfd p{pidfd_.get(), POLLIN, 0};
      while (::poll(&p, 1, -1) < 0 && errno == EINTR) {
      }
    }
    status_ = -1;
    return *status_;
  }
  int st = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &st, 0);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    if (errno == ECHILD) {
      status_ = -1;
      return *status_;
    }
    return ErrnoError("waitpid");
  }
  status_ = st;
  return st;
}

Status ChildProcess::Signal(int sig) {
  if (pid_ <= 0 || status_) return FailedPrecondition("signal: process has exited");
  // Through the pidfd: never signals a recycled pid.
  if (::syscall(SYS_pidfd_send_signal, pidfd_.get(), sig, nullptr, 0) < 0) {
    if (errno == ESRCH) return Status::Ok();
    return ErrnoError("pidfd_send_signal");
  }
  return Status::Ok();
}

void ChildProcess::Kill() {
  if (pid_ <= 0) return;
  if (!status_) {
    (void)Signal(SIGKILL);
    (void)Wait();
  }
  pid_ = -1;
  pidfd_.Reset();
}

pid_t ChildProcess::Release() {
  pidfd_.Reset();
  return std::exchange(pid_, -1);
}

std::string DescribeWaitStatus(int status) {
  if (status < 0) return "exited (status unknown)";
  if (WIFEXITED(status)) return "exited with " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const char* name = sigabbrev_np(WTERMSIG(status));
    return std::string("killed by SIG") + (name ? name : std::to_string(WTERMSIG(status)).c_str());
  }
  return "status " + std::to_string(status);
}

Result<ProcessTimes> ReadProcessTimes(pid_t pid) {
  std::string path = "/proc/" + std::to_string(pid) + "/stat";
  MOAT_ASSIGN_OR_RETURN(std::string stat, ReadFile(path));
  // The command name (field 2) may contain spaces and parentheses: fields resume after the last
  // ')'.
  size_t close = stat.rfind(')');
  if (close == std::string::npos || close + 2 >= stat.size())
    return Internal(path + ": bad format");
  size_t pos = close + 2;  // field 3 starts here: the state
  // A zombie has exited and only waits for its parent (which may never come: a dead agent's
  // VMM is reparented to init) to collect its status.
  if (stat[pos] == 'Z' || stat[pos] == 'X') return NotFound(path + ": the process has exited");
  ProcessTimes t;
  for (int field = 3; field <= 22; ++field) {
    uint64_t* out = field == 14   ? &t.user
                    : field == 15 ? &t.system
                    : field == 22 ? &t.start_time
                                  : nullptr;
    if (out != nullptr) {
      char* end = nullptr;
      *out = std::strtoull(stat.c_str() + pos, &end, 10);
      if (end == stat.c_str() + pos) return Internal(path + ": bad field " + std::to_string(field));
    }
    if (field == 22) break;
    pos = stat.find(' ', pos);
    if (pos == std::string::npos) return Internal(path + ": too few fields");
    ++pos;
  }
  return t;
}

Result<uint64_t> ProcessStartTime(pid_t pid) {
  MOAT_ASSIGN_OR_RETURN(ProcessTimes t, ReadProcessTimes(pid));
  return t.start_time;
}

Result<std::string> RunTool(const std::vector<std::string>& argv, std::chrono::milliseconds timeout,
                            size_t keep_bytes) {
  if (argv.empty()) return InvalidArgument("RunTool: no program");
  int p[2];
  if (::pipe2(p, O_CLOEXEC) < 0) return ErrnoError("pipe2");
  UniqueFd read_end(p[0]);
  UniqueFd write_end(p[1]);
  UniqueFd null_in(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  auto child = ChildProcess::Spawn(
      {.argv = argv,
       .env = std::vector<std::string>{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8",
                                       "HOME=/root", "TMPDIR=/tmp"},
       .fds = {{0, null_in.get()}, {1, write_end.get()}, {2, write_end.get()}}});
  if (!child.ok()) return child.status().Annotate(argv[0]);
  write_end.Reset();
  std::string out;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  bool timed_out = false;
  char buf[16384];
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    pollfd pfd{.fd = read_end.get(), .events = POLLIN, .revents = 0};
    int r = ::poll(&pfd, 1, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) continue;
    ssize_t n = ::read(read_end.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > 2 * keep_bytes) out.erase(0, out.size() - keep_bytes);
  }
  if (out.size() > keep_bytes) out.erase(0, out.size() - keep_bytes);
  if (timed_out) {
    child->Kill();
    return DeadlineExceeded(argv[0] + " did not finish within " +
                            std::to_string(timeout.count() / 1000) + " s: " + out);
  }
  MOAT_ASSIGN_OR_RETURN(int st, child->Wait(std::chrono::seconds(30)));
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    // The last lines say why.
    std::string tail = out;
    size_t lines = 0;
    for (size_t i = tail.size(); i-- > 0;) {
      if (tail[i] == '\n' && i + 1 < tail.size() && ++lines == 6) {
        tail = tail.substr(i + 1);
        break;
      }
    }
    while (!tail.empty() && (tail.back() == '\n' || tail.back() == ' ')) tail.pop_back();
    return Internal(argv[0] + " " + DescribeWaitStatus(st) + (tail.empty() ? "" : ": " + tail));
  }
  return out;
}

Status SetProcessNice(pid_t pid, int nice) {
  std::string task = "/proc/" + std::to_string(pid) + "/task";
  DIR* d = ::opendir(task.c_str());
  if (d == nullptr) {
    if (errno == ENOENT) return NotFound("process " + std::to_string(pid) + " is gone");
    return ErrnoError("opendir(" + task + ")");
  }
  Status result = Status::Ok();
  while (dirent* e = ::readdir(d)) {
    char* end = nullptr;
    long tid = std::strtol(e->d_name, &end, 10);
    if (tid <= 0 || *end != '\0') continue;
    if (::setpriority(PRIO_PROCESS, static_cast<id_t>(tid), nice) < 0 && errno != ESRCH &&
        result.ok()) {
      result = ErrnoError("setpriority(" + std::to_string(tid) + ")");
    }
  }
  ::closedir(d);
  return result;
}

Status SetThreadNice(int nice) {
  if (::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), nice) < 0) {
    return ErrnoError("setpriority");
  }
  return Status::Ok();
}

}  // namespace moat
