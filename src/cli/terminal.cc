#include "cli/terminal.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <memory>

namespace moat::cli {
namespace {

// What the signal handlers need: plain globals, as a handler may only touch those. Written
// before the handlers are installed, read by them.
int g_raw_fd = -1;
struct termios g_saved_termios {};
constexpr int kRestoreSignals[] = {SIGTERM, SIGHUP, SIGINT, SIGQUIT};
struct sigaction g_previous[std::size(kRestoreSignals)];

int g_winch_write_fd = -1;

// Restores the terminal, then lets the signal take its default action (SA_RESETHAND put the
// default back; the re-raised signal is delivered once this handler returns).
void RestoreAndReraise(int sig) {
  int saved_errno = errno;
  if (g_raw_fd >= 0) ::tcsetattr(g_raw_fd, TCSANOW, &g_saved_termios);
  ::raise(sig);
  errno = saved_errno;
}

void OnWinch(int) {
  int saved_errno = errno;
  if (g_winch_write_fd >= 0) {
    char byte = 1;
    (void)!::write(g_winch_write_fd, &byte, 1);  // a full pipe already says "resized"
  }
  errno = saved_errno;
}

}  // namespace

std::optional<WindowSize> TerminalSize(int fd) {
  struct winsize ws {};
  // TIOCGWINSZ fills `ws`, a struct winsize as the ioctl expects.
  if (::ioctl(fd, TIOCGWINSZ, &ws) != 0 || ws.ws_col == 0 || ws.ws_row == 0) return std::nullopt;
  return WindowSize{.cols = ws.ws_col, .rows = ws.ws_row};
}

Status RawTerminal::Enter(int fd) {
  if (active_) return FailedPrecondition("the terminal is already raw");
  struct termios saved {};
  if (::tcgetattr(fd, &saved) != 0) return ErrnoError("tcgetattr");
  struct termios raw = saved;
  ::cfmakeraw(&raw);
  g_raw_fd = fd;
  g_saved_termios = saved;
  for (size_t i = 0; i < std::size(kRestoreSignals); ++i) {
    struct sigaction sa {};
    sa.sa_handler = RestoreAndReraise;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    ::sigaction(kRestoreSignals[i], &sa, &g_previous[i]);
  }
  if (::tcsetattr(fd, TCSANOW, &raw) != 0) {
    Status s = ErrnoError("tcsetattr");
    active_ = true;
    Restore();
    return s;
  }
  active_ = true;
  return Status::Ok();
}

void RawTerminal::Restore() {
  if (!active_) return;
  active_ = false;
  ::tcsetattr(g_raw_fd, TCSANOW, &g_saved_termios);
  for (size_t i = 0; i < std::size(kRestoreSignals); ++i) {
    ::sigaction(kRestoreSignals[i], &g_previous[i], nullptr);
  }
  g_raw_fd = -1;
}

Result<std::unique_ptr<WinchPipe>> WinchPipe::Install() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) return ErrnoError("pipe2");
  std::unique_ptr<WinchPipe> p(new WinchPipe());
  p->read_.Reset(fds[0]);
  p->write_.Reset(fds[1]);
  g_winch_write_fd = fds[1];
  struct sigaction sa {};
  sa.sa_handler = OnWinch;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  if (::sigaction(SIGWINCH, &sa, &p->previous_) != 0) {
    g_winch_write_fd = -1;
    return ErrnoError("sigaction(SIGWINCH)");
  }
  return p;
}

WinchPipe::~WinchPipe() {
  ::sigaction(SIGWINCH, &previous_, nullptr);
  g_winch_write_fd = -1;
}

bool WinchPipe::Drain() {
  bool any = false;
  char buf[64];
  while (::read(read_.get(), buf, sizeof buf) > 0) any = true;
  return any;
}

}  // namespace moat::cli
