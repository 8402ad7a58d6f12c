#include "api/http/proxying.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <strings.h>
#include <sys/socket.h>

#include <cerrno>
#include <memory>

namespace moat::api::http {
namespace {

// The status code of "HTTP/1.1 101 Switching Protocols…"; 0 if `head` is no status line.
int StatusOf(std::string_view head) {
  if (head.size() < 12 || head.substr(0, 7) != "HTTP/1." || head[8] != ' ') return 0;
  int code = 0;
  for (size_t i = 9; i < 12; ++i) {
    if (head[i] < '0' || head[i] > '9') return 0;
    code = code * 10 + (head[i] - '0');
  }
  return code;
}

// "Connection: close" in place of the head's own Connection and Keep-Alive headers.
std::string WithConnectionClose(std::string_view head) {
  std::string out;
  for (size_t pos = 0; pos < head.size();) {
    size_t eol = head.find("\r\n", pos);
    if (eol == std::string_view::npos || eol == pos) break;
    std::string_view line = head.substr(pos, eol - pos);
    pos = eol + 2;
    std::string name(line.substr(0, line.find(':')));
    if (::strcasecmp(name.c_str(), "Connection") == 0 ||
        ::strcasecmp(name.c_str(), "Keep-Alive") == 0) {
      continue;
    }
    out.append(line);
    out += "\r\n";
  }
  return out + "Connection: close\r\n\r\n";
}

// Waits until `fd` is ready for `events` or `deadline` passes.
Status PollUntil(int fd, short events, std::chrono::steady_clock::time_point deadline,
                 const std::string& what) {
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd p{fd, events, 0};
    int r = left.count() > 0 ? ::poll(&p, 1, static_cast<int>(left.count())) : 0;
    if (r > 0) return Status::Ok();
    if (r == 0) return DeadlineExceeded(what + ": no progress within the deadline");
    if (errno != EINTR) return ErrnoError(what);
  }
}

}  // namespace

std::vector<std::string> HeaderTokens(std::string_view list) {
  std::vector<std::string> out;
  while (!list.empty()) {
    size_t comma = list.find(',');
    std::string_view t = list.substr(0, comma);
    list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
    while (!t.empty() && (t.front() == ' ' || t.front() == '\t')) t.remove_prefix(1);
    while (!t.empty() && (t.back() == ' ' || t.back() == '\t')) t.remove_suffix(1);
    if (!t.empty()) out.emplace_back(t);
  }
  return out;
}

bool IsUpgrade(const Request& req) {
  if (req.Header("Upgrade").empty()) return false;
  for (const auto& t : HeaderTokens(req.Header("Connection"))) {
    if (::strcasecmp(t.c_str(), "upgrade") == 0) return true;
  }
  return false;
}

std::string ClientIp(const std::string& peer) {
  size_t colon = peer.rfind(':');
  if (colon == std::string::npos || colon == 0) return "";
  return peer.substr(0, colon);
}

std::string ProxiedHead(const Request& req, const HeaderNames& extra_drop,
                        std::string_view client_ip) {
  HeaderNames drop = {"Connection", "Keep-Alive",     "Proxy-Connection",  "TE",
                      "Trailer",    "Upgrade",        "Transfer-Encoding", "Content-Length",
                      "Expect",     "X-Forwarded-For"};
  drop.insert(extra_drop.begin(), extra_drop.end());
  for (auto& t : HeaderTokens(req.Header("Connection"))) drop.insert(std::move(t));
  std::string target = req.path;
  if (!req.raw_query.empty()) target += "?" + req.raw_query;
  std::string out =
      req.method + " " + target + (req.version == 10 ? " HTTP/1.0\r\n" : " HTTP/1.1\r\n");
  for (const auto& [name, value] : req.headers) {
    if (drop.count(name) == 0) out += name + ": " + value + "\r\n";
  }
  std::string forwarded_for = req.Header("X-Forwarded-For");
  if (!client_ip.empty()) {
    if (!forwarded_for.empty()) forwarded_for += ", ";
    forwarded_for += client_ip;
  }
  if (!forwarded_for.empty()) out += "X-Forwarded-For: " + forwarded_for + "\r\n";
  if (!req.HasHeader("X-Forwarded-Host") && req.HasHeader("Host")) {
    out += "X-Forwarded-Host: " + req.Header("Host") + "\r\n";
  }
  if (!req.HasHeader("X-Forwarded-Proto")) out += "X-Forwarded-Proto: http\r\n";
  if (IsUpgrade(req)) {
    out += "Upgrade: " + req.Header("Upgrade") + "\r\nConnection: Upgrade\r\n";
  } else {
    // The upstream closes after its response, and with it the client connection: no second
    // request on it can be misrouted.
    out += "Connection: close\r\n";
  }
  return out;
}

Result<HeadDecision> FilterResponseHead(std::string_view head, bool upgrade, int* status) {
  int code = StatusOf(head);
  if (code < 100) return Unavailable("no HTTP/1.x status line");
  *status = code;
  if (code == 101 && upgrade) return HeadDecision{std::string(head), false, false};
  if (code < 200 && code != 101) return HeadDecision{std::string(head), true, false};
  return HeadDecision{WithConnectionClose(head), false, true};
}

Result<UniqueFd> ConnectTcp(const std::string& host, const std::string& port,
                            std::chrono::milliseconds timeout) {
  const std::string where = "connect";
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    return Unavailable(where + ": the address does not resolve (" + ::gai_strerror(rc) + ")");
  }
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> list(found, ::freeaddrinfo);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  Status last = Unavailable(where + ": no address");
  for (addrinfo* ai = found; ai != nullptr; ai = ai->ai_next) {
    UniqueFd fd(::socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd) return ErrnoError("socket");
    if (::connect(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
      if (errno != EINPROGRESS && errno != EINTR) {
        last = ErrnoError(where);
        continue;
      }
      if (Status s = PollUntil(fd.get(), POLLOUT, deadline, where); !s.ok()) {
        if (s.code() == ErrorCode::kDeadlineExceeded) {
          return DeadlineExceeded(where + ": no answer within " + std::to_string(timeout.count()) +
                                  " ms");
        }
        last = s;
        continue;
      }
      int err = 0;
      socklen_t len = sizeof err;
      if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) return ErrnoError(where);
      if (err != 0) {
        last = ErrnoError(where, err);
        continue;
      }
    }
    // Interactive traffic (WebSocket frames, keystrokes) should not wait for Nagle.
    int one = 1;
    ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
  }
  return last;
}

Status WriteAllWithin(int fd, std::string_view data, std::chrono::milliseconds timeout) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      data.remove_prefix(static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      MOAT_RETURN_IF_ERROR(
          PollUntil(fd, POLLOUT, std::chrono::steady_clock::now() + timeout, "write"));
      continue;
    }
    return Unavailable("write: the peer is gone");
  }
  return Status::Ok();
}

}  // namespace moat::api::http
