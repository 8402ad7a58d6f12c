// The dashboard's web terminal (docs/dashboard-contract.md, "Web terminal"): a WebSocket from the
// page bridged to a login shell on a PTY in the sandbox. The shell runs through envd's process
// API (process.Process/Start with a pty, SendInput, Update, SendSignal), called on moatd's own
// port like any client would, so that the same code works where the sandbox is on this host
// (`moatd serve`) and where the API relays to another (`moatd api`).
//
// Page → moatd: {"type":"input","data":"<text>"}, {"type":"resize","cols":N,"rows":N}.
// moatd → page: {"type":"output","data":"<base64 of the PTY's bytes>"},
// {"type":"exit","exitCode":N} then close 1000; {"type":"error","message":"..."} then close 1011.
// When the page goes (close frame, EOF, silence past the ping timeout), the shell is killed.
// The session that opened it is checked again every 30 s: once it is over (signed out, expired,
// its key revoked), moatd closes with 1008 "session ended" and kills the shell.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "api/http/message.h"
#include "api/websocket.h"
#include "common/status.h"

namespace moat::api {

struct TerminalTarget {
  std::string sandbox_id;
  std::string access_token;  // the sandbox's envd token
  std::string moatd_url;     // moatd's own port: "http://127.0.0.1:3000"
  uint16_t cols = 80;
  uint16_t rows = 24;
};

struct WebTerminalOptions {
  size_t max_message = websocket::kDefaultMaxMessage;
  // A ping to the page after this much silence; the page is gone after client_timeout of it.
  std::chrono::milliseconds ping_interval{30000};
  std::chrono::milliseconds client_timeout{90000};
  // A page that takes no bytes for this long is dropped (its output would pile up otherwise).
  std::chrono::milliseconds write_timeout{30000};
  // After moatd's close frame, how long the page has to answer with its own.
  std::chrono::milliseconds close_wait{5000};
  // How often the session that opened the terminal is checked again (RunWebTerminal's
  // `session_live`).
  std::chrono::milliseconds session_check_interval{30000};
};

// PTY sizes a page may ask for.
inline constexpr uint16_t kMaxTerminalCols = 1000;
inline constexpr uint16_t kMaxTerminalRows = 500;

// Answers the WebSocket handshake whose Sec-WebSocket-Key was `client_key` (101) on a connection
// taken over, then runs one terminal on it until either side ends it; returns once the shell is
// gone (or could not be killed in time) and every thread it started has ended.
// `conn.buffered`: bytes the page sent after the handshake. `session_live`, when given, is
// called on the page's thread every options.session_check_interval: false ends the terminal
// (close 1008 "session ended", the shell killed).
void RunWebTerminal(const http::HijackedConnection& conn, std::string_view client_key,
                    const TerminalTarget& target, const WebTerminalOptions& options = {},
                    const std::function<bool()>& session_live = nullptr);

// How many terminals are open, capped per dashboard session, per team and in all (each holds a
// shell in a sandbox, two threads and two connections in moatd).
class TerminalSlots {
 public:
  struct Limits {
    int per_session = 4;
    int per_team = 16;
    int total = 64;
  };
  TerminalSlots() : TerminalSlots(Limits{}) {}
  explicit TerminalSlots(Limits limits) : limits_(limits) {}

  // Holds one slot of a session and its team until destroyed.
  class Slot {
   public:
    Slot(TerminalSlots* owner, std::string session, std::string team)
        : owner_(owner), session_(std::move(session)), team_(std::move(team)) {}
    Slot(Slot&& o) noexcept
        : owner_(std::exchange(o.owner_, nullptr)), session_(o.session_), team_(o.team_) {}
    Slot& operator=(Slot&&) = delete;
    ~Slot();

   private:
    TerminalSlots* owner_;
    std::string session_;
    std::string team_;
  };
  // A slot of `session` (of `team`); resource_exhausted, naming the cap, when the session, the
  // team or moatd has all the terminals it may have open.
  Result<Slot> Acquire(const std::string& session, const std::string& team);
  int open(const std::string& session);
  int open_for_team(const std::string& team);
  int open_total();

 private:
  const Limits limits_;
  std::mutex mu_;
  std::map<std::string, int> by_session_;
  std::map<std::string, int> by_team_;
  int total_ = 0;
};

}  // namespace moat::api
