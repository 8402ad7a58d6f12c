// S3ObjectStore: ObjectStore over an S3-compatible HTTP API (AWS S3, MinIO, s3rver, Ceph RGW),
// path-style requests through libcurl, each signed with SigV4 (sigv4.h) and carrying
// x-amz-content-sha256 (the body's SHA-256 on PUT, UNSIGNED-PAYLOAD otherwise).
//
// Every request has a connect timeout and a total timeout; a request that fails for a reason
// that may pass (connection refused or reset, timeout, 5xx, 429) is retried with exponential
// back-off and jitter up to max_attempts, then answers unavailable. Thread-safe: requests may run
// from many threads at once (one curl easy handle per request, taken from a small pool of idle
// handles that keep their connections open: libcurl does not support sharing one connection
// cache between threads).
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "storage/object_store.h"
#include "storage/sigv4.h"

namespace moat::storage {

struct S3Location {
  std::string bucket;
  std::string prefix;  // "" or "a/b" (no leading or trailing '/')
};

// "s3://bucket" or "s3://bucket/some/prefix" (a trailing '/' is dropped); invalid_argument naming
// what is wrong otherwise. Bucket names: 3-63 of [a-z0-9.-].
Result<S3Location> ParseS3Url(std::string_view url);

struct S3Config {
  S3Location location;
  std::string endpoint;  // "http://127.0.0.1:4569" or "https://s3.eu-west-1.amazonaws.com"
  std::string region = "us-east-1";
  SigV4Credentials credentials;
  std::chrono::milliseconds connect_timeout{3000};
  std::chrono::milliseconds request_timeout{60000};
  int max_attempts = 5;
  std::chrono::milliseconds backoff_base{100};  // doubled each retry, with jitter, capped 5 s
  // Bytes per second one PUT may send; 0: unlimited.
  uint64_t max_send_bytes_per_second = 0;
};

// Credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN when set, else
// from `file` when not empty: an AWS shared-credentials file (its [default] section, or the only
// section) or lines of KEY=VALUE with those names. failed_precondition naming the file or the
// variable when neither gives both keys. The secret never appears in an error.
Result<SigV4Credentials> LoadS3Credentials(const std::string& file);

class S3ObjectStore : public ObjectStore {
 public:
  // invalid_argument for an endpoint that is not http(s)://host[:port].
  static Result<std::unique_ptr<S3ObjectStore>> Make(S3Config config);
  ~S3ObjectStore() override;

  Status Put(const std::string& key, std::string_view body) override;
  Result<std::string> Get(const std::string& key) override;
  Result<std::string> GetRange(const std::string& key, uint64_t offset, uint64_t length) override;
  Result<std::optional<uint64_t>> Head(const std::string& key) override;
  Status Delete(const std::string& key) override;
  Result<std::vector<ObjectInfo>> List(const std::string& prefix) override;
  std::string Describe() const override;

  // Creates the bucket (tests, and a first start against an empty server); ok if it exists.
  Status CreateBucket();

 private:
  struct Impl;
  explicit S3ObjectStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace moat::storage
