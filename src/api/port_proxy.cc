#include "api/port_proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <strings.h>
#include <sys/socket.h>

#include <cerrno>
#include <vector>

#include "api/errors.h"
#include "api/http/server.h"
#include "common/cleanup.h"
#include "common/log.h"
#include "common/unique_fd.h"
#include "net/relay.h"

namespace moat::api {
namespace {

using HeaderNames = std::set<std::string, http::CaseInsensitiveLess>;

// The comma-separated tokens of a header value (Connection: keep-alive, Upgrade), trimmed.
std::vector<std::string> Tokens(std::string_view list) {
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

bool IsUpgrade(const http::Request& req) {
  if (req.Header("Upgrade").empty()) return false;
  for (const auto& t : Tokens(req.Header("Connection"))) {
    if (::strcasecmp(t.c_str(), "upgrade") == 0) return true;
  }
  return false;
}

// "10.0.0.1:5000" → "10.0.0.1", "::1:5000" → "::1" (PeerName's forms); "" if unknown.
std::string ClientIp(const std::string& peer) {
  size_t colon = peer.rfind(':');
  if (colon == std::string::npos || colon == 0) return "";
  return peer.substr(0, colon);
}

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

// The response heads as the client gets them. The final one says `Connection: close` (the
// client connection ends with this exchange, whatever the upstream would like) and mutes the
// client; a 101 for an upgrade passes untouched and the client speaks on; other 1xx pass.
Result<net::HeadDecision> FilterResponseHead(std::string_view head, bool upgrade, int* status) {
  int code = StatusOf(head);
  if (code < 100) return Unavailable("no HTTP/1.x status line");
  *status = code;
  if (code == 101 && upgrade) return net::HeadDecision{std::string(head), false, false};
  if (code < 200 && code != 101) return net::HeadDecision{std::string(head), true, false};
  return net::HeadDecision{WithConnectionClose(head), false, true};
}

// A TCP connection to `ep`, or an error once `timeout` has passed without one. The fd is
// non-blocking and close-on-exec. Error messages reach the client, so they never name `ep`: the
// slot address is moatd's internal layout (Serve logs it).
Result<UniqueFd> ConnectTcp(const SandboxEndpoint& ep, std::chrono::milliseconds timeout) {
  const std::string where = "connect";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(ep.port);
  if (::inet_pton(AF_INET, ep.ipv4.c_str(), &addr.sin_addr) != 1) {
    return Internal("the sandbox's network address is not IPv4");
  }
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return ErrnoError("socket(AF_INET)");
  // sockaddr_in is the AF_INET form of the sockaddr that connect() takes.
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    if (errno != EINPROGRESS && errno != EINTR) return ErrnoError(where);
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      pollfd p{fd.get(), POLLOUT, 0};
      int r = left.count() > 0 ? ::poll(&p, 1, static_cast<int>(left.count())) : 0;
      if (r > 0) break;
      if (r == 0) {
        return DeadlineExceeded(where + ": no answer within " + std::to_string(timeout.count()) +
                                " ms");
      }
      if (errno != EINTR) return ErrnoError(where);
    }
    int err = 0;
    socklen_t len = sizeof err;
    if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) return ErrnoError(where);
    if (err != 0) return ErrnoError(where, err);
  }
  // Interactive traffic (WebSocket frames, keystrokes) should not wait for Nagle.
  int one = 1;
  ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

}  // namespace

std::string UpstreamRequest(const http::Request& req, std::string_view client_ip) {
  HeaderNames drop = {"Connection", "Keep-Alive", "Proxy-Connection",  "TE",
                      "Trailer",    "Upgrade",    "Transfer-Encoding", "Content-Length",
                      "Expect",     "X-API-Key",  "X-Forwarded-For",   kTrafficTokenHeader};
  for (auto& t : Tokens(req.Header("Connection"))) drop.insert(std::move(t));
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
    // The upstream closes after its response, and with it the client connection (see the
    // header comment): no second request on it can be misrouted.
    out += "Connection: close\r\n";
  }
  if (!req.body.empty() || req.HasHeader("Content-Length") || req.HasHeader("Transfer-Encoding")) {
    out += "Content-Length: " + std::to_string(req.body.size()) + "\r\n";
  }
  out += "\r\n";
  out += req.body;
  return out;
}

PortProxy::PortProxy(PortProxyOptions options, PortResolver resolver, Metrics& metrics)
    : options_(options), resolver_(std::move(resolver)), metrics_(metrics) {}

int PortProxy::Fail(http::ResponseWriter& w, std::string_view outcome, const Status& status,
                    int http_status) {
  metrics_.CountPortProxy(outcome);
  SendRestError(w, status, http_status);
  return http_status;
}

std::optional<SandboxEndpoint> PortProxy::Resolve(const http::Request& req,
                                                  const std::string& sandbox_id, int port,
                                                  http::ResponseWriter& w, int* http_status) {
  auto fail = [&](std::string_view outcome, const Status& s, int code) {
    *http_status = Fail(w, outcome, s, code);
    return std::nullopt;
  };
  if (port < 1 || port > 65535) {
    return fail("bad_port",
                InvalidArgument("the sandbox port (E2b-Sandbox-Port, or <port>-<sandboxID> in the "
                                "host name) must be a number in 1..65535"),
                400);
  }
  std::string what = "port " + std::to_string(port) + " of sandbox " + sandbox_id;
  if (!resolver_) {
    return fail("no_network",
                FailedPrecondition(what + ": this moatd runs sandboxes without networking"), 502);
  }
  auto endpoint = resolver_(sandbox_id, static_cast<uint16_t>(port));
  if (!endpoint.ok()) {
    const Status& s = endpoint.status();
    if (s.code() == ErrorCode::kNotFound) {
      return fail("sandbox_not_found",
                  NotFound("sandbox " + sandbox_id + " is not found or not running"), 404);
    }
    // The resolver's own words may name slots and addresses: they go to the log only.
    LogDebug("api.port_proxy_unresolved",
             {{"sandbox", sandbox_id}, {"port", port}, {"error", s.ToString()}});
    if (s.code() == ErrorCode::kFailedPrecondition) {
      return fail("no_network", FailedPrecondition(what + ": the sandbox has no network"), 502);
    }
    return fail("error", Unavailable(what + ": its network address is unknown"), 502);
  }
  if (const std::string& token = endpoint->traffic_access_token; !token.empty()) {
    std::string given = req.Header(kTrafficTokenHeader);
    if (given.size() != token.size() || CRYPTO_memcmp(given.data(), token.data(), token.size())) {
      return fail("forbidden",
                  Status(ErrorCode::kPermissionDenied,
                         what + " is not public: send the sandbox's trafficAccessToken in the " +
                             kTrafficTokenHeader + " header"),
                  403);
    }
  }
  return std::move(*endpoint);
}

int PortProxy::Serve(http::Request& req, const std::string& sandbox_id, int port,
                     http::ResponseWriter& w) {
  int failed = 0;
  auto endpoint = Resolve(req, sandbox_id, port, w, &failed);
  if (!endpoint) return failed;
  std::string what = "port " + std::to_string(port) + " of sandbox " + sandbox_id;
  {
    std::lock_guard lock(mu_);
    if (stopping_) return Fail(w, "shutting_down", Unavailable("moatd is shutting down"), 503);
    if (active_ >= options_.max_connections) {
      return Fail(
          w, "over_capacity",
          ResourceExhausted("too many proxied connections (" +
                            std::to_string(options_.max_connections) + "); try again later"),
          503);
    }
    metrics_.SetPortProxyActive(static_cast<int64_t>(++active_));
  }
  Cleanup release([this] {
    std::lock_guard lock(mu_);
    metrics_.SetPortProxyActive(static_cast<int64_t>(--active_));
  });

  auto upstream = ConnectTcp(*endpoint, options_.connect_timeout);
  if (!upstream.ok()) {
    LogDebug("api.port_proxy_unreachable",
             {{"sandbox", sandbox_id},
              {"port", port},
              {"upstream", endpoint->ipv4 + ":" + std::to_string(endpoint->port)},
              {"error", upstream.status().ToString()}});
    return Fail(w, "upstream_unreachable",
                Unavailable(what + " is not reachable: " + upstream.status().message()), 502);
  }
  int upstream_fd = upstream->get();
  {
    std::lock_guard lock(mu_);
    if (stopping_) return Fail(w, "shutting_down", Unavailable("moatd is shutting down"), 503);
    upstreams_.insert(upstream_fd);
  }
  // Declared after `upstream`, so it runs first: Shutdown() never sees a closed fd.
  Cleanup forget([this, upstream_fd] {
    std::lock_guard lock(mu_);
    upstreams_.erase(upstream_fd);
  });

  std::string request = UpstreamRequest(req, ClientIp(req.peer));
  auto client = w.Hijack();
  if (!client.ok()) return Fail(w, "error", client.status().Annotate("port proxy"), 500);
  bool upgrade = IsUpgrade(req);
  net::RelayOptions relay_options;
  relay_options.idle_timeout = options_.idle_timeout;
  // A plain request is whole already: anything more the client sends could be a request for
  // another sandbox, or with an API key in it, and must not reach this upstream. An upgrade's
  // client speaks on after the 101 — and may have started already.
  relay_options.forward_client = upgrade;
  if (upgrade) request += client->buffered;
  int status = 0;
  relay_options.head_filter = [&status, upgrade](std::string_view head) {
    return FilterResponseHead(head, upgrade, &status);
  };
  auto started = std::chrono::steady_clock::now();
  net::RelayStats st = net::Relay(client->fd, upstream_fd, std::move(request), relay_options);

  std::string_view outcome = "relayed";
  if (st.end == net::RelayEnd::kIdleTimeout) outcome = "idle_timeout";
  if (st.end == net::RelayEnd::kBadResponse) outcome = "bad_response";
  if (st.to_client == 0 && st.end != net::RelayEnd::kClientGone) {
    // Nothing reached the client yet, so it can still have a proper answer.
    Status why = Unavailable(what + " closed the connection without a response");
    status = 502;
    if (st.end == net::RelayEnd::kIdleTimeout) {
      why = DeadlineExceeded(what + " sent no response within the idle timeout");
      status = 504;
    } else if (st.end == net::RelayEnd::kBadResponse) {
      why = Unavailable(what + " did not answer in HTTP/1.x: " + st.error.message());
    } else {
      outcome = "no_response";
    }
    auto writer = http::HijackedResponseWriter(client->fd);
    SendRestError(*writer, why, status);
  }
  metrics_.CountPortProxy(outcome);
  LogDebug("api.port_proxy", {{"sandbox", sandbox_id},
                              {"port", port},
                              {"status", status},
                              {"end", net::RelayEndName(st.end)},
                              {"bytes_up", st.to_upstream},
                              {"bytes_down", st.to_client},
                              {"ms", std::chrono::duration_cast<std::chrono::milliseconds>(
                                         std::chrono::steady_clock::now() - started)
                                         .count()}});
  return status;
}

void PortProxy::Shutdown() {
  std::lock_guard lock(mu_);
  stopping_ = true;
  for (int fd : upstreams_) ::shutdown(fd, SHUT_RDWR);
}

size_t PortProxy::active() const {
  std::lock_guard lock(mu_);
  return active_;
}

}  // namespace moat::api
