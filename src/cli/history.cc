// `moat history [ID] [--state live|ended] [--template T] [--metadata K=V]... [--failed]
// [--from T] [--to T] [--limit N] [--output] [--json]`: what moatd kept of sandboxes, alive or
// ended (docs/dashboard.md). Without ID, the sandboxes newest first (GET /history, paged until
// --limit); with ID, one sandbox: its record, timeline of events and forks (GET /history/{id})
// and the commands run in it (GET /history/{id}/commands), --output adding what each printed.
// --json prints the list as {"items","nextToken"}, or the record with its "commands" added.
#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "api/codec/query.h"
#include "cli/api_client.h"
#include "cli/commands.h"
#include "cli/history_output.h"
#include "cli/output.h"
#include "cli/query_args.h"

namespace moat::cli {
namespace {

using api::codec::PercentEncode;

constexpr int kDefaultSandboxes = 100;
constexpr int kDefaultCommands = 50;
constexpr int kMaxPage = 1000;  // moatd's largest limit per request

struct HistoryOptions {
  bool json = false;
  std::string id;
  std::string state;
  std::string template_id;
  std::vector<std::string> metadata;
  bool failed = false;
  std::string from;
  std::string to;
  int limit = 0;  // 0: kDefaultSandboxes, or with ID kDefaultCommands
  bool output = false;
};

Result<std::string> ListQuery(const HistoryOptions& o, int64_t now_unix_s) {
  QueryString query;
  if (!o.state.empty()) query.Add("state", o.state);
  if (!o.template_id.empty()) query.Add("templateID", o.template_id);
  MOAT_ASSIGN_OR_RETURN(auto metadata, ParseKeyValues(o.metadata, "--metadata"));
  if (!metadata.empty()) query.AddEncoded("metadata", MetadataQuery(metadata));
  if (o.failed) query.Add("failed", "true");
  MOAT_RETURN_IF_ERROR(AddTimeRange(query, o.from, o.to, now_unix_s));
  return query.str();
}

// Up to `limit` of the sandbox's commands, newest first, following nextBefore.
Result<json> Commands(ApiClient& api, const std::string& id, int limit) {
  json all = json::array();
  int64_t before = 0;
  do {
    int want = std::min(kMaxPage, limit - static_cast<int>(all.size()));
    std::string target =
        "/history/" + PercentEncode(id) + "/commands?limit=" + std::to_string(want);
    if (before > 0) target += "&before=" + std::to_string(before);
    MOAT_ASSIGN_OR_RETURN(json page, api.Control("GET", target));
    if (!page.is_object() || !page.contains("items") || !page["items"].is_array()) {
      return Internal("GET /history/" + id + "/commands: expected {\"items\":[…]}");
    }
    if (page["items"].empty()) break;
    for (auto& c : page["items"]) {
      if (static_cast<int>(all.size()) < limit) all.push_back(std::move(c));
    }
    auto next = page.find("nextBefore");
    before = next != page.end() && next->is_number_integer() ? next->get<int64_t>() : 0;
  } while (before > 0 && static_cast<int>(all.size()) < limit);
  return all;
}

}  // namespace

Runner AddHistory(CLI::App& app) {
  auto o = std::make_shared<HistoryOptions>();
  auto* cmd = app.add_subcommand(
      "history", "sandboxes past and present; with ID, one's timeline and commands");
  cmd->add_option("id", o->id, "a sandbox ID: its record, events and commands");
  std::vector<CLI::Option*> filters = {
      cmd->add_option("--state", o->state, "live or ended (or a state: running, paused, ...)"),
      cmd->add_option("--template", o->template_id, "only sandboxes of this template"),
      AddRepeatedOption(*cmd, "--metadata", o->metadata, "only sandboxes with this KEY=VALUE"),
      cmd->add_flag("--failed", o->failed,
                    "only sandboxes that ended in an error, lost their host or ran a failed "
                    "command"),
      cmd->add_option("--from", o->from,
                      "alive at or after: RFC 3339, a date (2026-01-02) or a duration before "
                      "now (24h, 7d)"),
      cmd->add_option("--to", o->to, "created before: as --from"),
  };
  cmd->add_option("--limit", o->limit,
                  "at most this many sandboxes (default 100) or, with ID, commands (default 50)")
      ->check(CLI::PositiveNumber);
  auto* output = cmd->add_flag("--output", o->output,
                               "with ID: each command's output (the head and tail moatd kept)");
  cmd->add_flag("--json", o->json, "print the API's JSON");

  return [o, filters, output] {
    if (o->id.empty()) {
      if (output->count() > 0) {
        return ReportUsageError(InvalidArgument("--output shows one sandbox's commands: give ID"));
      }
      auto query = ListQuery(*o, NowUnixSeconds());
      if (!query.ok()) return ReportUsageError(query.status());
      int limit = o->limit > 0 ? o->limit : kDefaultSandboxes;
      return RunControlCall(
          o->json,
          [&](ApiClient& api, std::string* text) -> Result<json> {
            MOAT_ASSIGN_OR_RETURN(json page, api.ListItems("/history", *query, limit));
            *text = FormatHistoryList(page);
            return page;
          },
          [o](const json& page) { return NoteMoreItems(page, o->json, "sandboxes"); });
    }
    for (const CLI::Option* f : filters) {
      if (f->count() > 0) {
        return ReportUsageError(InvalidArgument(
            f->get_name() + " filters the list of sandboxes: not with a sandbox ID"));
      }
    }
    int limit = o->limit > 0 ? o->limit : kDefaultCommands;
    return RunControlCall(o->json, [&](ApiClient& api, std::string* text) -> Result<json> {
      MOAT_ASSIGN_OR_RETURN(json record, api.Control("GET", "/history/" + PercentEncode(o->id)));
      if (!record.is_object()) return Internal("GET /history/" + o->id + ": expected an object");
      MOAT_ASSIGN_OR_RETURN(json commands, Commands(api, o->id, limit));
      *text = FormatHistoryDetail(record, commands, o->output);
      record["commands"] = std::move(commands);
      return record;
    });
  };
}

}  // namespace moat::cli
