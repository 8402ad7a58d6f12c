#include "api/dashboard_session.h"

#include <algorithm>
#include <cctype>
#include <nlohmann/json.hpp>

namespace moat::api {
namespace {

// A session token is 64 hex digits; anything much longer is no token of ours.
constexpr size_t kMaxCookieValue = 256;

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

std::string CookieAttributes(bool secure) {
  return std::string("; Path=/; HttpOnly; SameSite=Strict") + (secure ? "; Secure" : "");
}

// Calls `f(name, value)` for each name=value pair of a Cookie header, until it returns false.
template <typename F>
void ForEachCookie(std::string_view header, F f) {
  // Pairs are separated by ';' (RFC 6265); ',' too, since several Cookie headers arrive joined
  // with ", " (a cookie value may contain neither).
  while (!header.empty()) {
    size_t end = header.find_first_of(";,");
    std::string_view pair = Trim(header.substr(0, end));
    header.remove_prefix(end == std::string_view::npos ? header.size() : end + 1);
    size_t eq = pair.find('=');
    if (eq == std::string_view::npos) continue;
    if (!f(Trim(pair.substr(0, eq)), Trim(pair.substr(eq + 1)))) return;
  }
}

}  // namespace

std::optional<std::string> CookieValue(std::string_view header, std::string_view name) {
  if (header.size() > kMaxCookieHeader) return std::nullopt;
  std::optional<std::string> found;
  ForEachCookie(header, [&](std::string_view n, std::string_view value) {
    if (n != name) return true;
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"') {
      value = value.substr(1, value.size() - 2);
    }
    if (value.size() <= kMaxCookieValue) found = std::string(value);
    return false;
  });
  return found;
}

int CookieCount(std::string_view header, std::string_view name) {
  if (header.size() > kMaxCookieHeader) return 0;
  int n = 0;
  ForEachCookie(header, [&](std::string_view k, std::string_view) {
    if (k == name) ++n;
    return true;
  });
  return n;
}

std::string_view SessionCookieName(const http::Request& req) {
  return CameOverTls(req) ? kSecureSessionCookie : kSessionCookie;
}

Result<std::optional<std::string>> SessionTokenOf(const http::Request& req) {
  std::string header = req.Header("Cookie");
  std::string_view name = SessionCookieName(req);
  if (CookieCount(header, name) > 1) return Unauthenticated("more than one moat_session cookie");
  auto token = CookieValue(header, name);
  if (!token || token->empty()) return std::optional<std::string>();
  return token;
}

std::optional<std::string> SessionToken(const http::Request& req) {
  auto token = SessionTokenOf(req);
  return token.ok() ? *token : std::nullopt;
}

bool CameOverTls(const http::Request& req) {
  // A chain of proxies lists one protocol each; the first is what the client used.
  std::string proto = req.Header("X-Forwarded-Proto");
  std::string_view first = Trim(std::string_view(proto).substr(0, proto.find(',')));
  std::string lower(first);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return lower == "https";
}

std::string SessionCookie(std::string_view token, bool secure) {
  return std::string(secure ? kSecureSessionCookie : kSessionCookie) + "=" + std::string(token) +
         CookieAttributes(secure) + "; Max-Age=" + std::to_string(kSessionTtlSeconds);
}

std::string ClearedSessionCookie(bool secure) {
  return std::string(secure ? kSecureSessionCookie : kSessionCookie) + "=" +
         CookieAttributes(secure) + "; Max-Age=0";
}

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Result<std::optional<store::SessionRecord>> LiveSession(store::Store& store, std::string_view token,
                                                        int64_t now_ms) {
  if (token.empty()) return std::optional<store::SessionRecord>();
  return store.GetSession(Sha256Hex(token), now_ms);
}

Result<bool> SessionIsLive(store::Store& store, const std::string& token_sha256, int64_t now_ms) {
  MOAT_ASSIGN_OR_RETURN(auto session, store.GetSession(token_sha256, now_ms));
  return session.has_value();
}

Result<Caller> SessionCaller(store::Store& store, const store::SessionRecord& session,
                             std::string_view csrf) {
  if (csrf.empty() || !SecretsEqual(csrf, session.csrf_token)) {
    return Status(ErrorCode::kPermissionDenied, kWrongCsrfMessage);
  }
  MOAT_ASSIGN_OR_RETURN(auto team, store.GetTeam(session.team_id));
  if (!team) return Unauthenticated("the session's team no longer exists");
  return Caller{std::move(*team), session.key_id, session.key_name};
}

Result<NewSession> SignIn(store::Store& store, std::string_view api_key, int64_t now_ms) {
  // No key of ours is this long; hashing megabytes for nothing is not worth it.
  if (api_key.empty() || api_key.size() > 256) return Unauthenticated("invalid API key");
  MOAT_ASSIGN_OR_RETURN(auto found, store.KeyByHash(Sha256Hex(api_key)));
  if (!found) return Unauthenticated("invalid API key");
  NewSession s;
  s.token = RandomToken("", 32);
  s.team = std::move(found->first);
  s.record.token_sha256 = Sha256Hex(s.token);
  s.record.team_id = s.team.id;
  s.record.key_id = found->second.id;
  s.record.key_name = found->second.name;
  s.record.csrf_token = RandomToken("", 32);
  s.record.created_at_ms = now_ms;
  s.record.expires_at_ms = now_ms + kSessionTtlSeconds * 1000;
  MOAT_RETURN_IF_ERROR(store.InsertSession(s.record));
  return s;
}

std::string SessionJson(const store::TeamRecord& team, const store::SessionRecord& session) {
  nlohmann::json j = {
      {"team", {{"id", team.id}, {"name", team.name}, {"admin", team.admin}}},
      {"key", {{"id", session.key_id}, {"name", session.key_name}}},
      {"csrfToken", session.csrf_token},
  };
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

double LoginLimiter::Refill(Bucket& b, Clock::time_point now) const {
  double minutes = std::chrono::duration<double>(now - b.at).count() / 60.0;
  if (minutes > 0) {
    b.tokens = std::min(burst_, b.tokens + minutes * per_minute_);
    b.at = now;
  }
  return b.tokens;
}

void LoginLimiter::EvictFor(const std::string& client, Clock::time_point now) {
  if (buckets_.size() < kMaxClients || buckets_.count(client) != 0) return;
  for (auto it = buckets_.begin(); it != buckets_.end();) {
    it = Refill(it->second, now) >= burst_ ? buckets_.erase(it) : std::next(it);
  }
  // Still full of addresses that all failed lately: the oldest record goes (an attacker with
  // thousands of addresses gains a few guesses; memory stays bounded).
  if (buckets_.size() >= kMaxClients) {
    auto oldest = std::min_element(buckets_.begin(), buckets_.end(),
                                   [](auto& a, auto& b) { return a.second.at < b.second.at; });
    buckets_.erase(oldest);
  }
}

bool LoginLimiter::TryCharge(const std::string& client, Clock::time_point now) {
  std::lock_guard lock(mu_);
  EvictFor(client, now);
  auto [it, inserted] = buckets_.try_emplace(client, Bucket{burst_, now});
  if (Refill(it->second, now) < 1.0) return false;
  it->second.tokens -= 1.0;
  return true;
}

void LoginLimiter::Refund(const std::string& client, Clock::time_point now) {
  std::lock_guard lock(mu_);
  auto it = buckets_.find(client);
  if (it == buckets_.end()) return;
  // A full bucket is the same as none: forgotten.
  if (Refill(it->second, now) + 1.0 >= burst_) {
    buckets_.erase(it);
  } else {
    it->second.tokens += 1.0;
  }
}

}  // namespace moat::api
