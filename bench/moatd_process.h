// `moatd serve` as a child process for benchmarks: the built binary on 127.0.0.1:0 with its own
// data dir and API key, its stdout and log in a directory of the caller's; stopped with SIGTERM
// as an operator would. Also a check for processes left behind.
#pragma once

#include <dirent.h>
#include <fcntl.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/child_process.h"
#include "common/fs.h"
#include "common/status.h"
#include "common/unique_fd.h"

extern char** environ;

namespace moat::bench {

// Pids and command lines of processes that mention `needle` (a temp dir: VMMs name their files).
inline std::vector<std::string> ProcessesMentioning(const std::string& needle) {
  std::vector<std::string> found;
  DIR* d = ::opendir("/proc");
  if (d == nullptr) return found;
  while (dirent* e = ::readdir(d)) {
    std::string pid = e->d_name;
    if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
    auto cmdline = ReadFile("/proc/" + pid + "/cmdline");
    if (!cmdline.ok()) continue;
    std::replace(cmdline->begin(), cmdline->end(), '\0', ' ');
    if (cmdline->find(needle) != std::string::npos) found.push_back(pid + ": " + *cmdline);
  }
  ::closedir(d);
  return found;
}

class MoatdProcess {
 public:
  // Starts `moatd` with `flags` after `serve --listen 127.0.0.1:0 --data-dir DIR/data` and
  // MOAT_API_KEY=`key`, and waits until it listens.
  Status Start(const std::string& moatd, const std::vector<std::string>& flags,
               const std::string& dir, const std::string& key) {
    dir_ = dir;
    UniqueFd out(::open((dir + "/stdout").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    UniqueFd log(
        ::open((dir + "/moatd.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!out.valid() || !log.valid()) return ErrnoError("open " + dir + "/stdout");
    std::vector<std::string> env;
    for (char** e = environ; *e != nullptr; ++e) {
      if (std::string_view(*e).rfind("MOAT_API_KEY=", 0) != 0) env.emplace_back(*e);
    }
    env.push_back("MOAT_API_KEY=" + key);
    std::vector<std::string> argv = {moatd,         "serve",      "--listen",
                                     "127.0.0.1:0", "--data-dir", dir + "/data"};
    // The built-in templates bake on first use only, unless a bench asks: a background bake
    // would share the cores with what is measured.
    if (std::find_if(flags.begin(), flags.end(), [](const std::string& f) {
          return f.rfind("--prebake-templates", 0) == 0;
        }) == flags.end()) {
      argv.push_back("--prebake-templates=false");
    }
    argv.insert(argv.end(), flags.begin(), flags.end());
    auto child = ChildProcess::Spawn({.argv = argv,
                                      .env = env,
                                      .fds = {{1, out.get()}, {2, log.get()}},
                                      // If the bench dies, moatd still stops its VMs.
                                      .parent_death_signal = SIGTERM});
    if (!child.ok()) return child.status().Annotate("starting " + moatd);
    child_ = std::move(*child);
    // It prints "serving the API on http://127.0.0.1:PORT" once listening.
    const std::string marker = "serving the API on http://127.0.0.1:";
    for (auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
         std::chrono::steady_clock::now() < until;) {
      auto text = ReadFile(dir + "/stdout");
      size_t at = text.ok() ? text->find(marker) : std::string::npos;
      if (at != std::string::npos && text->find('\n', at) != std::string::npos) {
        port_ = static_cast<uint16_t>(std::atoi(text->c_str() + at + marker.size()));
        return Status::Ok();
      }
      if (child_.Exited()) return Internal("moatd exited during start-up: " + LogTail());
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return DeadlineExceeded("moatd did not start listening in 60 s: " + LogTail());
  }

  uint16_t port() const { return port_; }
  bool running() { return child_.valid() && !child_.Exited(); }

  // SIGTERM; SIGKILL if it has not stopped in 30 s. An error unless it exited 0.
  Status Stop() {
    if (!child_.valid() || child_.Exited()) return Status::Ok();
    (void)child_.Signal(SIGTERM);
    auto st = child_.Wait(std::chrono::seconds(30));
    if (!st.ok()) {
      child_.Kill();
      return Internal("moatd did not stop within 30 s of SIGTERM");
    }
    if (*st != 0) return Internal("moatd " + DescribeWaitStatus(*st) + ": " + LogTail());
    return Status::Ok();
  }

  std::string Log() const {
    auto log = ReadFile(dir_ + "/moatd.log");
    return log.ok() ? *log : "";
  }
  std::string LogTail() const {
    std::string log = Log();
    return log.size() > 2000 ? log.substr(log.size() - 2000) : log;
  }

 private:
  std::string dir_;
  ChildProcess child_;
  uint16_t port_ = 0;
};

}  // namespace moat::bench
