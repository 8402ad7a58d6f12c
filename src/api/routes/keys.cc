// moat's API key administration (not part of E2B's API): POST /keys creates a key and shows it
// once, GET /keys lists a team's keys (masked), DELETE /keys/{keyID} revokes one. Who may do
// what is key_admin.h's to decide.
#include <nlohmann/json.hpp>

#include "api/codec/protojson.h"
#include "api/codec/query.h"
#include "api/errors.h"
#include "api/key_admin.h"
#include "api/routes/routes.h"

namespace moat::api::routes {
namespace {

using nlohmann::json;

json KeyJson(const store::ApiKeyRecord& k) {
  return {{"id", k.id},
          {"name", k.name},
          {"mask", k.mask},
          {"teamID", k.team_id},
          {"createdAt", codec::Rfc3339(k.created_at_ms * 1000000)}};
}

void Create(ControlContext& ctx, http::Request& req, http::ResponseWriter& w,
            const store::TeamRecord& team) {
  auto action = ParseCreateKey(req.body);
  if (!action.ok()) return SendRestError(w, action.status());
  auto created = CreateKey(*ctx.store, team, *action);
  if (!created.ok()) return SendRestError(w, created.status());
  json out = KeyJson(created->record);
  out["key"] = created->key;
  out["teamName"] = created->team.name;
  SendJson(w, 201, DumpJson(out));
}

void List(ControlContext& ctx, http::Request& req, http::ResponseWriter& w,
          const store::TeamRecord& team) {
  auto q = codec::ParseQuery(req.raw_query);
  auto keys = ListKeys(*ctx.store, team, codec::QueryValue(q, "teamID").value_or(""));
  if (!keys.ok()) return SendRestError(w, keys.status());
  json out = json::array();
  for (const auto& k : *keys) out.push_back(KeyJson(k));
  SendJson(w, 200, DumpJson(out));
}

}  // namespace

void RegisterKeyRoutes(http::Router& router, ControlContext& ctx) {
  router.Add("POST", "/keys",
             Audited(ctx, "key.create", "",
                     [&ctx](auto& req, auto& w, const auto& team) { Create(ctx, req, w, team); }));
  router.Add("GET", "/keys", Authed(ctx, [&ctx](auto& req, auto& w, const auto& team) {
               List(ctx, req, w, team);
             }));
  router.Add("DELETE", "/keys/{keyID}",
             Audited(ctx, "key.revoke", "keyID",
                     [&ctx](http::Request& req, http::ResponseWriter& w, const auto& team) {
                       Status s = RevokeKey(*ctx.store, team, req.Param("keyID"));
                       if (!s.ok()) return SendRestError(w, s);
                       SendNoContent(w);
                     }));
}

}  // namespace moat::api::routes
