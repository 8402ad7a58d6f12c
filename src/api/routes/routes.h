// Route registration, one function per resource file.
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "api/http/router.h"
#include "api/metrics.h"
#include "api/sandbox_controller.h"
#include "api/store/store.h"

namespace moat::api::routes {

// Pointers, not references, so that the OpenAPI test can register the routes without a live
// controller (it never calls a handler).
struct ControlContext {
  SandboxController* controller;
  store::Store* store;
  Metrics* metrics;
  std::string envd_version;
  std::string domain;  // the sandbox domain; empty: answered as null
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
using TeamHandler =
    std::function<void(http::Request&, http::ResponseWriter&, const store::TeamRecord&)>;
// Authenticates with X-API-KEY (401 without a valid one), then runs the handler for the key's
// team.
http::Handler Authed(ControlContext& ctx, TeamHandler fn);
// GET /metrics' caller: X-API-Key, or `Authorization: Bearer <key>` (what Prometheus sends).
Result<store::TeamRecord> MetricsCaller(store::Store& store, const http::Request& req);
// Compact JSON; invalid UTF-8 is replaced, never thrown on.
std::string DumpJson(const nlohmann::json& j);

}  // namespace moat::api::routes
