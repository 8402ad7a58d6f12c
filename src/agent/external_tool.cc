#include "agent/external_tool.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>

#include "common/child_process.h"
#include "common/unique_fd.h"

namespace moat::agent {
namespace {

constexpr size_t kStderrTailBytes = size_t{8} << 10;

void TrimTrailingNewlines(std::string& s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
}

}  // namespace

bool ToolOutput::succeeded() const {
  return WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0;
}

std::string ToolOutput::Describe() const {
  std::string d = DescribeWaitStatus(wait_status);
  if (!stderr_tail.empty()) d += ": " + stderr_tail;
  return d;
}

Result<ToolOutput> RunExternalTool(const ExternalTool& tool) {
  if (tool.argv.empty()) return InvalidArgument("RunExternalTool: empty argv");
  const std::string& name = tool.argv[0];
  int out_fds[2];
  int err_fds[2];
  if (::pipe2(out_fds, O_CLOEXEC) < 0) return ErrnoError("pipe2");
  UniqueFd out_r(out_fds[0]), out_w(out_fds[1]);
  if (::pipe2(err_fds, O_CLOEXEC) < 0) return ErrnoError("pipe2");
  UniqueFd err_r(err_fds[0]), err_w(err_fds[1]);
  UniqueFd null_in(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!null_in) return ErrnoError("open(/dev/null)");

  SpawnOptions o;
  o.argv = tool.argv;
  o.env = tool.env;
  o.fds = {{0, null_in.get()}, {1, out_w.get()}, {2, err_w.get()}};
  MOAT_ASSIGN_OR_RETURN(ChildProcess child, ChildProcess::Spawn(o));
  out_w.Reset();
  err_w.Reset();
  null_in.Reset();

  ToolOutput result;
  std::string line;  // the unfinished stdout line, with on_stdout_line
  auto deadline = std::chrono::steady_clock::now() + tool.timeout;
  auto on_stdout = [&](const char* data, size_t n) -> Status {
    if (!tool.on_stdout_line) {
      if (result.stdout_data.size() + n > tool.max_stdout) {
        if (tool.max_stdout == 0) return Status::Ok();
        return ResourceExhausted(name + ": more than " + std::to_string(tool.max_stdout) +
                                 " bytes of output");
      }
      result.stdout_data.append(data, n);
      return Status::Ok();
    }
    for (size_t i = 0; i < n; ++i) {
      if (data[i] != '\n') {
        if (line.size() < size_t{64} << 10) line.push_back(data[i]);
        continue;
      }
      tool.on_stdout_line(line);
      line.clear();
    }
    return Status::Ok();
  };
  // Reads both pipes until both reach EOF (the tool and anything it started are gone).
  pollfd fds[2] = {{out_r.get(), POLLIN, 0}, {err_r.get(), POLLIN, 0}};
  int open_pipes = 2;
  while (open_pipes > 0) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      child.Kill();
      return DeadlineExceeded(name + ": still running after " +
                              std::to_string(tool.timeout.count() / 1000) + " s");
    }
    int n = ::poll(fds, 2, static_cast<int>(std::min<int64_t>(left.count(), 60000)));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("poll");
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      char buf[65536];
      ssize_t got = ::read(fds[i].fd, buf, sizeof buf);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        fds[i].fd = -1;  // poll ignores negative fds
        --open_pipes;
        continue;
      }
      if (i == 0) {
        Status s = on_stdout(buf, static_cast<size_t>(got));
        if (!s.ok()) {
          child.Kill();
          return s;
        }
      } else {
        result.stderr_tail.append(buf, static_cast<size_t>(got));
        if (result.stderr_tail.size() > 2 * kStderrTailBytes) {
          result.stderr_tail.erase(0, result.stderr_tail.size() - kStderrTailBytes);
        }
      }
    }
  }
  if (!line.empty()) tool.on_stdout_line(line);
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
  auto status = child.Wait(std::max(left, std::chrono::milliseconds(1000)));
  if (!status.ok()) {
    child.Kill();
    return status.status().Annotate(name);
  }
  result.wait_status = *status;
  if (result.stderr_tail.size() > kStderrTailBytes) {
    result.stderr_tail.erase(0, result.stderr_tail.size() - kStderrTailBytes);
  }
  TrimTrailingNewlines(result.stderr_tail);
  return result;
}

}  // namespace moat::agent
