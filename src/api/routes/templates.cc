// Custom templates (shared/E2B-TEMPLATES.md §0, docs/templates.md): the official SDK's
// Template.build() flow — register, negotiate and upload COPY files, start, poll the status with
// its log — plus aliases, tags, list, info and delete. The logic is TemplateService's.
#include "api/templates.h"

#include <nlohmann/json.hpp>

#include "api/codec/query.h"
#include "api/errors.h"
#include "api/routes/routes.h"

namespace moat::api::routes {
namespace {

using nlohmann::json;

Result<json> Body(const http::Request& req) {
  if (req.body.empty()) return json::object();
  json j = json::parse(req.body, nullptr, false);
  if (j.is_discarded()) return InvalidArgument("the body is not valid JSON");
  return j;
}

// How the caller reached moatd: what the upload URL must start with.
std::string BaseUrl(const http::Request& req) {
  std::string proto = req.Header("X-Forwarded-Proto");
  if (proto != "https") proto = "http";
  std::string host = req.Header("X-Forwarded-Host");
  if (host.empty()) host = req.Header("Host");
  return proto + "://" + host;
}

TemplateService* Service(ControlContext& ctx) {
  return ctx.controller->templates();
}

// With `action`: the answered request goes to the audit log (Audited).
template <typename F>
http::Handler WithTemplates(ControlContext& ctx, F fn, std::string action = "",
                            std::string target_param = "") {
  TeamHandler h = [&ctx, fn](http::Request& req, http::ResponseWriter& w,
                             const store::TeamRecord& team) {
    TemplateService* t = Service(ctx);
    if (t == nullptr) return SendRestError(w, Unavailable("custom templates are not enabled"));
    fn(*t, req, w, team);
  };
  if (action.empty()) return Authed(ctx, std::move(h));
  return Audited(ctx, std::move(action), std::move(target_param), std::move(h));
}

void Answer(http::ResponseWriter& w, int status, const Result<json>& r) {
  if (!r.ok()) return SendRestError(w, r.status());
  SendJson(w, status, DumpJson(r.value()));
}

}  // namespace

void RegisterTemplateRoutes(http::Router& router, ControlContext& ctx) {
  router.Add("POST", "/v3/templates",
             WithTemplates(
                 ctx,
                 [](TemplateService& t, auto& req, auto& w, const auto& team) {
                   auto body = Body(req);
                   if (!body.ok()) return SendRestError(w, body.status());
                   Answer(w, 202, t.Register(team, *body));
                 },
                 "template.create", ""));
  router.Add("GET", "/templates/{templateID}/files/{hash}",
             WithTemplates(ctx, [](TemplateService& t, auto& req, auto& w, const auto& team) {
               Answer(w, 201,
                      t.FileUpload(team, req.Param("templateID"), req.Param("hash"), BaseUrl(req)));
             }));
  // The upload URL authenticates itself (its query was checked, before the body was read, by
  // ApiServer::Admit); checked again here for requests that did not come through it.
  router.Add("PUT", kTemplateUploadPath, [&ctx](http::Request& req, http::ResponseWriter& w) {
    TemplateService* t = Service(ctx);
    if (t == nullptr) return SendRestError(w, Unavailable("custom templates are not enabled"));
    std::map<std::string, std::string> q;
    for (auto& [k, v] : codec::ParseQuery(req.raw_query)) q[k] = v;
    auto target = t->CheckUploadUrl(q);
    if (!target.ok()) return SendRestError(w, target.status());
    Status s = t->AcceptUpload(*target, req);
    if (!s.ok()) {
      // The body's faults (too large, too slow, not a safe tar) are the client's; the rest (the
      // disk, the store) are answered as everywhere, never as a bad request.
      bool body_fault = s.code() == ErrorCode::kInvalidArgument ||
                        s.code() == ErrorCode::kResourceExhausted ||
                        s.code() == ErrorCode::kDeadlineExceeded;
      return SendRestError(w, s, body_fault ? http::BodyErrorHttpStatus(s) : 0);
    }
    SendJson(w, 200, "{}");
  });
  router.Add("POST", "/v2/templates/{templateID}/builds/{buildID}",
             WithTemplates(
                 ctx,
                 [](TemplateService& t, auto& req, auto& w, const auto& team) {
                   auto body = Body(req);
                   if (!body.ok()) return SendRestError(w, body.status());
                   Status s =
                       t.StartBuild(team, req.Param("templateID"), req.Param("buildID"), *body);
                   if (!s.ok()) return SendRestError(w, s);
                   // Empty, with Content-Length: 0 (the SDK parses any other 2xx body as JSON).
                   (void)w.Send(202, {}, "");
                 },
                 "template.build", "templateID"));
  router.Add(
      "GET", "/templates/{templateID}/builds/{buildID}/status",
      WithTemplates(ctx, [](TemplateService& t, auto& req, auto& w, const auto& team) {
        auto q = codec::ParseQuery(req.raw_query);
        int64_t offset = 0, limit = 100;
        try {
          if (auto v = codec::QueryValue(q, "logsOffset")) offset = std::stoll(*v);
          if (auto v = codec::QueryValue(q, "limit")) limit = std::stoll(*v);
        } catch (const std::exception&) {
          return SendRestError(w, InvalidArgument("logsOffset and limit are integers"));
        }
        Answer(w, 200,
               t.BuildStatus(team, req.Param("templateID"), req.Param("buildID"), offset, limit));
      }));
  router.Add("GET", "/templates/aliases/{alias}",
             WithTemplates(ctx, [](TemplateService& t, auto& req, auto& w, const auto& team) {
               Answer(w, 200, t.Alias(team, req.Param("alias")));
             }));
  router.Add("GET", "/templates",
             WithTemplates(ctx, [](TemplateService& t, auto&, auto& w, const auto& team) {
               Answer(w, 200, t.List(team));
             }));
  router.Add("GET", "/templates/{templateID}",
             WithTemplates(ctx, [](TemplateService& t, auto& req, auto& w, const auto& team) {
               Answer(w, 200, t.Get(team, req.Param("templateID")));
             }));
  router.Add("GET", "/templates/{templateID}/tags",
             WithTemplates(ctx, [](TemplateService& t, auto& req, auto& w, const auto& team) {
               Answer(w, 200, t.Tags(team, req.Param("templateID")));
             }));
  router.Add("POST", "/templates/tags",
             WithTemplates(
                 ctx,
                 [](TemplateService& t, auto& req, auto& w, const auto& team) {
                   auto body = Body(req);
                   if (!body.ok()) return SendRestError(w, body.status());
                   Answer(w, 201, t.AssignTags(team, *body));
                 },
                 "template.tag", ""));
  router.Add("DELETE", "/templates/tags",
             WithTemplates(
                 ctx,
                 [](TemplateService& t, auto& req, auto& w, const auto& team) {
                   auto body = Body(req);
                   if (!body.ok()) return SendRestError(w, body.status());
                   Status s = t.RemoveTags(team, *body);
                   if (!s.ok()) return SendRestError(w, s);
                   SendNoContent(w);
                 },
                 "template.untag", ""));
}

}  // namespace moat::api::routes
