#include "net/domain_proxy.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/netfilter_ipv4.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <list>
#include <system_error>

#include "common/log.h"
#include "common/relay.h"
#include "net/dns_resolver.h"
#include "net/net_tools.h"
#include "net/nft_ruleset.h"
#include "net/slot_allocator.h"

namespace moat::net {
namespace {

using Clock = std::chrono::steady_clock;

// Bounds-checked big-endian reads over a TLS message; any read past the end fails the parse.
class Reader {
 public:
  explicit Reader(std::string_view data) : data_(data) {}
  bool ok() const { return ok_; }
  size_t pos() const { return pos_; }
  size_t remaining() const { return ok_ ? data_.size() - pos_ : 0; }
  uint32_t Read(size_t n) {  // 1..3 bytes
    if (!ok_ || data_.size() - pos_ < n) {
      ok_ = false;
      return 0;
    }
    uint32_t v = 0;
    for (size_t i = 0; i < n; ++i) v = (v << 8) | static_cast<uint8_t>(data_[pos_ + i]);
    pos_ += n;
    return v;
  }
  std::string_view Take(size_t n) {
    if (!ok_ || data_.size() - pos_ < n) {
      ok_ = false;
      return {};
    }
    std::string_view v = data_.substr(pos_, n);
    pos_ += n;
    return v;
  }

 private:
  std::string_view data_;
  size_t pos_ = 0;
  bool ok_ = true;
};

// A host name as it may appear in SNI or Host: letters, digits, '-', '_', '.'.
bool PlausibleHost(std::string_view h) {
  return !h.empty() && h.size() <= 253 && std::all_of(h.begin(), h.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_' || c == '.';
  });
}

PeekedHost None(bool http = false) {
  return {PeekedHost::kNone, "", http};
}

// The server_name extension inside a complete ClientHello body.
PeekedHost ParseClientHello(std::string_view body) {
  Reader r(body);
  r.Take(2 + 32);                                    // client_version, random
  r.Take(r.Read(1));                                 // session_id
  r.Take(r.Read(2));                                 // cipher_suites
  r.Take(r.Read(1));                                 // compression_methods
  if (!r.ok() || r.remaining() == 0) return None();  // no extensions
  Reader ext(r.Take(r.Read(2)));
  while (r.ok() && ext.ok() && ext.remaining() >= 4) {
    uint32_t type = ext.Read(2);
    std::string_view data = ext.Take(ext.Read(2));
    if (type != 0) continue;  // server_name
    Reader sni(data);
    Reader list(sni.Take(sni.Read(2)));
    while (sni.ok() && list.ok() && list.remaining() >= 3) {
      uint32_t name_type = list.Read(1);
      std::string_view name = list.Take(list.Read(2));
      if (list.ok() && name_type == 0 && PlausibleHost(name)) {
        return {PeekedHost::kFound, LowerAscii(name), false};
      }
    }
    return None();
  }
  return None();
}

std::string Forbidden(const std::string& why) {
  std::string body = "moat: " + why + "\n";
  return "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
}

void SendAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    data.remove_prefix(static_cast<size_t>(n));
  }
}

int RemainingMs(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return static_cast<int>(std::max<int64_t>(0, left.count()));
}

// Connections of every slot's proxy at once: each holds a thread and two fds of the agent.
constexpr size_t kMaxConnectionsPerAgent = 1024;
std::atomic<size_t> g_connections{0};

// Waits for `events` on `fd` until `timeout`; false on timeout, on error, or once `wake`
// (the proxy's stop eventfd, which stays readable once written) fires.
bool PollOrWake(int fd, short events, int wake, int timeout_ms) {
  pollfd p[2] = {{fd, events, 0}, {wake, POLLIN, 0}};
  int n;
  do {
    n = ::poll(p, 2, timeout_ms);
  } while (n < 0 && errno == EINTR);
  return n > 0 && p[1].revents == 0 && p[0].revents != 0;
}

Result<UniqueFd> ConnectTcp(Ipv4Address to, uint16_t port, std::chrono::milliseconds timeout,
                            int wake) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return ErrnoError("socket");
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  sa.sin_addr.s_addr = htonl(to.value);
  std::string where = to.ToString() + ":" + std::to_string(port);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) < 0) {
    if (errno != EINPROGRESS) return ErrnoError("connect(" + where + ")");
    if (!PollOrWake(fd.get(), POLLOUT, wake, static_cast<int>(timeout.count()))) {
      return Unavailable("connect(" + where + "): timed out or stopped");
    }
    int err = 0;
    socklen_t len = sizeof(err);
    ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      errno = err;
      return ErrnoError("connect(" + where + ")");
    }
  }
  return fd;
}

}  // namespace

PeekedHost PeekTlsServerName(std::string_view bytes) {
  if (bytes.empty()) return {};
  if (static_cast<uint8_t>(bytes[0]) != 0x16) return None();
  // The handshake message, reassembled from the fragments of consecutive handshake records.
  std::string hs;
  size_t pos = 0;
  while (pos < bytes.size()) {
    if (bytes.size() - pos < 5) return {};
    if (static_cast<uint8_t>(bytes[pos]) != 0x16 || bytes[pos + 1] != 0x03) return None();
    size_t len = (static_cast<uint8_t>(bytes[pos + 3]) << 8) | static_cast<uint8_t>(bytes[pos + 4]);
    if (len == 0 || len > (1u << 14) + 2048) return None();
    size_t have = std::min(len, bytes.size() - pos - 5);
    hs.append(bytes.substr(pos + 5, have));
    pos += 5 + have;
    if (hs.size() >= 4) {
      if (static_cast<uint8_t>(hs[0]) != 1) return None();  // not a ClientHello
      size_t hs_len = (static_cast<uint8_t>(hs[1]) << 16) | (static_cast<uint8_t>(hs[2]) << 8) |
                      static_cast<uint8_t>(hs[3]);
      if (hs.size() >= 4 + hs_len) return ParseClientHello(std::string_view(hs).substr(4, hs_len));
    }
    if (have < len) return {};  // the rest of this record is still to come
  }
  return {};
}

PeekedHost PeekHttpHost(std::string_view bytes) {
  size_t eol = bytes.find('\n');
  if (eol == std::string_view::npos) {
    // A method is an upper-case token followed by a space; anything else is not HTTP.
    for (char c : bytes) {
      if (c == ' ') return {};
      if (c < 'A' || c > 'Z') return None();
    }
    return {};
  }
  std::string_view line = bytes.substr(0, eol);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  size_t sp = line.find(' ');
  if (sp == 0 || sp == std::string_view::npos ||
      !std::all_of(line.begin(), line.begin() + sp, [](char c) { return c >= 'A' && c <= 'Z'; }) ||
      !(line.ends_with(" HTTP/1.1") || line.ends_with(" HTTP/1.0"))) {
    return None();
  }
  for (size_t start = eol + 1;;) {
    size_t end = bytes.find('\n', start);
    if (end == std::string_view::npos) return {PeekedHost::kNeedMore, "", true};
    std::string_view h = bytes.substr(start, end - start);
    if (!h.empty() && h.back() == '\r') h.remove_suffix(1);
    if (h.empty()) return None(true);  // end of the head: no Host
    size_t colon = h.find(':');
    if (colon != std::string_view::npos && LowerAscii(h.substr(0, colon)) == "host") {
      std::string_view v = h.substr(colon + 1);
      while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
      while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
      size_t port = v.rfind(':');
      if (port != std::string_view::npos) v = v.substr(0, port);
      if (!PlausibleHost(v)) return None(true);
      return {PeekedHost::kFound, LowerAscii(v), true};
    }
    start = end + 1;
  }
}

PeekedHost PeekHost(std::string_view bytes) {
  if (bytes.empty()) return {};
  return static_cast<uint8_t>(bytes[0]) == 0x16 ? PeekTlsServerName(bytes) : PeekHttpHost(bytes);
}

std::optional<Ipv4Address> ChooseUpstream(Ipv4Address original,
                                          const std::vector<Ipv4Address>& resolved,
                                          const std::vector<Ipv4Cidr>& denied) {
  std::vector<Ipv4Address> usable;
  for (Ipv4Address a : resolved) {
    if (std::none_of(denied.begin(), denied.end(),
                     [&](const Ipv4Cidr& c) { return c.Contains(a); })) {
      usable.push_back(a);
    }
  }
  if (usable.empty()) return std::nullopt;
  if (std::find(usable.begin(), usable.end(), original) != usable.end()) return original;
  return usable.front();
}

// --- DomainProxy ---------------------------------------------------------------------------

struct DomainProxy::Workers {
  struct Worker {
    std::thread thread;
    bool done = false;
  };
  std::list<Worker> list;
};

Result<std::unique_ptr<DomainProxy>> DomainProxy::Start(int netns_fd, std::string label,
                                                        EgressPolicy policy,
                                                        DomainProxyOptions options) {
  UniqueFd ns(::fcntl(netns_fd, F_DUPFD_CLOEXEC, 0));
  if (!ns) return ErrnoError("dup(netns)");
  MOAT_ASSIGN_OR_RETURN(
      UniqueFd listener, InNetns<UniqueFd>(netns_fd, []() -> Result<UniqueFd> {
        UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
        if (!fd) return ErrnoError("socket");
        int one = 1;
        ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        sockaddr_in sa{};
        sa.sin_family = AF_INET;
        sa.sin_port = htons(kDomainProxyPort);
        ::inet_pton(AF_INET, kGatewayAddress, &sa.sin_addr);
        if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) < 0) {
          return ErrnoError(std::string("bind(") + kGatewayAddress + ":" +
                            std::to_string(kDomainProxyPort) + ")");
        }
        if (::listen(fd.get(), 128) < 0) return ErrnoError("listen");
        return fd;
      }));
  UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake) return ErrnoError("eventfd");
  std::unique_ptr<DomainProxy> p(new DomainProxy(std::move(ns), std::move(listener),
                                                 std::move(wake), std::move(label),
                                                 std::move(policy), std::move(options)));
  p->acceptor_ = std::thread([raw = p.get()] { raw->AcceptLoop(); });
  LogInfo("net.domain_proxy_started", {{"slot", p->label_}});
  return p;
}

DomainProxy::DomainProxy(UniqueFd netns, UniqueFd listener, UniqueFd wake, std::string label,
                         EgressPolicy policy, DomainProxyOptions options)
    : netns_(std::move(netns)),
      listener_(std::move(listener)),
      wake_(std::move(wake)),
      label_(std::move(label)),
      options_(std::move(options)),
      workers_(std::make_unique<Workers>()),
      policy_(std::move(policy)) {}

DomainProxy::~DomainProxy() {
  uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof(one));
  if (acceptor_.joinable()) acceptor_.join();
  std::list<Workers::Worker> all;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    for (int fd : live_fds_) ::shutdown(fd, SHUT_RDWR);
    all.splice(all.end(), workers_->list);
  }
  for (auto& w : all) w.thread.join();
  LogInfo("net.domain_proxy_stopped", {{"slot", label_}});
}

void DomainProxy::SetPolicy(EgressPolicy policy) {
  std::lock_guard lock(mu_);
  policy_ = std::move(policy);
}

size_t DomainProxy::active_connections() const {
  std::lock_guard lock(mu_);
  size_t n = 0;
  for (const auto& w : workers_->list) n += w.done ? 0 : 1;
  return n;
}

void DomainProxy::Track(int fd) {
  std::lock_guard lock(mu_);
  live_fds_.insert(fd);
  if (stopping_) ::shutdown(fd, SHUT_RDWR);
}

void DomainProxy::Untrack(int fd) {
  std::lock_guard lock(mu_);
  live_fds_.erase(fd);
}

void DomainProxy::AcceptLoop() {
  for (;;) {
    pollfd p[2] = {{listener_.get(), POLLIN, 0}, {wake_.get(), POLLIN, 0}};
    int n = ::poll(p, 2, 1000);
    if (n < 0 && errno != EINTR) {
      LogError("net.domain_proxy_poll_failed", {{"slot", label_}, {"errno", errno}});
      return;
    }
    if (p[1].revents != 0) return;
    // Join the threads of connections that ended.
    std::list<Workers::Worker> finished;
    {
      std::lock_guard lock(mu_);
      for (auto it = workers_->list.begin(); it != workers_->list.end();) {
        auto next = std::next(it);
        if (it->done) finished.splice(finished.end(), workers_->list, it);
        it = next;
      }
    }
    for (auto& w : finished) w.thread.join();
    if (n <= 0 || (p[0].revents & POLLIN) == 0) continue;
    UniqueFd client(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!client) {
      // Out of fds: the pending connection stays queued and poll would report it at once.
      if (errno == EMFILE || errno == ENFILE) ::poll(nullptr, 0, 100);
      continue;
    }
    std::lock_guard lock(mu_);
    if (workers_->list.size() >= options_.max_connections ||
        g_connections.load() >= kMaxConnectionsPerAgent) {
      LogWarn("net.domain_proxy_full", {{"slot", label_}, {"max", options_.max_connections}});
      continue;  // closes the client
    }
    auto it = workers_->list.emplace(workers_->list.end());
    ++g_connections;
    try {
      it->thread = std::thread([this, it, fd = client.get()] {
        Serve(UniqueFd(fd));
        --g_connections;
        std::lock_guard done_lock(mu_);
        it->done = true;
      });
      (void)client.Release();  // the thread owns it now
    } catch (const std::system_error&) {
      --g_connections;
      workers_->list.erase(it);
      LogWarn("net.domain_proxy_no_thread", {{"slot", label_}});
    }
  }
}

void DomainProxy::Serve(UniqueFd client) {
  // This thread lives in the slot's namespace: the resolver query and the upstream connection
  // leave from there, as the guest's own traffic would.
  if (::setns(netns_.get(), CLONE_NEWNET) < 0) {
    LogError("net.domain_proxy_setns_failed", {{"slot", label_}, {"errno", errno}});
    return;
  }
  Track(client.get());
  struct Untracker {
    DomainProxy* self;
    int fd;
    ~Untracker() { self->Untrack(fd); }
  } untrack_client{this, client.get()};

  sockaddr_in orig{};
  socklen_t len = sizeof(orig);
  if (::getsockopt(client.get(), SOL_IP, SO_ORIGINAL_DST, &orig, &len) < 0) return;
  Ipv4Address dst{ntohl(orig.sin_addr.s_addr)};
  uint16_t port = ntohs(orig.sin_port);

  std::string first;
  PeekedHost peek;
  auto deadline = Clock::now() + options_.peek_timeout;
  while (peek.state == PeekedHost::kNeedMore && first.size() < options_.max_peek_bytes) {
    // Timed out, failed or stopped: the guest said nothing we can judge.
    if (!PollOrWake(client.get(), POLLIN, wake_.get(), RemainingMs(deadline))) return;
    char buf[4096];
    size_t want = std::min(sizeof(buf), options_.max_peek_bytes - first.size());
    ssize_t got = ::recv(client.get(), buf, want, MSG_DONTWAIT);
    if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (got <= 0) return;
    first.append(buf, static_cast<size_t>(got));
    peek = PeekHost(first);
  }
  auto refuse = [&](const std::string& why) {
    LogInfo("net.egress_denied", {{"slot", label_},
                                  {"host", peek.host},
                                  {"to", dst.ToString() + ":" + std::to_string(port)},
                                  {"why", why}});
    if (peek.http) SendAll(client.get(), Forbidden(why));
  };
  if (peek.state != PeekedHost::kFound) {
    return refuse(peek.http ? "the request has no Host header, and its destination is not allowed"
                            : "the connection names no host (TLS SNI), and its destination is "
                              "not allowed");
  }
  bool allowed;
  {
    std::lock_guard lock(mu_);
    allowed = policy_.AllowsDomain(peek.host);
  }
  if (!allowed) {
    return refuse("egress to " + peek.host + " is not allowed by this sandbox's network policy");
  }
  if (std::find(options_.denied_ports.begin(), options_.denied_ports.end(), port) !=
      options_.denied_ports.end()) {
    return refuse("port " + std::to_string(port) + " is always denied");
  }
  auto resolved = ResolveIpv4(peek.host, options_.resolver, options_.resolve_timeout);
  if (!resolved.ok()) return refuse(resolved.status().message());
  auto to = ChooseUpstream(dst, *resolved, options_.denied);
  if (!to) return refuse(peek.host + " has no address this sandbox may reach");
  auto upstream = ConnectTcp(*to, port, options_.connect_timeout, wake_.get());
  if (!upstream.ok()) {
    LogInfo("net.domain_proxy_connect_failed",
            {{"slot", label_}, {"host", peek.host}, {"error", upstream.status().ToString()}});
    return;  // the guest sees its connection close, as if the server had refused it
  }
  Track(upstream->get());
  Untracker untrack_upstream{this, upstream->get()};
  RelayOptions relay;
  relay.idle_timeout = options_.idle_timeout;
  RelayStats st = Relay(client.get(), upstream->get(), std::move(first), relay);
  LogDebug("net.egress_via_domain", {{"slot", label_},
                                     {"host", peek.host},
                                     {"to", to->ToString() + ":" + std::to_string(port)},
                                     {"asked", dst.ToString()},
                                     {"end", RelayEndName(st.end)},
                                     {"sent", st.to_upstream},
                                     {"received", st.to_client}});
}

}  // namespace moat::net
