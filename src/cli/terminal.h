// The local terminal for `moat exec -t`: raw mode that is restored on every way out (normal
// return, error, or a fatal signal), the window size, and SIGWINCH as a readable fd.
#pragma once

#include <termios.h>

#include <csignal>
#include <cstdint>
#include <memory>
#include <optional>

#include "common/status.h"
#include "common/unique_fd.h"

namespace moat::cli {

struct WindowSize {
  uint16_t cols = 80;
  uint16_t rows = 24;
};

// The size of the terminal on `fd`, nullopt if it is not a terminal (or reports 0x0).
std::optional<WindowSize> TerminalSize(int fd);

// Puts a terminal in raw mode (no echo, no line editing, no signals from keys: ^C goes to the
// remote program as a byte) and restores its settings when destroyed. Until then a SIGTERM,
// SIGHUP, SIGINT or SIGQUIT restores them too, then takes its default action. One at a time.
class RawTerminal {
 public:
  RawTerminal() = default;
  ~RawTerminal() { Restore(); }
  RawTerminal(const RawTerminal&) = delete;
  RawTerminal& operator=(const RawTerminal&) = delete;

  Status Enter(int fd);
  void Restore();

 private:
  bool active_ = false;
};

// SIGWINCH delivered as a byte on a non-blocking pipe, so that a poll loop can wait for it with
// other fds. Uninstalled (previous handler back) when destroyed. One at a time.
class WinchPipe {
 public:
  static Result<std::unique_ptr<WinchPipe>> Install();
  ~WinchPipe();
  WinchPipe(const WinchPipe&) = delete;
  WinchPipe& operator=(const WinchPipe&) = delete;

  int fd() const { return read_.get(); }
  // Empties the pipe; true if at least one signal had arrived.
  bool Drain();

 private:
  WinchPipe() = default;
  UniqueFd read_;
  UniqueFd write_;
  struct sigaction previous_ {};
};

}  // namespace moat::cli
