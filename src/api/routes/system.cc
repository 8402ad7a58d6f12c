// moat's own routes: GET /healthz (no key: load balancers and `make up` poll it), GET /metrics
// (Prometheus text), GET /openapi.json (the REST API's description, api/openapi.json).
#include "api/errors.h"
#include "api/openapi.h"
#include "api/routes/routes.h"

namespace moat::api::routes {

void RegisterSystemRoutes(http::Router& router, ControlContext& ctx) {
  router.Add("GET", "/healthz", [](http::Request&, http::ResponseWriter& w) {
    SendJson(w, 200, R"({"status":"ok"})");
  });
  router.Add("GET", "/metrics", [&ctx](http::Request&, http::ResponseWriter& w) {
    (void)w.Send(200, {{"Content-Type", "text/plain; version=0.0.4"}},
                 ctx.metrics->Render(ctx.controller->CountByState()));
  });
  router.Add("GET", "/openapi.json", [](http::Request&, http::ResponseWriter& w) {
    SendJson(w, 200, std::string(OpenApiDocument()));
  });
}

}  // namespace moat::api::routes
