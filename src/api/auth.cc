#include "api/auth.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sys/stat.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>

#include "api/codec/protojson.h"
#include "api/codec/query.h"
#include "api/dashboard_session.h"
#include "common/fs.h"
#include "common/socket.h"
#include "common/unique_fd.h"

namespace moat::api {

std::string Sha256(std::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), digest, &len, EVP_sha256(), nullptr);
  return std::string(reinterpret_cast<const char*>(digest), len);
}

std::string Sha256Hex(std::string_view data) {
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (unsigned char c : Sha256(data)) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 15]);
  }
  return out;
}

std::string RandomToken(std::string_view prefix, size_t bytes) {
  std::string raw(bytes, '\0');
  // RAND_bytes writes `bytes` bytes into the string's buffer, which holds exactly that many.
  if (RAND_bytes(reinterpret_cast<unsigned char*>(raw.data()), static_cast<int>(bytes)) != 1) {
    std::abort();  // no randomness: nothing secure can be issued
  }
  static const char* kHex = "0123456789abcdef";
  std::string out(prefix);
  for (unsigned char c : raw) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 15]);
  }
  return out;
}

std::string NewApiKey() {
  return RandomToken("e2b_", 20);
}

std::string MaskApiKey(std::string_view key) {
  if (key.size() <= 13) return std::string(key.substr(0, 4)) + "…";
  return std::string(key.substr(0, 9)) + "…" + std::string(key.substr(key.size() - 4));
}

bool SecretsEqual(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

Result<BootstrapResult> BootstrapApiKey(store::Store& store, const std::string& data_dir,
                                        const std::optional<std::string>& env_key) {
  BootstrapResult out;
  out.key_file = data_dir + "/api-key";
  MOAT_ASSIGN_OR_RETURN(bool has, store.HasApiKeys());
  if (has) return out;
  std::string key = env_key && !env_key->empty() ? *env_key : NewApiKey();
  // Atomic in the store: of replicas starting at once, one creates the team (the others find it).
  MOAT_ASSIGN_OR_RETURN(auto team, store.BootstrapAdmin(Sha256Hex(key), MaskApiKey(key)));
  if (!team) return out;
  UniqueFd fd(::open(out.key_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd) return ErrnoError("open(" + out.key_file + ")");
  ::fchmod(fd.get(), 0600);
  MOAT_RETURN_IF_ERROR(WriteAll(fd.get(), key + "\n"));
  out.created = true;
  out.key = key;
  return out;
}

std::string FileSignature(std::string_view path, std::string_view operation, std::string_view user,
                          std::string_view access_token, int64_t expiration) {
  std::string raw;
  raw.append(path).append(":").append(operation).append(":").append(user).append(":");
  raw.append(access_token);
  if (expiration >= 0) raw.append(":").append(std::to_string(expiration));
  std::string b64 = codec::Base64Encode(Sha256(raw));
  while (!b64.empty() && b64.back() == '=') b64.pop_back();
  return "v1_" + b64;
}

Status CheckFileSignature(std::string_view raw_query, std::string_view operation,
                          std::string_view access_token, int64_t now_unix) {
  auto q = codec::ParseQuery(raw_query);
  auto signature = codec::QueryValue(q, "signature");
  if (!signature || signature->empty()) {
    return Unauthenticated("missing X-Access-Token header or signature query parameter");
  }
  auto expiration_text = codec::QueryValue(q, "signature_expiration");
  int64_t expiration = -1;
  if (expiration_text && !expiration_text->empty()) {
    char* end = nullptr;
    errno = 0;
    long long v = std::strtoll(expiration_text->c_str(), &end, 10);
    if (*end != '\0' || errno != 0 || v < 0) {
      return Unauthenticated("signature_expiration: not a time in unix seconds: \"" +
                             *expiration_text + "\"");
    }
    expiration = v;
  }
  std::string expected =
      FileSignature(codec::QueryValue(q, "path").value_or(""), operation,
                    codec::QueryValue(q, "username").value_or(""), access_token, expiration);
  if (!SecretsEqual(*signature, expected)) return Unauthenticated("invalid signature");
  if (expiration >= 0 && expiration < now_unix) {
    return Unauthenticated("signature is already expired");
  }
  return Status::Ok();
}

bool IsSignedRequest(const http::Request& req, bool signature_ok) {
  return signature_ok && !req.HasHeader("X-Access-Token");
}

Status CheckEnvdAccess(const http::Request& req, std::string_view access_token, bool signature_ok) {
  if (IsSignedRequest(req, signature_ok)) {
    int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count();
    return CheckFileSignature(req.raw_query, req.method == "GET" ? "read" : "write", access_token,
                              now);
  }
  if (!SecretsEqual(req.Header("X-Access-Token"), access_token)) {
    return Unauthenticated(req.HasHeader("X-Access-Token") ? "invalid X-Access-Token"
                                                           : "missing X-Access-Token");
  }
  return Status::Ok();
}

Result<store::TeamRecord> Authenticate(store::Store& store, const http::Request& req) {
  MOAT_ASSIGN_OR_RETURN(Caller caller, AuthenticateCaller(store, req));
  return std::move(caller.team);
}

Result<Caller> AuthenticateCaller(store::Store& store, const http::Request& req) {
  std::string key = req.Header("X-API-KEY");
  if (key.empty()) {
    // The dashboard: its session cookie, and (since a browser sends cookies along with requests
    // that other sites make it send) the session's CSRF token, which only the page can know.
    MOAT_ASSIGN_OR_RETURN(auto token, SessionTokenOf(req));  // two session cookies: refused
    if (!token) return Unauthenticated("missing X-API-KEY header");
    MOAT_ASSIGN_OR_RETURN(auto session, LiveSession(store, *token, NowUnixMs()));
    if (!session) return Unauthenticated("the dashboard session has expired or was signed out");
    return SessionCaller(store, *session, req.Header(kCsrfHeader));
  }
  MOAT_ASSIGN_OR_RETURN(auto found, store.KeyByHash(Sha256Hex(key)));
  if (!found) return Unauthenticated("invalid API key");
  return Caller{std::move(found->first), found->second.id, found->second.name};
}

}  // namespace moat::api
