// HttpServer: HTTP/1.1 on one TCP port (Boost.Beast for parsing and serialising, Boost.Asio for
// the listening socket). Each connection gets its own thread, so a handler may block on a
// sandbox (a streaming exec, a slow upload) and a slow or stuck client holds up only itself.
// Keep-alive, chunked request and response bodies, and a handler may take a connection over
// (ResponseWriter::Hijack) to relay another protocol on it.
//
// A request's head is read first and shown to the admission hook, which authenticates it and
// says how its body is read (buffered up to a limit, or streamed to the handler) — or answers it
// at once, so that nobody's body is read before their credentials are checked. Limits
// (docs/security.md, "HTTP limits"): a deadline for the whole head; a body must keep up a
// minimum rate; connections are capped in total and per client address, with a reserve that
// only authenticated requests may use; and when full, the longest-idle keep-alive connections
// are closed before a new one is refused (503).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "api/http/message.h"
#include "common/status.h"

namespace moat::api::http {

// The client address the per-client connection cap counts, from a peer "host:port": the IPv4
// address; an IPv6 client's /64 ("2001:db8:1:2::/64"); an IPv4-mapped address as IPv4.
std::string ClientOf(const std::string& peer);

struct ServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 0;  // 0: any free port (tests)
  // No body, buffered or streamed, may be larger (413); the admission hook may set less.
  size_t body_limit = 256 * 1024 * 1024;
  size_t max_connections = 2048;
  // Connections from one client address that have not authenticated yet (503 past it).
  size_t max_connections_per_client = 256;
  // Of max_connections, this many only serve requests that authenticate (Admission): past
  // max_connections - reserved_connections unauthenticated ones, a new connection is admitted
  // on probation and must authenticate its first request.
  size_t reserved_connections = 64;
  std::chrono::milliseconds header_timeout{30000};  // a request's whole head, from its first byte
  std::chrono::milliseconds probation_header_timeout{5000};  // the same on a probation slot
  // A body may take body_grace plus one second per body_min_rate bytes of time spent waiting
  // for it (time the handler spends elsewhere, e.g. on the guest, does not count); 0: no rate.
  std::chrono::milliseconds body_grace{30000};
  size_t body_min_rate = 16 * 1024;                 // bytes per second
  std::chrono::milliseconds idle_timeout{120000};   // waiting for the next request
  std::chrono::milliseconds write_timeout{120000};  // a client that reads nothing this long
};

// What the server does with a request once its head is read.
struct Admission {
  // The head carries valid credentials: its connection may use the reserve and is no longer
  // counted against its client address.
  bool authenticated = false;
  enum class Body { kBuffer, kStream };
  // kBuffer: read whole into Request::body before the handler runs; kStream: the handler reads
  // it through Request::body_stream.
  Body body = Body::kBuffer;
  size_t body_limit = 1024 * 1024;  // 413 past it (capped by ServerOptions::body_limit)
};
// Called with the request's head (Request::body empty) before any of its body is read;
// `has_body`: the head announces one. It may answer the request through the writer (401, 404...):
// the body is then never read, nor the handler called.
using AdmissionHandler = std::function<Admission(Request&, bool has_body, ResponseWriter&)>;

// Called once per request, on the connection's thread. It must answer through the writer;
// if it does not, the server answers 500.
using RequestHandler = std::function<void(Request&, ResponseWriter&)>;
// Called instead of the handler for requests the server itself rejects (413, 503, 400): it
// decides the body, so errors keep one format.
using RejectHandler = std::function<void(const Status&, int http_status, ResponseWriter&)>;

// A writer for one whole response on a connection a handler took over (Hijack) and has sent
// nothing on yet: it can still answer, with `Connection: close`. Send() only.
std::unique_ptr<ResponseWriter> HijackedResponseWriter(int fd);

class HttpServer {
 public:
  // `admit` null: every request is unauthenticated, its body buffered up to body_limit.
  static Result<std::unique_ptr<HttpServer>> Start(ServerOptions options, RequestHandler handler,
                                                   RejectHandler reject,
                                                   AdmissionHandler admit = nullptr);
  // Stops accepting, shuts every connection down and waits for their threads.
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  uint16_t port() const { return port_; }
  // Stops accepting and shuts down the sockets of open connections (their handlers see write
  // errors); Wait() then joins them. The destructor does both.
  void Shutdown();
  void Wait();
  size_t open_connections() const;

 private:
  struct Impl;
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  uint16_t port_ = 0;
};

}  // namespace moat::api::http
