// HttpServer: HTTP/1.1 on one TCP port (Boost.Beast for parsing and serialising, Boost.Asio for
// the listening socket). Each connection gets its own thread, so a handler may block on a
// sandbox (a streaming exec, a slow upload) and a slow or stuck client holds up only itself.
// Keep-alive, chunked request and response bodies, a body size limit (413), per-connection
// idle and write timeouts, and a bound on concurrent connections (503 past it). A handler may
// take a connection over (ResponseWriter::Hijack) to relay another protocol on it; only its own
// thread is held for as long as that lasts.
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

struct ServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 0;  // 0: any free port (tests)
  size_t body_limit = 256 * 1024 * 1024;
  size_t max_connections = 2048;
  std::chrono::seconds idle_timeout{120};   // waiting for the next request
  std::chrono::seconds write_timeout{120};  // a client that reads nothing this long is dropped
};

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
  static Result<std::unique_ptr<HttpServer>> Start(ServerOptions options, RequestHandler handler,
                                                   RejectHandler reject);
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
