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
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "api/http/message.h"
#include "api/websocket.h"

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
};

// PTY sizes a page may ask for.
inline constexpr uint16_t kMaxTerminalCols = 1000;
inline constexpr uint16_t kMaxTerminalRows = 500;

// Answers the WebSocket handshake whose Sec-WebSocket-Key was `client_key` (101) on a connection
// taken over, then runs one terminal on it until either side ends it; returns once the shell is
// gone (or could not be killed in time) and every thread it started has ended.
// `conn.buffered`: bytes the page sent after the handshake.
void RunWebTerminal(const http::HijackedConnection& conn, std::string_view client_key,
                    const TerminalTarget& target, const WebTerminalOptions& options = {});

// How many terminals each dashboard session has open, capped.
class TerminalSlots {
 public:
  explicit TerminalSlots(int per_session = 4) : per_session_(per_session) {}

  // Holds one of a session's slots until destroyed.
  class Slot {
   public:
    Slot(TerminalSlots* owner, std::string session) : owner_(owner), session_(std::move(session)) {}
    Slot(Slot&& o) noexcept : owner_(std::exchange(o.owner_, nullptr)), session_(o.session_) {}
    Slot& operator=(Slot&&) = delete;
    ~Slot();

   private:
    TerminalSlots* owner_;
    std::string session_;
  };
  // A slot of `session`, or nullopt when it has per_session open already.
  std::optional<Slot> Acquire(const std::string& session);
  int open(const std::string& session);

 private:
  const int per_session_;
  std::mutex mu_;
  std::map<std::string, int> open_;
};

}  // namespace moat::api
