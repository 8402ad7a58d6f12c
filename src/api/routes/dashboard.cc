// The dashboard's own routes (docs/dashboard-contract.md): sign-in, its read and sign-out on
// /dashboard/api/session, the web terminal's WebSocket, and the dashboard's files. Every answer
// carries the dashboard's security headers; sign-ins and sign-outs go to the audit log.
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

// The audit record of a sign-in or sign-out. A failure names no team or key: nobody proved to
// be either.
void AuditSession(ControlContext& ctx, const http::Request& req, const char* action,
                  const store::SessionRecord* who, int status, const std::string& message) {
  store::AuditRecord a;
  a.at_ms = NowUnixMs();
  if (who != nullptr && status < 400) {
    a.team_id = who->team_id;
    a.key_id = who->key_id;
    a.key_name = who->key_name;
    a.target = who->key_id;
  }
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

int StatusOf(const Status& s) {
  return RestHttpStatus(s.code());
}

http::Headers NoStore(http::Headers h = {}) {
  h["Cache-Control"] = "no-store";
  return h;
}

// The live session the request's cookie names: nullopt after answering 401 (or the store's
// error) when there is none.
std::optional<store::SessionRecord> RequireSession(ControlContext& ctx, const http::Request& req,
                                                   http::ResponseWriter& w) {
  auto token = SessionToken(req);
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

void SignInRoute(ControlContext& ctx, http::Request& req, http::ResponseWriter& writer) {
  DashboardHeadersWriter w(writer);
  DashboardState& state = *ctx.dashboard;
  std::string source = SourceAddress(req);
  // Failures are counted per client (an IPv6 client by its /64, as the connection caps do).
  std::string client = http::ClientOf(source + ":0");
  if (!state.logins().Allow(client)) {
    if (DashboardLogLimiter().Allow()) {
      LogWarn("dashboard.sign_in_limited", {{"source", source}});
    }
    if (ctx.metrics != nullptr) ctx.metrics->CountSignIn("limited");
    return SendRestError(
        w, ResourceExhausted("too many failed sign-ins from " + source + "; try again later"));
  }
  auto fail = [&](const Status& s) {
    if (ctx.metrics != nullptr) ctx.metrics->CountSignIn("refused");
    AuditSession(ctx, req, "session.create", nullptr, StatusOf(s), s.message());
    SendRestError(w, s);
  };
  json body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  if (!body.is_object()) return fail(InvalidArgument("expected a JSON object {\"apiKey\": ...}"));
  auto key = codec::StringField(body, "apiKey");
  if (!key.ok() || !*key || (*key)->empty()) {
    return fail(InvalidArgument("field \"apiKey\" is required"));
  }
  auto session = SignIn(*ctx.store, **key, NowUnixMs());
  if (!session.ok()) {
    if (session.status().code() == ErrorCode::kUnauthenticated) state.logins().Failed(client);
    return fail(session.status());
  }
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

// "http://host:port/..." → "host:port" (lower case); empty for "null" or no scheme.
std::string OriginHost(std::string_view origin) {
  size_t scheme = origin.find("://");
  if (scheme == std::string_view::npos) return "";
  std::string_view rest = origin.substr(scheme + 3);
  std::string host(rest.substr(0, rest.find('/')));
  for (char& c : host) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return host;
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
  std::string host = req.Header("Host");
  for (char& c : host) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (host.empty() || OriginHost(req.Header("Origin")) != host) {
    return SendRestError(w, Status(ErrorCode::kPermissionDenied,
                                   "the Origin header does not match the Host header"));
  }
  auto cols = Dimension(q, "cols", 80, kMaxTerminalCols);
  if (!cols.ok()) return SendRestError(w, cols.status());
  auto rows = Dimension(q, "rows", 24, kMaxTerminalRows);
  if (!rows.ok()) return SendRestError(w, rows.status());

  DashboardState& state = *ctx.dashboard;
  auto sandbox = ctx.controller->Get(caller->team.id, req.Param("sandboxID"));
  if (!sandbox.ok()) return SendRestError(w, sandbox.status());
  if (sandbox->state != SandboxState::kRunning) {
    return SendRestError(w, FailedPrecondition("sandbox " + sandbox->id + " is " +
                                               std::string(SandboxStateName(sandbox->state)) +
                                               ": only a running sandbox has a terminal"));
  }
  auto slot = state.terminals().Acquire(session->token_sha256);
  if (!slot) {
    return SendRestError(w, ResourceExhausted("this session has the most terminals it may open"));
  }
  TerminalTarget target{sandbox->id, sandbox->access_token, state.moatd_url(), *cols, *rows};
  if (target.moatd_url.empty()) return SendRestError(w, Unavailable("moatd is not listening"));
  auto conn = w.Hijack();
  if (!conn.ok()) return SendRestError(w, conn.status());
  if (ctx.metrics != nullptr) ctx.metrics->AddWebTerminals(1);
  Cleanup closed([&ctx] {
    if (ctx.metrics != nullptr) ctx.metrics->AddWebTerminals(-1);
  });
  RunWebTerminal(*conn, *client_key, target, state.terminal_options);
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
