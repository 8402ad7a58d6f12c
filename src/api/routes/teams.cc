// moat's team administration (not part of E2B's API): GET /teams/{teamID}/quotas shows a team's
// quotas in force, which of them are set, and what the team uses now; PUT sets them (admin keys
// only). A team may read its own quotas; another team's are for admin keys (others: 403).
#include <nlohmann/json.hpp>

#include "api/errors.h"
#include "api/routes/routes.h"
#include "api/team_quotas.h"
#include "common/log.h"

namespace moat::api::routes {
namespace {

using nlohmann::json;

Status PermissionDenied(std::string message) {
  return Status(ErrorCode::kPermissionDenied, std::move(message));
}

// The team named in the path, if the caller may see (or, `write`, change) its quotas.
Result<store::TeamRecord> QuotaTeam(store::Store& store, const store::TeamRecord& caller,
                                    const std::string& team_id, bool write) {
  if (write && !caller.admin) return PermissionDenied("only an admin key may set a team's quotas");
  if (team_id == caller.id) return caller;
  if (!caller.admin) return PermissionDenied("only an admin key may see another team's quotas");
  MOAT_ASSIGN_OR_RETURN(auto team, store.GetTeam(team_id));
  if (!team) return NotFound("team \"" + team_id + "\" not found");
  return *team;
}

Result<json> QuotasJson(ControlContext& ctx, const store::TeamRecord& team) {
  MOAT_ASSIGN_OR_RETURN(auto settings, ctx.store->GetTeamQuotas(team.id));
  MOAT_ASSIGN_OR_RETURN(auto usage, ctx.store->RunningUsage(team.id));
  TeamQuotas in_force = EffectiveQuotas(settings);
  json quotas = json::object(), set = json::object();
  for (const QuotaField& f : QuotaFields()) {
    quotas[std::string(f.name)] = in_force.*f.limit;
    if (const auto& v = settings.*f.setting) set[std::string(f.name)] = *v;
  }
  return json{{"teamID", team.id},
              {"teamName", team.name},
              {"quotas", quotas},
              {"set", set},
              {"usage",
               {{"sandboxes", usage.sandboxes},
                {"vcpus", usage.vcpus},
                {"memoryMiB", usage.memory_mib},
                {"createsLastMinute", ctx.controller->quotas().CreatesInLastMinute(team.id)}}}};
}

void Get(ControlContext& ctx, http::Request& req, http::ResponseWriter& w,
         const store::TeamRecord& caller) {
  auto team = QuotaTeam(*ctx.store, caller, req.Param("teamID"), /*write=*/false);
  if (!team.ok()) return SendRestError(w, team.status());
  auto out = QuotasJson(ctx, *team);
  if (!out.ok()) return SendRestError(w, out.status());
  SendJson(w, 200, DumpJson(*out));
}

void Put(ControlContext& ctx, http::Request& req, http::ResponseWriter& w,
         const store::TeamRecord& caller) {
  auto team = QuotaTeam(*ctx.store, caller, req.Param("teamID"), /*write=*/true);
  if (!team.ok()) return SendRestError(w, team.status());
  auto current = ctx.store->GetTeamQuotas(team->id);
  if (!current.ok()) return SendRestError(w, current.status());
  auto updated = ParseQuotaUpdate(req.body, *current);
  if (!updated.ok()) return SendRestError(w, updated.status());
  if (Status s = ctx.store->SetTeamQuotas(team->id, *updated); !s.ok()) {
    return SendRestError(w, s);
  }
  LogInfo("api.team_quotas_set", {{"team", team->id}, {"by_team", caller.id}});
  auto out = QuotasJson(ctx, *team);
  if (!out.ok()) return SendRestError(w, out.status());
  SendJson(w, 200, DumpJson(*out));
}

}  // namespace

void RegisterTeamRoutes(http::Router& router, ControlContext& ctx) {
  router.Add("GET", "/teams/{teamID}/quotas",
             Authed(ctx, [&ctx](auto& req, auto& w, const auto& team) { Get(ctx, req, w, team); }));
  router.Add("PUT", "/teams/{teamID}/quotas",
             Audited(ctx, "team.quotas", "teamID",
                     [&ctx](auto& req, auto& w, const auto& team) { Put(ctx, req, w, team); }));
}

}  // namespace moat::api::routes
