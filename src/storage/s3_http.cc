#include "storage/s3_http.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <ctime>
#include <memory>
#include <utility>

namespace moat::storage::s3http {
namespace {

// Idle easy handles kept (each with its connections); more run at once, but are then freed.
constexpr size_t kMaxIdleHandles = 16;

void InitCurlOnce() {
  static std::once_flag once;
  // curl_global_init is not thread-safe itself: once per process, never cleaned up.
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

bool IsHostChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '-';
}

std::string EncodeQuery(const HeaderList& query) {
  std::vector<std::pair<std::string, std::string>> encoded;
  for (const auto& [name, value] : query) {
    encoded.emplace_back(SigV4UriEncode(name, false), SigV4UriEncode(value, false));
  }
  std::sort(encoded.begin(), encoded.end());
  std::string out;
  for (const auto& [name, value] : encoded) {
    if (!out.empty()) out.push_back('&');
    out += name + "=" + value;
  }
  return out;
}

size_t OnBody(char* data, size_t size, size_t n, void* userdata) {
  static_cast<HttpReply*>(userdata)->body.append(data, size * n);
  return size * n;
}

bool HeaderIs(std::string_view line, std::string_view name) {
  if (line.size() <= name.size() || line[name.size()] != ':') return false;
  for (size_t i = 0; i < name.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(line[i])) != name[i]) return false;
  }
  return true;
}

std::string_view HeaderValue(std::string_view line, size_t name_size) {
  std::string_view v = line.substr(name_size + 1);
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == '\r' || v.back() == '\n' || v.back() == ' ')) {
    v.remove_suffix(1);
  }
  return v;
}

size_t OnHeader(char* data, size_t size, size_t n, void* userdata) {
  auto* reply = static_cast<HttpReply*>(userdata);
  std::string_view line(data, size * n);
  if (line.substr(0, 5) == "HTTP/") {
    // A new response (after a 100 Continue, say): its headers replace the last one's.
    reply->content_length.reset();
    reply->content_range.clear();
  } else if (HeaderIs(line, "content-length")) {
    reply->content_length = ParseUint(HeaderValue(line, 14));
  } else if (HeaderIs(line, "content-range")) {
    reply->content_range = std::string(HeaderValue(line, 13));
  }
  return size * n;
}

struct UploadCursor {
  std::string_view body;
  size_t offset = 0;
};

size_t OnRead(char* buffer, size_t size, size_t n, void* userdata) {
  auto* cursor = static_cast<UploadCursor*>(userdata);
  size_t count = std::min(size * n, cursor->body.size() - cursor->offset);
  std::memcpy(buffer, cursor->body.data() + cursor->offset, count);
  cursor->offset += count;
  return count;
}

int OnSeek(void* userdata, curl_off_t offset, int origin) {
  auto* cursor = static_cast<UploadCursor*>(userdata);
  if (origin != SEEK_SET || offset < 0 || static_cast<size_t>(offset) > cursor->body.size()) {
    return CURL_SEEKFUNC_CANTSEEK;
  }
  cursor->offset = static_cast<size_t>(offset);
  return CURL_SEEKFUNC_OK;
}

// Transport errors that will not pass by trying again: the request or the set-up is wrong.
bool IsPermanent(CURLcode rc) {
  switch (rc) {
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_NOT_BUILT_IN:
    case CURLE_OUT_OF_MEMORY:
    case CURLE_BAD_FUNCTION_ARGUMENT:
    case CURLE_ABORTED_BY_CALLBACK:
    case CURLE_READ_ERROR:
    case CURLE_WRITE_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CIPHER:
    case CURLE_LOGIN_DENIED: return true;
    default: return false;
  }
}

}  // namespace

Result<Endpoint> ParseEndpoint(std::string_view url) {
  auto bad = [&](std::string_view why) {
    return InvalidArgument("S3 endpoint \"" + std::string(url) +
                           "\": expected http(s)://host[:port] (" + std::string(why) + ")");
  };
  std::string_view rest;
  if (url.substr(0, 7) == "http://") {
    rest = url.substr(7);
  } else if (url.substr(0, 8) == "https://") {
    rest = url.substr(8);
  } else {
    return bad("scheme");
  }
  if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  std::string_view host = rest;
  std::string_view port;
  if (!rest.empty() && rest.front() == '[') {  // [IPv6]:port
    size_t close = rest.find(']');
    if (close == std::string_view::npos || close == 1) return bad("host");
    for (char c : rest.substr(1, close - 1)) {
      if (!std::isxdigit(static_cast<unsigned char>(c)) && c != ':' && c != '.') {
        return bad("host");
      }
    }
    host = rest.substr(0, close + 1);
    std::string_view after = rest.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return bad("host");
      port = after.substr(1);
      if (port.empty()) return bad("port");
    }
  } else {
    size_t colon = rest.find(':');
    if (colon != std::string_view::npos) {
      host = rest.substr(0, colon);
      port = rest.substr(colon + 1);
      if (port.empty()) return bad("port");
    }
    if (host.empty()) return bad("host");
    for (char c : host) {
      if (!IsHostChar(c)) return bad("host");
    }
  }
  if (!port.empty()) {
    if (port.size() > 5) return bad("port");
    int p = 0;
    for (char c : port) {
      if (c < '0' || c > '9') return bad("port");
      p = p * 10 + (c - '0');
    }
    if (p < 1 || p > 65535) return bad("port");
  }
  Endpoint e;
  e.base = std::string(url.substr(0, url.size() - (url.back() == '/' ? 1 : 0)));
  e.host = std::string(rest);
  return e;
}

std::optional<uint64_t> ParseUint(std::string_view s) {
  if (s.empty() || s.size() > 19) return std::nullopt;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  return v;
}

Client::Client(ClientOptions options) : options_(std::move(options)) {
  InitCurlOnce();
}

Client::~Client() {
  for (CURL* h : idle_) curl_easy_cleanup(h);
}

CURL* Client::TakeHandle() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!idle_.empty()) {
      CURL* h = idle_.back();
      idle_.pop_back();
      return h;
    }
  }
  return curl_easy_init();
}

void Client::GiveHandle(CURL* h) {
  // Forget this request's headers, buffers and callbacks; the connections stay open.
  curl_easy_reset(h);
  std::lock_guard<std::mutex> lock(mu_);
  if (idle_.size() < kMaxIdleHandles) {
    idle_.push_back(h);
    return;
  }
  curl_easy_cleanup(h);
}

Result<HttpReply> Client::Send(const HttpCall& call, bool* retry) {
  *retry = false;
  CURL* h = TakeHandle();
  if (h == nullptr) return Internal("curl_easy_init failed");
  std::unique_ptr<curl_slist, void (*)(curl_slist*)> headers(nullptr, curl_slist_free_all);
  auto add_header = [&](const std::string& line) {
    curl_slist* next = curl_slist_append(headers.get(), line.c_str());
    if (next != nullptr) {
      (void)headers.release();
      headers.reset(next);
    }
  };

  SigV4Request req;
  req.method = call.method;
  req.path = call.path;
  req.query = call.query;
  req.headers = {{"host", options_.endpoint.host}};
  if (!call.range.empty()) req.headers.emplace_back("range", call.range);
  req.payload_sha256 = call.payload_sha256;
  SigV4Signed signed_req = SignV4(req, options_.credentials, SigV4Scope{options_.region, "s3"},
                                  static_cast<int64_t>(std::time(nullptr)));
  add_header("Host: " + options_.endpoint.host);
  add_header("Authorization: " + signed_req.authorization);
  for (const auto& [name, value] : signed_req.headers_to_add) add_header(name + ": " + value);
  if (!call.range.empty()) add_header("Range: " + call.range);
  // No "Expect: 100-continue" round trip before a PUT's body.
  add_header("Expect:");

  std::string url = options_.endpoint.base + SigV4UriEncode(call.path, true);
  if (!call.query.empty()) url += "?" + EncodeQuery(call.query);

  HttpReply reply;
  UploadCursor cursor{call.body, 0};
  char error_buffer[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(h, CURLOPT_URL, url.c_str());
  curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS,
                   static_cast<long>(options_.connect_timeout.count()));
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, static_cast<long>(options_.request_timeout.count()));
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers.get());
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, error_buffer);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, OnBody);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &reply);
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, OnHeader);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, &reply);
  if (call.method == "HEAD") {
    curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
  } else if (call.method == "PUT") {
    curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(h, CURLOPT_READFUNCTION, OnRead);
    curl_easy_setopt(h, CURLOPT_READDATA, &cursor);
    curl_easy_setopt(h, CURLOPT_SEEKFUNCTION, OnSeek);
    curl_easy_setopt(h, CURLOPT_SEEKDATA, &cursor);
    curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(call.body.size()));
    if (options_.max_send_bytes_per_second > 0) {
      curl_easy_setopt(h, CURLOPT_MAX_SEND_SPEED_LARGE,
                       static_cast<curl_off_t>(options_.max_send_bytes_per_second));
    }
  } else if (call.method != "GET") {
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, call.method.c_str());
  }

  CURLcode rc = curl_easy_perform(h);
  long status = 0;
  if (rc == CURLE_OK) curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
  GiveHandle(h);
  if (rc != CURLE_OK) {
    *retry = !IsPermanent(rc);
    std::string detail = error_buffer[0] != '\0' ? error_buffer : curl_easy_strerror(rc);
    return Unavailable(std::string(curl_easy_strerror(rc)) + " (" + detail + ")");
  }
  reply.status = status;
  return reply;
}

}  // namespace moat::storage::s3http
