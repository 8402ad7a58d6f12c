#include "storage/s3_object_store.h"

#include <algorithm>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "storage/s3_http.h"
#include "storage/s3_xml.h"

namespace moat::storage {
namespace {

using s3http::HttpCall;
using s3http::HttpReply;
using s3http::ParseUint;

constexpr std::chrono::milliseconds kMaxBackoff{5000};

// "HTTP 503 SlowDown: Please reduce your request rate."
std::string DescribeReply(const HttpReply& reply) {
  std::string out = "HTTP " + std::to_string(reply.status);
  s3xml::ErrorBody e = s3xml::ParseErrorBody(reply.body);
  if (!e.code.empty()) out += " " + e.code;
  if (!e.message.empty()) out += ": " + e.message;
  return out;
}

std::string S3ErrorCode(const HttpReply& reply) {
  return s3xml::ParseErrorBody(reply.body).code;
}

std::chrono::milliseconds Backoff(std::chrono::milliseconds base, int retry) {
  thread_local std::minstd_rand rng{std::random_device{}()};
  auto delay = base;
  for (int i = 1; i < retry && delay < kMaxBackoff; ++i) delay *= 2;
  delay = std::min(delay, kMaxBackoff);
  // "Equal jitter": half the delay fixed, half random, so that many clients that failed
  // together do not come back together.
  auto half = delay.count() / 2;
  std::uniform_int_distribution<int64_t> jitter(0, std::max<int64_t>(half, 0));
  return std::chrono::milliseconds(delay.count() - half + jitter(rng));
}

}  // namespace

struct S3ObjectStore::Impl {
  explicit Impl(s3http::ClientOptions options) : http(std::move(options)) {}

  S3Config config;
  s3http::Client http;
  std::string bucket_path;  // "/bucket"
  std::string key_path;     // "/bucket/prefix/" or "/bucket/"
  std::string key_prefix;   // "prefix/" or ""
  std::string description;
  ObjectStoreStats* stats = nullptr;

  std::string What(const std::string& method, const std::string& key) const {
    return "s3 " + method + " " + key + " on " + description;
  }

  // Attempts until an answer that is not 5xx or 429, or max_attempts; unavailable then.
  Result<HttpReply> Perform(const HttpCall& call, const std::string& what);
  // The error for an answer the caller did not expect (and counts the failure).
  Status HttpError(const HttpReply& reply, const std::string& what);
};

Result<HttpReply> S3ObjectStore::Impl::Perform(const HttpCall& call, const std::string& what) {
  std::string last_error;
  for (int attempt = 1; attempt <= config.max_attempts; ++attempt) {
    if (attempt > 1) {
      stats->retries++;
      std::this_thread::sleep_for(Backoff(config.backoff_base, attempt - 1));
    }
    bool retry = false;
    auto reply = http.Send(call, &retry);
    if (reply.ok()) {
      if (reply->status < 500 && reply->status != 429) return reply;
      last_error = DescribeReply(*reply);
      continue;
    }
    last_error = reply.status().message();
    if (!retry) {
      stats->failures++;
      return Unavailable(what + ": " + last_error);
    }
  }
  stats->failures++;
  return Unavailable(what + ": gave up after " + std::to_string(config.max_attempts) +
                     " attempts; last: " + last_error);
}

Status S3ObjectStore::Impl::HttpError(const HttpReply& reply, const std::string& what) {
  stats->failures++;
  std::string detail = what + ": " + DescribeReply(reply);
  if (reply.status == 403) return Status(ErrorCode::kPermissionDenied, detail);
  return Internal(detail);
}

S3ObjectStore::S3ObjectStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {
  impl_->stats = &stats_;
}

S3ObjectStore::~S3ObjectStore() = default;

Result<std::unique_ptr<S3ObjectStore>> S3ObjectStore::Make(S3Config config) {
  MOAT_ASSIGN_OR_RETURN(s3http::Endpoint endpoint, s3http::ParseEndpoint(config.endpoint));
  // The location is checked as ParseS3Url checks it (a config may be built without a URL).
  std::string url = "s3://" + config.location.bucket;
  if (!config.location.prefix.empty()) url += "/" + config.location.prefix;
  MOAT_ASSIGN_OR_RETURN(S3Location location, ParseS3Url(url));
  if (location.prefix != config.location.prefix) {
    return InvalidArgument("S3 prefix \"" + config.location.prefix + "\" ends with '/'");
  }
  if (config.region.empty()) return InvalidArgument("S3 region is empty");
  if (config.credentials.access_key_id.empty() || config.credentials.secret_access_key.empty()) {
    return InvalidArgument("S3 credentials: the access key id or the secret is empty");
  }
  if (config.max_attempts < 1) return InvalidArgument("S3 max_attempts must be at least 1");
  if (config.connect_timeout.count() <= 0 || config.request_timeout.count() <= 0) {
    return InvalidArgument("S3 timeouts must be positive");
  }
  if (config.backoff_base.count() < 0) return InvalidArgument("S3 backoff must not be negative");

  s3http::ClientOptions http;
  http.endpoint = std::move(endpoint);
  http.region = config.region;
  http.credentials = config.credentials;
  http.connect_timeout = config.connect_timeout;
  http.request_timeout = config.request_timeout;
  http.max_send_bytes_per_second = config.max_send_bytes_per_second;
  auto impl = std::make_unique<Impl>(std::move(http));
  impl->bucket_path = "/" + config.location.bucket;
  impl->key_prefix = config.location.prefix.empty() ? "" : config.location.prefix + "/";
  impl->key_path = impl->bucket_path + "/" + impl->key_prefix;
  impl->description = url + " at " + impl->http.endpoint().base;
  impl->config = std::move(config);
  return std::unique_ptr<S3ObjectStore>(new S3ObjectStore(std::move(impl)));
}

std::string S3ObjectStore::Describe() const {
  return impl_->description;
}

namespace {

Status BadKey(const std::string& key) {
  return InvalidArgument("object key \"" + key +
                         "\" is not valid (segments of [A-Za-z0-9._-], no \".\" or \"..\", at "
                         "most 512 bytes)");
}

}  // namespace

Status S3ObjectStore::Put(const std::string& key, std::string_view body) {
  if (!IsValidObjectKey(key)) return BadKey(key);
  HttpCall call;
  call.method = "PUT";
  call.path = impl_->key_path + key;
  call.body = body;
  call.payload_sha256 = Sha256Hex(body);
  std::string what = impl_->What("PUT", key);
  MOAT_ASSIGN_OR_RETURN(HttpReply reply, impl_->Perform(call, what));
  if (reply.status / 100 != 2) return impl_->HttpError(reply, what);
  stats_.puts++;
  stats_.put_bytes += body.size();
  return Status::Ok();
}

Result<std::string> S3ObjectStore::Get(const std::string& key) {
  if (!IsValidObjectKey(key)) return BadKey(key);
  HttpCall call;
  call.method = "GET";
  call.path = impl_->key_path + key;
  std::string what = impl_->What("GET", key);
  MOAT_ASSIGN_OR_RETURN(HttpReply reply, impl_->Perform(call, what));
  if (reply.status == 404) return NotFound(what + ": " + DescribeReply(reply));
  if (reply.status != 200) return impl_->HttpError(reply, what);
  stats_.gets++;
  stats_.get_bytes += reply.body.size();
  return std::move(reply.body);
}

Result<std::string> S3ObjectStore::GetRange(const std::string& key, uint64_t offset,
                                            uint64_t length) {
  if (!IsValidObjectKey(key)) return BadKey(key);
  std::string what =
      impl_->What("GET", key) + " bytes " + std::to_string(offset) + "+" + std::to_string(length);
  if (length == 0 || offset + length < offset) {
    return InvalidArgument(what + ": bad range");
  }
  HttpCall call;
  call.method = "GET";
  call.path = impl_->key_path + key;
  call.range = "bytes=" + std::to_string(offset) + "-" + std::to_string(offset + length - 1);
  MOAT_ASSIGN_OR_RETURN(HttpReply reply, impl_->Perform(call, what));
  std::string body;
  if (reply.status == 206) {
    // "bytes <first>-<last>/<size>": the part must start where we asked.
    std::string_view cr = reply.content_range;
    size_t dash = cr.find('-');
    std::optional<uint64_t> first;
    if (cr.substr(0, 6) == "bytes " && dash != std::string_view::npos) {
      first = ParseUint(cr.substr(6, dash - 6));
    }
    if (!first || *first != offset) {
      stats_.failures++;
      return Internal(what + ": the server answered another range (Content-Range \"" +
                      reply.content_range + "\", " + std::to_string(reply.body.size()) + " bytes)");
    }
    body = std::move(reply.body);
    // More than asked for, from the right place (s3rver reads "bytes=0-0" as "bytes=0-").
    if (body.size() > length) body.resize(length);
  } else if (reply.status == 200) {
    // A server that ignores Range sends the whole object.
    if (offset < reply.body.size()) {
      body = reply.body.substr(offset, std::min<uint64_t>(length, reply.body.size() - offset));
    }
  } else if (reply.status == 416) {
    // The range starts at or past the end: the object has no bytes there.
  } else if (reply.status == 404) {
    return NotFound(what + ": " + DescribeReply(reply));
  } else {
    return impl_->HttpError(reply, what);
  }
  stats_.gets++;
  stats_.get_bytes += body.size();
  return body;
}

Result<std::optional<uint64_t>> S3ObjectStore::Head(const std::string& key) {
  if (!IsValidObjectKey(key)) return BadKey(key);
  HttpCall call;
  call.method = "HEAD";
  call.path = impl_->key_path + key;
  std::string what = impl_->What("HEAD", key);
  MOAT_ASSIGN_OR_RETURN(HttpReply reply, impl_->Perform(call, what));
  if (reply.status == 404) {
    stats_.heads++;
    return std::optional<uint64_t>();
  }
  if (reply.status != 200) return impl_->HttpError(reply, what);
  if (!reply.content_length) {
    stats_.failures++;
    return Internal(what + ": the answer has no Content-Length");
  }
  stats_.heads++;
  return std::optional<uint64_t>(*reply.content_length);
}

Status S3ObjectStore::Delete(const std::string& key) {
  if (!IsValidObjectKey(key)) return BadKey(key);
  HttpCall call;
  call.method = "DELETE";
  call.path = impl_->key_path + key;
  std::string what = impl_->What("DELETE", key);
  MOAT_ASSIGN_OR_RETURN(HttpReply reply, impl_->Perform(call, what));
  if (reply.status != 204 && reply.status != 200 && reply.status != 404) {
    return impl_->HttpError(reply, what);
  }
  stats_.deletes++;
  return Status::Ok();
}

Result<std::vector<ObjectInfo>> S3ObjectStore::List(const std::string& prefix) {
  std::vector<ObjectInfo> out;
  std::string token;
  const std::string& strip = impl_->key_prefix;
  for (int page = 1;; ++page) {
    HttpCall call;
    call.method = "GET";
    call.path = impl_->bucket_path;
    call.query = {{"list-type", "2"}, {"prefix", strip + prefix}};
    if (!token.empty()) call.query.emplace_back("continuation-token", token);
    std::string what = impl_->What("LIST", prefix + "*") + " page " + std::to_string(page);
    MOAT_ASSIGN_OR_RETURN(HttpReply reply, impl_->Perform(call, what));
    if (reply.status != 200) return impl_->HttpError(reply, what);
    auto parsed = s3xml::ParseListObjectsV2(reply.body);
    if (!parsed.ok()) {
      stats_.failures++;
      return Internal(what + ": " + parsed.status().message());
    }
    stats_.lists++;
    for (ObjectInfo& info : parsed->objects) {
      // The server lists by the full prefix: every key starts with the store's own.
      if (info.key.compare(0, strip.size(), strip) != 0) continue;
      info.key.erase(0, strip.size());
      out.push_back(std::move(info));
    }
    if (!parsed->truncated) break;
    if (parsed->next_continuation_token == token) {
      stats_.failures++;
      return Internal(what + ": the server repeated its continuation token");
    }
    token = std::move(parsed->next_continuation_token);
  }
  // S3 lists in key order already; a server that does not must not break callers that merge.
  std::sort(out.begin(), out.end(),
            [](const ObjectInfo& a, const ObjectInfo& b) { return a.key < b.key; });
  return out;
}

Status S3ObjectStore::CreateBucket() {
  HttpCall call;
  call.method = "PUT";
  call.path = impl_->bucket_path;
  // us-east-1 is the default location; elsewhere AWS wants it spelled out.
  std::string body;
  if (impl_->config.region != "us-east-1") {
    body =
        "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
        "<LocationConstraint>" +
        impl_->config.region + "</LocationConstraint></CreateBucketConfiguration>";
  }
  call.body = body;
  call.payload_sha256 = Sha256Hex(body);
  std::string what = "s3 create bucket " + impl_->description;
  MOAT_ASSIGN_OR_RETURN(HttpReply reply, impl_->Perform(call, what));
  if (reply.status / 100 == 2) return Status::Ok();
  std::string code = S3ErrorCode(reply);
  if (reply.status == 409 && (code == "BucketAlreadyOwnedByYou" || code == "BucketAlreadyExists")) {
    return Status::Ok();
  }
  return impl_->HttpError(reply, what);
}

}  // namespace moat::storage
