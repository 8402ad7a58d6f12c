// The control API's sandbox routes (E2B-WIRE §2.2, §2.4): create, get, list, kill, timeout,
// connect, refreshes — both SDK generations. Handlers parse into actions
// (sandbox_actions.h) and hand them to the SandboxController.
#include <nlohmann/json.hpp>

#include "api/auth.h"
#include "api/codec/protojson.h"
#include "api/codec/query.h"
#include "api/errors.h"
#include "api/routes/routes.h"

namespace moat::api::routes {
namespace {

using nlohmann::json;
using store::SandboxRecord;

std::string Dump(const json& j) {
  return DumpJson(j);
}

json SandboxJson(const ControlContext& ctx, const SandboxRecord& r) {
  return {{"sandboxID", r.id},
          {"templateID", r.template_id},
          {"clientID", "moat"},
          {"envdVersion", ctx.envd_version},
          {"envdAccessToken", r.access_token},
          {"trafficAccessToken",
           r.traffic_access_token.empty() ? json(nullptr) : json(r.traffic_access_token)},
          {"domain", ctx.domain.empty() ? json(nullptr) : json(ctx.domain)}};
}

json ListedJson(const ControlContext& ctx, const SandboxRecord& r) {
  return {{"sandboxID", r.id},
          {"templateID", r.template_id},
          {"clientID", "moat"},
          {"startedAt", codec::Rfc3339(r.started_at_ms * 1000000)},
          {"endAt", codec::Rfc3339(r.end_at_ms * 1000000)},
          {"state", WireState(r.state).value_or("running")},
          {"cpuCount", r.cpu_count},
          {"memoryMB", r.memory_mb},
          {"diskSizeMB", r.disk_size_mb},
          {"envdVersion", ctx.envd_version},
          {"metadata", r.metadata},
          // moat's own: the host that runs it, or holds its paused snapshot (null: none named,
          // a record from before hosts had ids).
          {"hostID", r.host_id.empty() ? json(nullptr) : json(r.host_id)}};
}

json DetailJson(const ControlContext& ctx, const SandboxRecord& r) {
  json j = ListedJson(ctx, r);
  j["envdAccessToken"] = r.access_token;
  j["trafficAccessToken"] =
      r.traffic_access_token.empty() ? json(nullptr) : json(r.traffic_access_token);
  j["network"] = {{"allowPublicTraffic", r.traffic_access_token.empty()}};
  if (!r.options.mask_request_host.empty()) {
    j["network"]["maskRequestHost"] = r.options.mask_request_host;
  }
  j["domain"] = ctx.domain.empty() ? json(nullptr) : json(ctx.domain);
  j["lifecycle"] = {{"onTimeout", r.auto_pause ? "pause" : "kill"},
                    {"autoResume", r.options.auto_resume}};
  // moat's own: whether the pause at timeout keeps memory (E2B's autoPauseMemory).
  if (r.auto_pause) j["lifecycle"]["autoPauseMemory"] = r.options.auto_pause_memory;
  return j;
}

void Create(ControlContext& ctx, http::Request& req, http::ResponseWriter& w,
            const store::TeamRecord& team, int64_t default_timeout_s) {
  auto action = ParseCreateSandbox(req.body, default_timeout_s);
  if (!action.ok()) return SendRestError(w, action.status());
  auto r = ctx.controller->Create(team, *action);
  if (!r.ok()) return SendRestError(w, r.status());
  SendJson(w, 201, Dump(SandboxJson(ctx, *r)));
}

void List(ControlContext& ctx, http::Request& req, http::ResponseWriter& w,
          const store::TeamRecord& team, bool v2) {
  auto filter = ParseListQuery(codec::ParseQuery(req.raw_query), v2);
  if (!filter.ok()) return SendRestError(w, filter.status());
  filter->team_id = team.id;
  json out = json::array();
  http::Headers headers;
  if (v2) {
    auto page = ctx.controller->List(*filter);
    if (!page.ok()) return SendRestError(w, page.status());
    for (const auto& r : page->items) out.push_back(ListedJson(ctx, r));
    if (!page->next_token.empty()) headers["X-Next-Token"] = page->next_token;
  } else {
    // The old route has no paging: every page, in one answer.
    for (;;) {
      auto page = ctx.controller->List(*filter);
      if (!page.ok()) return SendRestError(w, page.status());
      for (const auto& r : page->items) out.push_back(ListedJson(ctx, r));
      if (page->next_token.empty()) break;
      filter->next_token = page->next_token;
    }
  }
  SendJson(w, 200, Dump(out), std::move(headers));
}

// Connect: extends the end time (never shortens); `timeout` required on the old route.
void Connect(ControlContext& ctx, http::Request& req, http::ResponseWriter& w,
             const store::TeamRecord& team, bool v2) {
  auto secs = ParseSeconds(req.body, "timeout", v2 ? std::optional<int64_t>(0) : std::nullopt);
  if (!secs.ok()) return SendRestError(w, secs.status());
  bool resumed = false;
  auto r = ctx.controller->Connect(team.id, req.Param("sandboxID"), *secs, &resumed);
  if (!r.ok()) return SendRestError(w, r.status());
  SendJson(w, resumed ? 201 : 200, Dump(SandboxJson(ctx, *r)));
}

void Fork(ControlContext& ctx, http::Request& req, http::ResponseWriter& w,
          const store::TeamRecord& team) {
  auto secs = ParseSeconds(req.body, "timeout", 300);
  if (!secs.ok()) return SendRestError(w, secs.status());
  auto count = ParseSeconds(req.body, "count", 1);
  if (!count.ok()) return SendRestError(w, count.status());
  if (*count < 1 || *count > 64) {
    return SendRestError(w, InvalidArgument("\"count\" must be 1..64"));
  }
  auto children =
      ctx.controller->Fork(team.id, req.Param("sandboxID"), static_cast<int>(*count), *secs);
  if (!children.ok()) return SendRestError(w, children.status());
  json out = json::array();
  for (const auto& c : *children) out.push_back({{"sandbox", SandboxJson(ctx, c)}});
  SendJson(w, 201, Dump(out));
}

}  // namespace

http::Handler Authed(ControlContext& ctx, TeamHandler fn) {
  return [&ctx, fn = std::move(fn)](http::Request& req, http::ResponseWriter& w) {
    auto caller = AuthenticateCaller(*ctx.store, req);
    if (!caller.ok()) return SendRestError(w, caller.status());
    req.auth_key_id = caller->key_id;
    req.auth_key_name = caller->key_name;
    if (req.request_id.empty()) req.request_id = RandomToken("", 8);
    Actor actor{caller->team.id, caller->key_id, caller->key_name, SourceAddress(req),
                req.request_id};
    ScopedActor scope(&actor);
    fn(req, w, caller->team);
  };
}

std::string DumpJson(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

void RegisterSandboxRoutes(http::Router& router, ControlContext& ctx) {
  router.Add("POST", "/v2/sandboxes",
             Audited(ctx, "sandbox.create", "", [&ctx](auto& req, auto& w, const auto& team) {
               Create(ctx, req, w, team, 300);
             }));
  router.Add("POST", "/sandboxes",
             Audited(ctx, "sandbox.create", "", [&ctx](auto& req, auto& w, const auto& team) {
               Create(ctx, req, w, team, 15);
             }));
  router.Add("GET", "/v2/sandboxes", Authed(ctx, [&ctx](auto& req, auto& w, const auto& team) {
               List(ctx, req, w, team, true);
             }));
  router.Add("GET", "/sandboxes", Authed(ctx, [&ctx](auto& req, auto& w, const auto& team) {
               List(ctx, req, w, team, false);
             }));
  router.Add("GET", "/sandboxes/{sandboxID}",
             Authed(ctx, [&ctx](http::Request& req, http::ResponseWriter& w, const auto& team) {
               auto r = ctx.controller->Get(team.id, req.Param("sandboxID"));
               if (!r.ok()) return SendRestError(w, r.status());
               SendJson(w, 200, Dump(DetailJson(ctx, *r)));
             }));
  // E2B's getMetrics: what the sandbox costs the host now (docs/sandbox.md, Usage).
  router.Add("GET", "/sandboxes/{sandboxID}/metrics",
             Authed(ctx, [&ctx](http::Request& req, http::ResponseWriter& w, const auto& team) {
               auto range = ParseMetricsQuery(codec::ParseQuery(req.raw_query));
               if (!range.ok()) return SendRestError(w, range.status());
               auto samples = ctx.controller->SampleUsage(team.id, req.Param("sandboxID"),
                                                          range->start_s, range->end_s);
               if (!samples.ok()) return SendRestError(w, samples.status());
               json out = json::array();
               for (const auto& m : *samples) {
                 const HostSandboxUsage& u = m.usage;
                 out.push_back({{"timestamp", codec::Rfc3339(m.unix_ms * 1000000)},
                                {"timestampUnix", m.unix_ms / 1000},
                                {"cpuCount", u.vcpus},
                                {"cpuUsedPct", m.cpu_used_pct},
                                {"memUsed", u.pss_bytes},
                                {"memTotal", u.memory_total_bytes},
                                {"memCache", u.pss_file_bytes},
                                {"diskUsed", u.disk_bytes},
                                {"diskTotal", u.disk_total_bytes}});
               }
               SendJson(w, 200, Dump(out));
             }));
  router.Add("DELETE", "/sandboxes/{sandboxID}",
             Audited(ctx, "sandbox.kill", "sandboxID",
                     [&ctx](http::Request& req, http::ResponseWriter& w, const auto& team) {
                       Status s = ctx.controller->Kill(team.id, req.Param("sandboxID"));
                       if (!s.ok()) return SendRestError(w, s);
                       SendNoContent(w);
                     }));
  router.Add("POST", "/sandboxes/{sandboxID}/timeout",
             Audited(ctx, "sandbox.timeout", "sandboxID",
                     [&ctx](http::Request& req, http::ResponseWriter& w, const auto& team) {
                       auto secs = ParseSeconds(req.body, "timeout", std::nullopt);
                       if (!secs.ok()) return SendRestError(w, secs.status());
                       Status s =
                           ctx.controller->SetTimeout(team.id, req.Param("sandboxID"), *secs);
                       if (!s.ok()) return SendRestError(w, s);
                       SendNoContent(w);
                     }));
  router.Add("POST", "/sandboxes/{sandboxID}/refreshes",
             Authed(ctx, [&ctx](http::Request& req, http::ResponseWriter& w, const auto& team) {
               // Without a duration a refresh keeps the sandbox for the default 60 s more.
               auto secs = ParseSeconds(req.body, "duration", 60);
               if (!secs.ok()) return SendRestError(w, secs.status());
               auto r = ctx.controller->Connect(team.id, req.Param("sandboxID"), *secs);
               if (!r.ok()) return SendRestError(w, r.status());
               SendNoContent(w);
             }));
  router.Add("PUT", "/sandboxes/{sandboxID}/network",
             Audited(ctx, "sandbox.network", "sandboxID",
                     [&ctx](http::Request& req, http::ResponseWriter& w, const auto& team) {
                       auto egress = ParseNetworkUpdate(req.body);
                       if (!egress.ok()) return SendRestError(w, egress.status());
                       Status s = ctx.controller->UpdateNetwork(team.id, req.Param("sandboxID"),
                                                                egress->ToJson());
                       if (!s.ok()) return SendRestError(w, s);
                       SendNoContent(w);
                     }));
  router.Add("POST", "/sandboxes/{sandboxID}/pause",
             Audited(ctx, "sandbox.pause", "sandboxID",
                     [&ctx](http::Request& req, http::ResponseWriter& w, const auto& team) {
                       auto keep_memory = ParsePauseKeepsMemory(req.body);
                       if (!keep_memory.ok()) return SendRestError(w, keep_memory.status());
                       Status s =
                           ctx.controller->Pause(team.id, req.Param("sandboxID"), *keep_memory);
                       if (!s.ok()) return SendRestError(w, s);
                       SendNoContent(w);
                     }));
  router.Add("POST", "/sandboxes/{sandboxID}/resume",
             Audited(ctx, "sandbox.resume", "sandboxID",
                     [&ctx](http::Request& req, http::ResponseWriter& w, const auto& team) {
                       auto secs = ParseSeconds(req.body, "timeout", 300);
                       if (!secs.ok()) return SendRestError(w, secs.status());
                       auto r = ctx.controller->Resume(team.id, req.Param("sandboxID"), *secs);
                       if (!r.ok()) return SendRestError(w, r.status());
                       SendJson(w, 201, Dump(SandboxJson(ctx, *r)));
                     }));
  router.Add("POST", "/sandboxes/{sandboxID}/fork",
             Audited(ctx, "sandbox.fork", "sandboxID",
                     [&ctx](auto& req, auto& w, const auto& team) { Fork(ctx, req, w, team); }));
  router.Add(
      "POST", "/v2/sandboxes/{sandboxID}/connect",
      Audited(ctx, "sandbox.connect", "sandboxID",
              [&ctx](auto& req, auto& w, const auto& team) { Connect(ctx, req, w, team, true); }));
  router.Add(
      "POST", "/sandboxes/{sandboxID}/connect",
      Audited(ctx, "sandbox.connect", "sandboxID",
              [&ctx](auto& req, auto& w, const auto& team) { Connect(ctx, req, w, team, false); }));
}

}  // namespace moat::api::routes
