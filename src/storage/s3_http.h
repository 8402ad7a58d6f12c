// One signed request to an S3-compatible server over libcurl: the transport under S3ObjectStore,
// which adds the retries and maps answers to errors. Private to the storage module.
#pragma once

#include <curl/curl.h>

#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "storage/sigv4.h"

namespace moat::storage::s3http {

struct Endpoint {
  std::string base;  // "http://127.0.0.1:4569" (no trailing '/')
  std::string host;  // the Host header: "127.0.0.1:4569"
};

// "http(s)://host[:port]", a trailing '/' allowed; invalid_argument naming what is wrong.
Result<Endpoint> ParseEndpoint(std::string_view url);

// One request, before it is signed (each attempt signs it again, with the time it is sent).
struct HttpCall {
  std::string method;  // GET, PUT, HEAD, DELETE
  std::string path;    // "/bucket/prefix/key", not encoded
  HeaderList query;    // not encoded
  std::string range;   // a Range header's value, or ""
  std::string_view body;
  std::string payload_sha256 = std::string(kUnsignedPayload);
};

struct HttpReply {
  long status = 0;
  std::string body;
  std::optional<uint64_t> content_length;
  std::string content_range;
};

// A decimal number of at most 19 digits, nothing else.
std::optional<uint64_t> ParseUint(std::string_view s);

struct ClientOptions {
  Endpoint endpoint;
  std::string region;
  SigV4Credentials credentials;
  std::chrono::milliseconds connect_timeout{3000};
  std::chrono::milliseconds request_timeout{60000};
  uint64_t max_send_bytes_per_second = 0;  // PUT bodies; 0: unlimited
};

// Thread-safe. Each request runs on a curl easy handle of its own, taken from a small pool of
// idle ones that keep their connections (and DNS answers) between requests: libcurl does not
// support one connection cache shared by threads.
class Client {
 public:
  explicit Client(ClientOptions options);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // One attempt, signed as it is sent. An error is a transport failure (no HTTP answer:
  // refused, reset, timed out), unavailable; *retry says whether another attempt may succeed.
  Result<HttpReply> Send(const HttpCall& call, bool* retry);

  const Endpoint& endpoint() const { return options_.endpoint; }

 private:
  CURL* TakeHandle();
  void GiveHandle(CURL* h);

  const ClientOptions options_;
  std::mutex mu_;
  std::vector<CURL*> idle_;  // guarded by mu_
};

}  // namespace moat::storage::s3http
