// `moat audit [--from T] [--to T] [--action A] [--target ID] [--limit N] [--all-teams] [--json]`:
// the audit log of control actions (GET /audit), newest first, following its pages until --limit
// entries. --json prints {"items":[…],"nextToken":"…"} as the API shapes a page, with every
// entry fetched; nextToken names where a larger --limit would go on.
#include <memory>
#include <string>

#include "cli/api_client.h"
#include "cli/commands.h"
#include "cli/history_output.h"
#include "cli/output.h"
#include "cli/query_args.h"

namespace moat::cli {
namespace {

struct AuditOptions {
  bool json = false;
  std::string from;
  std::string to;
  std::string action;
  std::string target;
  int limit = 100;
  bool all_teams = false;
};

Result<std::string> AuditQuery(const AuditOptions& o, int64_t now_unix_s) {
  QueryString query;
  MOAT_RETURN_IF_ERROR(AddTimeRange(query, o.from, o.to, now_unix_s));
  if (!o.action.empty()) query.Add("action", o.action);
  if (!o.target.empty()) query.Add("target", o.target);
  if (o.all_teams) query.Add("allTeams", "true");
  return query.str();
}

}  // namespace

Runner AddAudit(CLI::App& app) {
  auto o = std::make_shared<AuditOptions>();
  auto* cmd = app.add_subcommand("audit", "the audit log: who did what, when and how it went");
  cmd->add_option("--from", o->from,
                  "since: RFC 3339, a date (2026-01-02) or a duration before now (24h, 7d)");
  cmd->add_option("--to", o->to, "until: as --from");
  cmd->add_option("--action", o->action,
                  "only this action (sandbox.create, sandbox.kill, key.create, ...)");
  cmd->add_option("--target", o->target, "only actions on this sandbox, key, template, ...");
  cmd->add_option("--limit", o->limit, "at most this many entries, newest first (default 100)")
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--all-teams", o->all_teams, "every team's actions (admin key)");
  cmd->add_flag("--json", o->json, "print the entries as the API's JSON");

  return [o] {
    auto query = AuditQuery(*o, NowUnixSeconds());
    if (!query.ok()) return ReportUsageError(query.status());
    return RunControlCall(
        o->json,
        [&](ApiClient& api, std::string* text) -> Result<json> {
          MOAT_ASSIGN_OR_RETURN(json page, api.ListItems("/audit", *query, o->limit));
          *text = FormatAuditList(page, o->all_teams);
          return page;
        },
        [o](const json& page) { return NoteMoreItems(page, o->json, "entries"); });
  };
}

}  // namespace moat::cli
