// Runs the command-line tools that the template builder drives (skopeo, umoci, debugfs,
// mkfs.ext4): argv only, never a shell; the environment spelled out; stdin /dev/null; stdout
// kept in memory or passed on line by line; stderr's last lines kept for the error message.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace moat::agent {

struct ExternalTool {
  std::vector<std::string> argv;  // argv[0]: a path, or looked up in the PATH of `env`
  std::vector<std::string> env = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"};
  std::chrono::milliseconds timeout{std::chrono::minutes(10)};
  // Stdout is kept up to this many bytes (more fails the run); 0 keeps none.
  size_t max_stdout = 0;
  // Called with every line of stdout (without the newline) when set, instead of keeping it.
  std::function<void(std::string_view line)> on_stdout_line;
};

struct ToolOutput {
  int wait_status = 0;  // as waitpid
  std::string stdout_data;
  std::string stderr_tail;  // the last ~8 KiB of stderr, trailing newlines removed
  bool succeeded() const;   // exited with 0
  // "exited with 1: <stderr tail>" (or the wait status alone when stderr was empty).
  std::string Describe() const;
};

// Runs the tool to its end. An error only when it cannot be started, its stdout outgrew
// max_stdout, or it ran past `timeout` (then it is killed); a non-zero exit is the caller's to
// judge from the output.
Result<ToolOutput> RunExternalTool(const ExternalTool& tool);

}  // namespace moat::agent
