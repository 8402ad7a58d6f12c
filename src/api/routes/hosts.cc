// moat's fleet administration (not part of E2B's API), admin keys only (others: 403): GET /hosts
// lists the fleet's hosts with what is placed on them; POST /hosts/{hostID}/drain stops new
// placements on a host (what it runs keeps running) and /undrain lets it take them again.
// `moatd serve` has no hosts rows (its one host, "local", never registers), so there GET /hosts
// answers [] and a drain 404.
#include <nlohmann/json.hpp>

#include "api/codec/protojson.h"
#include "api/errors.h"
#include "api/lifecycle.h"
#include "api/routes/routes.h"
#include "common/log.h"

namespace moat::api::routes {
namespace {

using nlohmann::json;

Status RequireAdmin(const store::TeamRecord& caller) {
  if (caller.admin) return Status::Ok();
  return Status(ErrorCode::kPermissionDenied, "only an admin key may list, drain or undrain hosts");
}

// The host as the API shows it; `sandboxes` counts those that hold resources there (running,
// error, and those being created, paused, resumed or killed): one store call.
Result<json> HostJson(store::Store& store, const store::HostRecord& h) {
  MOAT_ASSIGN_OR_RETURN(auto on_host, store.SandboxesOnHost(h.id));
  int64_t holding = 0;
  for (const auto& r : on_host) holding += HoldsResources(r.state) ? 1 : 0;
  return json{{"hostID", h.id},
              {"state", std::string(store::HostStateName(h.state))},
              {"endpoint", h.endpoint},
              {"sandboxes", holding},
              {"vcpuTotal", h.vcpu_total},
              {"vcpuReserved", h.vcpu_reserved},
              {"memoryMBTotal", h.mem_total_mb},
              {"memoryMBReserved", h.mem_reserved_mb},
              {"lastHeartbeat", codec::Rfc3339(h.heartbeat_at_ms * 1000000)}};
}

void List(ControlContext& ctx, http::ResponseWriter& w, const store::TeamRecord& caller) {
  if (Status s = RequireAdmin(caller); !s.ok()) return SendRestError(w, s);
  auto hosts = ctx.store->ListHosts();
  if (!hosts.ok()) return SendRestError(w, hosts.status());
  json out = json::array();
  for (const auto& h : *hosts) {
    auto j = HostJson(*ctx.store, h);
    if (!j.ok()) return SendRestError(w, j.status());
    out.push_back(std::move(*j));
  }
  SendJson(w, 200, DumpJson(out));
}

// Drain (or undrain): the store decides (not_found: unknown host, 404; failed_precondition: a
// lost host, 409); the answer is the host after the change, or as it was if nothing changed.
void SetDraining(ControlContext& ctx, http::Request& req, http::ResponseWriter& w,
                 const store::TeamRecord& caller, bool draining) {
  if (Status s = RequireAdmin(caller); !s.ok()) return SendRestError(w, s);
  const std::string host_id = req.Param("hostID");
  auto changed = ctx.store->SetHostDraining(host_id, draining);
  if (!changed.ok()) return SendRestError(w, changed.status());
  if (*changed) {
    LogInfo(draining ? "api.host_drained" : "api.host_undrained",
            {{"host", host_id}, {"by_team", caller.id}});
  }
  auto host = ctx.store->GetHost(host_id);
  if (!host.ok()) return SendRestError(w, host.status());
  if (!*host) return SendRestError(w, NotFound("host \"" + host_id + "\" not found"));
  auto out = HostJson(*ctx.store, **host);
  if (!out.ok()) return SendRestError(w, out.status());
  SendJson(w, 200, DumpJson(*out));
}

}  // namespace

void RegisterHostRoutes(http::Router& router, ControlContext& ctx) {
  router.Add("GET", "/hosts",
             Authed(ctx, [&ctx](auto&, auto& w, const auto& team) { List(ctx, w, team); }));
  router.Add("POST", "/hosts/{hostID}/drain",
             Audited(ctx, "host.drain", "hostID", [&ctx](auto& req, auto& w, const auto& team) {
               SetDraining(ctx, req, w, team, /*draining=*/true);
             }));
  router.Add("POST", "/hosts/{hostID}/undrain",
             Audited(ctx, "host.undrain", "hostID", [&ctx](auto& req, auto& w, const auto& team) {
               SetDraining(ctx, req, w, team, /*draining=*/false);
             }));
}

}  // namespace moat::api::routes
