// Named snapshots (E2B-WIRE §2.2): create from a running sandbox, list the team's, delete. A
// snapshot's id is a templateID for create. Snapshots belong to the team of the key that made
// them; another team's are not_found everywhere.
#include <nlohmann/json.hpp>

#include "api/codec/protojson.h"
#include "api/codec/query.h"
#include "api/errors.h"
#include "api/routes/routes.h"
#include "api/templates.h"

namespace moat::api::routes {
namespace {

using nlohmann::json;

// SnapshotInfo, plus moat's `sandboxID`, `createdAt`, and where it lives: `hostID` (the host
// whose disk holds it) and `storage` — "local" (no object store), "local-only" (not uploaded
// yet: lost with its host), "uploading" or "uploaded" (any host of the fleet can restore it).
// The SDK ignores unknown fields.
json SnapshotJson(ControlContext& ctx, const store::SnapshotRecord& s) {
  json names = json::array();
  if (!s.name.empty()) names.push_back(s.name);
  auto storage = ctx.controller->SnapshotStorage(s.id);
  return {{"snapshotID", s.id},        {"names", names},
          {"sandboxID", s.sandbox_id}, {"createdAt", codec::Rfc3339(s.created_at_ms * 1000000)},
          {"hostID", s.host_id},       {"storage", storage.ok() ? *storage : "unknown"}};
}

void Create(ControlContext& ctx, http::Request& req, http::ResponseWriter& w,
            const store::TeamRecord& team) {
  auto action = ParseCreateSnapshot(req.body);
  if (!action.ok()) return SendRestError(w, action.status());
  auto snap = ctx.controller->CreateSnapshot(team.id, req.Param("sandboxID"), *action);
  if (!snap.ok()) return SendRestError(w, snap.status());
  SendJson(w, 201, DumpJson(SnapshotJson(ctx, *snap)));
}

void List(ControlContext& ctx, http::Request& req, http::ResponseWriter& w,
          const store::TeamRecord& team) {
  auto filter = ParseSnapshotListQuery(codec::ParseQuery(req.raw_query));
  if (!filter.ok()) return SendRestError(w, filter.status());
  filter->team_id = team.id;
  auto page = ctx.controller->ListSnapshots(*filter);
  if (!page.ok()) return SendRestError(w, page.status());
  json out = json::array();
  for (const auto& s : page->items) out.push_back(SnapshotJson(ctx, s));
  http::Headers headers;
  if (!page->next_token.empty()) headers["X-Next-Token"] = page->next_token;
  SendJson(w, 200, DumpJson(out), std::move(headers));
}

void Delete(ControlContext& ctx, http::Request& req, http::ResponseWriter& w,
            const store::TeamRecord& team) {
  std::string id = req.Param("templateID");
  if (id == "base") {
    return SendRestError(w, InvalidArgument("template \"base\" is built in and cannot be deleted"));
  }
  // A custom template of the team's by id or name, else a named snapshot (E2B deletes both here).
  if (TemplateService* t = ctx.controller->templates(); t != nullptr) {
    Status s = t->Delete(team, id);
    if (s.code() != ErrorCode::kNotFound) {
      if (!s.ok()) return SendRestError(w, s);
      return SendNoContent(w);
    }
  }
  Status s = ctx.controller->DeleteSnapshot(team.id, id);
  if (!s.ok()) return SendRestError(w, s);
  SendNoContent(w);
}

}  // namespace

void RegisterSnapshotRoutes(http::Router& router, ControlContext& ctx) {
  router.Add("POST", "/sandboxes/{sandboxID}/snapshots",
             Audited(ctx, "sandbox.snapshot", "sandboxID",
                     [&ctx](auto& req, auto& w, const auto& team) { Create(ctx, req, w, team); }));
  router.Add("GET", "/snapshots", Authed(ctx, [&ctx](auto& req, auto& w, const auto& team) {
               List(ctx, req, w, team);
             }));
  router.Add("DELETE", "/templates/{templateID}",
             Audited(ctx, "template.delete", "templateID",
                     [&ctx](auto& req, auto& w, const auto& team) { Delete(ctx, req, w, team); }));
}

}  // namespace moat::api::routes
