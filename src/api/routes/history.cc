// History, audit and usage routes (docs/dashboard.md, docs/usage.md; the shapes are in
// docs/dashboard-contract.md): what the store keeps of sandboxes beyond their lives, the audit
// log, the usage report, and E2B's logs route over the console and command history.
#include "api/history.h"

#include <nlohmann/json.hpp>

#include "api/auth.h"
#include "api/codec/protojson.h"
#include "api/codec/query.h"
#include "api/errors.h"
#include "api/routes/routes.h"
#include "api/usage.h"

namespace moat::api::routes {
namespace {

using nlohmann::json;

constexpr int kMaxLimit = 1000;

json TimeOrNull(int64_t ms) {
  return ms > 0 ? json(codec::Rfc3339(ms * 1000000)) : json(nullptr);
}
json TextOrNull(const std::string& s) {
  return s.empty() ? json(nullptr) : json(s);
}

json HistoryJson(const store::HistoryRecord& h, int64_t now_ms) {
  json parent = nullptr;
  if (!h.parent_id.empty()) parent = {{"kind", h.parent_kind}, {"id", h.parent_id}};
  int64_t end = h.ended_at_ms > 0 ? h.ended_at_ms : now_ms;
  return {{"sandboxID", h.sandbox_id},
          {"teamID", h.team_id},
          {"templateID", h.template_id},
          {"createdBy", {{"keyID", TextOrNull(h.key_id)}, {"keyName", TextOrNull(h.key_name)}}},
          {"metadata", h.metadata},
          {"hostID", h.host_id},
          {"cpuCount", h.cpu_count},
          {"memoryMB", h.memory_mb},
          {"parent", parent},
          {"createdAt", TimeOrNull(h.created_at_ms)},
          {"endedAt", TimeOrNull(h.ended_at_ms)},
          {"state", h.state},
          {"endReason", TextOrNull(h.end_reason)},
          {"endedBy", TextOrNull(h.ended_by)},
          {"endDetail", TextOrNull(h.end_detail)},
          {"egressBytes", h.egress_bytes},
          {"ingressBytes", h.ingress_bytes},
          {"durationMs", std::max<int64_t>(0, end - h.created_at_ms)}};
}

json DetailJson(const std::string& text) {
  if (text.empty()) return nullptr;
  json j = json::parse(text, nullptr, false);
  return j.is_discarded() ? json(text) : j;
}

json CommandJson(const store::CommandRecord& c) {
  auto stream = [](const std::string& head, const std::string& tail, int64_t bytes) {
    return json{{"head", head}, {"tail", tail}, {"bytes", bytes}};
  };
  json duration = nullptr;
  if (c.ended_at_ms > 0) duration = c.ended_at_ms - c.started_at_ms;
  return {{"id", c.id},
          {"kind", c.kind},
          {"command", c.command},
          {"user", c.user},
          {"cwd", c.cwd},
          {"startedAt", TimeOrNull(c.started_at_ms)},
          {"endedAt", TimeOrNull(c.ended_at_ms)},
          {"durationMs", duration},
          {"exitCode", c.exit_code ? json(*c.exit_code) : json(nullptr)},
          {"signal", TextOrNull(c.signal)},
          {"error", TextOrNull(c.error)},
          {"stdout", stream(c.stdout_head, c.stdout_tail, c.stdout_bytes)},
          {"stderr", stream(c.stderr_head, c.stderr_tail, c.stderr_bytes)}};
}

json AuditJson(const store::AuditRecord& a) {
  return {{"seq", a.seq},
          {"at", TimeOrNull(a.at_ms)},
          {"teamID", a.team_id},
          {"keyID", TextOrNull(a.key_id)},
          {"keyName", TextOrNull(a.key_name)},
          {"source", a.source},
          {"requestID", a.request_id},
          {"action", a.action},
          {"target", a.target},
          {"outcome", a.outcome},
          {"status", a.status},
          {"detail", DetailJson(a.detail)}};
}

json FiguresJson(const UsageFigures& f) {
  return {{"runningSeconds", f.running_seconds},
          {"pausedSeconds", f.paused_seconds},
          {"vcpuSeconds", f.vcpu_seconds},
          {"gibSeconds", f.gib_seconds},
          {"idleSeconds", f.idle_seconds},
          {"creates", f.creates},
          {"forks", f.forks},
          {"egressBytes", f.egress_bytes},
          {"ingressBytes", f.ingress_bytes},
          {"snapshotByteHours", f.snapshot_byte_hours}};
}

// A time in a query: RFC 3339, or unix milliseconds.
Result<std::optional<int64_t>> TimeParam(const codec::QueryParams& q, std::string_view name) {
  auto v = codec::QueryValue(q, name);
  if (!v || v->empty()) return std::optional<int64_t>();
  // Up to the end of year 9999: later times would overflow nanoseconds in the answer.
  constexpr int64_t kMaxMs = 253402300799999;
  auto out_of_range = [&] {
    return InvalidArgument("query parameter \"" + std::string(name) +
                           "\" is out of range (1970 to 9999)");
  };
  bool digits = std::all_of(v->begin(), v->end(), [](char c) { return c >= '0' && c <= '9'; });
  if (digits && v->size() <= 15) {
    int64_t ms = std::stoll(*v);
    if (ms > kMaxMs) return out_of_range();
    return std::optional<int64_t>(ms);
  }
  auto secs = codec::ParseRfc3339(*v);
  if (!secs.ok()) {
    return InvalidArgument("query parameter \"" + std::string(name) +
                           "\" must be RFC 3339 or unix milliseconds, not \"" + *v + "\"");
  }
  if (*secs < 0 || *secs > kMaxMs / 1000) return out_of_range();
  return std::optional<int64_t>(*secs * 1000);
}

Result<int> LimitParam(const codec::QueryParams& q, int fallback) {
  auto v = codec::QueryValue(q, "limit");
  if (!v || v->empty()) return fallback;
  bool digits = v->size() <= 6 &&
                std::all_of(v->begin(), v->end(), [](char c) { return c >= '0' && c <= '9'; });
  int n = digits ? std::stoi(*v) : 0;
  if (n < 1 || n > kMaxLimit) {
    return InvalidArgument("query parameter \"limit\" must be 1.." + std::to_string(kMaxLimit));
  }
  return n;
}

// `from`, `to` and `limit` (default 100) of a list query.
Status ParseWindow(const codec::QueryParams& q, std::optional<int64_t>* from,
                   std::optional<int64_t>* to, int* limit) {
  MOAT_ASSIGN_OR_RETURN(*from, TimeParam(q, "from"));
  MOAT_ASSIGN_OR_RETURN(*to, TimeParam(q, "to"));
  MOAT_ASSIGN_OR_RETURN(*limit, LimitParam(q, 100));
  return Status::Ok();
}

bool TrueParam(const codec::QueryParams& q, std::string_view name) {
  auto v = codec::QueryValue(q, name);
  return v && (*v == "true" || *v == "1");
}

// The team's history record of `id` (not_found for another team's or an unknown one).
Result<store::HistoryRecord> OwnHistory(ControlContext& ctx, const std::string& team_id,
                                        const std::string& id) {
  MOAT_ASSIGN_OR_RETURN(auto h, ctx.store->GetHistory(id));
  if (!h || h->team_id != team_id) return NotFound("sandbox \"" + id + "\" has no history");
  return std::move(*h);
}

void ListHistory(ControlContext& ctx, http::Request& req, http::ResponseWriter& w,
                 const store::TeamRecord& team) {
  auto q = codec::ParseQuery(req.raw_query);
  store::HistoryFilter f;
  f.team_id = team.id;
  f.state = codec::QueryValue(q, "state").value_or("");
  f.template_id = codec::QueryValue(q, "templateID").value_or("");
  f.next_token = codec::QueryValue(q, "nextToken").value_or("");
  f.failed_only = TrueParam(q, "failed");
  if (auto m = codec::QueryValue(q, "metadata"); m && !m->empty()) {
    auto meta = codec::ParseMetadataFilter(*m);
    if (!meta.ok()) return SendRestError(w, meta.status());
    f.metadata = *meta;
  }
  Status window = ParseWindow(q, &f.from_ms, &f.to_ms, &f.limit);
  if (!window.ok()) return SendRestError(w, window);
  auto page = ctx.store->ListHistory(f);
  if (!page.ok()) return SendRestError(w, page.status());
  int64_t now = UnixMillisNow();
  json items = json::array();
  for (const auto& h : page->items) items.push_back(HistoryJson(h, now));
  SendJson(w, 200, DumpJson({{"items", items}, {"nextToken", page->next_token}}));
}

void GetHistory(ControlContext& ctx, http::Request& req, http::ResponseWriter& w,
                const store::TeamRecord& team) {
  auto h = OwnHistory(ctx, team.id, req.Param("sandboxID"));
  if (!h.ok()) return SendRestError(w, h.status());
  int64_t now = UnixMillisNow();
  json out = HistoryJson(*h, now);
  auto events = ctx.store->SandboxEvents(h->sandbox_id);
  if (!events.ok()) return SendRestError(w, events.status());
  json ev = json::array();
  for (const auto& e : *events) {
    ev.push_back({{"seq", e.seq},
                  {"at", TimeOrNull(e.at_ms)},
                  {"kind", e.kind},
                  {"durationMs", e.duration_ms},
                  {"detail", DetailJson(e.detail)}});
  }
  out["events"] = ev;
  auto children = ctx.store->HistoryChildren(h->sandbox_id);
  if (!children.ok()) return SendRestError(w, children.status());
  json kids = json::array();
  for (const auto& c : *children) {
    if (c.team_id == team.id) kids.push_back(HistoryJson(c, now));
  }
  out["children"] = kids;
  SendJson(w, 200, DumpJson(out));
}

void ListCommands(ControlContext& ctx, http::Request& req, http::ResponseWriter& w,
                  const store::TeamRecord& team) {
  auto h = OwnHistory(ctx, team.id, req.Param("sandboxID"));
  if (!h.ok()) return SendRestError(w, h.status());
  auto q = codec::ParseQuery(req.raw_query);
  auto limit = LimitParam(q, 50);
  if (!limit.ok()) return SendRestError(w, limit.status());
  int64_t before = 0;
  if (auto b = codec::QueryValue(q, "before"); b && !b->empty()) {
    bool digits = b->size() <= 18 &&
                  std::all_of(b->begin(), b->end(), [](char c) { return c >= '0' && c <= '9'; });
    if (!digits) {
      return SendRestError(w, InvalidArgument("query parameter \"before\" must be a command id"));
    }
    before = std::stoll(*b);
  }
  auto list = ctx.store->ListCommands(h->sandbox_id, before, *limit);
  if (!list.ok()) return SendRestError(w, list.status());
  json items = json::array();
  for (const auto& c : *list) items.push_back(CommandJson(c));
  int64_t next = static_cast<int>(list->size()) == *limit && !list->empty() ? list->back().id : 0;
  SendJson(w, 200, DumpJson({{"items", items}, {"nextBefore", next}}));
}

// The console log: the one kept when it ended, or its host's while it runs.
Result<std::string> ConsoleOf(ControlContext& ctx, const store::HistoryRecord& h) {
  MOAT_ASSIGN_OR_RETURN(auto kept, ctx.store->ConsoleLog(h.sandbox_id));
  if (kept) return std::move(*kept);
  if (h.ended_at_ms > 0) return std::string();
  auto live = ctx.controller->ConsoleLog(h.team_id, h.sandbox_id);
  if (!live.ok()) {
    if (live.status().code() == ErrorCode::kNotFound ||
        live.status().code() == ErrorCode::kFailedPrecondition) {
      return std::string();
    }
    return live.status();
  }
  return std::move(*live);
}

void Console(ControlContext& ctx, http::Request& req, http::ResponseWriter& w,
             const store::TeamRecord& team) {
  auto h = OwnHistory(ctx, team.id, req.Param("sandboxID"));
  if (!h.ok()) return SendRestError(w, h.status());
  auto text = ConsoleOf(ctx, *h);
  if (!text.ok()) return SendRestError(w, text.status());
  (void)w.Send(200, {{"Content-Type", "text/plain; charset=utf-8"}}, std::move(*text));
}

// E2B's logs route: the console's lines, then the commands as entries, oldest first.
void Logs(ControlContext& ctx, http::Request& req, http::ResponseWriter& w,
          const store::TeamRecord& team) {
  auto h = OwnHistory(ctx, team.id, req.Param("sandboxID"));
  if (!h.ok()) return SendRestError(w, h.status());
  auto q = codec::ParseQuery(req.raw_query);
  auto limit = LimitParam(q, 1000);
  if (!limit.ok()) return SendRestError(w, limit.status());
  auto start = TimeParam(q, "start");
  if (!start.ok()) return SendRestError(w, start.status());
  auto text = ConsoleOf(ctx, *h);
  if (!text.ok()) return SendRestError(w, text.status());
  auto commands = ctx.store->ListCommands(h->sandbox_id, 0, *limit);
  if (!commands.ok()) return SendRestError(w, commands.status());
  struct Entry {
    int64_t at;
    std::string level, message;
    json fields;
  };
  std::vector<Entry> entries;
  // Console lines carry no time of their own: they are stamped with the sandbox's creation.
  size_t pos = 0;
  while (pos < text->size()) {
    size_t nl = text->find('\n', pos);
    std::string line = text->substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
    pos = nl == std::string::npos ? text->size() : nl + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    entries.push_back({h->created_at_ms, "info", line, {{"source", "console"}}});
  }
  for (auto it = commands->rbegin(); it != commands->rend(); ++it) {
    const auto& c = *it;
    json fields = {{"source", c.kind}, {"commandID", c.id}, {"user", c.user}};
    if (c.exit_code) fields["exitCode"] = *c.exit_code;
    // As the history's "failed only" filter judges it (store/history_rows.h kFailedCommand).
    bool failed = (c.exit_code && *c.exit_code != 0) || (!c.signal.empty() && c.kind != "pty") ||
                  (!c.error.empty() && c.ended_at_ms != 0);
    std::string message = c.kind + ": " + c.command;
    if (c.exit_code) message += " (exit " + std::to_string(*c.exit_code) + ")";
    if (!c.signal.empty()) message += " (" + c.signal + ")";
    if (!c.error.empty()) message += " (" + c.error + ")";
    entries.push_back({c.started_at_ms, failed ? "error" : "info", message, fields});
  }
  if (*start) {
    std::erase_if(entries, [&](const Entry& e) { return e.at < **start; });
  }
  if (static_cast<int>(entries.size()) > *limit) {
    entries.erase(entries.begin(), entries.end() - *limit);
  }
  json logs = json::array(), log_entries = json::array();
  for (const Entry& e : entries) {
    json at = TimeOrNull(e.at);
    logs.push_back({{"timestamp", at}, {"line", e.message}});
    log_entries.push_back(
        {{"timestamp", at}, {"level", e.level}, {"message", e.message}, {"fields", e.fields}});
  }
  SendJson(w, 200, DumpJson({{"logs", logs}, {"logEntries", log_entries}}));
}

void ListAudit(ControlContext& ctx, http::Request& req, http::ResponseWriter& w,
               const store::TeamRecord& team) {
  auto q = codec::ParseQuery(req.raw_query);
  store::AuditFilter f;
  f.team_id = team.id;
  if (TrueParam(q, "allTeams")) {
    if (!team.admin) {
      return SendRestError(
          w, Status(ErrorCode::kPermissionDenied, "allTeams needs a key of the admin team"));
    }
    f.team_id.clear();
  }
  f.action = codec::QueryValue(q, "action").value_or("");
  f.target = codec::QueryValue(q, "target").value_or("");
  f.next_token = codec::QueryValue(q, "nextToken").value_or("");
  Status window = ParseWindow(q, &f.from_ms, &f.to_ms, &f.limit);
  if (!window.ok()) return SendRestError(w, window);
  auto page = ctx.store->ListAudit(f);
  if (!page.ok()) return SendRestError(w, page.status());
  json items = json::array();
  for (const auto& a : page->items) items.push_back(AuditJson(a));
  SendJson(w, 200, DumpJson({{"items", items}, {"nextToken", page->next_token}}));
}

void Usage(ControlContext& ctx, http::Request& req, http::ResponseWriter& w,
           const store::TeamRecord& team) {
  auto q = codec::ParseQuery(req.raw_query);
  int64_t now = UnixMillisNow();
  UsageQuery uq;
  uq.now_ms = now;
  std::vector<std::string> group_names;
  std::string group = codec::QueryValue(q, "groupBy").value_or("day");
  size_t pos = 0;
  bool have_bucket = false;
  while (pos <= group.size()) {
    size_t comma = group.find(',', pos);
    std::string g = group.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    pos = comma == std::string::npos ? group.size() + 1 : comma + 1;
    if (g.empty()) continue;
    if (g == "hour" || g == "day") {
      if (have_bucket) return SendRestError(w, InvalidArgument("groupBy names hour or day once"));
      have_bucket = true;
      uq.bucket_ms = g == "hour" ? 3600000 : 86400000;
    } else if (g == "template") {
      uq.by_template = true;
    } else if (g == "team") {
      uq.by_team = true;
    } else {
      return SendRestError(
          w, InvalidArgument("groupBy \"" + g + "\" is not one of hour, day, template, team"));
    }
    group_names.push_back(g);
  }
  if (!have_bucket) group_names.insert(group_names.begin(), "day");
  std::string team_id = team.id;
  if (TrueParam(q, "allTeams") || uq.by_team) {
    if (!team.admin) {
      return SendRestError(w, Status(ErrorCode::kPermissionDenied,
                                     "every team's usage needs a key of the admin team"));
    }
    team_id.clear();
  }
  auto from = TimeParam(q, "from");
  if (!from.ok()) return SendRestError(w, from.status());
  auto to = TimeParam(q, "to");
  if (!to.ok()) return SendRestError(w, to.status());
  // Default: the last 7 days, whole buckets.
  uq.to_ms = to->value_or(now - now % uq.bucket_ms + uq.bucket_ms);
  uq.from_ms = from->value_or(uq.to_ms - 7 * 86400000LL);
  if (Status valid = CheckUsageQuery(uq); !valid.ok()) return SendRestError(w, valid);
  auto input = ctx.store->LoadUsageInput(team_id, uq.from_ms, uq.to_ms);
  if (!input.ok()) return SendRestError(w, input.status());
  auto report = ComputeUsage(*input, uq);
  if (!report.ok()) return SendRestError(w, report.status());
  std::string format = codec::QueryValue(q, "format").value_or("json");
  if (format == "csv") {
    (void)w.Send(200,
                 {{"Content-Type", "text/csv; charset=utf-8"},
                  {"Content-Disposition", "attachment; filename=\"moat-usage.csv\""}},
                 UsageCsv(*report, uq));
    return;
  }
  if (format != "json") {
    return SendRestError(w, InvalidArgument("format must be json or csv, not \"" + format + "\""));
  }
  json rows = json::array();
  for (const auto& r : report->rows) {
    json row = FiguresJson(r.figures);
    row["bucket"] = codec::Rfc3339(r.bucket_ms * 1000000);
    if (uq.by_template) row["templateID"] = r.template_id;
    if (uq.by_team) row["teamID"] = r.team_id;
    rows.push_back(std::move(row));
  }
  SendJson(w, 200,
           DumpJson({{"from", codec::Rfc3339(uq.from_ms * 1000000)},
                     {"to", codec::Rfc3339(uq.to_ms * 1000000)},
                     {"groupBy", group_names},
                     {"rows", rows},
                     {"totals", FiguresJson(report->totals)}}));
}

// Keeps what a handler answered: the status, and a JSON body's first bytes (the target of a
// create, an error's message).
class AuditWriter : public http::StatusRecorder {
 public:
  explicit AuditWriter(http::ResponseWriter& inner) : http::StatusRecorder(inner) {}
  Status Send(int status, http::Headers headers, std::string body) override {
    if (body.size() <= 64 * 1024) body_ = body;
    return http::StatusRecorder::Send(status, std::move(headers), std::move(body));
  }
  const std::string& body() const { return body_; }

 private:
  std::string body_;
};

}  // namespace

std::string SourceAddress(const http::Request& req) {
  std::string peer = req.peer;
  // "127.0.0.1:5000" / "[::1]:5000" → the host.
  if (!peer.empty() && peer.front() == '[') {
    size_t close = peer.find(']');
    peer = close == std::string::npos ? peer : peer.substr(1, close - 1);
  } else if (size_t colon = peer.rfind(':'); colon != std::string::npos) {
    peer = peer.substr(0, colon);
  }
  bool loopback = peer.rfind("127.", 0) == 0 || peer == "::1";
  std::string forwarded = req.Header("X-Forwarded-For");
  if (loopback && !forwarded.empty()) {
    // The last hop is the one the proxy on loopback appended: the address it was reached from.
    // Hops before it are whatever the client sent, and prove nothing.
    size_t comma = forwarded.rfind(',');
    std::string last = comma == std::string::npos ? forwarded : forwarded.substr(comma + 1);
    while (!last.empty() && (last.front() == ' ' || last.front() == '\t')) last.erase(0, 1);
    while (!last.empty() && (last.back() == ' ' || last.back() == '\t')) last.pop_back();
    if (!last.empty() && last.size() <= 64) return last;
  }
  return peer;
}

http::Handler Audited(ControlContext& ctx, std::string action, std::string target_param,
                      TeamHandler fn) {
  return Authed(ctx, [&ctx, action = std::move(action), target_param = std::move(target_param),
                      fn = std::move(fn)](http::Request& req, http::ResponseWriter& w,
                                          const store::TeamRecord& team) {
    AuditWriter rec(w);
    fn(req, rec, team);
    std::string target = target_param.empty() ? "" : req.Param(target_param);
    json body = json::parse(rec.body(), nullptr, false);
    if (target.empty() && !body.is_discarded()) {
      const json* obj = body.is_array() && !body.empty() ? &body[0] : &body;
      for (const char* k : {"sandboxID", "templateID", "snapshotID", "id"}) {
        if (obj->is_object() && obj->contains(k) && (*obj)[k].is_string()) {
          target = (*obj)[k].get<std::string>();
          break;
        }
      }
    }
    std::string detail;
    if (rec.status() >= 400 && body.is_object() && body.contains("message")) {
      detail = DumpJson({{"message", body["message"]}});
    }
    // Without a controller (route tests), straight to the store.
    HistoryLog direct(ctx.store, true);
    HistoryLog& log = ctx.controller != nullptr ? ctx.controller->history() : direct;
    log.Audit(action, target, rec.status(), detail);
  });
}

void RegisterHistoryRoutes(http::Router& router, ControlContext& ctx) {
  router.Add("GET", "/history", Authed(ctx, [&ctx](auto& req, auto& w, const auto& team) {
               ListHistory(ctx, req, w, team);
             }));
  router.Add(
      "GET", "/history/{sandboxID}",
      Authed(ctx, [&ctx](auto& req, auto& w, const auto& team) { GetHistory(ctx, req, w, team); }));
  router.Add("GET", "/history/{sandboxID}/commands",
             Authed(ctx, [&ctx](auto& req, auto& w, const auto& team) {
               ListCommands(ctx, req, w, team);
             }));
  router.Add(
      "GET", "/history/{sandboxID}/console",
      Authed(ctx, [&ctx](auto& req, auto& w, const auto& team) { Console(ctx, req, w, team); }));
  router.Add(
      "GET", "/sandboxes/{sandboxID}/logs",
      Authed(ctx, [&ctx](auto& req, auto& w, const auto& team) { Logs(ctx, req, w, team); }));
  router.Add("GET", "/audit", Authed(ctx, [&ctx](auto& req, auto& w, const auto& team) {
               ListAudit(ctx, req, w, team);
             }));
  router.Add("GET", "/usage", Authed(ctx, [&ctx](auto& req, auto& w, const auto& team) {
               Usage(ctx, req, w, team);
             }));
}

}  // namespace moat::api::routes
