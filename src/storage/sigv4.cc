#include "storage/sigv4.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include <algorithm>
#include <cctype>
#include <ctime>
#include <map>

namespace moat::storage {
namespace {

constexpr std::string_view kAlgorithm = "AWS4-HMAC-SHA256";

std::array<uint8_t, 32> HmacSha256(const void* key, size_t key_size, std::string_view data) {
  std::array<uint8_t, 32> out{};
  unsigned int len = 0;
  // HMAC with SHA-256 and in-memory buffers fails only on allocation failure.
  HMAC(EVP_sha256(), key, static_cast<int>(key_size),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), out.data(), &len);
  return out;
}

std::string Lowercase(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// Leading and trailing whitespace removed, every inner run of spaces and tabs made one space.
std::string TrimAndCollapse(std::string_view value) {
  std::string out;
  bool pending_space = false;
  for (char c : value) {
    if (c == ' ' || c == '\t') {
      pending_space = !out.empty();
      continue;
    }
    if (pending_space) out.push_back(' ');
    pending_space = false;
    out.push_back(c);
  }
  return out;
}

bool IsSignerHeader(std::string_view lower_name) {
  return lower_name == "x-amz-date" || lower_name == "x-amz-content-sha256" ||
         lower_name == "x-amz-security-token" || lower_name == "authorization";
}

// YYYYMMDD'T'HHMMSS'Z'
std::string AmzDate(int64_t unix_seconds) {
  std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[17];
  std::strftime(buf, sizeof buf, "%Y%m%dT%H%M%SZ", &tm);
  return buf;
}

std::string CanonicalQuery(const HeaderList& query) {
  std::vector<std::pair<std::string, std::string>> encoded;
  encoded.reserve(query.size());
  for (const auto& [name, value] : query) {
    encoded.emplace_back(SigV4UriEncode(name, false), SigV4UriEncode(value, false));
  }
  std::sort(encoded.begin(), encoded.end());
  std::string out;
  for (const auto& [name, value] : encoded) {
    if (!out.empty()) out.push_back('&');
    out += name;
    out.push_back('=');
    out += value;
  }
  return out;
}

}  // namespace

std::string HexEncode(const uint8_t* data, size_t size) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(size * 2);
  for (size_t i = 0; i < size; ++i) {
    out.push_back(kDigits[data[i] >> 4]);
    out.push_back(kDigits[data[i] & 0xf]);
  }
  return out;
}

std::string Sha256Hex(std::string_view data) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), md);
  return HexEncode(md, sizeof md);
}

std::string SigV4UriEncode(std::string_view text, bool keep_slash) {
  static constexpr char kDigits[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(text.size());
  for (char ch : text) {
    auto c = static_cast<unsigned char>(ch);
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' ||
        (keep_slash && c == '/')) {
      out.push_back(ch);
    } else {
      out.push_back('%');
      out.push_back(kDigits[c >> 4]);
      out.push_back(kDigits[c & 0xf]);
    }
  }
  return out;
}

std::array<uint8_t, 32> SigV4SigningKey(std::string_view secret_access_key, std::string_view date,
                                        std::string_view region, std::string_view service) {
  std::string k_secret = "AWS4";
  k_secret += secret_access_key;
  std::array<uint8_t, 32> key = HmacSha256(k_secret.data(), k_secret.size(), date);
  OPENSSL_cleanse(k_secret.data(), k_secret.size());
  key = HmacSha256(key.data(), key.size(), region);
  key = HmacSha256(key.data(), key.size(), service);
  return HmacSha256(key.data(), key.size(), "aws4_request");
}

SigV4Signed SignV4(const SigV4Request& request, const SigV4Credentials& credentials,
                   const SigV4Scope& scope, int64_t unix_seconds) {
  SigV4Signed out;
  const std::string amz_date = AmzDate(unix_seconds);
  const std::string date = amz_date.substr(0, 8);

  out.headers_to_add.emplace_back("x-amz-date", amz_date);
  if (request.add_content_sha256_header) {
    out.headers_to_add.emplace_back("x-amz-content-sha256", request.payload_sha256);
  }
  if (!credentials.session_token.empty()) {
    out.headers_to_add.emplace_back("x-amz-security-token", credentials.session_token);
  }

  // Lowercase name -> values in the order given; repeated headers join with ','.
  std::map<std::string, std::vector<std::string>> headers;
  for (const auto& [name, value] : request.headers) {
    std::string lower = Lowercase(name);
    if (IsSignerHeader(lower)) continue;
    headers[lower].push_back(TrimAndCollapse(value));
  }
  for (const auto& [name, value] : out.headers_to_add) headers[name].push_back(value);

  std::string canonical_headers;
  std::string signed_headers;
  for (const auto& [name, values] : headers) {
    canonical_headers += name;
    canonical_headers.push_back(':');
    for (size_t i = 0; i < values.size(); ++i) {
      if (i > 0) canonical_headers.push_back(',');
      canonical_headers += values[i];
    }
    canonical_headers.push_back('\n');
    if (!signed_headers.empty()) signed_headers.push_back(';');
    signed_headers += name;
  }

  std::string path = request.path.empty() ? "/" : request.path;
  if (path.front() != '/') path.insert(path.begin(), '/');

  out.canonical_request = request.method + "\n" + SigV4UriEncode(path, true) + "\n" +
                          CanonicalQuery(request.query) + "\n" + canonical_headers + "\n" +
                          signed_headers + "\n" + request.payload_sha256;

  const std::string credential_scope =
      date + "/" + scope.region + "/" + scope.service + "/aws4_request";
  out.string_to_sign = std::string(kAlgorithm) + "\n" + amz_date + "\n" + credential_scope + "\n" +
                       Sha256Hex(out.canonical_request);

  std::array<uint8_t, 32> key =
      SigV4SigningKey(credentials.secret_access_key, date, scope.region, scope.service);
  std::array<uint8_t, 32> mac = HmacSha256(key.data(), key.size(), out.string_to_sign);
  OPENSSL_cleanse(key.data(), key.size());
  out.signature = HexEncode(mac.data(), mac.size());

  out.authorization = std::string(kAlgorithm) + " Credential=" + credentials.access_key_id + "/" +
                      credential_scope + ",SignedHeaders=" + signed_headers +
                      ",Signature=" + out.signature;
  return out;
}

}  // namespace moat::storage
