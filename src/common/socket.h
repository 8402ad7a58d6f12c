// Unix-domain socket helpers and whole-buffer I/O with errors as values.
#pragma once

#include <chrono>
#include <string>
#include <string_view>

#include "common/status.h"
#include "common/unique_fd.h"

namespace moat {

// Connects to a unix stream socket, retrying while it does not exist yet or refuses, until
// the timeout. The fd is close-on-exec and blocking.
Result<UniqueFd> ConnectUnix(const std::string& path, std::chrono::milliseconds timeout);
// Listening unix stream socket at `path` (an existing socket file there is replaced).
Result<UniqueFd> ListenUnix(const std::string& path, int backlog = 16);
// Writes all of `data`, retrying on EINTR and short writes (blocking fd).
Status WriteAll(int fd, std::string_view data);
// Reads exactly `len` bytes; Unavailable on EOF before that.
Status ReadExact(int fd, void* buf, size_t len);
// Sends `data` with one file descriptor attached (SCM_RIGHTS).
Status SendWithFd(int sock, std::string_view data, int fd_to_send);

}  // namespace moat
