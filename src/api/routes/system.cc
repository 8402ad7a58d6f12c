// moat's own routes: GET /healthz (no key: load balancers and `make up` poll it), GET /metrics
// (Prometheus text; any valid API key, docs/security.md), GET /openapi.json (the REST API's
// description, api/openapi.json).
#include <strings.h>

#include "api/auth.h"
#include "api/errors.h"
#include "api/openapi.h"
#include "api/routes/routes.h"

namespace moat::api::routes {

// The team of the request's API key: X-API-Key as on every control route, or `Authorization:
// Bearer <key>`, which is what Prometheus sends (scrape_config `authorization`). The metrics
// are moatd's aggregates — no team's sandbox ids, names or metadata — so any team's key may read
// them; a deployment that wants a scrape-only key gives it a team with every quota at 0.
Result<store::TeamRecord> MetricsCaller(store::Store& store, const http::Request& req) {
  if (req.HasHeader("X-API-KEY")) return Authenticate(store, req);
  std::string auth = req.Header("Authorization");
  constexpr size_t kBearer = 7;  // "Bearer "
  if (auth.size() > kBearer && ::strncasecmp(auth.c_str(), "Bearer ", kBearer) == 0) {
    std::string key = auth.substr(kBearer);
    while (!key.empty() && key.front() == ' ') key.erase(0, 1);
    while (!key.empty() && key.back() == ' ') key.pop_back();
    MOAT_ASSIGN_OR_RETURN(auto team, store.TeamByKeyHash(Sha256Hex(key)));
    if (!team) return Unauthenticated("invalid API key");
    return *team;
  }
  return Unauthenticated(
      "GET /metrics needs an API key: send X-API-Key: <key> or Authorization: Bearer <key>");
}

void RegisterSystemRoutes(http::Router& router, ControlContext& ctx) {
  router.Add("GET", "/healthz", [](http::Request&, http::ResponseWriter& w) {
    SendJson(w, 200, R"({"status":"ok"})");
  });
  router.Add("GET", "/metrics", [&ctx](http::Request& req, http::ResponseWriter& w) {
    auto caller = MetricsCaller(*ctx.store, req);
    if (!caller.ok()) {
      return SendRestError(w, caller.status());
    }
    (void)w.Send(200, {{"Content-Type", "text/plain; version=0.0.4"}},
                 ctx.metrics->Render(ctx.controller->Gauges()));
  });
  router.Add("GET", "/openapi.json", [](http::Request&, http::ResponseWriter& w) {
    SendJson(w, 200, std::string(OpenApiDocument()));
  });
}

}  // namespace moat::api::routes
