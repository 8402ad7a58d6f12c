#include "cli/output.h"

#include <algorithm>
#include <cstdio>

namespace moat::cli {
namespace {

bool IsSandboxId(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
  });
}

}  // namespace

Result<std::map<std::string, std::string>> ParseKeyValues(const std::vector<std::string>& args,
                                                          std::string_view flag) {
  std::map<std::string, std::string> out;
  for (const auto& arg : args) {
    size_t eq = arg.find('=');
    if (eq == std::string::npos || eq == 0) {
      return InvalidArgument(std::string(flag) + " wants KEY=VALUE (got \"" + arg + "\")");
    }
    out[arg.substr(0, eq)] = arg.substr(eq + 1);
  }
  return out;
}

CpEndpoint ParseCpEndpoint(std::string_view arg) {
  size_t colon = arg.find(':');
  if (colon != std::string_view::npos && IsSandboxId(arg.substr(0, colon))) {
    return {.sandbox_id = std::string(arg.substr(0, colon)),
            .path = std::string(arg.substr(colon + 1))};
  }
  return {.sandbox_id = std::nullopt, .path = std::string(arg)};
}

std::string FormatTable(const std::vector<std::string>& header,
                        const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths(header.size(), 0);
  auto measure = [&widths](const std::vector<std::string>& row) {
    for (size_t i = 0; i < row.size() && i < widths.size(); ++i) {
      widths[i] = std::max(widths[i], row[i].size());
    }
  };
  measure(header);
  for (const auto& row : rows) measure(row);
  std::string out;
  auto emit = [&](const std::vector<std::string>& row) {
    std::string line;
    for (size_t i = 0; i < widths.size(); ++i) {
      const std::string cell = i < row.size() ? row[i] : "";
      line += cell;
      if (i + 1 < widths.size()) line += std::string(widths[i] - cell.size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
  };
  emit(header);
  for (const auto& row : rows) emit(row);
  return out;
}

std::string Cell(const json& object, std::string_view key) {
  if (!object.is_object()) return "-";
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return "-";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    if (it->empty()) return "-";
    std::string out;
    for (const auto& [k, v] : it->items()) {
      if (!out.empty()) out += ",";
      out += k + "=" + (v.is_string() ? v.get<std::string>() : v.dump());
    }
    return out;
  }
  return it->dump();
}

std::string FormatSandboxList(const json& sandboxes) {
  std::vector<std::vector<std::string>> rows;
  if (sandboxes.is_array()) {
    for (const auto& s : sandboxes) {
      rows.push_back({Cell(s, "sandboxID"), Cell(s, "templateID"), Cell(s, "state"),
                      Cell(s, "startedAt"), Cell(s, "endAt"), Cell(s, "metadata")});
    }
  }
  return FormatTable({"SANDBOX ID", "TEMPLATE", "STATE", "STARTED", "ENDS", "METADATA"}, rows);
}

std::string FormatSandboxFields(const json& sandbox) {
  static constexpr std::string_view kFields[] = {
      "sandboxID", "templateID", "alias",      "state",       "startedAt", "endAt",
      "cpuCount",  "memoryMB",   "diskSizeMB", "envdVersion", "domain",    "metadata"};
  std::vector<std::vector<std::string>> rows;
  for (std::string_view field : kFields) {
    if (!sandbox.is_object() || !sandbox.contains(field)) continue;
    rows.push_back({std::string(field) + ":", Cell(sandbox, field)});
  }
  std::string table = FormatTable({"", ""}, rows);
  return table.substr(table.find('\n') + 1);  // no header line for a field list
}

std::string FormatForks(const json& forks) {
  std::vector<std::vector<std::string>> rows;
  if (forks.is_array()) {
    for (const auto& f : forks) {
      if (f.contains("sandbox")) {
        const json& s = f["sandbox"];
        rows.push_back({Cell(s, "sandboxID"), Cell(s, "templateID"), "-"});
      } else {
        rows.push_back({"-", "-", Cell(f.value("error", json::object()), "message")});
      }
    }
  }
  return FormatTable({"SANDBOX ID", "TEMPLATE", "ERROR"}, rows);
}

int ReportError(const Status& status) {
  std::string message = status.message();
  for (char& c : message) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  std::fprintf(stderr, "moat: %s\n", message.c_str());
  return 1;
}

void PrintJson(const json& value) {
  std::printf("%s\n", value.dump(2, ' ', false, json::error_handler_t::replace).c_str());
}

}  // namespace moat::cli
