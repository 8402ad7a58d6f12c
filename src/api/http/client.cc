#include "api/http/client.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <cerrno>
#include <cstring>

#include "api/http/fd_stream.h"

namespace moat::api::http {
namespace {

namespace bhttp = boost::beast::http;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

std::string Duration(milliseconds d) {
  if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + " s";
  return std::to_string(d.count()) + " ms";
}

milliseconds Left(Clock::time_point deadline) {
  auto left = std::chrono::ceil<milliseconds>(deadline - Clock::now());
  return left < milliseconds(1) ? milliseconds(1) : left;
}

// One connect attempt to `ai`, bounded by `deadline`. The fd is non-blocking (FdStream waits
// with poll) and close-on-exec.
Result<UniqueFd> ConnectOne(const addrinfo& ai, Clock::time_point deadline) {
  UniqueFd fd(::socket(ai.ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return ErrnoError("socket");
  if (::connect(fd.get(), ai.ai_addr, ai.ai_addrlen) != 0) {
    if (errno != EINPROGRESS && errno != EINTR) return ErrnoError("connect");
    for (;;) {
      auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
      pollfd p{fd.get(), POLLOUT, 0};
      int r = left.count() > 0 ? ::poll(&p, 1, static_cast<int>(left.count())) : 0;
      if (r > 0) break;
      if (r == 0) return DeadlineExceeded("connect: timed out");
      if (errno != EINTR) return ErrnoError("connect");
    }
    int err = 0;
    socklen_t len = sizeof err;
    if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
      return ErrnoError("connect");
    }
    if (err != 0) return ErrnoError("connect", err);
  }
  // Requests and answers are single small writes: do not let Nagle hold them back.
  int one = 1;
  ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

struct Exchanged {
  bool answered = false;  // some of the answer came: the server saw the request
  bool reusable = false;  // the connection can carry another request
};

Result<ClientResponse> Exchange(int fd, const Endpoint& ep, const ClientOptions& options,
                                const ClientRequest& request, Clock::time_point deadline,
                                Exchanged* out) {
  auto fail = [&](const std::string& what) {
    return Unavailable(request.method + " " + ep.url + request.target + ": " + what);
  };
  FdStream stream(fd, request.timeout, Left(deadline));
  stream.set_read_deadline(deadline);

  bhttp::request<bhttp::string_body> req;
  req.method_string(request.method);
  req.target(request.target);
  req.version(11);
  bool v6 = ep.host.find(':') != std::string::npos;
  req.set(bhttp::field::host, (v6 ? "[" + ep.host + "]" : ep.host) + ":" + ep.port);
  req.set(bhttp::field::user_agent, options.user_agent);
  for (const auto& [name, value] : request.headers) req.set(name, value);
  req.body() = request.body;
  req.prepare_payload();
  req.keep_alive(true);
  boost::beast::error_code ec;
  bhttp::write(stream, req, ec);
  if (ec == boost::beast::error::timeout) {
    return fail("the request could not be sent within " + Duration(request.timeout));
  }
  if (ec) return fail("sending the request: " + ec.message());

  boost::beast::flat_buffer buffer;
  bhttp::response_parser<bhttp::string_body> parser;
  parser.body_limit(options.max_response_body);
  parser.header_limit(64 * 1024);
  if (request.method == "HEAD") parser.skip(true);
  bhttp::read(stream, buffer, parser, ec);
  out->answered = parser.got_some() || buffer.size() > 0;
  if (ec == boost::beast::error::timeout) {
    return fail("no answer within " + Duration(request.timeout));
  }
  if (ec == bhttp::error::body_limit) {
    return Internal(request.method + " " + ep.url + request.target + ": the answer exceeds " +
                    std::to_string(options.max_response_body) + " bytes");
  }
  if (ec == bhttp::error::end_of_stream || ec == boost::asio::error::eof ||
      ec == boost::asio::error::connection_reset) {
    return fail(out->answered ? "the connection closed in the middle of the answer"
                              : "the connection closed before an answer");
  }
  if (ec && ec.category() == bhttp::make_error_code(bhttp::error::bad_version).category()) {
    return Internal(request.method + " " + ep.url + request.target +
                    ": the answer is not HTTP: " + ec.message());
  }
  if (ec) return fail("reading the answer: " + ec.message());

  auto& res = parser.get();
  ClientResponse response;
  response.status = static_cast<int>(res.result_int());
  for (const auto& f : res) {
    std::string name(f.name_string());
    auto [it, inserted] = response.headers.emplace(name, std::string(f.value()));
    if (!inserted) it->second += ", " + std::string(f.value());
  }
  response.body = std::move(res.body());
  out->reusable = res.keep_alive() && buffer.size() == 0;
  return response;
}

}  // namespace

Result<Endpoint> ParseEndpoint(std::string_view url) {
  constexpr std::string_view kScheme = "http://";
  auto invalid = [&](const std::string& why) {
    return InvalidArgument("endpoint \"" + std::string(url) + "\": " + why);
  };
  if (url.substr(0, kScheme.size()) != kScheme) return invalid("must start with http://");
  std::string_view authority = url.substr(kScheme.size());
  if (!authority.empty() && authority.back() == '/') authority.remove_suffix(1);
  if (authority.find_first_of("/?#@") != std::string_view::npos) {
    return invalid("must be http://host:port, without a path or credentials");
  }
  Endpoint ep;
  if (!authority.empty() && authority.front() == '[') {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) return invalid("an IPv6 host needs its closing ]");
    ep.host = std::string(authority.substr(1, close - 1));
    std::string_view rest = authority.substr(close + 1);
    if (!rest.empty() && rest.front() != ':') return invalid("junk after the IPv6 host");
    ep.port = rest.empty() ? "80" : std::string(rest.substr(1));
  } else {
    size_t colon = authority.rfind(':');
    ep.host = std::string(authority.substr(0, colon));
    ep.port = colon == std::string_view::npos ? "80" : std::string(authority.substr(colon + 1));
    if (ep.host.find(':') != std::string::npos) return invalid("an IPv6 host goes in brackets");
  }
  if (ep.host.empty()) return invalid("no host");
  if (ep.port.empty() || ep.port.size() > 5 ||
      ep.port.find_first_not_of("0123456789") != std::string::npos || std::stoi(ep.port) == 0 ||
      std::stoi(ep.port) > 65535) {
    return invalid("no valid port");
  }
  bool v6 = ep.host.find(':') != std::string::npos;
  ep.url = "http://" + (v6 ? "[" + ep.host + "]" : ep.host) + ":" + ep.port;
  return ep;
}

Result<std::unique_ptr<Client>> Client::ForUrl(std::string_view url, ClientOptions options) {
  MOAT_ASSIGN_OR_RETURN(Endpoint ep, ParseEndpoint(url));
  return std::unique_ptr<Client>(new Client(std::move(ep), std::move(options)));
}

size_t Client::idle_connections() const {
  std::lock_guard lock(mu_);
  return idle_.size();
}

UniqueFd Client::TakeIdle() {
  std::lock_guard lock(mu_);
  while (!idle_.empty()) {
    Idle last = std::move(idle_.back());
    idle_.pop_back();
    if (Clock::now() - last.since > options_.max_idle) continue;
    // An idle connection has nothing to read: readable means the server closed it (EOF), reset
    // it, or sent something unasked — none of which can carry a request.
    pollfd p{last.fd.get(), POLLIN, 0};
    if (::poll(&p, 1, 0) != 0) continue;
    return std::move(last.fd);
  }
  return UniqueFd();
}

void Client::PutIdle(UniqueFd fd) {
  std::lock_guard lock(mu_);
  if (options_.max_idle_connections == 0) return;
  if (idle_.size() >= options_.max_idle_connections) idle_.erase(idle_.begin());
  idle_.push_back({std::move(fd), Clock::now()});
}

Result<UniqueFd> Client::Dial(Clock::time_point deadline) const {
  deadline = std::min(deadline, Clock::now() + options_.connect_timeout);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  int rc = ::getaddrinfo(endpoint_.host.c_str(), endpoint_.port.c_str(), &hints, &found);
  if (rc != 0) {
    return Unavailable(std::string("resolving the host: ") +
                       (rc == EAI_SYSTEM ? std::strerror(errno) : ::gai_strerror(rc)));
  }
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> list(found, &::freeaddrinfo);
  Status last = Unavailable("no address");
  for (const addrinfo* ai = list.get(); ai != nullptr; ai = ai->ai_next) {
    auto fd = ConnectOne(*ai, deadline);
    if (fd.ok()) return std::move(fd).value();
    last = fd.status();
    if (Clock::now() >= deadline) break;
  }
  if (last.code() == ErrorCode::kDeadlineExceeded) {
    return Unavailable("connect: no connection within " + Duration(options_.connect_timeout));
  }
  return Unavailable(last.message());
}

Result<ClientResponse> Client::Send(const ClientRequest& request) {
  auto deadline = Clock::now() + request.timeout;
  for (int attempt = 0;; ++attempt) {
    UniqueFd fd = TakeIdle();
    bool reused = fd.valid();
    if (!reused) {
      auto dialed = Dial(deadline);
      if (!dialed.ok()) {
        return dialed.status().Annotate(request.method + " " + endpoint_.url + request.target);
      }
      fd = std::move(dialed).value();
    }
    Exchanged ex;
    auto response = Exchange(fd.get(), endpoint_, options_, request, deadline, &ex);
    if (response.ok()) {
      if (ex.reusable) PutIdle(std::move(fd));
      return response;
    }
    // A pooled connection the server closed just as it was taken: the request never reached a
    // handler. Once, and only when sending it again is harmless.
    bool retry = reused && !ex.answered && request.idempotent && attempt == 0 &&
                 Clock::now() < deadline && response.status().code() == ErrorCode::kUnavailable;
    if (!retry) return response.status();
  }
}

}  // namespace moat::api::http
