// What `moat audit`, `moat usage` and `moat history` print for people: tables over the answers
// of GET /audit, /usage, /history and /history/{id}[/commands] (docs/dashboard-contract.md). Text
// that came from a sandbox (commands, their output, error details) is made safe for a terminal.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace moat::cli {

// "0s", "350ms", "1.2s", "42s", "12m05s", "3h20m" (hours are not rolled into days).
std::string HumanDuration(double seconds);
// "512 B", "1.5 KiB", "12.0 MiB", "3.2 GiB" (powers of 1024).
std::string HumanBytes(double bytes);

// `text` on one line of at most `max` code points: control characters as spaces, cut with "…".
std::string OneLine(std::string_view text, size_t max);

// After a list cut at --limit (its nextToken is set), a note on stderr that there are more
// `what` (not with --json: the token says it). Returns 0, as an exit_code for RunControlCall.
int NoteMoreItems(const nlohmann::json& page, bool as_json, const char* what);

// GET /audit's {"items":[…]}: TIME, [TEAM,] ACTION, TARGET, OUTCOME ("ok (200)"), KEY, SOURCE.
std::string FormatAuditList(const nlohmann::json& page, bool with_team);

// GET /usage's report: a row per bucket (and template, team when grouped by them) with times
// as durations and bytes in units, then a TOTAL row.
std::string FormatUsage(const nlohmann::json& report);

// How a history record's sandbox is or ended: its state while alive; "killed by <key>",
// "timeout", "error: <why>" or "host lost" once it ended.
std::string HistoryOutcome(const nlohmann::json& history);

// GET /history's {"items":[…]}: SANDBOX, TEMPLATE, CREATED, DURATION, STATE/END, PARENT.
std::string FormatHistoryList(const nlohmann::json& page);

// GET /history/{id} (with events and children) and its commands (newest first, as the API
// sends them): a summary, the timeline of events and the commands, oldest first. With
// `with_output`, each command is followed by the head and tail kept of its stdout and stderr.
std::string FormatHistoryDetail(const nlohmann::json& history, const nlohmann::json& commands,
                                bool with_output);

}  // namespace moat::cli
