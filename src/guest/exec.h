// Turning an `exec` request into a running process: validation, user and environment, program
// lookup, pipes or a PTY, and the spawn itself.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/unique_fd.h"
#include "guest/identity.h"
#include "guest/request.h"
#include "guest/users.h"

namespace moat::guest {

struct PtySize {
  uint16_t cols = 80;
  uint16_t rows = 24;
};

struct ExecSpec {
  std::vector<std::string> argv;          // what runs: argv[0] resolved to a path at spawn time
  std::vector<std::string> request_argv;  // as requested (for `processes`)
  std::string cmd;                        // as requested, when run through bash
  std::vector<std::string> env;           // KEY=VALUE
  std::string cwd;
  UserInfo user;
  bool keep_stdin = false;
  std::optional<PtySize> pty;
  std::string tag;
  int64_t timeout_ms = 0;
};

// The user a request runs as: its `user`, else the identity's default, else `user` if that
// exists, else root.
Result<UserInfo> ResolveUser(const std::optional<std::string>& requested, const Defaults& defaults,
                             const UserTable& users);
// Validates every field (errors name it) and fills in the defaults.
Result<ExecSpec> ParseExecRequest(const Json& request, const Defaults& defaults,
                                  const UserTable& users);
// Finds `program` in the colon-separated `path_var` unless it contains a slash (then relative to
// `cwd`). NotFound if there is no such executable file.
Result<std::string> FindProgram(const std::string& program, const std::string& path_var,
                                const std::string& cwd);

// Is `program` bash, by name or at its usual paths?
bool IsBash(const std::string& program);
// FindProgram, except that bash, when the guest has none, becomes `shell`: the official E2B
// client starts every command as `/bin/bash -l -c CMD`, and images from OCI registries (Alpine,
// busybox) often carry only a POSIX sh, which takes the same arguments. The program's NotFound
// stands when `shell` is missing too.
Result<std::string> FindProgramOrShell(const std::string& program, const std::string& path_var,
                                       const std::string& cwd,
                                       const std::string& shell = "/bin/sh");

struct SpawnedProcess {
  pid_t pid = -1;
  // Pipe write end; with a PTY a second handle on the master (input and resizes). Invalid
  // when stdin is not kept open and there is no PTY.
  UniqueFd stdin_fd;
  UniqueFd stdout_fd;  // with a PTY: the master
  UniqueFd stderr_fd;  // invalid with a PTY
};

// Starts the process in its own session (so a timeout can kill its whole process group). The
// returned pid is ours to reap: no ChildProcess owns it (PID 1 reaps everything with waitpid).
Result<SpawnedProcess> SpawnExec(const ExecSpec& spec);

Status SetPtySize(int master_fd, PtySize size);

}  // namespace moat::guest
