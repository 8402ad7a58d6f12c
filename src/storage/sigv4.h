// AWS Signature Version 4 (header-based authentication) for S3-compatible object stores.
//
// Pure: the caller supplies the time and the payload's SHA-256, and gets back every
// intermediate (canonical request, string to sign) so that a signature mismatch reported by a
// server can be diagnosed, and so that the known-answer tests can check each step.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moat::storage {

using HeaderList = std::vector<std::pair<std::string, std::string>>;

// The secret is only ever an HMAC key: nothing here formats, logs or returns it.
struct SigV4Credentials {
  std::string access_key_id;
  std::string secret_access_key;
  std::string session_token;  // empty: none (long-term keys)
};

inline constexpr std::string_view kUnsignedPayload = "UNSIGNED-PAYLOAD";

struct SigV4Request {
  std::string method;  // "GET", "PUT", ...
  // The path as the object key spells it, not yet encoded: each segment is encoded exactly once
  // (S3 rule: no double encoding). Empty means "/".
  std::string path;
  // Query parameters, not yet encoded; a parameter without a value has an empty value.
  HeaderList query;
  // Headers to sign, any case; must include Host. Values are trimmed and inner runs of spaces
  // collapsed for signing. x-amz-date, x-amz-content-sha256 and x-amz-security-token given here
  // are ignored: the signer supplies them (SigV4Signed::headers_to_add).
  HeaderList headers;
  // Lowercase hex SHA-256 of the body, or kUnsignedPayload.
  std::string payload_sha256;
  // S3 requires the x-amz-content-sha256 header; other services do not use it.
  bool add_content_sha256_header = true;
};

struct SigV4Scope {
  std::string region;
  std::string service = "s3";
};

struct SigV4Signed {
  std::string canonical_request;
  std::string string_to_sign;
  std::string signature;      // lowercase hex
  std::string authorization;  // the Authorization header's value
  // To send with the request besides request.headers and Authorization: x-amz-date, then
  // x-amz-content-sha256 and x-amz-security-token where they apply. All are signed.
  HeaderList headers_to_add;
};

// Signs `request` as of `unix_seconds` (UTC).
SigV4Signed SignV4(const SigV4Request& request, const SigV4Credentials& credentials,
                   const SigV4Scope& scope, int64_t unix_seconds);

// The signing key: HMAC chain "AWS4"+secret -> date (YYYYMMDD) -> region -> service ->
// "aws4_request".
std::array<uint8_t, 32> SigV4SigningKey(std::string_view secret_access_key, std::string_view date,
                                        std::string_view region, std::string_view service);

// SigV4's URI encoding: every byte but A-Za-z0-9-._~ as %XX (uppercase hex); '/' kept when
// `keep_slash` (paths), encoded otherwise (query names and values).
std::string SigV4UriEncode(std::string_view text, bool keep_slash);

// Lowercase hex SHA-256 of `data` (an x-amz-content-sha256 value).
std::string Sha256Hex(std::string_view data);

std::string HexEncode(const uint8_t* data, size_t size);

}  // namespace moat::storage
