#include "api/web_terminal.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <thread>

#include "api/codec/connect.h"
#include "api/codec/protojson.h"
#include "api/http/client.h"
#include "api/http/fd_stream.h"
#include "cli/process_stream.h"
#include "common/log.h"
#include "common/unique_fd.h"

namespace moat::api {
namespace {

namespace bhttp = boost::beast::http;
namespace ws = websocket;
using Clock = std::chrono::steady_clock;
using nlohmann::json;
using std::chrono::milliseconds;

constexpr milliseconds kConnectTimeout{2000};
constexpr milliseconds kUnaryTimeout{10000};
// The shell's stream says something at least this often (envd's keepalive, asked for below);
// a silence several times that long is a dead stream.
constexpr int kKeepaliveSeconds = 15;
constexpr milliseconds kStreamReadTimeout{kKeepaliveSeconds * 4 * 1000};
// How long a page that left waits for its shell's pid (the start event), then for its end.
constexpr milliseconds kStartWait{10000};
constexpr milliseconds kEndWait{5000};
// Input typed before the shell started is kept up to this much.
constexpr size_t kMaxPendingInput = 64 * 1024;

std::string Dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

RateLimiter& TerminalLogLimiter() {
  static RateLimiter limiter(1, 20);
  return limiter;
}

// Writes whole WebSocket frames to the page from either thread, and remembers whether moatd's
// close frame went out (nothing is sent after it).
class PageWriter {
 public:
  PageWriter(int fd, milliseconds write_timeout) : fd_(fd), write_timeout_(write_timeout) {}

  // Bytes as they are (the handshake's answer).
  Status SendRaw(std::string_view bytes) {
    std::lock_guard lock(mu_);
    return WriteLocked(bytes);
  }
  Status Send(ws::Opcode opcode, std::string_view payload) {
    std::lock_guard lock(mu_);
    if (close_sent_) return FailedPrecondition("the terminal is closing");
    return WriteLocked(ws::EncodeFrame(opcode, payload));
  }
  Status SendJson(const json& j) { return Send(ws::Opcode::kText, Dump(j)); }
  // Sends moatd's close frame, once; true if this call sent it.
  bool Close(uint16_t code, std::string_view reason) {
    std::lock_guard lock(mu_);
    if (close_sent_) return false;
    close_sent_ = true;
    (void)WriteLocked(ws::EncodeFrame(ws::Opcode::kClose, ws::ClosePayload(code, reason)));
    return true;
  }
  bool close_sent() {
    std::lock_guard lock(mu_);
    return close_sent_;
  }

 private:
  Status WriteLocked(std::string_view bytes) {
    if (broken_) return Unavailable("the page's connection is gone");
    while (!bytes.empty()) {
      pollfd p{fd_, POLLOUT, 0};
      int r = ::poll(&p, 1, static_cast<int>(write_timeout_.count()));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0)
        return Broken("the page took nothing for " + std::to_string(write_timeout_.count() / 1000) +
                      " s");
      ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n < 0) return Broken(std::string("writing to the page: ") + std::strerror(errno));
      bytes.remove_prefix(static_cast<size_t>(n));
    }
    return Status::Ok();
  }
  // A page that cannot be written to is gone: its reader sees that too (EOF).
  Status Broken(std::string why) {
    broken_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    return Unavailable(std::move(why));
  }

  const int fd_;
  const milliseconds write_timeout_;
  std::mutex mu_;
  bool close_sent_ = false;
  bool broken_ = false;
};

Result<UniqueFd> Dial(const http::Endpoint& endpoint) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  int rc = ::getaddrinfo(endpoint.host.c_str(), endpoint.port.c_str(), &hints, &found);
  if (rc != 0) return Unavailable("resolving " + endpoint.url + ": " + ::gai_strerror(rc));
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> list(found, ::freeaddrinfo);
  Status last = Unavailable("no address for " + endpoint.url);
  for (addrinfo* ai = found; ai != nullptr; ai = ai->ai_next) {
    UniqueFd fd(::socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd) return ErrnoError("socket");
    if (::connect(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
      if (errno != EINPROGRESS) {
        last = ErrnoError("connect(" + endpoint.url + ")");
        continue;
      }
      pollfd p{fd.get(), POLLOUT, 0};
      int r = ::poll(&p, 1, static_cast<int>(kConnectTimeout.count()));
      int err = 0;
      socklen_t len = sizeof err;
      if (r <= 0 || ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
        last = r == 0 ? DeadlineExceeded("connect(" + endpoint.url + "): timed out")
                      : ErrnoError("connect(" + endpoint.url + ")", err != 0 ? err : errno);
        continue;
      }
    }
    int one = 1;
    ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
  }
  return last;
}

// The message of an error answer ({"message": ...} as REST, Connect and the not-running answer
// all carry), else the status.
std::string ErrorMessageOf(int status, std::string_view body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_object()) {
    auto it = j.find("message");
    if (it != j.end() && it->is_string()) return it->get<std::string>();
  }
  return "HTTP " + std::to_string(status);
}

class Terminal {
 public:
  Terminal(const http::HijackedConnection& conn, const TerminalTarget& target,
           const WebTerminalOptions& options, const std::function<bool()>& session_live)
      : conn_(conn),
        target_(target),
        options_(options),
        session_live_(session_live),
        page_(conn.fd, options.write_timeout) {}

  void Run(std::string_view client_key) {
    if (!page_.SendRaw(ws::HandshakeResponse(client_key)).ok()) return;
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) {
      return Fail(ErrnoError("pipe2"));
    }
    wake_read_.Reset(fds[0]);
    wake_write_.Reset(fds[1]);
    auto endpoint = http::ParseEndpoint(target_.moatd_url);
    if (!endpoint.ok()) return Fail(endpoint.status());
    auto client = http::Client::ForUrl(target_.moatd_url);
    if (!client.ok()) return Fail(client.status());
    unary_ = std::move(*client);
    auto stream = Dial(*endpoint);
    if (!stream.ok()) return Fail(stream.status().Annotate("starting the shell"));
    stream_fd_ = std::move(*stream);
    LogDebug("dashboard.terminal_open", {{"sandbox", target_.sandbox_id}});
    std::thread pump([this, host = endpoint->host + ":" + endpoint->port] { PumpOutput(host); });
    ReadPage();
    Finish();
    pump.join();
    LogDebug("dashboard.terminal_closed", {{"sandbox", target_.sandbox_id}});
  }

 private:
  // --- moatd → the shell ---

  http::Headers EnvdHeaders(std::string_view content_type) const {
    return {{"E2b-Sandbox-Id", target_.sandbox_id},
            {"X-Access-Token", target_.access_token},
            {"Content-Type", std::string(content_type)},
            {"Connect-Protocol-Version", "1"}};
  }

  Status Unary(const std::string& method, const json& body) {
    http::ClientRequest req;
    req.method = "POST";
    req.target = "/process.Process/" + method;
    req.headers = EnvdHeaders("application/json");
    req.body = Dump(body);
    req.timeout = kUnaryTimeout;
    MOAT_ASSIGN_OR_RETURN(auto resp, unary_->Send(req));
    if (resp.status != 200) {
      return Unavailable(method + ": " + ErrorMessageOf(resp.status, resp.body));
    }
    return Status::Ok();
  }

  // process.Process/Start on the stream connection; every event relayed to the page.
  Status RunStream(const std::string& host) {
    std::string body = codec::EncodeEnvelope(
        0, cli::StartRequest({"/bin/bash", "-l"}, {{"TERM", "xterm-256color"}}, "", false,
                             cli::PtySize{target_.cols, target_.rows})
               .dump());
    bhttp::request<bhttp::string_body> req{bhttp::verb::post, "/process.Process/Start", 11};
    req.set(bhttp::field::host, host);
    for (auto& [k, v] : EnvdHeaders("application/connect+json")) req.set(k, v);
    req.set("Keepalive-Ping-Interval", std::to_string(kKeepaliveSeconds));
    req.keep_alive(false);
    req.body() = std::move(body);
    req.prepare_payload();
    http::FdStream stream(stream_fd_.get(), kStreamReadTimeout, options_.write_timeout);
    boost::beast::error_code ec;
    bhttp::write(stream, req, ec);
    if (ec) return Unavailable("starting the shell: " + ec.message());

    boost::beast::flat_buffer buffer;
    bhttp::response_parser<bhttp::buffer_body> parser;
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    bhttp::read_header(stream, buffer, parser, ec);
    if (ec) return Unavailable("starting the shell: " + ec.message());
    int status = static_cast<int>(parser.get().result_int());
    std::string error_body;
    cli::EnvelopeReader reader;
    std::array<char, 64 * 1024> chunk;
    while (!parser.is_done()) {
      parser.get().body().data = chunk.data();
      parser.get().body().size = chunk.size();
      bhttp::read_some(stream, buffer, parser, ec);
      if (ec == bhttp::error::need_buffer) ec = {};
      if (ec) break;
      std::string_view data(chunk.data(), chunk.size() - parser.get().body().size);
      if (status != 200) {
        if (error_body.size() < 64 * 1024) error_body.append(data);
        continue;
      }
      reader.Append(data);
      for (;;) {
        MOAT_ASSIGN_OR_RETURN(auto envelope, reader.Next());
        if (!envelope) break;
        json message = json::parse(envelope->message, nullptr, /*allow_exceptions=*/false);
        if (message.is_discarded()) return Internal("the shell's stream sent a message not JSON");
        if (envelope->flags & codec::kEnvelopeEndStream) {
          Status end = cli::EndStreamStatus(message);
          return exited_ || !end.ok() ? end : Unavailable("the shell ended without an exit");
        }
        MOAT_RETURN_IF_ERROR(Relay(message));
      }
    }
    if (status != 200) return Unavailable(ErrorMessageOf(status, error_body));
    if (ec && StopRequested()) return Status::Ok();
    return Unavailable("the shell's stream ended early" +
                       (ec ? " (" + ec.message() + ")" : std::string()));
  }

  // One ProcessEvent: output to the page, the pid noted, the exit told.
  Status Relay(const json& message) {
    const json* event = codec::Field(message, "event");
    if (event == nullptr || !event->is_object()) return Status::Ok();
    if (const json* data = codec::Field(*event, "data"); data != nullptr) {
      MOAT_ASSIGN_OR_RETURN(auto bytes, codec::BytesField(*data, "pty"));
      // A page that stopped reading only loses its output; the shell is handled by ReadPage.
      if (bytes && !bytes->empty()) {
        (void)page_.SendJson({{"type", "output"}, {"data", codec::Base64Encode(*bytes)}});
      }
    } else if (const json* start = codec::Field(*event, "start"); start != nullptr) {
      MOAT_ASSIGN_OR_RETURN(auto pid, codec::IntField(*start, "pid", 1, UINT32_MAX));
      if (!pid) return Internal("the shell's start event has no pid");
      SetState([&] { pid_ = static_cast<uint32_t>(*pid); });
    } else if (const json* end = codec::Field(*event, "end"); end != nullptr) {
      SetState([&] { exited_ = true; });
      (void)page_.SendJson({{"type", "exit"}, {"exitCode", cli::ExitCodeFromEnd(*end)}});
      page_.Close(ws::kCloseNormal, "the shell exited");
      Wake();
    }
    return Status::Ok();
  }

  void PumpOutput(const std::string& host) {
    Status s = RunStream(host);
    if (!s.ok() && !StopRequested() && !page_.close_sent()) {
      if (TerminalLogLimiter().Allow()) {
        LogWarn("dashboard.terminal_failed",
                {{"sandbox", target_.sandbox_id}, {"error", s.ToString()}});
      }
      (void)page_.SendJson({{"type", "error"}, {"message", s.message()}});
      page_.Close(ws::kCloseInternalError, "the terminal failed");
    }
    SetState([&] { stream_done_ = true; });
    Wake();
  }

  // --- the page → moatd ---

  // Reads the page's frames until it closes, goes silent, breaks the protocol, or answers
  // moatd's own close (or fails to in time).
  void ReadPage() {
    ws::MessageReader reader(options_.max_message);
    if (!conn_.buffered.empty()) reader.Append(conn_.buffered);
    auto last_heard = Clock::now();
    auto last_ping = last_heard;
    auto last_check = last_heard;
    std::optional<Clock::time_point> close_deadline;
    std::array<char, 16 * 1024> buf;
    bool readable = !conn_.buffered.empty();
    for (;;) {
      if (readable) {
        readable = false;
        for (;;) {
          auto msg = reader.Next();
          if (!msg.ok()) {
            page_.Close(reader.close_code(), msg.status().message());
            return;
          }
          if (!*msg) break;
          if (!HandleMessage(**msg)) return;
        }
      }
      FlushPending();
      auto now = Clock::now();
      if (session_live_ && now - last_check >= options_.session_check_interval &&
          !page_.close_sent()) {
        // Signed out, expired, or its key revoked since: the terminal goes with the session.
        if (!session_live_()) {
          LogInfo("dashboard.terminal_session_ended", {{"sandbox", target_.sandbox_id}});
          page_.Close(ws::kClosePolicy, "session ended");
        }
        now = Clock::now();
        last_check = now;
      }
      if (page_.close_sent() && !close_deadline) close_deadline = now + options_.close_wait;
      if (close_deadline && now >= *close_deadline) return;
      if (now - last_heard >= options_.client_timeout) {
        page_.Close(ws::kCloseGoingAway, "the page stopped answering pings");
        return;
      }
      if (now - last_ping >= options_.ping_interval && !page_.close_sent()) {
        (void)page_.Send(ws::Opcode::kPing, "");
        last_ping = now;
      }
      // The next thing due (a ping and a session check only until moatd's close went out).
      auto next = last_heard + options_.client_timeout;
      if (!page_.close_sent()) {
        next = std::min(next, last_ping + options_.ping_interval);
        if (session_live_) next = std::min(next, last_check + options_.session_check_interval);
      }
      if (close_deadline) next = std::min(next, *close_deadline);
      auto wait = std::chrono::ceil<milliseconds>(next - now);
      pollfd fds[2] = {{conn_.fd, POLLIN, 0}, {wake_read_.get(), POLLIN, 0}};
      int r = ::poll(fds, 2, static_cast<int>(std::max<int64_t>(wait.count(), 1)));
      if (r < 0 && errno != EINTR) return;
      if (r <= 0) continue;
      if (fds[1].revents != 0) {
        char drain[64];
        while (::read(wake_read_.get(), drain, sizeof drain) > 0) {
        }
      }
      if (fds[0].revents != 0) {
        ssize_t n = ::recv(conn_.fd, buf.data(), buf.size(), MSG_DONTWAIT);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n <= 0) return;  // the page is gone (EOF, reset, or moatd shutting down)
        reader.Append(std::string_view(buf.data(), static_cast<size_t>(n)));
        last_heard = Clock::now();
        readable = true;
      }
    }
  }

  // False once the conversation is over.
  bool HandleMessage(const ws::Message& m) {
    switch (m.opcode) {
      case ws::Opcode::kPing: (void)page_.Send(ws::Opcode::kPong, m.payload); return true;
      case ws::Opcode::kPong: return true;
      case ws::Opcode::kClose: {
        auto close = ws::ParseClose(m.payload);
        page_.Close(close.ok() && close->code ? *close->code : ws::kCloseNormal, "");
        return false;
      }
      case ws::Opcode::kBinary:
        page_.Close(ws::kCloseUnsupportedData, "messages are JSON text");
        return false;
      default: break;
    }
    if (page_.close_sent()) return true;  // closing: only its close is awaited
    json j = json::parse(m.payload, nullptr, /*allow_exceptions=*/false);
    const json* type = j.is_object() ? codec::Field(j, "type") : nullptr;
    if (type == nullptr || !type->is_string()) {
      page_.Close(ws::kClosePolicy, "expected {\"type\": ...}");
      return false;
    }
    if (*type == "input") {
      auto data = codec::StringField(j, "data");
      if (!data.ok() || !*data) {
        page_.Close(ws::kClosePolicy, "input: \"data\" must be a string");
        return false;
      }
      if (pending_input_.size() + (*data)->size() <= kMaxPendingInput || PidKnown()) {
        pending_input_.append(**data);
      }
    } else if (*type == "resize") {
      // Any size a window may have, clamped to what a PTY is given.
      auto cols = codec::IntField(j, "cols", INT32_MIN, INT32_MAX);
      auto rows = codec::IntField(j, "rows", INT32_MIN, INT32_MAX);
      if (!cols.ok() || !rows.ok() || !*cols || !*rows) {
        page_.Close(ws::kClosePolicy, "resize: \"cols\" and \"rows\" must be numbers");
        return false;
      }
      pending_size_ =
          cli::PtySize{static_cast<uint16_t>(std::clamp<int64_t>(**cols, 1, kMaxTerminalCols)),
                       static_cast<uint16_t>(std::clamp<int64_t>(**rows, 1, kMaxTerminalRows))};
    }
    // Other types are ignored: a newer page may send what this moatd does not know.
    return true;
  }

  // Input and resizes go to the shell once it has a pid.
  void FlushPending() {
    if (pending_input_.empty() && !pending_size_) return;
    auto pid = Pid();
    if (!pid) return;
    if (pending_size_) {
      (void)Unary("Update", cli::ResizeRequest(*pid, *pending_size_));
      pending_size_.reset();
    }
    if (!pending_input_.empty()) {
      Status s = Unary("SendInput", cli::SendInputRequest(*pid, pending_input_, true));
      pending_input_.clear();
      if (!s.ok() && TerminalLogLimiter().Allow()) {
        LogWarn("dashboard.terminal_input_failed",
                {{"sandbox", target_.sandbox_id}, {"error", s.ToString()}});
      }
    }
  }

  // The page is gone or done: a shell still running is killed (a detached one would run on,
  // unseen), then the stream is given a moment to end, then cut.
  void Finish() {
    SetState([&] { stop_requested_ = true; });
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, kStartWait, [&] { return pid_ || stream_done_; });
    std::optional<uint32_t> pid = pid_;
    bool running = !stream_done_ && !exited_;
    lock.unlock();
    if (running && pid) {
      Status s =
          Unary("SendSignal", json{{"process", {{"pid", *pid}}}, {"signal", "SIGNAL_SIGKILL"}});
      if (!s.ok() && TerminalLogLimiter().Allow()) {
        LogWarn("dashboard.terminal_kill_failed",
                {{"sandbox", target_.sandbox_id}, {"error", s.ToString()}});
      }
    }
    lock.lock();
    cv_.wait_for(lock, kEndWait, [&] { return stream_done_; });
    lock.unlock();
    ::shutdown(stream_fd_.get(), SHUT_RDWR);
  }

  void Fail(const Status& s) {
    (void)page_.SendJson({{"type", "error"}, {"message", s.message()}});
    page_.Close(ws::kCloseInternalError, "the terminal failed");
  }

  // --- state shared by the two threads ---

  template <typename F>
  void SetState(F f) {
    {
      std::lock_guard lock(mu_);
      f();
    }
    cv_.notify_all();
    Wake();
  }
  void Wake() {
    char byte = 1;
    (void)!::write(wake_write_.get(), &byte, 1);  // a full pipe already says "look"
  }
  std::optional<uint32_t> Pid() {
    std::lock_guard lock(mu_);
    return pid_;
  }
  bool PidKnown() { return Pid().has_value(); }
  bool StopRequested() {
    std::lock_guard lock(mu_);
    return stop_requested_;
  }

  const http::HijackedConnection& conn_;
  const TerminalTarget& target_;
  const WebTerminalOptions& options_;
  const std::function<bool()>& session_live_;
  PageWriter page_;
  std::unique_ptr<http::Client> unary_;
  UniqueFd stream_fd_;  // the Start stream's connection; shut down to cut it
  UniqueFd wake_read_, wake_write_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<uint32_t> pid_;  // guarded by mu_
  bool exited_ = false;          // guarded by mu_: the end event came
  bool stream_done_ = false;     // guarded by mu_: PumpOutput is returning
  bool stop_requested_ = false;  // guarded by mu_: the page is gone

  // Only ReadPage's thread touches these.
  std::string pending_input_;
  std::optional<cli::PtySize> pending_size_;
};

}  // namespace

void RunWebTerminal(const http::HijackedConnection& conn, std::string_view client_key,
                    const TerminalTarget& target, const WebTerminalOptions& options,
                    const std::function<bool()>& session_live) {
  Terminal t(conn, target, options, session_live);
  t.Run(client_key);
}

namespace {

// Takes one off a count, forgetting it at zero (caller holds the lock).
void Release(std::map<std::string, int>& counts, const std::string& key) {
  auto it = counts.find(key);
  if (it != counts.end() && --it->second <= 0) counts.erase(it);
}

int CountOf(const std::map<std::string, int>& counts, const std::string& key) {
  auto it = counts.find(key);
  return it == counts.end() ? 0 : it->second;
}

}  // namespace

TerminalSlots::Slot::~Slot() {
  if (owner_ == nullptr) return;
  std::lock_guard lock(owner_->mu_);
  Release(owner_->by_session_, session_);
  Release(owner_->by_team_, team_);
  --owner_->total_;
}

Result<TerminalSlots::Slot> TerminalSlots::Acquire(const std::string& session,
                                                   const std::string& team) {
  std::lock_guard lock(mu_);
  if (CountOf(by_session_, session) >= limits_.per_session) {
    return ResourceExhausted("this session has the most terminals it may open (" +
                             std::to_string(limits_.per_session) + ")");
  }
  if (CountOf(by_team_, team) >= limits_.per_team) {
    return ResourceExhausted("the team has the most terminals it may open (" +
                             std::to_string(limits_.per_team) + ")");
  }
  if (total_ >= limits_.total) {
    return ResourceExhausted("moatd has the most terminals it may open (" +
                             std::to_string(limits_.total) + "); try again later");
  }
  ++by_session_[session];
  ++by_team_[team];
  ++total_;
  return Slot(this, session, team);
}

int TerminalSlots::open(const std::string& session) {
  std::lock_guard lock(mu_);
  return CountOf(by_session_, session);
}

int TerminalSlots::open_for_team(const std::string& team) {
  std::lock_guard lock(mu_);
  return CountOf(by_team_, team);
}

int TerminalSlots::open_total() {
  std::lock_guard lock(mu_);
  return total_;
}

}  // namespace moat::api
