// `moat usage [--from T] [--to T] [--group-by day|hour[,template][,team]] [--json | --csv]`: what
// the team used (GET /usage; docs/usage.md), a row per bucket and a total. --json and --csv print
// the API's JSON and CSV (format=csv) as they came. Without --from/--to moatd reports the last
// 7 days; grouping by team needs the admin key.
#include <memory>
#include <string>

#include "cli/api_client.h"
#include "cli/commands.h"
#include "cli/history_output.h"
#include "cli/output.h"
#include "cli/query_args.h"

namespace moat::cli {
namespace {

struct UsageOptions {
  bool json = false;
  bool csv = false;
  std::string from;
  std::string to;
  std::string group_by;
};

// --group-by checked here, so that a typo is a usage error: one of day or hour at most, and
// template, team, comma-separated.
Status CheckGroupBy(const std::string& group_by) {
  bool bucket = false;
  size_t pos = 0;
  while (pos <= group_by.size()) {
    size_t comma = group_by.find(',', pos);
    std::string g = group_by.substr(pos, comma == std::string::npos ? comma : comma - pos);
    pos = comma == std::string::npos ? group_by.size() + 1 : comma + 1;
    if (g.empty()) continue;  // "day," as moatd reads it
    if (g == "day" || g == "hour") {
      if (bucket) return InvalidArgument("--group-by: name day or hour once");
      bucket = true;
    } else if (g != "template" && g != "team") {
      return InvalidArgument("--group-by: \"" + g +
                             "\" is not one of day, hour, template, team (e.g. day,template)");
    }
  }
  return Status::Ok();
}

Result<std::string> UsageQuery(const UsageOptions& o, int64_t now_unix_s) {
  QueryString query;
  MOAT_RETURN_IF_ERROR(AddTimeRange(query, o.from, o.to, now_unix_s));
  if (!o.group_by.empty()) {
    MOAT_RETURN_IF_ERROR(CheckGroupBy(o.group_by));
    query.Add("groupBy", o.group_by);
  }
  if (o.csv) query.Add("format", "csv");
  return query.str();
}

}  // namespace

Runner AddUsage(CLI::App& app) {
  auto o = std::make_shared<UsageOptions>();
  auto* cmd = app.add_subcommand("usage", "what your sandboxes used: time, vCPU, memory, traffic");
  cmd->add_option("--from", o->from,
                  "since: RFC 3339, a date (2026-01-02) or a duration before now (24h, 7d); "
                  "default: 7 days before --to");
  cmd->add_option("--to", o->to, "until: as --from; default: the end of the current bucket");
  cmd->add_option("--group-by", o->group_by,
                  "day or hour (default day), and template and team (admin key), "
                  "comma-separated: day,template");
  auto* json_flag = cmd->add_flag("--json", o->json, "print the API's JSON report");
  cmd->add_flag("--csv", o->csv, "print the API's CSV report")->excludes(json_flag);

  return [o] {
    auto query = UsageQuery(*o, NowUnixSeconds());
    if (!query.ok()) return ReportUsageError(query.status());
    return RunControlCall(o->json, [&](ApiClient& api, std::string* text) -> Result<json> {
      if (o->csv) {
        MOAT_ASSIGN_OR_RETURN(*text, api.GetText("/usage" + *query));
        return json(nullptr);
      }
      MOAT_ASSIGN_OR_RETURN(json report, api.Control("GET", "/usage" + *query));
      *text = FormatUsage(report);
      return report;
    });
  };
}

}  // namespace moat::cli
