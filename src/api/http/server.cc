#include "api/http/server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <strings.h>
#include <sys/socket.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <cstring>
#include <system_error>

#include "api/http/fd_stream.h"
#include "common/guarded.h"
#include "common/log.h"
#include "common/unique_fd.h"

namespace moat::api::http {

namespace net = boost::asio;
namespace bhttp = boost::beast::http;
using boost::system::error_code;

namespace {

Status FromErrorCode(const error_code& ec, std::string_view what) {
  return Unavailable(std::string(what) + ": " + ec.message());
}

using Clock = std::chrono::steady_clock;
using RequestParser = bhttp::request_parser<bhttp::buffer_body>;

std::string Seconds(std::chrono::milliseconds d) {
  auto ms = d.count();
  return ms % 1000 == 0 ? std::to_string(ms / 1000) + " s" : std::to_string(ms) + " ms";
}

// A request's body as it arrives, within the request's limit and at no less than the minimum
// rate: the time spent waiting on the client may not pass grace + received / rate. Time the
// handler spends elsewhere (writing to a guest that grants no credit) does not count.
class BodyReader : public BodySource {
 public:
  BodyReader(FdStream& stream, boost::beast::flat_buffer& buffer, RequestParser& parser,
             size_t limit, const ServerOptions& options, bool send_continue)
      : stream_(stream),
        buffer_(buffer),
        parser_(parser),
        limit_(limit),
        grace_(options.body_grace),
        min_rate_(options.body_min_rate),
        send_continue_(send_continue) {
    // Content-Length bodies were checked against the limit already; this stops chunked ones.
    parser_.body_limit(limit);
  }
  ~BodyReader() override { stream_.set_read_deadline(std::nullopt); }

  Result<size_t> Read(char* buf, size_t size) override {
    if (!failed_.ok()) return failed_;
    if (parser_.is_done() || size == 0) return 0;
    if (send_continue_) {
      // The client waits for this before it sends the body (Expect: 100-continue); sent only
      // once the request was admitted and its handler reads the body.
      send_continue_ = false;
      static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      error_code ec;
      net::write(stream_, net::const_buffer(kContinue.data(), kContinue.size()), ec);
      if (ec) return Fail(FromErrorCode(ec, "writing 100 Continue"));
    }
    for (;;) {
      if (min_rate_ > 0) {
        auto allowed = grace_ + std::chrono::milliseconds(received_ * 1000 / min_rate_);
        auto left = allowed - waited_;
        if (left <= Clock::duration::zero()) return Fail(TooSlow());
        stream_.set_read_deadline(Clock::now() + left);
      }
      auto& body = parser_.get().body();
      body.data = buf;
      body.size = size;
      body.more = true;
      auto t0 = Clock::now();
      error_code ec;
      bhttp::read_some(stream_, buffer_, parser_, ec);
      waited_ += Clock::now() - t0;
      size_t n = size - body.size;
      received_ += n;
      if (ec == bhttp::error::need_buffer) ec = {};
      if (ec == bhttp::error::body_limit) {
        return Fail(ResourceExhausted("request body exceeds " + std::to_string(limit_) + " bytes"));
      }
      if (ec == boost::beast::error::timeout) return Fail(TooSlow());
      if (ec == bhttp::error::partial_message || ec == bhttp::error::end_of_stream ||
          ec == net::error::eof || ec == net::error::connection_reset) {
        return Fail(Unavailable("the client closed the connection before the body's end"));
      }
      if (ec) return Fail(InvalidArgument("malformed request body: " + ec.message()));
      if (n > 0 || parser_.is_done()) return n;
    }
  }

  // The whole body (buffered routes).
  Status ReadAll(std::string* out) {
    char buf[16384];
    for (;;) {
      MOAT_ASSIGN_OR_RETURN(size_t n, Read(buf, sizeof buf));
      if (n == 0) return Status::Ok();
      out->append(buf, n);
    }
  }

  bool complete() const { return parser_.is_done(); }

 private:
  Status Fail(Status s) {
    failed_ = std::move(s);
    return failed_;
  }
  Status TooSlow() const {
    return DeadlineExceeded("the request body came too slowly (at least " +
                            std::to_string(min_rate_) + " bytes/s after " + Seconds(grace_) +
                            " are required)");
  }

  FdStream& stream_;
  boost::beast::flat_buffer& buffer_;
  RequestParser& parser_;
  size_t limit_;
  std::chrono::milliseconds grace_;
  size_t min_rate_;
  bool send_continue_;
  size_t received_ = 0;
  Clock::duration waited_{};
  Status failed_;
};

// The writer of one request's response on a connection.
class ConnectionWriter : public ResponseWriter {
 public:
  // `buffer` (may be null: no hijacking) holds what was read past the request. `body` (may be
  // null: none, or all read): a connection whose request body was not read to its end cannot
  // carry another request, and its response says so.
  ConnectionWriter(FdStream& stream, unsigned version, bool keep_alive, int fd = -1,
                   boost::beast::flat_buffer* buffer = nullptr, const BodyReader* body = nullptr)
      : stream_(stream),
        version_(version),
        keep_alive_(keep_alive),
        fd_(fd),
        buffer_(buffer),
        body_(body) {}

  Status Send(int status, Headers headers, std::string body) override {
    if (started_) return FailedPrecondition("response already started");
    started_ = true;
    bhttp::response<bhttp::string_body> res{static_cast<bhttp::status>(status), version_};
    for (auto& [k, v] : headers) res.set(k, v);
    res.keep_alive(KeepAlive());
    res.body() = std::move(body);
    res.prepare_payload();
    error_code ec;
    bhttp::write(stream_, res, ec);
    complete_ = !ec;
    if (ec) return FromErrorCode(ec, "writing the response");
    return Status::Ok();
  }

  Status BeginStream(int status, Headers headers) override {
    if (started_) return FailedPrecondition("response already started");
    started_ = true;
    bhttp::response<bhttp::empty_body> res{static_cast<bhttp::status>(status), version_};
    for (auto& [k, v] : headers) res.set(k, v);
    res.keep_alive(KeepAlive());
    res.chunked(true);
    bhttp::response_serializer<bhttp::empty_body> sr{res};
    error_code ec;
    bhttp::write_header(stream_, sr, ec);
    if (ec) {
      failed_ = true;
      return FromErrorCode(ec, "writing the response head");
    }
    streaming_ = true;
    return Status::Ok();
  }
  Status WriteChunk(std::string_view data) override {
    if (!streaming_ || failed_) return Unavailable("response stream is closed");
    if (data.empty()) return Status::Ok();  // an empty chunk would end the body
    error_code ec;
    net::write(stream_, bhttp::make_chunk(net::const_buffer(data.data(), data.size())), ec);
    if (ec) {
      failed_ = true;
      return FromErrorCode(ec, "writing to the client");
    }
    return Status::Ok();
  }

  Status EndStream() override {
    if (!streaming_ || failed_) return Unavailable("response stream is closed");
    error_code ec;
    net::write(stream_, bhttp::make_chunk_last(), ec);
    streaming_ = false;
    if (ec) {
      failed_ = true;
      return FromErrorCode(ec, "writing to the client");
    }
    complete_ = true;
    return Status::Ok();
  }

  Result<HijackedConnection> Hijack() override {
    if (started_) return FailedPrecondition("response already started");
    if (buffer_ == nullptr) return ResponseWriter::Hijack();
    started_ = true;
    hijacked_ = true;
    HijackedConnection c{fd_, boost::beast::buffers_to_string(buffer_->data())};
    buffer_->consume(buffer_->size());
    return c;
  }

  bool started() const override { return started_; }
  bool hijacked() const { return hijacked_; }
  // Can the connection carry another request?
  bool reusable() const { return complete_ && KeepAlive() && !failed_; }

 private:
  bool KeepAlive() const {
    if (!keep_alive_) return false;
    if (body_ != nullptr && !body_->complete()) keep_alive_ = false;  // decided once, at the head
    return keep_alive_;
  }

  FdStream& stream_;
  unsigned version_;
  mutable bool keep_alive_;
  int fd_;
  boost::beast::flat_buffer* buffer_;
  const BodyReader* body_;
  bool hijacked_ = false;
  bool started_ = false;
  bool streaming_ = false;
  bool failed_ = false;
  bool complete_ = false;
};

std::string PeerName(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  // getpeername fills a sockaddr_storage, which is large enough for any family.
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "?";
  char host[INET6_ADDRSTRLEN] = "?";
  int port = 0;
  if (ss.ss_family == AF_INET) {
    auto* in = reinterpret_cast<sockaddr_in*>(&ss);
    ::inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
    port = ntohs(in->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
    ::inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
    port = ntohs(in6->sin6_port);
  }
  return std::string(host) + ":" + std::to_string(port);
}

// Owns the stream its ConnectionWriter writes to.
class RawConnectionWriter : public ResponseWriter {
 public:
  explicit RawConnectionWriter(int fd)
      : stream_(fd, std::chrono::seconds(1), std::chrono::seconds(5)),
        writer_(stream_, 11, false) {}
  Status Send(int status, Headers headers, std::string body) override {
    return writer_.Send(status, std::move(headers), std::move(body));
  }
  Status BeginStream(int, Headers) override { return Unimplemented(); }
  Status WriteChunk(std::string_view) override { return Unimplemented(); }
  Status EndStream() override { return Unimplemented(); }
  bool started() const override { return writer_.started(); }

 private:
  static Status Unimplemented() { return FailedPrecondition("only whole responses here"); }
  FdStream stream_;
  ConnectionWriter writer_;
};

bool IsExpectContinue(const bhttp::request<bhttp::buffer_body>& head) {
  auto it = head.find(bhttp::field::expect);
  if (it == head.end()) return false;
  std::string_view v(it->value().data(), it->value().size());
  return v.size() == 12 && ::strncasecmp(v.data(), "100-continue", 12) == 0;
}

Request RequestFromHead(const bhttp::request<bhttp::buffer_body>& head, const std::string& peer) {
  Request req;
  req.method = std::string(head.method_string());
  std::string_view target(head.target().data(), head.target().size());
  size_t q = target.find('?');
  req.path = std::string(target.substr(0, q));
  if (q != std::string_view::npos) req.raw_query = std::string(target.substr(q + 1));
  for (const auto& f : head) {
    std::string name(f.name_string());
    std::string value(f.value());
    auto [it, inserted] = req.headers.emplace(name, value);
    if (!inserted) it->second += ", " + value;
  }
  req.peer = peer;
  req.version = head.version();
  return req;
}

// Waits until `fd` has something to read (or is closed); false after `timeout`.
bool WaitReadable(int fd, std::chrono::milliseconds timeout) {
  pollfd p{fd, POLLIN, 0};
  auto deadline = Clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
    int r = ::poll(&p, 1, static_cast<int>(std::max<int64_t>(left.count(), 0)));
    if (r > 0) return true;
    if (r == 0) return false;
    if (errno != EINTR) return false;
  }
}

}  // namespace

// What the per-client cap counts: "10.0.0.1:5000" → "10.0.0.1"; an IPv6 client by its /64
// ("2001:db8:1:2:a:b:c:d:5000" → "2001:db8:1:2::/64"), since one host commonly holds a whole
// /64 and would otherwise get a fresh budget per address; an IPv4-mapped address as IPv4.
std::string ClientOf(const std::string& peer) {
  size_t colon = peer.rfind(':');
  std::string host = colon == std::string::npos ? peer : peer.substr(0, colon);
  in6_addr a6{};
  if (host.find(':') == std::string::npos || ::inet_pton(AF_INET6, host.c_str(), &a6) != 1) {
    return host;
  }
  if (IN6_IS_ADDR_V4MAPPED(&a6)) {
    char v4[INET_ADDRSTRLEN] = "?";
    ::inet_ntop(AF_INET, &a6.s6_addr[12], v4, sizeof v4);
    return v4;
  }
  std::memset(&a6.s6_addr[8], 0, 8);
  char net[INET6_ADDRSTRLEN] = "?";
  ::inet_ntop(AF_INET6, &a6, net, sizeof net);
  return std::string(net) + "/64";
}

std::unique_ptr<ResponseWriter> HijackedResponseWriter(int fd) {
  return std::make_unique<RawConnectionWriter>(fd);
}

struct HttpServer::Impl {
  ServerOptions options;
  RequestHandler handler;
  RejectHandler reject;
  AdmissionHandler admit;
  net::io_context io;
  net::ip::tcp::acceptor acceptor{io};
  std::thread accept_thread;

  // One open connection, as the slot accounting sees it.
  struct Slot {
    enum class State { kIdle, kHead, kBusy };
    int fd = -1;  // owned by the connection's thread
    std::string client;
    bool trusted = false;        // one of its requests authenticated
    bool probation = false;      // in the reserve: its first request must authenticate
    State state = State::kIdle;  // kIdle: waiting for a request's first byte
    Clock::time_point since;     // of the state
  };

  mutable std::mutex mu;
  std::condition_variable cv;
  std::map<uint64_t, Slot> connections;  // id → slot; a shed connection leaves it at once
  std::map<std::string, size_t> untrusted_by_client;
  size_t untrusted = 0;  // connections none of whose requests authenticated yet
  size_t threads = 0;    // connection threads still running (shed ones included)
  uint64_t next_id = 1;
  bool shutting_down = false;

  void Accept() {
    acceptor.async_accept([this](error_code ec, net::ip::tcp::socket socket) {
      if (ec == net::error::operation_aborted || !acceptor.is_open()) return;
      // Whatever one connection's admission throws (std::system_error when no thread can be
      // started), the server accepts on.
      if (!ec) (void)CatchAll("http accept", [&] { Admit(UniqueFd(socket.release())); });
      Accept();
    });
  }

  // Drops a slot from the accounting (under mu).
  void Forget(std::map<uint64_t, Slot>::iterator it) {
    if (!it->second.trusted) UntrustOne(it->second.client, -1);
    connections.erase(it);
  }
  void UntrustOne(const std::string& client, int delta) {
    untrusted += delta;
    size_t& n = untrusted_by_client[client];
    n += delta;
    if (n == 0) untrusted_by_client.erase(client);
  }

  // Closes the connection that has been longest in its state among those `pick` accepts (under
  // mu): its thread sees EOF and ends; its slot is free now. False if `pick` accepts none.
  template <class Pick>
  bool ShedOldest(Pick pick, const char* why) {
    auto oldest = connections.end();
    for (auto it = connections.begin(); it != connections.end(); ++it) {
      if (!pick(it->second)) continue;
      if (oldest == connections.end() || it->second.since < oldest->second.since) oldest = it;
    }
    if (oldest == connections.end()) return false;
    ::shutdown(oldest->second.fd, SHUT_RDWR);
    LogDebug("http.shed", {{"client", oldest->second.client}, {"why", why}});
    Forget(oldest);
    return true;
  }
  template <class Pick>
  bool ShedOldestIdle(Pick pick) {
    return ShedOldest([&](const Slot& s) { return s.state == Slot::State::kIdle && pick(s); },
                      "idle");
  }

  void Refuse(int fd, const std::string& why) {
    FdStream stream(fd, std::chrono::seconds(1), std::chrono::seconds(1));
    ConnectionWriter writer(stream, 11, false);
    reject(ResourceExhausted(why), 503, writer);
  }

  void Admit(UniqueFd fd) {
    // The socket came from accept(): make it close-on-exec so VMM children never inherit it.
    ::fcntl(fd.get(), F_SETFD, FD_CLOEXEC);
    // Streamed responses are many small writes (head, then one chunk per event). With Nagle on,
    // each waits for the ACK of the one before, which a client in delayed-ACK mode holds back
    // for up to 40 ms: keep-alive exec round trips doubled (bench/api_bench.cc).
    int one = 1;
    ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    std::string peer = PeerName(fd.get());
    std::string client = ClientOf(peer);
    std::unique_lock lock(mu);
    if (shutting_down) return;
    // Past its client's share or past the unreserved slots, an unauthenticated connection must
    // make way: an idle one goes, or the new one comes in on probation and must authenticate
    // its first request.
    auto is_untrusted = [](const Slot& s) { return !s.trusted; };
    auto from_client = untrusted_by_client.find(client);
    bool probation = false;
    if (from_client != untrusted_by_client.end() &&
        from_client->second >= options.max_connections_per_client) {
      probation = !ShedOldestIdle([&](const Slot& s) { return !s.trusted && s.client == client; });
    }
    size_t unreserved =
        options.max_connections - std::min(options.reserved_connections, options.max_connections);
    if (!probation && untrusted >= unreserved) probation = !ShedOldestIdle(is_untrusted);
    // When full: the longest-idle connection goes, else the oldest one on probation that has not
    // sent its head yet (a client that authenticates sends it at once), else this one is refused.
    if (connections.size() >= options.max_connections &&
        !ShedOldestIdle([](const Slot&) { return true; }) &&
        !ShedOldest([](const Slot& s) { return s.probation && s.state != Slot::State::kBusy; },
                    "probation")) {
      lock.unlock();
      return Refuse(fd.get(), "too many connections");
    }
    uint64_t id = next_id++;
    connections[id] = Slot{fd.get(), client, false, probation, Slot::State::kIdle, Clock::now()};
    UntrustOne(client, 1);
    ++threads;
    lock.unlock();
    try {
      std::thread([this, id, peer, probation, fd = std::move(fd)]() mutable {
        (void)CatchAll("connection " + peer, [&] { Serve(id, fd.get(), peer, probation); });
        std::lock_guard guard(mu);
        if (auto it = connections.find(id); it != connections.end()) Forget(it);
        fd.Reset();
        --threads;
        cv.notify_all();
      }).detach();
    } catch (const std::system_error& e) {
      // No thread (the process's limit): the connection is closed (its fd went with the
      // lambda) and its slot given back.
      std::lock_guard guard(mu);
      if (auto it = connections.find(id); it != connections.end()) Forget(it);
      --threads;
      cv.notify_all();
      LogWarn("http.no_thread", {{"peer", peer}, {"error", e.what()}});
    }
  }

  // Moves the connection to `state`. False if it was shed.
  bool SetState(uint64_t id, Slot::State state) {
    std::lock_guard lock(mu);
    auto it = connections.find(id);
    if (it == connections.end()) return false;
    it->second.state = state;
    it->second.since = Clock::now();
    return true;
  }

  void Trust(uint64_t id) {
    std::lock_guard lock(mu);
    auto it = connections.find(id);
    if (it == connections.end() || it->second.trusted) return;
    it->second.trusted = true;
    it->second.probation = false;
    UntrustOne(it->second.client, -1);
  }

  // Answers a request the server refuses, on a connection that then closes.
  void RejectAndClose(FdStream& stream, int fd, unsigned version, const Status& why, int status,
                      bool unread_body) {
    ConnectionWriter writer(stream, version, false);
    reject(why, status, writer);
    if (unread_body) DrainBriefly(fd);
  }

  void Serve(uint64_t id, int fd, const std::string& peer, bool probation) {
    FdStream stream(fd, options.idle_timeout, options.write_timeout);
    boost::beast::flat_buffer buffer;
    for (bool first = true;; first = false) {
      auto head_timeout = probation ? options.probation_header_timeout : options.header_timeout;
      if (buffer.size() == 0) {
        // Between requests the connection is idle: the first to go when slots run out. A new
        // connection gets no longer than a head takes to send its first byte.
        if (!first && !SetState(id, Slot::State::kIdle)) return;
        if (!WaitReadable(fd, first ? head_timeout : options.idle_timeout)) return;
      }
      if (!SetState(id, Slot::State::kHead)) return;  // shed while it waited
      // The whole head must come within head_timeout of its first byte, however it trickles.
      stream.set_read_deadline(Clock::now() + head_timeout);
      RequestParser parser;
      parser.header_limit(64 * 1024);
      parser.body_limit(options.body_limit);
      error_code ec;
      bhttp::read_header(stream, buffer, parser, ec);
      stream.set_read_deadline(std::nullopt);
      if (ec == bhttp::error::body_limit) {
        return RejectAndClose(stream, fd, 11,
                              ResourceExhausted("request body exceeds " +
                                                std::to_string(options.body_limit) + " bytes"),
                              413, true);
      }
      if (ec == boost::beast::error::timeout) {
        if (!parser.got_some() && buffer.size() == 0) return;
        return RejectAndClose(
            stream, fd, 11,
            DeadlineExceeded("the request head did not arrive within " + Seconds(head_timeout)),
            408, false);
      }
      if (ec == bhttp::error::end_of_stream || ec == net::error::eof ||
          ec == net::error::connection_reset) {
        return;
      }
      if (ec) {
        if (parser.got_some()) {
          RejectAndClose(stream, fd, 11, InvalidArgument("malformed HTTP request: " + ec.message()),
                         400, false);
        }
        return;
      }
      if (!SetState(id, Slot::State::kBusy)) return;
      const auto& head = parser.get();
      Request req = RequestFromHead(head, peer);
      unsigned version = head.version();
      bool keep_alive = head.keep_alive();
      bool has_body = !parser.is_done();

      // Admission: credentials and routing from the head alone; the body stays unread.
      Admission admission;
      admission.body_limit = options.body_limit;
      if (admit) {
        ConnectionWriter early(stream, version, keep_alive && !has_body);
        admission = admit(req, has_body, early);
        if (early.started()) {
          if (has_body) DrainBriefly(fd);
          if (has_body || !early.reusable()) return;
          continue;
        }
      }
      if (admission.authenticated) {
        Trust(id);
        probation = false;
      } else if (probation) {
        return RejectAndClose(
            stream, fd, version,
            ResourceExhausted("the server is at its connection limit: only authenticated "
                              "requests are served on a new connection now"),
            503, has_body);
      }
      size_t limit = std::min(admission.body_limit, options.body_limit);
      if (has_body && parser.content_length() && *parser.content_length() > limit) {
        return RejectAndClose(
            stream, fd, version,
            ResourceExhausted("request body exceeds " + std::to_string(limit) + " bytes"), 413,
            true);
      }
      BodyReader body(stream, buffer, parser, limit, options,
                      has_body && version >= 11 && IsExpectContinue(head));
      if (has_body) {
        if (admission.body == Admission::Body::kStream) {
          req.body_stream = &body;
        } else if (Status read = body.ReadAll(&req.body); !read.ok()) {
          if (read.code() == ErrorCode::kUnavailable) return;
          return RejectAndClose(stream, fd, version, read, BodyErrorHttpStatus(read), true);
        }
      }
      ConnectionWriter writer(stream, version, keep_alive, fd, &buffer, &body);
      // The last line of defence (docs/errors.md): an exception escaping a handler is a bug; it
      // fails this request — 500, or a closed connection once the response has begun — and
      // nothing else.
      Status caught =
          CatchAll("request " + req.method + " " + req.path, [&] { handler(req, writer); });
      if (!caught.ok()) {
        if (!writer.started() && !writer.hijacked()) reject(caught, 500, writer);
        DrainBriefly(fd);
        return;
      }
      if (writer.hijacked()) {
        // Whatever the handler relayed may still be in flight to the client: close gently.
        DrainBriefly(fd);
        return;
      }
      if (!writer.started()) reject(Internal("the handler sent no response"), 500, writer);
      if (!body.complete()) {
        // The handler did not read the body to its end (it failed early): the connection
        // cannot carry another request.
        DrainBriefly(fd);
        return;
      }
      if (!writer.reusable()) return;
    }
  }

  // Before closing a connection the client may still be sending on (a request body we did not
  // read, a hijacked connection), read and drop a little of it, so that the client sees all we
  // sent rather than a reset. Bounded in bytes and in time.
  static void DrainBriefly(int fd) {
    ::shutdown(fd, SHUT_WR);
    char buf[16384];
    FdStream s(fd, std::chrono::milliseconds(200), std::chrono::milliseconds(200));
    auto deadline = Clock::now() + std::chrono::seconds(2);
    for (size_t total = 0; total < (8u << 20) && Clock::now() < deadline;) {
      error_code ec;
      size_t n = s.read_some(net::buffer(buf), ec);
      if (ec || n == 0) break;
      total += n;
    }
  }
};

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<HttpServer>> HttpServer::Start(ServerOptions options, RequestHandler handler,
                                                      RejectHandler reject,
                                                      AdmissionHandler admit) {
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  impl->handler = std::move(handler);
  impl->reject = std::move(reject);
  impl->admit = std::move(admit);
  error_code ec;
  auto address = net::ip::make_address(impl->options.host, ec);
  if (ec) return InvalidArgument("--listen: bad address \"" + impl->options.host + "\"");
  net::ip::tcp::endpoint endpoint(address, impl->options.port);
  auto& acc = impl->acceptor;
  std::string where = impl->options.host + ":" + std::to_string(impl->options.port);
  acc.open(endpoint.protocol(), ec);
  if (!ec) acc.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) acc.bind(endpoint, ec);
  if (!ec) acc.listen(net::socket_base::max_listen_connections, ec);
  if (ec) return Unavailable("listen on " + where + ": " + ec.message());
  ::fcntl(acc.native_handle(), F_SETFD, FD_CLOEXEC);
  uint16_t port = acc.local_endpoint().port();
  impl->Accept();
  impl->accept_thread = std::thread([i = impl.get()] { i->io.run(); });
  std::unique_ptr<HttpServer> server(new HttpServer(std::move(impl)));
  server->port_ = port;
  return server;
}

void HttpServer::Shutdown() {
  {
    std::lock_guard lock(impl_->mu);
    if (impl_->shutting_down) return;
    impl_->shutting_down = true;
    // Wakes connection threads blocked reading or writing; handlers see write errors.
    for (auto& [id, slot] : impl_->connections) ::shutdown(slot.fd, SHUT_RDWR);
  }
  net::post(impl_->io, [i = impl_.get()] {
    error_code ec;
    i->acceptor.close(ec);
  });
  if (impl_->accept_thread.joinable()) impl_->accept_thread.join();
}

void HttpServer::Wait() {
  std::unique_lock lock(impl_->mu);
  impl_->cv.wait(lock, [this] { return impl_->threads == 0; });
}

size_t HttpServer::open_connections() const {
  std::lock_guard lock(impl_->mu);
  return impl_->connections.size();
}

HttpServer::~HttpServer() {
  Shutdown();
  Wait();
}

}  // namespace moat::api::http
