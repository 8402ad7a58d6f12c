// The dashboard's server side (docs/dashboard-contract.md): cookies, sign-in and sessions through
// the control router over a real SQLite store, CSRF on control routes, the dashboard's files,
// the WebSocket codec, and the web terminal bridged to a fake envd (no VM).
#include "api/dashboard.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <thread>

// Header-only; by its path, since this test links no test support library.
#include "../../support/fake_host_agent.h"
#include "api/api_server.h"
#include "api/auth.h"
#include "api/codec/connect.h"
#include "api/codec/protojson.h"
#include "api/dashboard_session.h"
#include "api/dashboard_static.h"
#include "api/http/server.h"
#include "api/routes/routes.h"
#include "api/sandbox_controller.h"
#include "api/store/sqlite_store.h"
#include "api/web_terminal.h"
#include "api/websocket.h"
#include "common/fs.h"
#include "common/socket.h"
#include "common/unique_fd.h"

namespace moat::api {
namespace {

using nlohmann::json;
namespace ws = websocket;

constexpr const char* kAdminKey = "e2b_0123456789abcdef0123456789abcdef01234567";

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// --- cookies ---------------------------------------------------------------------------------

TEST(CookieValue, FindsTheNamedCookieAmongOthersWithSpacesAndQuotes) {
  EXPECT_EQ(CookieValue("moat_session=abc", "moat_session"), "abc");
  EXPECT_EQ(CookieValue("a=1; moat_session=abc; b=2", "moat_session"), "abc");
  EXPECT_EQ(CookieValue("a=1;moat_session=abc;b=2", "moat_session"), "abc");
  EXPECT_EQ(CookieValue("  moat_session = \"abc\"  ;x=y", "moat_session"), "abc");
  // Two Cookie headers arrive joined with ", ".
  EXPECT_EQ(CookieValue("a=1, moat_session=abc", "moat_session"), "abc");
  EXPECT_EQ(CookieValue("moat_session=first; moat_session=second", "moat_session"), "first");
  EXPECT_EQ(CookieValue("moat_session=", "moat_session"), "");
}

TEST(CookieCount, CountsEveryCookieOfAName) {
  EXPECT_EQ(CookieCount("", "moat_session"), 0);
  EXPECT_EQ(CookieCount("a=1; moat_session=x", "moat_session"), 1);
  EXPECT_EQ(CookieCount("moat_session=x; a=1; moat_session=y", "moat_session"), 2);
  EXPECT_EQ(CookieCount("moat_session=x, moat_session=", "moat_session"), 2)
      << "two Cookie headers joined";
  EXPECT_EQ(CookieCount("__Host-moat_session=x; moat_session=y", "__Host-moat_session"), 1);
}

TEST(CookieValue, IgnoresOtherNamesAndRefusesWhatIsTooLong) {
  EXPECT_FALSE(CookieValue("", "moat_session"));
  EXPECT_FALSE(CookieValue("xmoat_session=abc; moat_sessionx=def", "moat_session"));
  EXPECT_FALSE(CookieValue("moat_session", "moat_session"));
  EXPECT_FALSE(CookieValue("MOAT_SESSION=abc", "moat_session")) << "names are case-sensitive";
  EXPECT_FALSE(CookieValue("moat_session=" + std::string(300, 'a'), "moat_session"));
  std::string huge = "pad=" + std::string(kMaxCookieHeader, 'x') + "; moat_session=abc";
  EXPECT_FALSE(CookieValue(huge, "moat_session"));
}

TEST(SessionCookie, CarriesTheContractsAttributesAndOverTlsTheHostPrefix) {
  EXPECT_EQ(SessionCookie("tok", false),
            "moat_session=tok; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200");
  EXPECT_EQ(SessionCookie("tok", true),
            "__Host-moat_session=tok; Path=/; HttpOnly; SameSite=Strict; Secure; Max-Age=43200");
  EXPECT_EQ(ClearedSessionCookie(false),
            "moat_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
  EXPECT_EQ(ClearedSessionCookie(true),
            "__Host-moat_session=; Path=/; HttpOnly; SameSite=Strict; Secure; Max-Age=0");
  http::Request req;
  EXPECT_FALSE(CameOverTls(req));
  EXPECT_EQ(SessionCookieName(req), "moat_session");
  req.headers["X-Forwarded-Proto"] = "HTTPS, http";
  EXPECT_TRUE(CameOverTls(req));
  EXPECT_EQ(SessionCookieName(req), "__Host-moat_session");
  req.headers["X-Forwarded-Proto"] = "http";
  EXPECT_FALSE(CameOverTls(req));
}

TEST(SessionTokenOf, RefusesTwoCookiesAndReadsOnlyTheNameOfTheRequestsScheme) {
  http::Request req;
  req.headers["Cookie"] = "a=1; moat_session=tok";
  EXPECT_EQ(SessionTokenOf(req).value(), "tok");
  req.headers["Cookie"] = "moat_session=planted; a=1; moat_session=tok";
  auto two = SessionTokenOf(req);
  ASSERT_FALSE(two.ok());
  EXPECT_EQ(two.status().code(), ErrorCode::kUnauthenticated);
  EXPECT_EQ(two.status().message(), "more than one moat_session cookie");
  EXPECT_FALSE(SessionToken(req));
  req.headers["Cookie"] = "__Host-moat_session=tok";
  EXPECT_FALSE(SessionTokenOf(req).value()) << "over http, only moat_session";
  req.headers["X-Forwarded-Proto"] = "https";
  EXPECT_EQ(SessionTokenOf(req).value(), "tok");
  req.headers["Cookie"] = "moat_session=planted";
  EXPECT_FALSE(SessionTokenOf(req).value()) << "over TLS, only __Host-moat_session";
  req.headers["Cookie"] = "moat_session=planted; __Host-moat_session=tok";
  EXPECT_EQ(SessionTokenOf(req).value(), "tok");
  req.headers["Cookie"] = "__Host-moat_session=a; __Host-moat_session=tok";
  EXPECT_FALSE(SessionTokenOf(req).ok());
}

TEST(LoginLimiter, RefusesAClientAfterTenFailuresUntilTheBucketRefills) {
  LoginLimiter limiter;
  auto t0 = LoginLimiter::Clock::now();
  for (int i = 0; i < 10; ++i) EXPECT_TRUE(limiter.TryCharge("10.0.0.1", t0)) << i;
  EXPECT_FALSE(limiter.TryCharge("10.0.0.1", t0));
  EXPECT_TRUE(limiter.TryCharge("10.0.0.2", t0)) << "another client has its own bucket";
  EXPECT_TRUE(limiter.TryCharge("10.0.0.1", t0 + std::chrono::seconds(6))) << "one back per 6 s";
  EXPECT_FALSE(limiter.TryCharge("10.0.0.1", t0 + std::chrono::seconds(6)));
}

TEST(LoginLimiter, ASuccessIsRefunded) {
  LoginLimiter limiter;
  auto t0 = LoginLimiter::Clock::now();
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(limiter.TryCharge("10.0.0.1", t0)) << i;
    limiter.Refund("10.0.0.1", t0);
  }
  for (int i = 0; i < 9; ++i) ASSERT_TRUE(limiter.TryCharge("10.0.0.1", t0));
  ASSERT_TRUE(limiter.TryCharge("10.0.0.1", t0));
  limiter.Refund("10.0.0.1", t0);
  EXPECT_TRUE(limiter.TryCharge("10.0.0.1", t0));
  EXPECT_FALSE(limiter.TryCharge("10.0.0.1", t0));
  limiter.Refund("10.0.0.9", t0);  // never charged: nothing to give back
  for (int i = 0; i < 10; ++i) EXPECT_TRUE(limiter.TryCharge("10.0.0.9", t0)) << i;
  EXPECT_FALSE(limiter.TryCharge("10.0.0.9", t0));
}

TEST(LoginLimiter, ParallelAttemptsAreChargedOneByOne) {
  LoginLimiter limiter;
  std::atomic<int> passed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 100; ++i) {
        if (limiter.TryCharge("10.0.0.1")) ++passed;
      }
    });
  }
  for (auto& t : threads) t.join();
  // Ten, plus at most what refilled meanwhile (10 a minute).
  EXPECT_GE(passed.load(), 10);
  EXPECT_LE(passed.load(), 11);
}

TEST(SourceAddress, TakesTheLastForwardedHopAndOnlyFromAProxyOnLoopback) {
  http::Request req;
  req.peer = "127.0.0.1:5000";
  req.headers["X-Forwarded-For"] = "1.2.3.4, 203.0.113.5";
  EXPECT_EQ(routes::SourceAddress(req), "203.0.113.5") << "the first hop is the client's say";
  req.headers["X-Forwarded-For"] = "203.0.113.5";
  EXPECT_EQ(routes::SourceAddress(req), "203.0.113.5");
  req.headers["X-Forwarded-For"] = "1.2.3.4,203.0.113.6 ";
  EXPECT_EQ(routes::SourceAddress(req), "203.0.113.6");
  req.headers["X-Forwarded-For"] = "1.2.3.4, ";
  EXPECT_EQ(routes::SourceAddress(req), "127.0.0.1") << "an empty last hop: the peer";
  req.peer = "[::1]:5000";
  req.headers["X-Forwarded-For"] = "1.2.3.4, 2001:db8::1";
  EXPECT_EQ(routes::SourceAddress(req), "2001:db8::1");
  req.peer = "192.0.2.7:5000";
  EXPECT_EQ(routes::SourceAddress(req), "192.0.2.7") << "a remote peer is not a proxy";
  req.headers.erase("X-Forwarded-For");
  req.peer = "127.0.0.1:5000";
  EXPECT_EQ(routes::SourceAddress(req), "127.0.0.1");
}

TEST(LocalUrlOf, ReachesAWildcardListenerThroughLoopback) {
  EXPECT_EQ(LocalUrlOf("0.0.0.0", 3000), "http://127.0.0.1:3000");
  EXPECT_EQ(LocalUrlOf("127.0.0.1", 80), "http://127.0.0.1:80");
  EXPECT_EQ(LocalUrlOf("::", 3000), "http://[::1]:3000");
  EXPECT_EQ(LocalUrlOf("10.1.2.3", 3000), "http://10.1.2.3:3000");
}

TEST(TerminalSlots, AllowsFourPerSessionAndFreesASlotWhenItIsDropped) {
  TerminalSlots slots;
  std::vector<TerminalSlots::Slot> held;
  for (int i = 0; i < 4; ++i) {
    auto s = slots.Acquire("a", "t");
    ASSERT_TRUE(s.ok());
    held.push_back(std::move(*s));
  }
  auto fifth = slots.Acquire("a", "t");
  ASSERT_FALSE(fifth.ok());
  EXPECT_EQ(fifth.status().code(), ErrorCode::kResourceExhausted);
  EXPECT_TRUE(Contains(fifth.status().message(), "this session")) << fifth.status().message();
  EXPECT_TRUE(slots.Acquire("b", "t").ok());
  EXPECT_EQ(slots.open("b"), 0) << "the slot of b was dropped at once";
  EXPECT_EQ(slots.open_for_team("t"), 4);
  held.pop_back();
  EXPECT_EQ(slots.open("a"), 3);
  EXPECT_EQ(slots.open_for_team("t"), 3);
  EXPECT_EQ(slots.open_total(), 3);
  EXPECT_TRUE(slots.Acquire("a", "t").ok());
}

TEST(TerminalSlots, CapsEachTeamAndTheWhole) {
  TerminalSlots slots;  // 4 a session, 16 a team, 64 in all
  std::vector<TerminalSlots::Slot> held;
  for (int i = 0; i < 16; ++i) {
    auto s = slots.Acquire("s" + std::to_string(i), "t1");
    ASSERT_TRUE(s.ok()) << i;
    held.push_back(std::move(*s));
  }
  auto team = slots.Acquire("fresh", "t1");
  ASSERT_FALSE(team.ok());
  EXPECT_EQ(team.status().code(), ErrorCode::kResourceExhausted);
  EXPECT_TRUE(Contains(team.status().message(), "team")) << team.status().message();
  for (int t = 2; t <= 4; ++t) {
    for (int i = 0; i < 16; ++i) {
      auto s =
          slots.Acquire("s" + std::to_string(t) + "-" + std::to_string(i), "t" + std::to_string(t));
      ASSERT_TRUE(s.ok()) << t << " " << i;
      held.push_back(std::move(*s));
    }
  }
  EXPECT_EQ(slots.open_total(), 64);
  auto all = slots.Acquire("fresh", "t5");
  ASSERT_FALSE(all.ok());
  EXPECT_TRUE(Contains(all.status().message(), "moatd")) << all.status().message();
  held.clear();
  EXPECT_EQ(slots.open_total(), 0);
  EXPECT_EQ(slots.open_for_team("t1"), 0);
  EXPECT_TRUE(slots.Acquire("fresh", "t5").ok());
}

// --- sign-in and sessions through the router --------------------------------------------------

class DashboardSessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = MakeTempDir("/tmp", "moat-dashboard-test.");
    ASSERT_TRUE(d.ok());
    dir_ = *d;
    auto s = store::SqliteStore::Open(dir_ + "/moat.db");
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(*s);
    auto boot = BootstrapApiKey(*store_, dir_, std::string(kAdminKey));
    ASSERT_TRUE(boot.ok() && boot->created);
    admin_ = **store_->TeamByKeyHash(Sha256Hex(kAdminKey));
    cc_ = routes::ControlContext{nullptr, store_.get(), nullptr, kEnvdVersion};
    cc_.dashboard = std::make_shared<DashboardState>(dir_ + "/dashboard");
    ApiServer::RegisterControl(control_, cc_);
  }
  void TearDown() override {
    store_.reset();
    EXPECT_TRUE(RemoveTree(dir_).ok());
  }

  // One control request through the router, as ApiServer::Handle routes it, answered to `w`.
  void Dispatch(http::ResponseWriter& w, const std::string& method, const std::string& target,
                http::Headers headers, const std::string& body = "") {
    http::Request req;
    req.method = method;
    size_t q = target.find('?');
    req.path = target.substr(0, q);
    if (q != std::string::npos) req.raw_query = target.substr(q + 1);
    req.headers = std::move(headers);
    req.body = body;
    req.peer = "192.0.2.7:5555";
    req.request_id = "req-1";
    auto match = control_.Find(req.method, req.path);
    EXPECT_NE(match.route, nullptr) << method << " " << target;
    if (match.route == nullptr) return;
    req.params = match.params;
    match.route->handler(req, w);
  }
  http::RecordingWriter Call(const std::string& method, const std::string& target,
                             http::Headers headers = {}, const std::string& body = "") {
    http::RecordingWriter w;
    Dispatch(w, method, target, std::move(headers), body);
    return w;
  }
  // POST /dashboard/api/session as the page sends it (a JSON body), plus `headers`.
  http::RecordingWriter PostSession(const std::string& body, http::Headers headers = {}) {
    headers.try_emplace("Content-Type", "application/json");
    return Call("POST", "/dashboard/api/session", std::move(headers), body);
  }

  struct SignedIn {
    std::string token;
    std::string csrf;
    json body;
  };
  SignedIn SignInWith(const std::string& key, http::Headers headers = {}) {
    auto w = PostSession(json{{"apiKey", key}}.dump(), std::move(headers));
    EXPECT_EQ(w.status(), 200) << w.body();
    SignedIn out;
    if (w.status() != 200) return out;
    out.body = json::parse(w.body());
    out.csrf = out.body["csrfToken"];
    auto token = CookieValue(w.headers().at("Set-Cookie"), "moat_session");
    EXPECT_TRUE(token);
    out.token = token.value_or("");
    return out;
  }
  http::Headers Cookie(const SignedIn& s, std::optional<std::string> csrf = std::nullopt) {
    http::Headers h{{"Cookie", "theme=dark; moat_session=" + s.token}};
    if (csrf) h["X-Moat-CSRF"] = *csrf;
    return h;
  }
  std::vector<store::AuditRecord> Audit(const std::string& action) {
    store::AuditFilter f;
    f.action = action;
    auto page = store_->ListAudit(f);
    EXPECT_TRUE(page.ok()) << page.status().ToString();
    return page.ok() ? page->items : std::vector<store::AuditRecord>{};
  }

  std::string dir_;
  std::unique_ptr<store::SqliteStore> store_;
  store::TeamRecord admin_;
  routes::ControlContext cc_{};
  http::Router control_;
};

TEST_F(DashboardSessionTest, SignInAnswersTheTeamTheKeyAndACsrfTokenWithAnHttpOnlyCookie) {
  auto w = PostSession(json{{"apiKey", kAdminKey}}.dump());
  ASSERT_EQ(w.status(), 200) << w.body();
  auto body = json::parse(w.body());
  EXPECT_EQ(body["team"]["id"], admin_.id);
  EXPECT_EQ(body["team"]["name"], admin_.name);
  EXPECT_EQ(body["team"]["admin"], true);
  EXPECT_FALSE(body["key"]["id"].get<std::string>().empty());
  EXPECT_EQ(body["csrfToken"].get<std::string>().size(), 64u);
  std::string cookie = w.headers().at("Set-Cookie");
  auto token = CookieValue(cookie, "moat_session");
  ASSERT_TRUE(token);
  EXPECT_EQ(token->size(), 64u);
  EXPECT_EQ(cookie, SessionCookie(*token, false));
  EXPECT_EQ(w.headers().at("Cache-Control"), "no-store");
  EXPECT_EQ(w.headers().at("X-Frame-Options"), "DENY");
  EXPECT_NE(*token, body["csrfToken"].get<std::string>());
  // The store keeps the token's hash, never the token.
  auto session = store_->GetSession(Sha256Hex(*token), NowUnixMs());
  ASSERT_TRUE(session.ok() && *session);
  EXPECT_EQ((*session)->csrf_token, body["csrfToken"]);
  EXPECT_NEAR((*session)->expires_at_ms - (*session)->created_at_ms, 12 * 3600 * 1000, 1);
  EXPECT_FALSE(store_->GetSession(*token, NowUnixMs())->has_value());

  auto https = PostSession(json{{"apiKey", kAdminKey}}.dump(), {{"X-Forwarded-Proto", "https"}});
  EXPECT_TRUE(Contains(https.headers().at("Set-Cookie"), "; Secure"));
}

TEST_F(DashboardSessionTest, SignInRefusesWrongKeysAndBodiesWithoutOne) {
  auto wrong = PostSession(R"({"apiKey":"e2b_nope"})");
  EXPECT_EQ(wrong.status(), 401);
  EXPECT_EQ(json::parse(wrong.body()), json({{"code", 401}, {"message", "invalid API key"}}));
  EXPECT_FALSE(wrong.headers().count("Set-Cookie"));
  EXPECT_EQ(PostSession("{}").status(), 400);
  EXPECT_EQ(PostSession(R"({"apiKey":7})").status(), 400);
  EXPECT_EQ(PostSession("not json").status(), 400);
}

TEST_F(DashboardSessionTest, TenFailedSignInsFromOneAddressAreFollowedBy429) {
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(PostSession(R"({"apiKey":"e2b_x"})").status(), 401);
  }
  auto limited = PostSession(json{{"apiKey", kAdminKey}}.dump());
  EXPECT_EQ(limited.status(), 429) << "even the right key, until the bucket refills";
  // Ten failures were audited, the refused attempt not (the limiter is what stops a flood).
  EXPECT_EQ(Audit("session.create").size(), 10u);
}

TEST_F(DashboardSessionTest, MalformedSignInsAreChargedToTheClientButNotAudited) {
  for (int i = 0; i < 5; ++i) EXPECT_EQ(PostSession("{}").status(), 400);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(PostSession("not json").status(), 400);
  EXPECT_EQ(PostSession(json{{"apiKey", kAdminKey}}.dump()).status(), 429)
      << "ten malformed attempts spend the client's ten";
  EXPECT_EQ(PostSession("{}").status(), 429);
  EXPECT_TRUE(Audit("session.create").empty()) << "a body without a key proves nothing";
}

TEST_F(DashboardSessionTest, SuccessfulSignInsCostNothing) {
  for (int i = 0; i < 9; ++i) EXPECT_EQ(PostSession(R"({"apiKey":"e2b_x"})").status(), 401);
  for (int i = 0; i < 5; ++i) SignInWith(kAdminKey);
  EXPECT_EQ(PostSession(R"({"apiKey":"e2b_x"})").status(), 401) << "the tenth failure";
  EXPECT_EQ(PostSession(json{{"apiKey", kAdminKey}}.dump()).status(), 429);
}

TEST_F(DashboardSessionTest, ParallelWrongKeysCannotGetPastTheLimit) {
  std::atomic<int> refused{0}, limited{0}, other{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 5; ++i) {
        int status = PostSession(R"({"apiKey":"e2b_guess"})").status();
        (status == 401 ? refused : status == 429 ? limited : other)++;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(other.load(), 0);
  // Ten, plus at most one that refilled meanwhile (one every 6 s).
  EXPECT_GE(refused.load(), 10);
  EXPECT_LE(refused.load(), 11);
  EXPECT_EQ(refused.load() + limited.load(), 40);
  EXPECT_EQ(Audit("session.create").size(), static_cast<size_t>(refused.load()));
}

TEST_F(DashboardSessionTest, SignInNeedsAJsonBodyFromThisOrigin) {
  const std::string body = json{{"apiKey", kAdminKey}}.dump();
  // What a cross-site form or a no-preflight fetch can send.
  for (const char* type : {"", "text/plain", "application/x-www-form-urlencoded",
                           "multipart/form-data; boundary=x", "application/jsonx"}) {
    http::Headers h;
    if (*type != '\0') h["Content-Type"] = type;
    auto w = Call("POST", "/dashboard/api/session", h, body);
    EXPECT_EQ(w.status(), 415) << type;
    EXPECT_FALSE(w.headers().count("Set-Cookie")) << type;
  }
  EXPECT_EQ(PostSession(body, {{"Content-Type", "Application/JSON; charset=utf-8"}}).status(), 200);

  http::Headers other{{"Host", "moat.example:3000"}, {"Origin", "https://evil.example"}};
  EXPECT_EQ(PostSession(body, other).status(), 403);
  other["Origin"] = "null";
  EXPECT_EQ(PostSession(body, other).status(), 403);
  other["Origin"] = "http://8000-abc.moat.example:3000";
  EXPECT_EQ(PostSession(body, other).status(), 403) << "a sandbox's page is another origin";
  other.erase("Host");
  other["Origin"] = "http://moat.example:3000";
  EXPECT_EQ(PostSession(body, other).status(), 403) << "no Host to match";
  EXPECT_EQ(
      PostSession(body, {{"Host", "moat.example:3000"}, {"Origin", "http://MOAT.example:3000"}})
          .status(),
      200);
  EXPECT_EQ(PostSession(body, {{"Sec-Fetch-Site", "cross-site"}}).status(), 403);
  EXPECT_EQ(PostSession(body, {{"Sec-Fetch-Site", "same-origin"}}).status(), 200);

  // None of these is charged or audited: a site cannot lock its visitors out of signing in.
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(
        Call("POST", "/dashboard/api/session", {{"Content-Type", "text/plain"}}, body).status(),
        415);
    EXPECT_EQ(PostSession(body, {{"Sec-Fetch-Site", "cross-site"}}).status(), 403);
  }
  EXPECT_EQ(PostSession(body).status(), 200);
  for (const auto& a : Audit("session.create")) EXPECT_EQ(a.status, 200);
}

TEST_F(DashboardSessionTest, TwoSessionCookiesAreRefused) {
  SignedIn s = SignInWith(kAdminKey);
  // A sandbox's page on <port>-<id>.<domain> may set a cookie for the parent domain.
  http::Headers two{{"Cookie", "moat_session=" + s.token + "; moat_session=planted"}};
  auto read = Call("GET", "/dashboard/api/session", two);
  EXPECT_EQ(read.status(), 401);
  EXPECT_EQ(json::parse(read.body())["message"], "more than one moat_session cookie");
  two["Cookie"] = "moat_session=planted; moat_session=" + s.token;
  EXPECT_EQ(Call("GET", "/dashboard/api/session", two).status(), 401);
  two["X-Moat-CSRF"] = s.csrf;
  EXPECT_EQ(Call("DELETE", "/dashboard/api/session", two).status(), 401);
  auto sign_in = PostSession(json{{"apiKey", kAdminKey}}.dump(), two);
  EXPECT_EQ(sign_in.status(), 401);
  EXPECT_EQ(json::parse(sign_in.body())["message"], "more than one moat_session cookie");
  EXPECT_EQ(Call("GET", "/dashboard/api/session", Cookie(s)).status(), 200);
}

TEST_F(DashboardSessionTest, OverTlsTheCookieIsHostPrefixedAndOnlyThatNameIsRead) {
  http::Headers tls{{"X-Forwarded-Proto", "https"}};
  auto w = PostSession(json{{"apiKey", kAdminKey}}.dump(), tls);
  ASSERT_EQ(w.status(), 200) << w.body();
  std::string cookie = w.headers().at("Set-Cookie");
  EXPECT_EQ(cookie.rfind("__Host-moat_session=", 0), 0u) << cookie;
  auto token = CookieValue(cookie, "__Host-moat_session");
  ASSERT_TRUE(token);
  EXPECT_EQ(cookie, SessionCookie(*token, true));

  tls["Cookie"] = "__Host-moat_session=" + *token;
  EXPECT_EQ(Call("GET", "/dashboard/api/session", tls).status(), 200);
  tls["Cookie"] = "moat_session=" + *token;
  EXPECT_EQ(Call("GET", "/dashboard/api/session", tls).status(), 401)
      << "over TLS a cookie without the prefix may have been planted";
  EXPECT_EQ(
      Call("GET", "/dashboard/api/session", {{"Cookie", "__Host-moat_session=" + *token}}).status(),
      401)
      << "over http, only moat_session";
  tls["Cookie"] = "moat_session=planted; __Host-moat_session=" + *token;
  EXPECT_EQ(Call("GET", "/dashboard/api/session", tls).status(), 200);
  tls["X-Moat-CSRF"] = json::parse(w.body())["csrfToken"];
  auto out = Call("DELETE", "/dashboard/api/session", tls);
  ASSERT_EQ(out.status(), 204) << out.body();
  EXPECT_EQ(out.headers().at("Set-Cookie"), ClearedSessionCookie(true));
}

TEST_F(DashboardSessionTest, ReadingTheSessionNeedsTheCookieButNoCsrf) {
  SignedIn s = SignInWith(kAdminKey);
  auto read = Call("GET", "/dashboard/api/session", Cookie(s));
  ASSERT_EQ(read.status(), 200) << read.body();
  EXPECT_EQ(json::parse(read.body()), s.body);
  EXPECT_EQ(Call("GET", "/dashboard/api/session").status(), 401);
  EXPECT_EQ(Call("GET", "/dashboard/api/session", {{"Cookie", "moat_session=nope"}}).status(), 401);
}

TEST_F(DashboardSessionTest, ControlRoutesTakeTheCookieOnlyWithTheSessionsCsrfToken) {
  SignedIn s = SignInWith(kAdminKey);
  auto keys = Call("GET", "/keys", Cookie(s, s.csrf));
  ASSERT_EQ(keys.status(), 200) << keys.body();
  EXPECT_EQ(json::parse(keys.body()).size(), 1u);

  auto missing = Call("GET", "/keys", Cookie(s));
  EXPECT_EQ(missing.status(), 403);
  EXPECT_EQ(json::parse(missing.body()),
            json({{"code", 403}, {"message", "missing or wrong X-Moat-CSRF header"}}));
  EXPECT_EQ(Call("GET", "/keys", Cookie(s, s.csrf + "0")).status(), 403);
  EXPECT_EQ(Call("GET", "/keys", Cookie(s, "")).status(), 403);

  auto none = Call("GET", "/keys");
  EXPECT_EQ(none.status(), 401);
  EXPECT_EQ(json::parse(none.body())["message"], "missing X-API-KEY header");
  // An X-API-KEY is judged alone, cookie or not.
  http::Headers both = Cookie(s, s.csrf);
  both["X-API-KEY"] = "e2b_wrong";
  EXPECT_EQ(Call("GET", "/keys", both).status(), 401);
}

TEST_F(DashboardSessionTest, SignOutNeedsCsrfThenDeletesTheSessionAndClearsTheCookie) {
  SignedIn s = SignInWith(kAdminKey);
  EXPECT_EQ(Call("DELETE", "/dashboard/api/session", Cookie(s)).status(), 403);
  EXPECT_EQ(Call("GET", "/dashboard/api/session", Cookie(s)).status(), 200);
  auto out = Call("DELETE", "/dashboard/api/session", Cookie(s, s.csrf));
  ASSERT_EQ(out.status(), 204) << out.body();
  EXPECT_EQ(out.headers().at("Set-Cookie"), ClearedSessionCookie(false));
  EXPECT_EQ(Call("GET", "/dashboard/api/session", Cookie(s)).status(), 401);
  EXPECT_EQ(Call("GET", "/keys", Cookie(s, s.csrf)).status(), 401);
  EXPECT_FALSE(store_->GetSession(Sha256Hex(s.token), NowUnixMs())->has_value());
}

TEST_F(DashboardSessionTest, ARevokedKeysSessionIsRefused) {
  std::string key = NewApiKey();
  auto added = store_->AddApiKey(admin_.id, "laptop", Sha256Hex(key), MaskApiKey(key));
  ASSERT_TRUE(added.ok());
  SignedIn s = SignInWith(key);
  EXPECT_EQ(s.body["key"]["name"], "laptop");
  ASSERT_EQ(Call("GET", "/keys", Cookie(s, s.csrf)).status(), 200);
  ASSERT_TRUE(store_->RevokeApiKey(admin_.id, added->id).ok());
  EXPECT_EQ(Call("GET", "/keys", Cookie(s, s.csrf)).status(), 401);
  EXPECT_EQ(Call("GET", "/dashboard/api/session", Cookie(s)).status(), 401);
}

TEST_F(DashboardSessionTest, SignInsAndSignOutsAreAudited) {
  PostSession(R"({"apiKey":"e2b_wrong"})");
  SignedIn s = SignInWith(kAdminKey);
  Call("DELETE", "/dashboard/api/session", Cookie(s, s.csrf));
  auto created = Audit("session.create");
  ASSERT_EQ(created.size(), 2u);
  // Newest first.
  EXPECT_EQ(created[0].outcome, "ok");
  EXPECT_EQ(created[0].status, 200);
  EXPECT_EQ(created[0].team_id, admin_.id);
  EXPECT_EQ(created[0].key_id, s.body["key"]["id"]);
  EXPECT_EQ(created[0].source, "192.0.2.7");
  EXPECT_EQ(created[0].request_id, "req-1");
  EXPECT_EQ(created[1].outcome, "error");
  EXPECT_EQ(created[1].status, 401);
  EXPECT_EQ(created[1].key_id, "");
  EXPECT_EQ(created[1].team_id, "");
  EXPECT_TRUE(Contains(created[1].detail, "invalid API key"));
  auto deleted = Audit("session.delete");
  ASSERT_EQ(deleted.size(), 1u);
  EXPECT_EQ(deleted[0].status, 204);
  EXPECT_EQ(deleted[0].key_name, s.body["key"]["name"]);
}

TEST_F(DashboardSessionTest, TheTerminalIsRefusedBeforeTheUpgradeWithoutTheRightCredentials) {
  SignedIn s = SignInWith(kAdminKey);
  http::Headers upgrade = Cookie(s);
  upgrade["Upgrade"] = "websocket";
  upgrade["Connection"] = "keep-alive, Upgrade";
  upgrade["Sec-WebSocket-Version"] = "13";
  upgrade["Sec-WebSocket-Key"] = "dGhlIHNhbXBsZSBub25jZQ==";
  upgrade["Host"] = "localhost:3000";
  upgrade["Origin"] = "http://localhost:3000";
  const std::string path = "/dashboard/api/sandboxes/abc/terminal";

  EXPECT_EQ(Call("GET", path + "?csrf=" + s.csrf, Cookie(s)).status(), 400) << "no upgrade";
  http::Headers no_cookie = upgrade;
  no_cookie.erase("Cookie");
  EXPECT_EQ(Call("GET", path + "?csrf=" + s.csrf, no_cookie).status(), 401);
  EXPECT_EQ(Call("GET", path, upgrade).status(), 403) << "no csrf";
  EXPECT_EQ(Call("GET", path + "?csrf=x" + s.csrf, upgrade).status(), 403);
  http::Headers other_origin = upgrade;
  other_origin["Origin"] = "http://evil.example:3000";
  EXPECT_EQ(Call("GET", path + "?csrf=" + s.csrf, other_origin).status(), 403);
  other_origin.erase("Origin");
  EXPECT_EQ(Call("GET", path + "?csrf=" + s.csrf, other_origin).status(), 403);
  EXPECT_EQ(Call("GET", path + "?csrf=" + s.csrf + "&cols=", upgrade).status(), 400);
  EXPECT_EQ(Call("GET", path + "?csrf=" + s.csrf + "&rows=x", upgrade).status(), 400);
}

// --- static files ---------------------------------------------------------------------------

class DashboardFilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = MakeTempDir("/tmp", "moat-dashboard-files.");
    ASSERT_TRUE(d.ok());
    dir_ = *d;
    root_ = dir_ + "/dashboard";
    ASSERT_TRUE(MakeDirs(root_ + "/assets", 0755).ok());
    Write(root_ + "/index.html", "<!doctype html><title>moat</title>");
    Write(root_ + "/assets/app.js", "console.log(1)");
    Write(root_ + "/assets/app.css", "body{}");
    Write(root_ + "/assets/font.woff2", "wOF2");
    Write(root_ + "/.secret", "hidden");
    Write(dir_ + "/outside.txt", "NOT-THE-DASHBOARD");
    ASSERT_EQ(::symlink((dir_ + "/outside.txt").c_str(), (root_ + "/assets/link.js").c_str()), 0);
    ASSERT_EQ(::symlink(dir_.c_str(), (root_ + "/assets/up").c_str()), 0);
    ASSERT_EQ(::mkfifo((root_ + "/assets/fifo.js").c_str(), 0644), 0);
    cc_.dashboard = std::make_shared<DashboardState>(root_);
  }
  void TearDown() override { EXPECT_TRUE(RemoveTree(dir_).ok()); }

  static void Write(const std::string& path, const std::string& text) {
    std::ofstream(path) << text;
  }
  http::RecordingWriter Get(const std::string& target, http::Headers headers = {},
                            const std::string& method = "GET") {
    http::Request req;
    req.method = method;
    size_t q = target.find('?');
    req.path = target.substr(0, q);
    if (q != std::string::npos) req.raw_query = target.substr(q + 1);
    req.headers = std::move(headers);
    http::RecordingWriter w;
    EXPECT_TRUE(routes::ServeDashboardFiles(cc_, req, w)) << target;
    return w;
  }
  static void ExpectSecurityHeaders(const http::RecordingWriter& w) {
    EXPECT_EQ(w.headers().at("Content-Security-Policy"),
              "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
              "connect-src 'self'");
    EXPECT_EQ(w.headers().at("X-Frame-Options"), "DENY");
    EXPECT_EQ(w.headers().at("X-Content-Type-Options"), "nosniff");
  }

  std::string dir_, root_;
  routes::ControlContext cc_{nullptr, nullptr, nullptr, kEnvdVersion};
};

TEST_F(DashboardFilesTest, ServesIndexAndAssetsWithTypesCachingAndSecurityHeaders) {
  auto index = Get("/dashboard/");
  ASSERT_EQ(index.status(), 200) << index.body();
  EXPECT_EQ(index.body(), "<!doctype html><title>moat</title>");
  EXPECT_EQ(index.headers().at("Content-Type"), "text/html; charset=utf-8");
  EXPECT_EQ(index.headers().at("Cache-Control"), "no-cache");
  EXPECT_FALSE(index.headers().at("ETag").empty());
  EXPECT_TRUE(Contains(index.headers().at("Last-Modified"), " GMT"));
  ExpectSecurityHeaders(index);

  auto js = Get("/dashboard/assets/app.js");
  ASSERT_EQ(js.status(), 200);
  EXPECT_EQ(js.body(), "console.log(1)");
  EXPECT_EQ(js.headers().at("Content-Type"), "text/javascript; charset=utf-8");
  ExpectSecurityHeaders(js);
  EXPECT_EQ(Get("/dashboard/assets/app.css").headers().at("Content-Type"),
            "text/css; charset=utf-8");
  EXPECT_EQ(Get("/dashboard/assets/font.woff2").headers().at("Content-Type"), "font/woff2");
  EXPECT_EQ(Get("/dashboard/assets/app.js?v=abc").headers().at("Cache-Control"),
            "public, max-age=31536000, immutable");

  auto again = Get("/dashboard/assets/app.js", {{"If-None-Match", js.headers().at("ETag")}});
  EXPECT_EQ(again.status(), 304);
  EXPECT_EQ(again.body(), "");
  ExpectSecurityHeaders(again);

  auto head = Get("/dashboard/assets/app.js", {}, "HEAD");
  EXPECT_EQ(head.status(), 200);
  EXPECT_EQ(head.body(), "");
  EXPECT_EQ(head.headers().at("Content-Type"), "text/javascript; charset=utf-8");
}

TEST_F(DashboardFilesTest, ServesTheBuildsGzipCopyOfAnAssetToClientsThatTakeIt) {
  Write(root_ + "/assets/app.js.gz", "GZ-BYTES");
  auto packed = Get("/dashboard/assets/app.js", {{"Accept-Encoding", "br, gzip, deflate"}});
  ASSERT_EQ(packed.status(), 200);
  EXPECT_EQ(packed.body(), "GZ-BYTES");
  EXPECT_EQ(packed.headers().at("Content-Encoding"), "gzip");
  EXPECT_EQ(packed.headers().at("Vary"), "Accept-Encoding");
  EXPECT_EQ(packed.headers().at("Content-Type"), "text/javascript; charset=utf-8");
  auto plain = Get("/dashboard/assets/app.js");
  EXPECT_EQ(plain.body(), "console.log(1)");
  EXPECT_EQ(plain.headers().count("Content-Encoding"), 0u);
  EXPECT_NE(plain.headers().at("ETag"), packed.headers().at("ETag"));
  EXPECT_EQ(Get("/dashboard/assets/app.js", {{"Accept-Encoding", "gzip;q=0"}}).body(),
            "console.log(1)")
      << "refused gzip";
  EXPECT_EQ(Get("/dashboard/assets/app.css", {{"Accept-Encoding", "gzip"}}).body(), "body{}")
      << "no .gz copy: the file itself";
}

TEST_F(DashboardFilesTest, PageRoutesGetIndexAndTheBarePrefixRedirects) {
  auto bare = Get("/dashboard?x=1");
  EXPECT_EQ(bare.status(), 308);
  EXPECT_EQ(bare.headers().at("Location"), "/dashboard/?x=1");
  for (const char* route : {"/dashboard/sandboxes", "/dashboard/sandboxes/abc123",
                            "/dashboard/sandboxes/abc123/", "/dashboard/audit"}) {
    auto w = Get(route);
    EXPECT_EQ(w.status(), 200) << route;
    EXPECT_EQ(w.headers().at("Content-Type"), "text/html; charset=utf-8") << route;
  }
  auto missing = Get("/dashboard/assets/missing.js");
  EXPECT_EQ(missing.status(), 404);
  EXPECT_EQ(json::parse(missing.body())["code"], 404);
  ExpectSecurityHeaders(missing);
  EXPECT_EQ(Get("/dashboard/favicon.ico").status(), 404) << "a dot: a file, not a route";
  EXPECT_EQ(Get("/dashboard/", {}, "POST").status(), 405);
}

TEST_F(DashboardFilesTest, NothingOutsideTheDirectoryCanBeNamed) {
  for (const char* path :
       {"/dashboard/assets/../../etc/passwd", "/dashboard/../outside.txt",
        "/dashboard/assets/%2e%2e/%2e%2e/outside.txt", "/dashboard/assets/%2E%2E%2Foutside.txt",
        "/dashboard/assets/..%2f..%2foutside.txt", "/dashboard/assets/./app.js",
        "/dashboard/assets//app.js", "/dashboard/assets/link.js",
        "/dashboard/assets/up/outside.txt", "/dashboard/assets/fifo.js", "/dashboard/assets",
        "/dashboard/assets/", "/dashboard/.secret", "/dashboard/assets/app.js%00.png",
        "/dashboard/assets/..\\..\\outside.txt"}) {
    auto w = Get(path);
    EXPECT_EQ(w.status(), 404) << path << ": " << w.body();
    EXPECT_FALSE(Contains(w.body(), "NOT-THE-DASHBOARD")) << path;
    EXPECT_FALSE(Contains(w.body(), "hidden")) << path;
  }
}

TEST_F(DashboardFilesTest, AnUnbuiltDashboardAnswers503SayingHowToBuildIt) {
  ASSERT_EQ(::unlink((root_ + "/index.html").c_str()), 0);
  auto w = Get("/dashboard/");
  EXPECT_EQ(w.status(), 503);
  EXPECT_TRUE(Contains(w.body(), "not built")) << w.body();
  EXPECT_TRUE(Contains(w.body(), "make build")) << w.body();
  cc_.dashboard->set_files_dir(dir_ + "/nowhere");
  EXPECT_EQ(Get("/dashboard/sandboxes").status(), 503);
}

TEST(DashboardFilePath, IsTheDashboardButNotItsApi) {
  EXPECT_TRUE(IsDashboardFilePath("/dashboard"));
  EXPECT_TRUE(IsDashboardFilePath("/dashboard/"));
  EXPECT_TRUE(IsDashboardFilePath("/dashboard/assets/app.js"));
  EXPECT_TRUE(IsDashboardFilePath("/dashboard/apis"));
  EXPECT_FALSE(IsDashboardFilePath("/dashboard/api"));
  EXPECT_FALSE(IsDashboardFilePath("/dashboard/api/session"));
  EXPECT_FALSE(IsDashboardFilePath("/dashboardx"));
  EXPECT_FALSE(IsDashboardFilePath("/sandboxes"));
  EXPECT_EQ(ContentTypeOf("x.SVG"), "image/svg+xml");
  EXPECT_EQ(ContentTypeOf("x"), "application/octet-stream");
}

// --- WebSocket codec -------------------------------------------------------------------------

// RFC 6455 §1.3 (the accept key) and §5.7 (the masked "Hello").
TEST(WebSocket, AcceptKeyIsTheRfcsExample) {
  EXPECT_EQ(ws::AcceptKey("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
  EXPECT_TRUE(Contains(ws::HandshakeResponse("dGhlIHNhbXBsZSBub25jZQ=="),
                       "\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
}

TEST(WebSocket, ChecksTheUpgradeHeaders) {
  http::Request req;
  req.method = "GET";
  req.headers = {{"Upgrade", "WebSocket"},
                 {"Connection", "keep-alive, Upgrade"},
                 {"Sec-WebSocket-Version", "13"},
                 {"Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="}};
  EXPECT_EQ(ws::CheckUpgrade(req).value(), "dGhlIHNhbXBsZSBub25jZQ==");
  auto broken = [&](const char* header, const char* value) {
    http::Request r = req;
    r.headers[header] = value;
    return ws::CheckUpgrade(r).ok();
  };
  EXPECT_FALSE(broken("Upgrade", "h2c"));
  EXPECT_FALSE(broken("Connection", "keep-alive"));
  EXPECT_FALSE(broken("Sec-WebSocket-Version", "8"));
  EXPECT_FALSE(broken("Sec-WebSocket-Key", "c2hvcnQ="));
  http::Request post = req;
  post.method = "POST";
  EXPECT_FALSE(ws::CheckUpgrade(post).ok());
}

TEST(WebSocket, EncodesServerFramesWithEachLengthForm) {
  EXPECT_EQ(ws::EncodeFrame(ws::Opcode::kText, "Hello"), std::string("\x81\x05Hello"));
  std::string mid = ws::EncodeFrame(ws::Opcode::kBinary, std::string(256, 'x'));
  EXPECT_EQ(mid.substr(0, 4), std::string("\x82\x7e\x01\x00", 4));
  std::string big = ws::EncodeFrame(ws::Opcode::kBinary, std::string(65536, 'x'));
  EXPECT_EQ(big.substr(0, 10), std::string("\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00", 10));
  EXPECT_EQ(big.size(), 65546u);
  EXPECT_EQ(ws::EncodeFrame(ws::Opcode::kText, "a", false)[0], '\x01');
}

TEST(WebSocket, ReadsTheRfcsMaskedExampleByteByByte) {
  // RFC 6455 §5.7: a single-frame masked text message "Hello".
  std::string frame("\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", 11);
  EXPECT_EQ(ws::EncodeMaskedFrame(ws::Opcode::kText, "Hello", 0x37fa213d), frame);
  ws::MessageReader reader;
  for (size_t i = 0; i + 1 < frame.size(); ++i) {
    reader.Append(frame.substr(i, 1));
    auto m = reader.Next();
    ASSERT_TRUE(m.ok());
    EXPECT_FALSE(*m) << i;
  }
  reader.Append(frame.substr(frame.size() - 1));
  auto m = reader.Next();
  ASSERT_TRUE(m.ok() && *m);
  EXPECT_EQ((*m)->opcode, ws::Opcode::kText);
  EXPECT_EQ((*m)->payload, "Hello");
  EXPECT_EQ(reader.buffered(), 0u);
}

TEST(WebSocket, JoinsFragmentsAndPassesControlFramesBetweenThem) {
  ws::MessageReader reader;
  reader.Append(ws::EncodeMaskedFrame(ws::Opcode::kText, "Hel", 1, false));
  reader.Append(ws::EncodeMaskedFrame(ws::Opcode::kPing, "p", 2));
  reader.Append(ws::EncodeMaskedFrame(ws::Opcode::kContinuation, "l", 3, false));
  reader.Append(ws::EncodeMaskedFrame(ws::Opcode::kContinuation, "o", 4, true));
  reader.Append(ws::EncodeMaskedFrame(ws::Opcode::kBinary, std::string(70000, 'b'), 5));
  auto ping = reader.Next();
  ASSERT_TRUE(ping.ok() && *ping);
  EXPECT_EQ((*ping)->opcode, ws::Opcode::kPing);
  EXPECT_EQ((*ping)->payload, "p");
  auto text = reader.Next();
  ASSERT_TRUE(text.ok() && *text);
  EXPECT_EQ((*text)->payload, "Hello");
  auto bin = reader.Next();
  ASSERT_TRUE(bin.ok() && *bin);
  EXPECT_EQ((*bin)->opcode, ws::Opcode::kBinary);
  EXPECT_EQ((*bin)->payload.size(), 70000u);
  EXPECT_FALSE(*reader.Next());
}

TEST(WebSocket, RefusesProtocolViolationsWithTheirCloseCodes) {
  auto code_of = [](const std::string& bytes, size_t max = ws::kDefaultMaxMessage) {
    ws::MessageReader reader(max);
    reader.Append(bytes);
    for (;;) {
      auto m = reader.Next();
      if (!m.ok()) return static_cast<int>(reader.close_code());
      if (!*m) return 0;
    }
  };
  EXPECT_EQ(code_of(ws::EncodeFrame(ws::Opcode::kText, "unmasked")), 1002);
  EXPECT_EQ(code_of(ws::EncodeMaskedFrame(ws::Opcode::kContinuation, "x", 1)), 1002);
  EXPECT_EQ(code_of(ws::EncodeMaskedFrame(ws::Opcode::kText, "a", 1, false) +
                    ws::EncodeMaskedFrame(ws::Opcode::kText, "b", 1)),
            1002);
  EXPECT_EQ(code_of(ws::EncodeMaskedFrame(ws::Opcode::kPing, std::string(126, 'x'), 1)), 1002);
  EXPECT_EQ(code_of(ws::EncodeMaskedFrame(ws::Opcode::kPing, "x", 1, false)), 1002);
  EXPECT_EQ(code_of(std::string("\x83\x80\0\0\0\0", 6)), 1002) << "opcode 3";
  EXPECT_EQ(code_of(std::string("\xc1\x80\0\0\0\0", 6)), 1002) << "RSV1";
  EXPECT_EQ(code_of(ws::EncodeMaskedFrame(ws::Opcode::kText, "\xff\xfe", 1)), 1007);
  EXPECT_EQ(code_of(ws::EncodeMaskedFrame(ws::Opcode::kClose, "x", 1)), 1002);
  EXPECT_EQ(code_of(ws::EncodeMaskedFrame(ws::Opcode::kClose, std::string("\x03\xed", 2), 1)), 1002)
      << "1005 may not be sent";
  // Too big: judged from the header, before the payload has arrived.
  std::string big = ws::EncodeMaskedFrame(ws::Opcode::kBinary, std::string(2000, 'x'), 1);
  EXPECT_EQ(code_of(big.substr(0, 8), 1000), 1009);
  EXPECT_EQ(code_of(ws::EncodeMaskedFrame(ws::Opcode::kText, std::string(600, 'a'), 1, false) +
                        ws::EncodeMaskedFrame(ws::Opcode::kContinuation, std::string(600, 'a'), 1),
                    1000),
            1009)
      << "the fragments together";
}

TEST(WebSocket, ParsesAndBuildsClosePayloads) {
  auto c = ws::ParseClose(ws::ClosePayload(1000, "bye"));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->code, 1000);
  EXPECT_EQ(c->reason, "bye");
  EXPECT_FALSE(ws::ParseClose("")->code);
  // A reason cut to fit stays UTF-8 (é is two bytes).
  std::string reason;
  for (int i = 0; i < 100; ++i) reason += "\xc3\xa9";
  std::string p = ws::ClosePayload(4000, reason);
  EXPECT_LE(p.size(), 125u);
  EXPECT_TRUE(ws::ParseClose(p).ok());
}

// --- the web terminal against a fake envd -----------------------------------------------------

// envd's process API as far as the terminal uses it: Start streams a start event, "ready", then
// an echo of each input; "exit\r" ends the shell with status 3, SIGKILL with the signal.
class FakeEnvd {
 public:
  FakeEnvd() {
    auto s = http::HttpServer::Start(
        {}, [this](http::Request& req, http::ResponseWriter& w) { Handle(req, w); },
        [](const Status&, int code, http::ResponseWriter& w) { (void)w.Send(code, {}, ""); });
    EXPECT_TRUE(s.ok());
    server_ = std::move(*s);
  }
  ~FakeEnvd() {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    server_.reset();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(server_->port()); }

  // Waits until a call starting with `prefix` was made; all calls so far.
  bool WaitForCall(const std::string& prefix,
                   std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] {
      for (const auto& c : calls_) {
        if (c.rfind(prefix, 0) == 0) return true;
      }
      return false;
    });
  }
  json start_request() {
    std::lock_guard lock(mu_);
    return start_request_;
  }
  // The sandbox id and access token calls must carry (default "sbx" and "tok").
  void Expect(std::string sandbox_id, std::string token) {
    std::lock_guard lock(mu_);
    sandbox_id_ = std::move(sandbox_id);
    token_ = std::move(token);
  }

 private:
  void Push(const json& event, bool end_stream = false) {
    std::lock_guard lock(mu_);
    out_.push_back(codec::EncodeEnvelope(0, event.dump()));
    if (end_stream) out_.push_back(codec::EncodeEnvelope(codec::kEnvelopeEndStream, "{}"));
    cv_.notify_all();
  }
  static json Data(const std::string& bytes) {
    return {{"event", {{"data", {{"pty", codec::Base64Encode(bytes)}}}}}};
  }

  void Handle(http::Request& req, http::ResponseWriter& w) {
    bool allowed;
    {
      std::lock_guard lock(mu_);
      allowed =
          req.Header("X-Access-Token") == token_ && req.Header("E2b-Sandbox-Id") == sandbox_id_;
    }
    if (!allowed) {
      (void)w.Send(401, {{"Content-Type", "application/json"}},
                   R"({"code":401,"message":"invalid X-Access-Token"})");
      return;
    }
    json body;
    if (req.path == "/process.Process/Start") {
      auto envelopes = codec::DecodeEnvelopes(req.body, 1 << 20);
      ASSERT_TRUE(envelopes.ok() && envelopes->size() == 1);
      {
        std::lock_guard lock(mu_);
        start_request_ = json::parse(envelopes->front().message);
        calls_.push_back("Start");
      }
      Push({{"event", {{"start", {{"pid", 42}}}}}});
      Push(Data("ready"));
      (void)w.BeginStream(200, {{"Content-Type", "application/connect+json"}});
      for (;;) {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return !out_.empty() || stopping_; });
        if (out_.empty()) return;
        std::string next = std::move(out_.front());
        out_.pop_front();
        lock.unlock();
        if (!w.WriteChunk(next).ok()) return;
        if (next[0] & codec::kEnvelopeEndStream) {
          (void)w.EndStream();
          return;
        }
      }
    }
    body = json::parse(req.body, nullptr, false);
    std::string method = req.path.substr(req.path.rfind('/') + 1);
    std::string call = method;
    if (method == "SendInput") {
      std::string input = *codec::Base64Decode(body["input"]["pty"].get<std::string>());
      call += " " + input;
      if (input == "exit\r") {
        Push({{"event",
               {{"end", {{"exited", true}, {"exitCode", 3}, {"status", "exit status 3"}}}}}},
             true);
      } else {
        Push(Data("echo:" + input));
      }
    } else if (method == "Update") {
      call += " " + std::to_string(body["pty"]["size"]["cols"].get<int>()) + "x" +
              std::to_string(body["pty"]["size"]["rows"].get<int>());
    } else if (method == "SendSignal") {
      call += " " + body["signal"].get<std::string>();
      Push({{"event", {{"end", {{"exitCode", -1}, {"status", "signal: killed"}}}}}}, true);
    }
    {
      std::lock_guard lock(mu_);
      calls_.push_back(call);
    }
    cv_.notify_all();
    (void)w.Send(200, {{"Content-Type", "application/json"}}, "{}");
  }

  std::unique_ptr<http::HttpServer> server_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::string> out_;
  std::vector<std::string> calls_;
  json start_request_;
  bool stopping_ = false;
  std::string sandbox_id_ = "sbx";
  std::string token_ = "tok";
};

// The page's end of the terminal's socket.
class Page {
 public:
  explicit Page(UniqueFd fd) : fd_(std::move(fd)) {}
  // The 101 answer, up to its blank line.
  std::string ReadHandshake() {
    std::string head;
    char c;
    while (head.find("\r\n\r\n") == std::string::npos && ::read(fd_.get(), &c, 1) == 1) {
      head.push_back(c);
    }
    return head;
  }
  void Send(ws::Opcode op, std::string_view payload) {
    std::string frame = ws::EncodeMaskedFrame(op, payload, 0x12345678);
    ASSERT_TRUE(WriteAll(fd_.get(), frame).ok());
  }
  void SendJson(const json& j) { Send(ws::Opcode::kText, j.dump()); }
  // The next message from moatd; nullopt at EOF or after 10 s.
  std::optional<ws::Message> Next() {
    for (;;) {
      auto m = reader_.Next();
      if (!m.ok()) return std::nullopt;
      if (*m) return std::move(**m);
      pollfd p{fd_.get(), POLLIN, 0};
      if (::poll(&p, 1, 10000) <= 0) return std::nullopt;
      char buf[4096];
      ssize_t n = ::read(fd_.get(), buf, sizeof buf);
      if (n <= 0) return std::nullopt;
      reader_.Append(std::string_view(buf, static_cast<size_t>(n)));
    }
  }
  // The next text message as JSON, skipping pings.
  json NextJson() {
    for (;;) {
      auto m = Next();
      if (!m) return nullptr;
      if (m->opcode == ws::Opcode::kPing) continue;
      if (m->opcode == ws::Opcode::kClose) return {{"close", *ws::ParseClose(m->payload)->code}};
      return json::parse(m->payload);
    }
  }
  // Output messages' bytes until one holds `text`.
  bool OutputUntil(const std::string& text) {
    std::string seen;
    for (;;) {
      json j = NextJson();
      if (!j.is_object() || j.value("type", "") != "output") return false;
      seen += *codec::Base64Decode(j["data"].get<std::string>());
      if (Contains(seen, text)) return true;
    }
  }
  // Skips output and pings up to moatd's close frame: its code and reason (code 0: none came).
  std::pair<int, std::string> CloseFrame() {
    for (;;) {
      auto m = Next();
      if (!m) return {0, ""};
      if (m->opcode != ws::Opcode::kClose) continue;
      auto close = ws::ParseClose(m->payload);
      if (!close.ok()) return {0, ""};
      return {close->code.value_or(0), close->reason};
    }
  }
  void Close() { fd_.Reset(); }

 private:
  UniqueFd fd_;
  ws::MessageReader reader_{ws::kDefaultMaxMessage, /*require_mask=*/false};
};

class WebTerminalTest : public ::testing::Test {
 protected:
  // Starts a terminal on one end of a socket pair; the page gets the other.
  std::unique_ptr<Page> Open(TerminalTarget target, WebTerminalOptions options = {},
                             std::function<bool()> session_live = nullptr) {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    server_end_.Reset(sv[0]);
    options_ = options;
    target_ = std::move(target);
    session_live_ = std::move(session_live);
    conn_.fd = sv[0];
    thread_ = std::thread([this] {
      RunWebTerminal(conn_, "dGhlIHNhbXBsZSBub25jZQ==", target_, options_, session_live_);
      done_ = true;
    });
    auto page = std::make_unique<Page>(UniqueFd(sv[1]));
    EXPECT_TRUE(Contains(page->ReadHandshake(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    return page;
  }
  TerminalTarget Target() { return {"sbx", "tok", envd_.url(), 120, 30}; }
  void TearDown() override {
    if (thread_.joinable()) thread_.join();
  }

  FakeEnvd envd_;
  UniqueFd server_end_;
  http::HijackedConnection conn_;
  TerminalTarget target_;
  WebTerminalOptions options_;
  std::function<bool()> session_live_;
  std::thread thread_;
  std::atomic<bool> done_{false};
};

TEST_F(WebTerminalTest, RelaysOutputInputAndResizesThenTellsTheExit) {
  auto page = Open(Target());
  EXPECT_TRUE(page->OutputUntil("ready"));
  json start = envd_.start_request();
  EXPECT_EQ(start["process"]["cmd"], "/bin/bash");
  EXPECT_EQ(start["process"]["args"], json::array({"-l"}));
  EXPECT_EQ(start["pty"]["size"]["cols"], 120);
  EXPECT_EQ(start["pty"]["size"]["rows"], 30);

  page->SendJson({{"type", "input"}, {"data", "ls\r"}});
  EXPECT_TRUE(page->OutputUntil("echo:ls\r"));
  page->SendJson({{"type", "resize"}, {"cols", 100}, {"rows", 40}});
  EXPECT_TRUE(envd_.WaitForCall("Update 100x40"));
  page->SendJson({{"type", "resize"}, {"cols", 5000}, {"rows", 0}});
  EXPECT_TRUE(envd_.WaitForCall("Update 1000x1")) << "clamped";
  page->SendJson({{"type", "input"}, {"data", "exit\r"}});
  EXPECT_EQ(page->NextJson(), json({{"type", "exit"}, {"exitCode", 3}}));
  EXPECT_EQ(page->NextJson(), json({{"close", 1000}}));
  page->Send(ws::Opcode::kClose, ws::ClosePayload(1000, ""));
  thread_.join();
  EXPECT_TRUE(done_);
  EXPECT_FALSE(envd_.WaitForCall("SendSignal", std::chrono::milliseconds(100)))
      << "an exited shell is not killed";
}

TEST_F(WebTerminalTest, APageThatLeavesHasItsShellKilled) {
  auto page = Open(Target());
  EXPECT_TRUE(page->OutputUntil("ready"));
  page->Send(ws::Opcode::kClose, ws::ClosePayload(1001, "tab closed"));
  EXPECT_EQ(page->NextJson(), json({{"close", 1001}})) << "the close is echoed";
  EXPECT_TRUE(envd_.WaitForCall("SendSignal SIGNAL_SIGKILL"));
  thread_.join();

  // And one that just drops the connection.
  auto dropped = Open(Target());
  EXPECT_TRUE(dropped->OutputUntil("ready"));
  dropped->Close();
  thread_.join();
  EXPECT_TRUE(done_);
}

TEST_F(WebTerminalTest, AnOversizedMessageClosesWith1009AndKillsTheShell) {
  WebTerminalOptions options;
  options.max_message = 1024;
  auto page = Open(Target(), options);
  EXPECT_TRUE(page->OutputUntil("ready"));
  page->SendJson({{"type", "input"}, {"data", std::string(2000, 'x')}});
  EXPECT_EQ(page->NextJson(), json({{"close", 1009}}));
  thread_.join();
  EXPECT_TRUE(envd_.WaitForCall("SendSignal SIGNAL_SIGKILL"));
}

TEST_F(WebTerminalTest, AShellThatCannotStartIsAnErrorMessageThenClose1011) {
  TerminalTarget t = Target();
  t.access_token = "wrong";
  auto page = Open(t);
  json error = page->NextJson();
  EXPECT_EQ(error["type"], "error");
  EXPECT_TRUE(Contains(error.value("message", ""), "invalid X-Access-Token")) << error;
  EXPECT_EQ(page->NextJson(), json({{"close", 1011}}));
  page->Send(ws::Opcode::kClose, ws::ClosePayload(1011, ""));
  thread_.join();
}

TEST_F(WebTerminalTest, ASilentPageIsPingedThenDropped) {
  WebTerminalOptions options;
  options.ping_interval = std::chrono::milliseconds(50);
  options.client_timeout = std::chrono::milliseconds(300);
  options.close_wait = std::chrono::milliseconds(100);
  auto page = Open(Target(), options);
  bool pinged = false;
  for (;;) {
    auto m = page->Next();
    ASSERT_TRUE(m);
    if (m->opcode == ws::Opcode::kPing) pinged = true;
    if (m->opcode == ws::Opcode::kClose) {
      EXPECT_EQ(ws::ParseClose(m->payload)->code, 1001);
      break;
    }
  }
  EXPECT_TRUE(pinged);
  thread_.join();
  EXPECT_TRUE(envd_.WaitForCall("SendSignal SIGNAL_SIGKILL"));
}

TEST_F(WebTerminalTest, ASessionThatEndsClosesTheTerminalWith1008AndKillsTheShell) {
  WebTerminalOptions options;
  options.session_check_interval = std::chrono::milliseconds(50);
  std::atomic<bool> live{true};
  std::atomic<int> checks{0};
  auto page = Open(Target(), options, [&] {
    ++checks;
    return live.load();
  });
  EXPECT_TRUE(page->OutputUntil("ready"));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_GE(checks.load(), 3) << "asked again every interval";
  page->SendJson({{"type", "input"}, {"data", "ls\r"}});
  EXPECT_TRUE(page->OutputUntil("echo:ls\r")) << "a live session keeps its terminal";
  live = false;
  auto ended = std::chrono::steady_clock::now();
  EXPECT_EQ(page->CloseFrame(), std::make_pair(1008, std::string("session ended")));
  EXPECT_LT(std::chrono::steady_clock::now() - ended, std::chrono::seconds(2));
  page->Send(ws::Opcode::kClose, ws::ClosePayload(1008, ""));
  thread_.join();
  EXPECT_TRUE(envd_.WaitForCall("SendSignal SIGNAL_SIGKILL"));
}

// --- the terminal's route, against a fake host and a fake envd --------------------------------

// A writer whose connection can be taken over: the page's end is the other end of a socket pair.
class HijackableWriter : public http::RecordingWriter {
 public:
  explicit HijackableWriter(int fd) : fd_(fd) {}
  Result<http::HijackedConnection> Hijack() override {
    http::HijackedConnection c;
    c.fd = fd_;
    return c;
  }

 private:
  int fd_;
};

class DashboardTerminalTest : public DashboardSessionTest {
 protected:
  void SetUp() override {
    DashboardSessionTest::SetUp();
    if (HasFatalFailure()) return;
    auto c = SandboxController::Start(host_, *store_, metrics_,
                                      {.reap_interval = std::chrono::hours(1)});
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    controller_ = std::move(*c);
    cc_.controller = controller_.get();
    auto created = controller_->Create(admin_, CreateSandboxAction{});
    ASSERT_TRUE(created.ok()) << created.status().ToString();
    sandbox_ = *created;
    envd_.Expect(sandbox_.id, sandbox_.access_token);
    cc_.dashboard->set_moatd_url(envd_.url());
    cc_.dashboard->terminal_options.session_check_interval = std::chrono::milliseconds(100);
  }
  void TearDown() override {
    for (auto& t : routes_) t.join();
    controller_.reset();
    DashboardSessionTest::TearDown();
  }

  http::Headers Upgrade(const SignedIn& s) {
    http::Headers h = Cookie(s);
    h["Upgrade"] = "websocket";
    h["Connection"] = "Upgrade";
    h["Sec-WebSocket-Version"] = "13";
    h["Sec-WebSocket-Key"] = "dGhlIHNhbXBsZSBub25jZQ==";
    h["Host"] = "localhost:3000";
    h["Origin"] = "http://localhost:3000";
    return h;
  }
  std::string TerminalPath(const SignedIn& s, const std::string& id = "") {
    return "/dashboard/api/sandboxes/" + (id.empty() ? sandbox_.id : id) +
           "/terminal?csrf=" + s.csrf;
  }
  // Opens the terminal through the route, which runs on a thread of its own until it ends.
  std::unique_ptr<Page> OpenTerminal(const SignedIn& s) {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    auto server_end = std::make_shared<UniqueFd>(sv[0]);
    routes_.emplace_back([this, server_end, headers = Upgrade(s), path = TerminalPath(s)] {
      HijackableWriter w(server_end->get());
      Dispatch(w, "GET", path, headers);
      EXPECT_FALSE(w.started()) << w.status() << " " << w.body();
      server_end->Reset();  // as the server closes a connection taken over
    });
    auto page = std::make_unique<Page>(UniqueFd(sv[1]));
    EXPECT_TRUE(Contains(page->ReadHandshake(), "101 Switching Protocols"));
    return page;
  }
  void CloseAndWait(Page& page) {
    page.Send(ws::Opcode::kClose, ws::ClosePayload(1000, ""));
    for (auto& t : routes_) t.join();
    routes_.clear();
  }

  test_support::FakeHostAgent host_{"h1"};
  Metrics metrics_;
  std::unique_ptr<SandboxController> controller_;
  store::SandboxRecord sandbox_;
  FakeEnvd envd_;
  std::vector<std::thread> routes_;
};

TEST_F(DashboardTerminalTest, OpeningATerminalIsAuditedAndItEndsWithSignOut) {
  SignedIn s = SignInWith(kAdminKey);
  auto page = OpenTerminal(s);
  EXPECT_TRUE(page->OutputUntil("ready"));
  auto opened = Audit("sandbox.terminal");
  ASSERT_EQ(opened.size(), 1u);
  EXPECT_EQ(opened[0].status, 101);
  EXPECT_EQ(opened[0].outcome, "ok");
  EXPECT_EQ(opened[0].target, sandbox_.id);
  EXPECT_EQ(opened[0].team_id, admin_.id);
  EXPECT_EQ(opened[0].key_id, s.body["key"]["id"]);
  EXPECT_EQ(opened[0].source, "192.0.2.7");

  // Several session checks later, a live session still has its terminal.
  std::this_thread::sleep_for(std::chrono::milliseconds(350));
  page->SendJson({{"type", "input"}, {"data", "ls\r"}});
  EXPECT_TRUE(page->OutputUntil("echo:ls\r"));

  ASSERT_EQ(Call("DELETE", "/dashboard/api/session", Cookie(s, s.csrf)).status(), 204);
  EXPECT_EQ(page->CloseFrame(), std::make_pair(1008, std::string("session ended")));
  CloseAndWait(*page);
  EXPECT_TRUE(envd_.WaitForCall("SendSignal SIGNAL_SIGKILL")) << "the shell goes with it";
  EXPECT_EQ(cc_.dashboard->terminals().open_total(), 0);
}

TEST_F(DashboardTerminalTest, RevokingTheKeyEndsItsSessionsTerminals) {
  std::string key = NewApiKey();
  auto added = store_->AddApiKey(admin_.id, "laptop", Sha256Hex(key), MaskApiKey(key));
  ASSERT_TRUE(added.ok());
  SignedIn s = SignInWith(key);
  auto page = OpenTerminal(s);
  EXPECT_TRUE(page->OutputUntil("ready"));
  ASSERT_TRUE(store_->RevokeApiKey(admin_.id, added->id).ok());
  EXPECT_EQ(page->CloseFrame(), std::make_pair(1008, std::string("session ended")));
  CloseAndWait(*page);
  EXPECT_TRUE(envd_.WaitForCall("SendSignal SIGNAL_SIGKILL"));
}

TEST_F(DashboardTerminalTest, TerminalsAreCappedPerTeamAndInAllAndRefusalsAreAudited) {
  SignedIn s = SignInWith(kAdminKey);
  std::vector<TerminalSlots::Slot> held;
  for (int i = 0; i < 16; ++i) {
    auto slot = cc_.dashboard->terminals().Acquire("other-session-" + std::to_string(i), admin_.id);
    ASSERT_TRUE(slot.ok());
    held.push_back(std::move(*slot));
  }
  auto team = Call("GET", TerminalPath(s), Upgrade(s));
  EXPECT_EQ(team.status(), 429) << team.body();
  EXPECT_TRUE(Contains(team.body(), "team")) << team.body();
  held.clear();
  for (int i = 0; i < 64; ++i) {
    auto slot = cc_.dashboard->terminals().Acquire("s" + std::to_string(i),
                                                   "team-" + std::to_string(i % 8));
    ASSERT_TRUE(slot.ok()) << i;
    held.push_back(std::move(*slot));
  }
  auto all = Call("GET", TerminalPath(s), Upgrade(s));
  EXPECT_EQ(all.status(), 429) << all.body();
  EXPECT_TRUE(Contains(all.body(), "moatd")) << all.body();
  held.clear();
  EXPECT_EQ(Call("GET", TerminalPath(s, "nope"), Upgrade(s)).status(), 404);

  auto refused = Audit("sandbox.terminal");
  ASSERT_EQ(refused.size(), 3u);
  EXPECT_EQ(refused[0].status, 404);
  EXPECT_EQ(refused[0].target, "nope");
  EXPECT_EQ(refused[1].status, 429);
  EXPECT_EQ(refused[1].outcome, "error");
  EXPECT_EQ(refused[1].target, sandbox_.id);
  EXPECT_EQ(refused[1].team_id, admin_.id);
  EXPECT_TRUE(Contains(refused[1].detail, "moatd")) << refused[1].detail;

  // An unauthenticated or cross-origin attempt is not (it proves nothing, and costs nothing).
  http::Headers other = Upgrade(s);
  other["Origin"] = "http://evil.example";
  EXPECT_EQ(Call("GET", TerminalPath(s), other).status(), 403);
  other.erase("Cookie");
  EXPECT_EQ(Call("GET", TerminalPath(s), other).status(), 401);
  EXPECT_EQ(Audit("sandbox.terminal").size(), 3u);
}

}  // namespace
}  // namespace moat::api
