#include "cli/http_client.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cerrno>
#include <condition_variable>
#include <limits>
#include <mutex>
#include <thread>

namespace moat::cli {
namespace {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = boost::asio::ip::tcp;

Status TransportError(const BaseUrl& base, std::string_view what, const beast::error_code& ec) {
  return Unavailable(std::string(what) + " http://" + base.host + ":" + base.port + ": " +
                     ec.message());
}

template <class Body>
void SetHead(bhttp::request<Body>& req, const BaseUrl& base, const HttpRequest& request) {
  req.method_string(request.method);
  req.target(base.prefix + request.target);
  req.version(11);
  req.set(bhttp::field::host, base.host + ":" + base.port);
  req.set(bhttp::field::user_agent, "moat-cli/0.1.0");
  req.set(bhttp::field::connection, "close");
  for (const auto& [name, value] : request.headers) req.set(name, value);
}

// The head with the file's size as Content-Length, then the file in pieces.
Status WriteFileRequest(beast::tcp_stream& stream, const BaseUrl& base,
                        const HttpRequest& request) {
  struct stat st {};
  if (::fstat(request.body_fd, &st) != 0) return ErrnoError("fstat(request body)");
  bhttp::request<bhttp::empty_body> req;
  SetHead(req, base, request);
  req.content_length(static_cast<uint64_t>(st.st_size));
  bhttp::request_serializer<bhttp::empty_body> serializer(req);
  beast::error_code ec;
  bhttp::write_header(stream, serializer, ec);
  if (ec) return TransportError(base, "sending to", ec);
  std::array<char, 64 * 1024> buf;
  for (off_t offset = 0; offset < st.st_size;) {
    ssize_t n = ::pread(request.body_fd, buf.data(), buf.size(), offset);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("reading the request body");
    if (n == 0) return FailedPrecondition("the request body shrank while it was being sent");
    boost::asio::write(stream, boost::asio::buffer(buf.data(), static_cast<size_t>(n)), ec);
    if (ec) return TransportError(base, "sending to", ec);
    offset += n;
  }
  return Status::Ok();
}

// Shuts a connected socket down once `timeout` has passed, from a thread of its own, so that the
// blocking write or read SendHttp is in fails at once (Beast's own timeouts apply to asynchronous
// operations only). The socket outlives this object, so the fd shut is never a reused one.
class Deadline {
 public:
  Deadline(int fd, std::chrono::milliseconds timeout) {
    if (timeout.count() <= 0) return;
    thread_ = std::thread([this, fd, timeout] {
      std::unique_lock lock(mu_);
      if (cv_.wait_for(lock, timeout, [this] { return done_; })) return;
      expired_ = true;
      ::shutdown(fd, SHUT_RDWR);
    });
  }
  ~Deadline() {
    if (!thread_.joinable()) return;
    {
      std::lock_guard lock(mu_);
      done_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  Deadline(const Deadline&) = delete;
  Deadline& operator=(const Deadline&) = delete;

  bool expired() const { return expired_; }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;  // guarded by mu_
  std::atomic<bool> expired_{false};
  std::thread thread_;
};

std::string DurationText(std::chrono::milliseconds d) {
  if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + " s";
  return std::to_string(d.count()) + " ms";
}

// One exchange on a connected stream: the request out, the response in.
Result<HttpResponse> Exchange(beast::tcp_stream& stream, const BaseUrl& base,
                              const HttpRequest& request, const BodySink& sink) {
  beast::error_code ec;
  if (request.body_fd >= 0) {
    MOAT_RETURN_IF_ERROR(WriteFileRequest(stream, base, request));
  } else {
    bhttp::request<bhttp::string_body> req;
    SetHead(req, base, request);
    req.body() = request.body;
    req.prepare_payload();
    bhttp::write(stream, req, ec);
    if (ec) return TransportError(base, "sending to", ec);
  }

  beast::flat_buffer buffer;
  bhttp::response_parser<bhttp::buffer_body> parser;
  parser.body_limit(std::numeric_limits<std::uint64_t>::max());
  bhttp::read_header(stream, buffer, parser, ec);
  if (ec) return TransportError(base, "reading the response from", ec);

  HttpResponse out;
  out.status = static_cast<int>(parser.get().result_int());
  out.content_type = std::string(parser.get()[bhttp::field::content_type]);
  out.next_token = std::string(parser.get()["X-Next-Token"]);
  const bool to_sink = sink && out.status >= 200 && out.status < 300;

  // read_some (not read) so that each chunk reaches the sink as soon as it arrives: exec output
  // must stream live, not wait for a full buffer.
  std::array<char, 64 * 1024> chunk;
  while (!parser.is_done()) {
    parser.get().body().data = chunk.data();
    parser.get().body().size = chunk.size();
    bhttp::read_some(stream, buffer, parser, ec);
    if (ec == bhttp::error::need_buffer) ec = {};
    if (ec) return TransportError(base, "reading the response from", ec);
    size_t n = chunk.size() - parser.get().body().size;
    if (n == 0) continue;
    std::string_view data(chunk.data(), n);
    if (to_sink) {
      MOAT_RETURN_IF_ERROR(sink(data));
    } else {
      size_t room = request.max_collected_body - out.body.size();
      out.body.append(data.substr(0, room));
      if (data.size() >= room) return out;  // the rest is not read; the connection is dropped
    }
  }
  stream.socket().shutdown(tcp::socket::shutdown_both, ec);
  return out;
}

}  // namespace

Result<UrlTarget> ParseUrl(std::string_view url) {
  constexpr std::string_view kScheme = "http://";
  if (url.substr(0, kScheme.size()) != kScheme) {
    return InvalidArgument("only http:// URLs are supported (got \"" + std::string(url) + "\")");
  }
  std::string_view rest = url.substr(kScheme.size());
  rest = rest.substr(0, rest.find('#'));
  size_t end = rest.find_first_of("/?");
  UrlTarget out;
  out.target = end == std::string_view::npos ? "/" : std::string(rest.substr(end));
  if (out.target.front() == '?') out.target.insert(0, "/");
  auto base = ParseBaseUrl(std::string(kScheme) + std::string(rest.substr(0, end)));
  if (!base.ok()) {
    return InvalidArgument("the URL \"" + std::string(url) + "\" has no valid host:port");
  }
  out.base = std::move(*base);
  return out;
}

Result<BaseUrl> ParseBaseUrl(std::string_view url) {
  constexpr std::string_view kScheme = "http://";
  if (url.substr(0, kScheme.size()) != kScheme) {
    return InvalidArgument("MOAT_API_URL must start with http:// (got \"" + std::string(url) +
                           "\")");
  }
  std::string_view rest = url.substr(kScheme.size());
  BaseUrl out;
  size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  if (slash != std::string_view::npos) out.prefix = std::string(rest.substr(slash));
  while (!out.prefix.empty() && out.prefix.back() == '/') out.prefix.pop_back();
  size_t colon = authority.rfind(':');
  if (colon != std::string_view::npos && authority.find(']', colon) == std::string_view::npos) {
    out.host = std::string(authority.substr(0, colon));
    out.port = std::string(authority.substr(colon + 1));
  } else {
    out.host = std::string(authority);
    out.port = "80";
  }
  if (out.host.size() > 2 && out.host.front() == '[' && out.host.back() == ']') {
    out.host = out.host.substr(1, out.host.size() - 2);
  }
  if (out.host.empty() || out.port.empty() ||
      out.port.find_first_not_of("0123456789") != std::string::npos) {
    return InvalidArgument("MOAT_API_URL has no valid host:port (got \"" + std::string(url) +
                           "\")");
  }
  return out;
}

Result<HttpResponse> SendHttp(const BaseUrl& base, const HttpRequest& request,
                              const BodySink& sink) {
  boost::asio::io_context ioc;
  tcp::resolver resolver(ioc);
  beast::tcp_stream stream(ioc);
  beast::error_code ec;
  auto endpoints = resolver.resolve(base.host, base.port, ec);
  if (ec) return TransportError(base, "resolving", ec);
  stream.connect(endpoints, ec);
  if (ec) return TransportError(base, "connecting to", ec);

  Deadline deadline(stream.socket().native_handle(), request.timeout);
  Result<HttpResponse> out = Exchange(stream, base, request, sink);
  if (!out.ok() && deadline.expired()) {
    return DeadlineExceeded("no complete response from http://" + base.host + ":" + base.port +
                            " within " + DurationText(request.timeout));
  }
  return out;
}

}  // namespace moat::cli
