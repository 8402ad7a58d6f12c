// The dashboard's sign-in (docs/dashboard-contract.md, "Sign-in"): an API key typed once buys a
// session, named by a random token in an HttpOnly cookie (the store keeps only its SHA-256), and
// a CSRF token the page keeps in memory and sends back in X-Moat-CSRF with every control request.
// A session lives 12 hours, ends at sign-out, and ends with the key it signed in with.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "api/auth.h"
#include "api/http/message.h"
#include "api/store/store.h"
#include "common/status.h"

namespace moat::api {

inline constexpr std::string_view kSessionCookie = "moat_session";
// The cookie's name over TLS: the __Host- prefix makes browsers refuse it unless it was set
// Secure, with Path=/ and no Domain, by this very host, so a sibling host (a sandbox's page on
// <port>-<id>.<domain>) cannot plant one.
inline constexpr std::string_view kSecureSessionCookie = "__Host-moat_session";
inline constexpr std::string_view kCsrfHeader = "X-Moat-CSRF";
inline constexpr int64_t kSessionTtlSeconds = 12 * 3600;
// A Cookie header longer than this is not looked into (browsers send at most a few KiB).
inline constexpr size_t kMaxCookieHeader = 8192;
inline constexpr const char* kWrongCsrfMessage = "missing or wrong X-Moat-CSRF header";

// The value of cookie `name` in a Cookie header ("a=1; moat_session=abc; b=\"2\""): the first
// pair with that exact name, its value unquoted; nullopt when absent, or when the header or the
// value is past a sane length.
std::optional<std::string> CookieValue(std::string_view header, std::string_view name);
// How many cookies named `name` a Cookie header holds (bounded by the header's length).
int CookieCount(std::string_view header, std::string_view name);
// The session cookie's name for this request: kSecureSessionCookie when it came over TLS, else
// kSessionCookie. Only that name is read.
std::string_view SessionCookieName(const http::Request& req);
// The session token of the request's session cookie: nullopt when there is none (or it is
// empty or too long); unauthenticated "more than one moat_session cookie" when there are
// several (another host of the domain may have planted one for a parent domain or a path: which
// is ours cannot be told, so neither is used).
Result<std::optional<std::string>> SessionTokenOf(const http::Request& req);
// SessionTokenOf, with several cookies counted as none.
std::optional<std::string> SessionToken(const http::Request& req);
// Whether the client reached moatd over TLS (a proxy in front says X-Forwarded-Proto: https):
// the cookie is then Secure and named kSecureSessionCookie.
bool CameOverTls(const http::Request& req);
// The Set-Cookie values that start a session and that end it (Max-Age=0).
std::string SessionCookie(std::string_view token, bool secure);
std::string ClearedSessionCookie(bool secure);

int64_t NowUnixMs();
// The live session of `token` (not expired by `now_ms`, its key not revoked), or nullopt.
Result<std::optional<store::SessionRecord>> LiveSession(store::Store& store, std::string_view token,
                                                        int64_t now_ms);
// Whether the session whose token's SHA-256 is `token_sha256` is live at `now_ms` (not signed
// out or expired, its key not revoked): what outlives the request that opened it (the web
// terminal) asks again.
Result<bool> SessionIsLive(store::Store& store, const std::string& token_sha256, int64_t now_ms);
// Who a request with this session acts as, provided `csrf` is the session's CSRF token
// (permission_denied kWrongCsrfMessage otherwise): its team, and the key it signed in with.
Result<Caller> SessionCaller(store::Store& store, const store::SessionRecord& session,
                             std::string_view csrf);

struct NewSession {
  std::string token;  // for the cookie; never stored
  store::SessionRecord record;
  store::TeamRecord team;
};
// Signs in with `api_key`: a new session of its team (unauthenticated "invalid API key" for a
// key that is not one).
Result<NewSession> SignIn(store::Store& store, std::string_view api_key, int64_t now_ms);

// The body of POST and GET /dashboard/api/session.
std::string SessionJson(const store::TeamRecord& team, const store::SessionRecord& session);

// Failed sign-ins per client address: a token bucket each (`burst` failures, refilled at
// `per_minute`), so that guessing keys from one address is slow while typos cost nothing. Bounded
// in memory: addresses whose bucket is full again are forgotten.
//
// Every attempt is charged up front and refunded once it succeeds, in one locked step each, so
// that guesses sent in parallel cannot all pass a check made before any of them failed.
class LoginLimiter {
 public:
  using Clock = std::chrono::steady_clock;
  explicit LoginLimiter(double burst = 10, double per_minute = 10)
      : burst_(burst), per_minute_(per_minute) {}
  // Charges one attempt to `client` if it has one left (true); false, charging nothing, when
  // it has none.
  bool TryCharge(const std::string& client, Clock::time_point now = Clock::now());
  // Gives back the attempt charged to `client` (it succeeded).
  void Refund(const std::string& client, Clock::time_point now = Clock::now());

 private:
  struct Bucket {
    double tokens = 0;
    Clock::time_point at;
  };
  // The bucket refilled up to `now` (caller holds mu_).
  double Refill(Bucket& b, Clock::time_point now) const;
  // Makes room for one more client (caller holds mu_).
  void EvictFor(const std::string& client, Clock::time_point now);

  static constexpr size_t kMaxClients = 4096;
  const double burst_;
  const double per_minute_;
  std::mutex mu_;
  std::map<std::string, Bucket> buckets_;
};

}  // namespace moat::api
