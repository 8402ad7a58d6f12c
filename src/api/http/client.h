// Client: a small synchronous HTTP/1.1 client for moatd talking to moatd (a replica to an agent),
// Boost.Beast for the wire. Plain http:// to one endpoint; a deadline on every exchange, connect
// included; keep-alive connections kept in a small pool and reused; thread-safe (each request
// takes a connection of its own). Bodies are buffered both ways (control calls are small JSON);
// streamed bodies for relaying data-plane traffic would be a second entry point beside Send.
//
// (The `moat` CLI keeps its own client, cli/http_client.h: one connection per request, a
// response body streamed to a sink, no deadlines — what a terminal user wants.)
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "api/http/message.h"
#include "common/status.h"
#include "common/unique_fd.h"

namespace moat::api::http {

// "http://host:port" (a trailing "/" allowed; an IPv6 host in brackets; port 80 by default).
struct Endpoint {
  std::string host;  // without brackets
  std::string port;
  std::string url;  // "http://host:port", as error messages name it
};
Result<Endpoint> ParseEndpoint(std::string_view url);

struct ClientOptions {
  std::chrono::milliseconds connect_timeout{2000};  // within the request's own deadline
  size_t max_idle_connections = 16;
  // An idle connection is not reused after this long: well under the server's idle timeout
  // (ServerOptions::idle_timeout, 120 s), so that the server never closes one as it is reused.
  std::chrono::milliseconds max_idle{30000};
  size_t max_response_body = 16 * 1024 * 1024;
  std::string user_agent = "moatd";
};

struct ClientRequest {
  std::string method;  // "GET", "POST", ...
  std::string target;  // path and query, sent as it is
  Headers headers;
  std::string body;  // sent with Content-Length when the method has one, or it is not empty
  // For the whole exchange: connecting, sending, and the whole answer.
  std::chrono::milliseconds timeout{10000};
  // Whether the request may be sent again when a reused keep-alive connection turns out to
  // have been closed by the server before any of the answer came. Only for requests whose
  // repetition is harmless (reads).
  bool idempotent = false;
};

struct ClientResponse {
  int status = 0;
  Headers headers;
  std::string body;
};

class Client {
 public:
  static Result<std::unique_ptr<Client>> ForUrl(std::string_view url, ClientOptions options = {});
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Sends the request and reads the whole answer, whatever its status. unavailable (naming the
  // URL, the request and what failed) when the endpoint cannot be reached, closes the
  // connection, or does not answer by the deadline; internal when its answer is not HTTP or is
  // larger than max_response_body.
  Result<ClientResponse> Send(const ClientRequest& request);

  const Endpoint& endpoint() const { return endpoint_; }
  size_t idle_connections() const;

 private:
  using Clock = std::chrono::steady_clock;
  struct Idle {
    UniqueFd fd;
    Clock::time_point since;
  };

  Client(Endpoint endpoint, ClientOptions options)
      : endpoint_(std::move(endpoint)), options_(std::move(options)) {}
  // A pooled connection that still looks open (the server has not closed it), or none.
  UniqueFd TakeIdle();
  void PutIdle(UniqueFd fd);
  Result<UniqueFd> Dial(Clock::time_point deadline) const;

  Endpoint endpoint_;
  ClientOptions options_;
  mutable std::mutex mu_;
  std::vector<Idle> idle_;  // oldest first
};

}  // namespace moat::api::http
