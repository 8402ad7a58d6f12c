// The dashboard's own routes (docs/dashboard-contract.md): sign-in, its read and sign-out on
// /dashboard/api/session, the web terminal's WebSocket, and the dashboard's files. Every answer
// carries the dashboard's security headers; sign-ins (those with a key to judge), sign-outs and
// terminals opened go to the audit log.
#include "api/dashboard.h"

#include <algorithm>
#include <cerrno>
#include <nlohmann/json.hpp>

#include "api/codec/protojson.h"
#include "api/codec/query.h"
#include "api/dashboard_session.h"
#include "api/dashboard_static.h"
#include "api/errors.h"
#include "api/http/server.h"
#include "api/routes/routes.h"
#include "api/web_terminal.h"
#include "api/websocket.h"
#include "common/cleanup.h"
#include "common/log.h"

namespace moat::api::routes {
namespace {

using nlohmann::json;

RateLimiter& DashboardLogLimiter() {
  static RateLimiter limiter(1, 10);
  return limiter;
}

// An audit record of the dashboard's: `who` (may be null) names the team and key.
void AuditDashboard(ControlContext& ctx, const http::Request& req, const char* action,
                    const store::SessionRecord* who, const std::string& target, int status,
                    const std::string& message) {
  store::AuditRecord a;
  a.at_ms = NowUnixMs();
  if (who != nullptr) {
    a.team_id = who->team_id;
    a.key_id = who->key_id;
    a.key_name = who->key_name;
  }
  a.target = target;
  a.source = SourceAddress(req);
  a.request_id = req.request_id;
  a.action = action;
  a.outcome = status < 400 ? "ok" : "error";
  a.status = status;
  if (!message.empty()) a.detail = DumpJson({{"message", message}});
  Status s = ctx.store->AppendAudit(a);
  if (!s.ok() && DashboardLogLimiter().Allow()) {
    LogWarn("dashboard.audit_failed", {{"action", action}, {"error", s.ToString()}});
  }
}

// The audit record of a sign-in or sign-out. A failure names no team or key: nobody proved to
// be either.
void AuditSession(ControlContext& ctx, const http::Request& req, const char* action,
                  const store::SessionRecord* who, int status, const std::string& message) {
  bool ok = who != nullptr && status < 400;
  AuditDashboard(ctx, req, action, ok ? who : nullptr, ok ? who->key_id : "", status, message);
}

int StatusOf(const Status& s) {
  return RestHttpStatus(s.code());
}

http::Headers NoStore(http::Headers h = {}) {
  h["Cache-Control"] = "no-store";
  return h;
}

// The live session the request's cookie names: nullopt after answering 401 (or the store's
// error) when there is none, or when there are several cookies.
std::optional<store::SessionRecord> RequireSession(ControlContext& ctx, const http::Request& req,
                                                   http::ResponseWriter& w) {
  auto cookie = SessionTokenOf(req);
  if (!cookie.ok()) {
    SendRestError(w, cookie.status());
    return std::nullopt;
  }
  const std::optional<std::string>& token = *cookie;
  if (!token) {
    SendRestError(w, Unauthenticated("not signed in"));
    return std::nullopt;
  }
  auto session = LiveSession(*ctx.store, *token, NowUnixMs());
  if (!session.ok()) {
    SendRestError(w, session.status());
    return std::nullopt;
  }
  if (!*session) {
    SendRestError(w, Unauthenticated("the dashboard session has expired or was signed out"));
    return std::nullopt;
  }
  return std::move(**session);
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// "http://host:port/..." → "host:port" (lower case); empty for "null" or no scheme.
std::string OriginHost(std::string_view origin) {
  size_t scheme = origin.find("://");
  if (scheme == std::string_view::npos) return "";
  std::string_view rest = origin.substr(scheme + 3);
  return Lower(std::string(rest.substr(0, rest.find('/'))));
}

// What a sign-in must be before its key is looked at, so that no other site can sign a
// visitor's browser in (login CSRF: into the attacker's team, or with a cookie the attacker
// chose): a JSON body (a cross-site form or a "simple" fetch cannot send
// application/json without a preflight, which moatd never answers), not from another site
// (Sec-Fetch-Site) nor another origin (Origin, when sent, naming this Host), and at most one
// session cookie.
Status CheckSignInRequest(const http::Request& req, int* http_status) {
  std::string type = req.Header("Content-Type");
  type = Lower(type.substr(0, type.find(';')));
  while (!type.empty() && (type.back() == ' ' || type.back() == '\t')) type.pop_back();
  while (!type.empty() && (type.front() == ' ' || type.front() == '\t')) type.erase(0, 1);
  if (type != "application/json") {
    *http_status = 415;
    return InvalidArgument("a sign-in's body must be sent as Content-Type: application/json");
  }
  *http_status = 403;
  if (Lower(req.Header("Sec-Fetch-Site")) == "cross-site") {
    return Status(ErrorCode::kPermissionDenied, "a sign-in may not come from another site");
  }
  if (req.HasHeader("Origin")) {
    std::string host = Lower(req.Header("Host"));
    if (host.empty() || OriginHost(req.Header("Origin")) != host) {
      return Status(ErrorCode::kPermissionDenied,
                    "the Origin header does not match the Host header");
    }
  }
  *http_status = 0;
  return SessionTokenOf(req).status();
}

void SignInRoute(ControlContext& ctx, http::Request& req, http::ResponseWriter& writer) {
  DashboardHeadersWriter w(writer);
  DashboardState& state = *ctx.dashboard;
  std::string source = SourceAddress(req);
  // A request that fails for how it was sent, or whose body has no key in it, proves nothing
  // and is not audited (a flood of them would fill the log), only logged, rate-limited.
  auto refuse = [&](const Status& s, int http_status = 0) {
    if (ctx.metrics != nullptr) ctx.metrics->CountSignIn("refused");
    if (DashboardLogLimiter().Allow()) {
      LogWarn("dashboard.sign_in_refused", {{"source", source}, {"error", s.message()}});
    }
    SendRestError(w, s, http_status);
  };
  // Checking the headers is no work, and charging for it would let any site that a user
  // visits lock them out of signing in (its cross-site posts come from their address).
  int header_status = 0;
  if (Status s = CheckSignInRequest(req, &header_status); !s.ok()) return refuse(s, header_status);
  // Every attempt past that is charged to its client up front (an IPv6 client by its /64, as
  // the connection caps do), before any parsing, and given back only when it succeeds: at most
  // 10 failures a minute per client, however many are sent at once.
  std::string client = http::ClientOf(source + ":0");
  if (!state.logins().TryCharge(client)) {
    if (DashboardLogLimiter().Allow()) {
      LogWarn("dashboard.sign_in_limited", {{"source", source}});
    }
    if (ctx.metrics != nullptr) ctx.metrics->CountSignIn("limited");
    return SendRestError(
        w, ResourceExhausted("too many failed sign-ins from " + source + "; try again later"));
  }
  json body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  if (!body.is_object()) return refuse(InvalidArgument("expected a JSON object {\"apiKey\": ...}"));
  auto key = codec::StringField(body, "apiKey");
  if (!key.ok() || !*key || (*key)->empty()) {
    return refuse(InvalidArgument("field \"apiKey\" is required"));
  }
  auto session = SignIn(*ctx.store, **key, NowUnixMs());
  if (!session.ok()) {
    // A wrong key: audited (the limiter bounds these to 10 a minute per client).
    if (ctx.metrics != nullptr) ctx.metrics->CountSignIn("refused");
    AuditSession(ctx, req, "session.create", nullptr, StatusOf(session.status()),
                 session.status().message());
    return SendRestError(w, session.status());
  }
  state.logins().Refund(client);
  if (ctx.metrics != nullptr) ctx.metrics->CountSignIn("ok");
  AuditSession(ctx, req, "session.create", &session->record, 200, "");
  SendJson(w, 200, SessionJson(session->team, session->record),
           NoStore({{"Set-Cookie", SessionCookie(session->token, CameOverTls(req))}}));
}

void ReadSessionRoute(ControlContext& ctx, http::Request& req, http::ResponseWriter& writer) {
  DashboardHeadersWriter w(writer);
  auto session = RequireSession(ctx, req, w);
  if (!session) return;
  auto team = ctx.store->GetTeam(session->team_id);
  if (!team.ok()) return SendRestError(w, team.status());
  if (!*team) return SendRestError(w, Unauthenticated("the session's team no longer exists"));
  SendJson(w, 200, SessionJson(**team, *session), NoStore());
}

void SignOutRoute(ControlContext& ctx, http::Request& req, http::ResponseWriter& writer) {
  DashboardHeadersWriter w(writer);
  auto session = RequireSession(ctx, req, w);
  if (!session) return;
  std::string csrf = req.Header(kCsrfHeader);
  if (csrf.empty() || !SecretsEqual(csrf, session->csrf_token)) {
    Status denied(ErrorCode::kPermissionDenied, kWrongCsrfMessage);
    AuditSession(ctx, req, "session.delete", nullptr, 403, denied.message());
    return SendRestError(w, denied);
  }
  Status deleted = ctx.store->DeleteSession(session->token_sha256);
  if (!deleted.ok()) {
    AuditSession(ctx, req, "session.delete", nullptr, StatusOf(deleted), deleted.message());
    return SendRestError(w, deleted);
  }
  AuditSession(ctx, req, "session.delete", &*session, 204, "");
  (void)w.Send(204, NoStore({{"Set-Cookie", ClearedSessionCookie(CameOverTls(req))}}), "");
}

// A query parameter as a PTY dimension: `fallback` when absent, clamped to 1..max (a page's
// window may be any size).
Result<uint16_t> Dimension(const codec::QueryParams& q, const char* name, uint16_t fallback,
                           uint16_t max) {
  auto text = codec::QueryValue(q, name);
  if (!text) return fallback;
  char* end = nullptr;
  errno = 0;
  long v = std::strtol(text->c_str(), &end, 10);
  if (text->empty() || *end != '\0' || errno != 0) {
    return InvalidArgument(std::string("query parameter \"") + name + "\" must be a number");
  }
  return static_cast<uint16_t>(std::clamp<long>(v, 1, max));
}

void TerminalRoute(ControlContext& ctx, http::Request& req, http::ResponseWriter& writer) {
  DashboardHeadersWriter w(writer);
  auto client_key = websocket::CheckUpgrade(req);
  if (!client_key.ok()) return SendRestError(w, client_key.status());
  auto session = RequireSession(ctx, req, w);
  if (!session) return;
  // Browsers can set no header on a WebSocket: the CSRF token comes in the query, and the
  // Origin (which browsers always send, and pages cannot forge) must be this server.
  auto q = codec::ParseQuery(req.raw_query);
  auto caller = SessionCaller(*ctx.store, *session, codec::QueryValue(q, "csrf").value_or(""));
  if (!caller.ok()) {
    if (caller.status().code() == ErrorCode::kPermissionDenied) {
      return SendRestError(
          w, Status(ErrorCode::kPermissionDenied, "missing or wrong csrf query parameter"));
    }
    return SendRestError(w, caller.status());
  }
  std::string host = Lower(req.Header("Host"));
  if (host.empty() || OriginHost(req.Header("Origin")) != host) {
    return SendRestError(w, Status(ErrorCode::kPermissionDenied,
                                   "the Origin header does not match the Host header"));
  }
  // From here the caller is known: what it is refused is audited, as is the terminal it opens.
  std::string sandbox_id = req.Param("sandboxID");
  auto refuse = [&](const Status& s) {
    AuditDashboard(ctx, req, "sandbox.terminal", &*session, sandbox_id, StatusOf(s), s.message());
    SendRestError(w, s);
  };
  auto cols = Dimension(q, "cols", 80, kMaxTerminalCols);
  if (!cols.ok()) return refuse(cols.status());
  auto rows = Dimension(q, "rows", 24, kMaxTerminalRows);
  if (!rows.ok()) return refuse(rows.status());

  DashboardState& state = *ctx.dashboard;
  auto sandbox = ctx.controller->Get(caller->team.id, sandbox_id);
  if (!sandbox.ok()) return refuse(sandbox.status());
  if (sandbox->state != SandboxState::kRunning) {
    return refuse(FailedPrecondition("sandbox " + sandbox->id + " is " +
                                     std::string(SandboxStateName(sandbox->state)) +
                                     ": only a running sandbox has a terminal"));
  }
  auto slot = state.terminals().Acquire(session->token_sha256, caller->team.id);
  if (!slot.ok()) return refuse(slot.status());
  TerminalTarget target{sandbox->id, sandbox->access_token, state.moatd_url(), *cols, *rows};
  if (target.moatd_url.empty()) return refuse(Unavailable("moatd is not listening"));
  auto conn = w.Hijack();
  if (!conn.ok()) return refuse(conn.status());
  AuditDashboard(ctx, req, "sandbox.terminal", &*session, sandbox_id, 101, "");
  if (ctx.metrics != nullptr) ctx.metrics->AddWebTerminals(1);
  Cleanup closed([&ctx] {
    if (ctx.metrics != nullptr) ctx.metrics->AddWebTerminals(-1);
  });
  // The session is asked again every 30 s: the terminal ends with it (sign-out, expiry, its key
  // revoked). A store that cannot answer ends it too.
  store::Store* store = ctx.store;
  std::string token_sha256 = session->token_sha256;
  auto session_live = [store, token_sha256, sandbox_id] {
    auto live = SessionIsLive(*store, token_sha256, NowUnixMs());
    if (!live.ok() && DashboardLogLimiter().Allow()) {
      LogWarn("dashboard.terminal_session_check_failed",
              {{"sandbox", sandbox_id}, {"error", live.status().ToString()}});
    }
    return live.ok() && *live;
  };
  RunWebTerminal(*conn, *client_key, target, state.terminal_options, session_live);
}

}  // namespace

void RegisterDashboardRoutes(http::Router& router, ControlContext& ctx) {
  if (!ctx.dashboard) ctx.dashboard = std::make_shared<DashboardState>(DefaultDashboardDir());
  router.Add("POST", kDashboardSessionPath,
             [&ctx](http::Request& req, http::ResponseWriter& w) { SignInRoute(ctx, req, w); });
  router.Add("GET", kDashboardSessionPath, [&ctx](http::Request& req, http::ResponseWriter& w) {
    ReadSessionRoute(ctx, req, w);
  });
  router.Add("DELETE", kDashboardSessionPath,
             [&ctx](http::Request& req, http::ResponseWriter& w) { SignOutRoute(ctx, req, w); });
  router.Add("GET", "/dashboard/api/sandboxes/{sandboxID}/terminal",
             [&ctx](http::Request& req, http::ResponseWriter& w) { TerminalRoute(ctx, req, w); });
}

bool ServeDashboardFiles(ControlContext& ctx, const http::Request& req, http::ResponseWriter& w) {
  if (!IsDashboardFilePath(req.path)) return false;
  ServeDashboardFile(ctx.dashboard ? ctx.dashboard->files_dir() : DefaultDashboardDir(), req, w);
  return true;
}

}  // namespace moat::api::routes

namespace moat::api {

std::string LocalUrlOf(const std::string& listen_host, uint16_t port) {
  std::string host = listen_host;
  if (host.empty() || host == "0.0.0.0") host = "127.0.0.1";
  if (host == "::") host = "::1";
  if (host.find(':') != std::string::npos) host = "[" + host + "]";
  return "http://" + host + ":" + std::to_string(port);
}

}  // namespace moat::api
