// moat-guest: the in-guest agent, PID 1 of every sandbox VM (api/guest-channel.md).
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <thread>

#include "common/log.h"
#include "guest/event_loop.h"
#include "guest/init.h"
#include "guest/network.h"
#include "guest/server.h"

namespace moat::guest {
namespace {

constexpr const char* kUsage =
    "usage: moat-guest [--listen-unix PATH] [--port-name NAME] [--log-level LEVEL]\n"
    "\n"
    "The moat in-guest agent. As PID 1 of a sandbox VM it sets the system up (mounts, hostname,\n"
    "loopback), then serves the host<->guest channel (api/guest-channel.md) on the\n"
    "virtio-serial port named moat.0, and reaps every orphaned process.\n"
    "\n"
    "  --listen-unix PATH  serve the same protocol on a unix socket at PATH instead of the port\n"
    "                      (for tests outside a VM): no system set-up, one connection at a time,\n"
    "                      a new connection replaces the old one like a host reconnect\n"
    "  --port-name NAME    the virtio-serial port to serve (default moat.0)\n"
    "  --log-level LEVEL   debug, info (default), warn or error\n"
    "  --help              this text\n"
    "\n"
    "The `identity` op sets the clock, entropy and hostname, and the `network` op configures\n"
    "eth0, only when running as PID 1.\n";

struct Flags {
  ServerOptions server;
  LogLevel log_level = LogLevel::kInfo;
};

Result<Flags> ParseFlags(int argc, char** argv) {
  Flags flags;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    auto value = [&](std::string_view name) -> Result<std::string> {
      if (i + 1 >= argc) return InvalidArgument(std::string(name) + " needs a value");
      return std::string(argv[++i]);
    };
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (arg == "--listen-unix") {
      MOAT_ASSIGN_OR_RETURN(flags.server.listen_unix, value(arg));
    } else if (arg == "--port-name") {
      MOAT_ASSIGN_OR_RETURN(flags.server.port_name, value(arg));
    } else if (arg == "--log-level") {
      MOAT_ASSIGN_OR_RETURN(std::string level, value(arg));
      if (level == "debug") {
        flags.log_level = LogLevel::kDebug;
      } else if (level == "info") {
        flags.log_level = LogLevel::kInfo;
      } else if (level == "warn") {
        flags.log_level = LogLevel::kWarn;
      } else if (level == "error") {
        flags.log_level = LogLevel::kError;
      } else {
        return InvalidArgument("--log-level: unknown level " + level);
      }
    } else {
      // PID 1 also receives whatever the kernel command line left over; only flags count.
      if (::getpid() == 1) continue;
      return InvalidArgument("unknown argument " + std::string(arg));
    }
  }
  return flags;
}

void ReapAll() {
  while (::waitpid(-1, nullptr, WNOHANG) > 0) {
  }
}

// Serves until a fatal error (returned) or, outside PID 1, SIGTERM/SIGINT (Ok).
Status Serve(const ServerOptions& options, int signal_fd, bool pid1) {
  MOAT_ASSIGN_OR_RETURN(auto loop, EventLoop::Create());
  Server server(*loop, options);
  MOAT_RETURN_IF_ERROR(server.Start());
  bool stop = false;
  MOAT_ASSIGN_OR_RETURN(auto signal_reg, loop->Add(signal_fd, EPOLLIN, [&](uint32_t) {
    signalfd_siginfo info{};
    while (::read(signal_fd, &info, sizeof info) == static_cast<ssize_t>(sizeof info)) {
      if (info.ssi_signo == SIGCHLD) {
        server.ReapChildren();
      } else if (!pid1) {
        LogInfo("guest.stopping", {{"signal", static_cast<int>(info.ssi_signo)}});
        stop = true;
      }
    }
  }));
  // Children that exited before the signalfd was watched.
  server.ReapChildren();
  while (!stop) MOAT_RETURN_IF_ERROR(loop->RunOnce());
  loop->Remove(signal_reg);
  return Status::Ok();
}

int Main(int argc, char** argv) {
  const bool pid1 = ::getpid() == 1;
  auto flags = ParseFlags(argc, argv);
  if (!flags.ok()) {
    std::fprintf(stderr, "moat-guest: %s\n%s", flags.status().message().c_str(), kUsage);
    return 2;
  }
  SetLogLevel(flags->log_level);
  ::signal(SIGPIPE, SIG_IGN);
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  ::sigprocmask(SIG_BLOCK, &mask, nullptr);
  int signal_fd = ::signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  if (signal_fd < 0) {
    LogError("guest.signalfd_failed", {{"error", std::strerror(errno)}});
    if (!pid1) return 1;
  }

  const bool system = pid1 && flags->server.listen_unix.empty();
  flags->server.system = system;
  if (system) {
    if (Status s = InitSystem(); !s.ok()) {
      LogWarn("guest.init_incomplete", {{"error", s.ToString()}});
    }
    // A sandbox with a NIC gets the fixed address now; the host repeats it (`network` op)
    // after every restore. Without a NIC there is nothing to do.
    NetworkRequest network = DefaultNetwork();
    if (InterfaceExists(network.interface)) {
      if (Status s = ApplyNetwork(network); !s.ok()) {
        LogWarn("guest.network_failed", {{"error", s.ToString()}});
      }
    }
  }
  LogInfo("guest.starting", {{"pid1", pid1 ? "true" : "false"}});
  for (int attempt = 0;; ++attempt) {
    Status s = signal_fd >= 0 ? Serve(flags->server, signal_fd, pid1) : Unavailable("no signalfd");
    if (s.ok() && !pid1) return 0;
    LogError("guest.server_failed", {{"error", s.ToString()}, {"attempt", attempt}});
    // PID 1 must never exit (the kernel would panic): reap, wait, serve again.
    if (!pid1) return 1;
    ReapAll();
    std::this_thread::sleep_for(std::chrono::seconds(1));
    ReapAll();
    if (signal_fd < 0) signal_fd = ::signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  }
}

}  // namespace
}  // namespace moat::guest

int main(int argc, char** argv) {
  return moat::guest::Main(argc, argv);
}
