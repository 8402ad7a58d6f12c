// What the CLI prints and how it reads its simpler arguments: KEY=VALUE pairs, `ID:PATH` copy
// endpoints, aligned tables for people and the API's own JSON for machines (--json).
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace moat::cli {

using nlohmann::json;

// "K=V" (V may be empty or contain '='); an empty key or no '=' is invalid_argument naming
// `flag` and the argument.
Result<std::map<std::string, std::string>> ParseKeyValues(const std::vector<std::string>& args,
                                                          std::string_view flag);

// One side of `moat cp`: "ID:PATH" names a path in sandbox ID (IDs are [a-z0-9]+); anything
// else, "-" included, is local. Write "./a:b" for a local file whose name has a colon.
struct CpEndpoint {
  std::optional<std::string> sandbox_id;
  std::string path;
};
CpEndpoint ParseCpEndpoint(std::string_view arg);

// Columns padded to their widest cell, separated by two spaces, one row per line.
std::string FormatTable(const std::vector<std::string>& header,
                        const std::vector<std::vector<std::string>>& rows);

// A JSON value as a table cell: strings bare, null or absent as "-", objects as k=v,k2=v2,
// arrays as a,b (empty: "-").
std::string Cell(const json& object, std::string_view key);

// `sandbox list`: ListedSandbox[] as a table.
std::string FormatSandboxList(const json& sandboxes);
// `sandbox info`, `create`, `resume`: one "field: value" line per field, in the API's order of
// importance; the access token is never printed (use --json for it).
std::string FormatSandboxFields(const json& sandbox);
// `sandbox fork`: [{"sandbox":…} | {"error":…}] as a table, one row per fork.
std::string FormatForks(const json& forks);

// "field: value" lines for the `fields` an object has, in that order (no header).
std::string FormatFields(const json& object, const std::vector<std::string_view>& fields);
// `keys list`: ApiKey[] as a table (masked keys only: the API never lists a key's value).
std::string FormatKeyList(const json& keys);
// `snapshot list`: SnapshotInfo[] as a table.
std::string FormatSnapshotList(const json& snapshots);
// `host list` (and drain, undrain: their one host): Host[] as a table; VCPU and MEM(MiB) are
// reserved/total.
std::string FormatHostList(const json& hosts);

// Prints "moat: <message>" on stderr (one line) and returns the exit status for a failed command.
int ReportError(const Status& status);
// Prints `value` indented, for --json.
void PrintJson(const json& value);
// A command's answer: the API's JSON with --json (nothing for a 204: the exit status says it
// all), else `text` for people.
void PrintResult(const json& response, bool as_json, const std::string& text);

}  // namespace moat::cli
