#include "api/http/server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "api/http/fd_stream.h"
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

// The writer of one request's response on a connection.
class ConnectionWriter : public ResponseWriter {
 public:
  // `buffer` (may be null: no hijacking) holds what was read past the request.
  ConnectionWriter(FdStream& stream, unsigned version, bool keep_alive, int fd = -1,
                   boost::beast::flat_buffer* buffer = nullptr)
      : stream_(stream), version_(version), keep_alive_(keep_alive), fd_(fd), buffer_(buffer) {}

  Status Send(int status, Headers headers, std::string body) override {
    if (started_) return FailedPrecondition("response already started");
    started_ = true;
    bhttp::response<bhttp::string_body> res{static_cast<bhttp::status>(status), version_};
    for (auto& [k, v] : headers) res.set(k, v);
    res.keep_alive(keep_alive_);
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
    res.keep_alive(keep_alive_);
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
  bool reusable() const { return complete_ && keep_alive_ && !failed_; }

 private:
  FdStream& stream_;
  unsigned version_;
  bool keep_alive_;
  int fd_;
  boost::beast::flat_buffer* buffer_;
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

}  // namespace

std::unique_ptr<ResponseWriter> HijackedResponseWriter(int fd) {
  return std::make_unique<RawConnectionWriter>(fd);
}

struct HttpServer::Impl {
  ServerOptions options;
  RequestHandler handler;
  RejectHandler reject;
  net::io_context io;
  net::ip::tcp::acceptor acceptor{io};
  std::thread accept_thread;

  mutable std::mutex mu;
  std::condition_variable cv;
  std::map<uint64_t, int> connections;  // id → socket fd (owned by the connection's thread)
  uint64_t next_id = 1;
  bool shutting_down = false;

  void Accept() {
    acceptor.async_accept([this](error_code ec, net::ip::tcp::socket socket) {
      if (ec == net::error::operation_aborted || !acceptor.is_open()) return;
      if (!ec) Admit(UniqueFd(socket.release()));
      Accept();
    });
  }

  void Admit(UniqueFd fd) {
    // The socket came from accept(): make it close-on-exec so VMM children never inherit it.
    ::fcntl(fd.get(), F_SETFD, FD_CLOEXEC);
    // Streamed responses are many small writes (head, then one chunk per event). With Nagle on,
    // each waits for the ACK of the one before, which a client in delayed-ACK mode holds back
    // for up to 40 ms: keep-alive exec round trips doubled (bench/api_bench.cc).
    int one = 1;
    ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    std::unique_lock lock(mu);
    if (shutting_down) return;
    if (connections.size() >= options.max_connections) {
      lock.unlock();
      FdStream stream(fd.get(), std::chrono::seconds(1), std::chrono::seconds(1));
      ConnectionWriter writer(stream, 11, false);
      reject(ResourceExhausted("too many connections"), 503, writer);
      return;
    }
    uint64_t id = next_id++;
    connections[id] = fd.get();
    lock.unlock();
    std::thread([this, id, fd = std::move(fd)]() mutable {
      Serve(fd.get());
      std::lock_guard guard(mu);
      connections.erase(id);
      fd.Reset();
      cv.notify_all();
    }).detach();
  }

  void Serve(int fd) {
    std::string peer = PeerName(fd);
    FdStream stream(fd, options.idle_timeout, options.write_timeout);
    boost::beast::flat_buffer buffer;
    for (;;) {
      bhttp::request_parser<bhttp::string_body> parser;
      parser.header_limit(64 * 1024);
      parser.body_limit(options.body_limit);
      error_code ec;
      bhttp::read(stream, buffer, parser, ec);
      if (ec == bhttp::error::body_limit) {
        ConnectionWriter writer(stream, 11, false);
        reject(ResourceExhausted("request body exceeds " + std::to_string(options.body_limit) +
                                 " bytes"),
               413, writer);
        DrainBriefly(fd);
        return;
      }
      if (ec == bhttp::error::end_of_stream || ec == net::error::eof ||
          ec == boost::beast::error::timeout || ec == net::error::connection_reset) {
        return;
      }
      if (ec) {
        if (parser.got_some()) {
          ConnectionWriter writer(stream, 11, false);
          reject(InvalidArgument("malformed HTTP request: " + ec.message()), 400, writer);
        }
        return;
      }
      auto& breq = parser.get();
      Request req;
      req.method = std::string(breq.method_string());
      std::string_view target(breq.target().data(), breq.target().size());
      size_t q = target.find('?');
      req.path = std::string(target.substr(0, q));
      if (q != std::string_view::npos) req.raw_query = std::string(target.substr(q + 1));
      for (const auto& f : breq) {
        std::string name(f.name_string());
        std::string value(f.value());
        auto [it, inserted] = req.headers.emplace(name, value);
        if (!inserted) it->second += ", " + value;
      }
      req.body = std::move(breq.body());
      req.peer = peer;
      req.version = breq.version();
      ConnectionWriter writer(stream, breq.version(), breq.keep_alive(), fd, &buffer);
      handler(req, writer);
      if (writer.hijacked()) {
        // Whatever the handler relayed may still be in flight to the client: close gently.
        DrainBriefly(fd);
        return;
      }
      if (!writer.started()) reject(Internal("the handler sent no response"), 500, writer);
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
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    for (size_t total = 0; total < (8u << 20) && std::chrono::steady_clock::now() < deadline;) {
      error_code ec;
      size_t n = s.read_some(net::buffer(buf), ec);
      if (ec || n == 0) break;
      total += n;
    }
  }
};

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<HttpServer>> HttpServer::Start(ServerOptions options, RequestHandler handler,
                                                      RejectHandler reject) {
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  impl->handler = std::move(handler);
  impl->reject = std::move(reject);
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
    for (auto& [id, fd] : impl_->connections) ::shutdown(fd, SHUT_RDWR);
  }
  net::post(impl_->io, [i = impl_.get()] {
    error_code ec;
    i->acceptor.close(ec);
  });
  if (impl_->accept_thread.joinable()) impl_->accept_thread.join();
}

void HttpServer::Wait() {
  std::unique_lock lock(impl_->mu);
  impl_->cv.wait(lock, [this] { return impl_->connections.empty(); });
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
