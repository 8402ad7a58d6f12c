// API keys and envd access tokens. Keys are `e2b_` + 40 hex digits (the official clients check
// keys against `^e2b_[0-9a-f]+$`; keys minted as `moat_…` before keep working); only their SHA-256
// is stored. The first start with an empty store creates the admin team and one key: the value of
// MOAT_API_KEY if set, otherwise a fresh one, written to DATA_DIR/api-key (mode 0600).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "api/http/message.h"
#include "api/store/store.h"
#include "common/status.h"

namespace moat::api {

// SHA-256 of `data`: the 32 raw bytes, or as 64 hex digits.
std::string Sha256(std::string_view data);
std::string Sha256Hex(std::string_view data);
// `prefix` + hex of `bytes` random bytes from the OS CSPRNG.
std::string RandomToken(std::string_view prefix, size_t bytes);
std::string NewApiKey();
// "e2b_1a2b3…9f0e".
std::string MaskApiKey(std::string_view key);
// Constant-time comparison of secrets.
bool SecretsEqual(std::string_view a, std::string_view b);

struct BootstrapResult {
  bool created = false;  // a key was created now (print it once)
  std::string key;       // the key created (empty if none was)
  std::string key_file;  // where it was written
};

// Creates the admin team and its key when the store has no key yet.
Result<BootstrapResult> BootstrapApiKey(store::Store& store, const std::string& data_dir,
                                        const std::optional<std::string>& env_key);

// A signed /files URL (E2B-WIRE §3): `signature` = "v1_" + unpadded base64 of SHA-256 over
// "<path>:<read|write>:<username or empty>:<access token>[:<signature_expiration>]", with path
// and username exactly as the query gives them. Unauthenticated when the signature is missing,
// does not match, or (checked after it matches) its expiration is before `now_unix`.
Status CheckFileSignature(std::string_view raw_query, std::string_view operation,
                          std::string_view access_token, int64_t now_unix);
// The signature a client computes (what CheckFileSignature expects); `expiration` < 0: none.
std::string FileSignature(std::string_view path, std::string_view operation, std::string_view user,
                          std::string_view access_token, int64_t expiration);
// Whether a request to a route that takes signed URLs (/files: `signature_ok`) is one: it has no
// X-Access-Token. It then acts as the user it was signed for, whatever else it says.
bool IsSignedRequest(const http::Request& req, bool signature_ok);
// Whether an envd request may act on the sandbox whose token is `access_token`: X-Access-Token
// equal to it, or — where `signature_ok` (/files), without that header — a valid signed URL
// (GET reads, POST writes). Unauthenticated naming what is wrong otherwise.
Status CheckEnvdAccess(const http::Request& req, std::string_view access_token, bool signature_ok);

// The team of the request's X-API-KEY; unauthenticated if it is missing or unknown.
Result<store::TeamRecord> Authenticate(store::Store& store, const http::Request& req);

// Who a control request acts as: its team and the key (or the key a dashboard session signed in
// with).
struct Caller {
  store::TeamRecord team;
  std::string key_id;
  std::string key_name;
};
// The caller of a control request: X-API-KEY, else a dashboard session (its cookie, and the
// session's CSRF token in X-Moat-CSRF); unauthenticated naming what is wrong, or
// permission_denied (403) for a live session's cookie without its CSRF token.
Result<Caller> AuthenticateCaller(store::Store& store, const http::Request& req);

}  // namespace moat::api
