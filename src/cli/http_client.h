// A small synchronous HTTP/1.1 client for the CLI (Boost.Beast): one connection per request,
// plain http:// only, chunked responses handled by Beast. A 2xx body can be streamed to a sink
// as bytes arrive (exec output, downloads); other bodies are collected so the caller can read
// the API's error message.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

namespace moat::cli {

// "http://host[:port][/prefix]" split into its parts; port defaults to 80.
struct BaseUrl {
  std::string host;
  std::string port;
  std::string prefix;  // no trailing slash; "" for the root
};
Result<BaseUrl> ParseBaseUrl(std::string_view url);

// An absolute "http://host[:port]/path?query" (an upload URL the server hands out) as where to
// connect and the target to ask for there.
struct UrlTarget {
  BaseUrl base;        // prefix ""
  std::string target;  // "/path?query"; "/" when the URL has no path
};
Result<UrlTarget> ParseUrl(std::string_view url);

struct HttpRequest {
  std::string method;  // "GET", "POST", "PUT", "DELETE"
  std::string target;  // path and query, appended to the base URL's prefix
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  // When >= 0, the body is this file instead, from offset 0 to its end, streamed with a
  // Content-Length (never chunked: presigned upload URLs refuse chunked bodies). Borrowed.
  int body_fd = -1;
  // When > 0, the exchange after connecting (sending, then the whole response) must be over
  // within this; past it the connection is shut and the result is deadline_exceeded.
  std::chrono::milliseconds timeout{0};
  // A body that is collected (non-2xx, or no sink) stops being read past this many bytes; what
  // was read is returned. For peers that are not trusted to send a bounded error message.
  size_t max_collected_body = std::numeric_limits<size_t>::max();
};

struct HttpResponse {
  int status = 0;
  std::string content_type;
  std::string next_token;  // X-Next-Token (list pagination), "" when absent
  std::string body;        // empty when a 2xx body went to the sink
};

// Receives a 2xx body chunk by chunk; an error stops the transfer and is returned.
using BodySink = std::function<Status(std::string_view chunk)>;

// Sends `request` and reads the response. Transport failures are `unavailable` naming the URL;
// a request past its `timeout` is `deadline_exceeded`.
Result<HttpResponse> SendHttp(const BaseUrl& base, const HttpRequest& request,
                              const BodySink& sink = nullptr);

}  // namespace moat::cli
