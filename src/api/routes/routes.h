// Route registration, one function per resource file.
#pragma once

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "api/http/router.h"
#include "api/metrics.h"
#include "api/sandbox_controller.h"
#include "api/store/store.h"

namespace moat::api {
class DashboardState;  // api/dashboard.h
}  // namespace moat::api

namespace moat::api::routes {

// Pointers, not references, so that the OpenAPI test can register the routes without a live
// controller (it never calls a handler).
struct ControlContext {
  SandboxController* controller;
  store::Store* store;
  Metrics* metrics;
  std::string envd_version;
  std::string domain;  // the sandbox domain; empty: answered as null
  // The dashboard's files, sign-in limits and terminals; RegisterDashboardRoutes makes it when
  // null (its files then from DefaultDashboardDir()).
  std::shared_ptr<DashboardState> dashboard;
};

// Control API (E2B-WIRE §2): /sandboxes, /v2/sandboxes and their sub-resources.
void RegisterSandboxRoutes(http::Router& router, ControlContext& ctx);
// Named snapshots (E2B-WIRE §2.2): POST /sandboxes/{id}/snapshots, GET /snapshots, DELETE
// /templates/{id}.
void RegisterSnapshotRoutes(http::Router& router, ControlContext& ctx);
// Custom templates (shared/E2B-TEMPLATES.md): /v3/templates, /v2/templates/{id}/builds/{buildID},
// /templates/... and the self-authenticating upload URL.
void RegisterTemplateRoutes(http::Router& router, ControlContext& ctx);
// Where COPY files are PUT (the URL's query authenticates it: TemplateService::CheckUploadUrl).
inline constexpr const char* kTemplateUploadPath = "/template-files/upload";
// moat's own API key administration: /keys.
void RegisterKeyRoutes(http::Router& router, ControlContext& ctx);
// moat's own team administration: /teams/{teamID}/quotas.
void RegisterTeamRoutes(http::Router& router, ControlContext& ctx);
// moat's own fleet administration (admin keys): GET /hosts, POST /hosts/{hostID}/drain|undrain.
void RegisterHostRoutes(http::Router& router, ControlContext& ctx);
// moat's own: /healthz, /metrics, /openapi.json.
void RegisterSystemRoutes(http::Router& router, ControlContext& ctx);
// The dashboard's API (docs/dashboard-contract.md): /dashboard/api/session (sign-in, its read,
// sign-out) and the web terminal, /dashboard/api/sandboxes/{sandboxID}/terminal.
void RegisterDashboardRoutes(http::Router& router, ControlContext& ctx);
inline constexpr const char* kDashboardSessionPath = "/dashboard/api/session";
// The dashboard's files (api/dashboard_static.h), which no route pattern can name: answers a
// request for /dashboard or under /dashboard/ (but /dashboard/api/) and returns true; false for
// any other path.
bool ServeDashboardFiles(ControlContext& ctx, const http::Request& req, http::ResponseWriter& w);
using TeamHandler =
    std::function<void(http::Request&, http::ResponseWriter&, const store::TeamRecord&)>;
// Authenticates with X-API-KEY or a dashboard session (401 without valid credentials), then
// runs the handler for the key's team, as its actor (api/history.h).
http::Handler Authed(ControlContext& ctx, TeamHandler fn);
// Authed, and the action goes to the audit log once answered: `action` ("sandbox.kill"), its
// target from the path parameter `target_param` (or, where that is empty or absent, the
// answer's "sandboxID"/"templateID"/"id"), the status answered and, for an error, its message.
http::Handler Audited(ControlContext& ctx, std::string action, std::string target_param,
                      TeamHandler fn);
// The client's address: X-Forwarded-For's last hop (the one the proxy appended) when the peer
// is loopback (a proxy on the host), else the peer's host.
std::string SourceAddress(const http::Request& req);
// History, audit, usage and E2B's logs route: /history..., /audit, /usage,
// /sandboxes/{id}/logs.
void RegisterHistoryRoutes(http::Router& router, ControlContext& ctx);
// GET /metrics' caller: X-API-Key, or `Authorization: Bearer <key>` (what Prometheus sends).
Result<store::TeamRecord> MetricsCaller(store::Store& store, const http::Request& req);
// Compact JSON; invalid UTF-8 is replaced, never thrown on.
std::string DumpJson(const nlohmann::json& j);

}  // namespace moat::api::routes
