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

// Columns a cell takes on a terminal: UTF-8 code points (masks hold "…"), not bytes.
size_t DisplayWidth(std::string_view s) {
  return static_cast<size_t>(
      std::count_if(s.begin(), s.end(), [](char c) { return (c & 0xC0) != 0x80; }));
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
      widths[i] = std::max(widths[i], DisplayWidth(row[i]));
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
      if (i + 1 < widths.size()) line += std::string(widths[i] - DisplayWidth(cell) + 2, ' ');
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
  if (it->is_array()) {
    if (it->empty()) return "-";
    std::string out;
    for (const auto& v : *it) {
      if (!out.empty()) out += ",";
      out += v.is_string() ? v.get<std::string>() : v.dump();
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

std::string FormatFields(const json& object, const std::vector<std::string_view>& fields) {
  std::vector<std::vector<std::string>> rows;
  for (std::string_view field : fields) {
    if (!object.is_object() || !object.contains(field)) continue;
    rows.push_back({std::string(field) + ":", Cell(object, field)});
  }
  std::string table = FormatTable({"", ""}, rows);
  return table.substr(table.find('\n') + 1);  // no header line for a field list
}

std::string FormatSandboxFields(const json& sandbox) {
  return FormatFields(
      sandbox, {"sandboxID", "templateID", "alias", "state", "startedAt", "endAt", "cpuCount",
                "memoryMB", "diskSizeMB", "envdVersion", "domain", "metadata"});
}

std::string FormatKeyList(const json& keys) {
  std::vector<std::vector<std::string>> rows;
  if (keys.is_array()) {
    for (const auto& k : keys) {
      rows.push_back({Cell(k, "id"), Cell(k, "name"), Cell(k, "mask"), Cell(k, "teamID"),
                      Cell(k, "createdAt")});
    }
  }
  return FormatTable({"KEY ID", "NAME", "KEY", "TEAM ID", "CREATED"}, rows);
}

std::string FormatSnapshotList(const json& snapshots) {
  std::vector<std::vector<std::string>> rows;
  if (snapshots.is_array()) {
    for (const auto& s : snapshots) {
      rows.push_back({Cell(s, "snapshotID"), Cell(s, "names"), Cell(s, "sandboxID"),
                      Cell(s, "hostID"), Cell(s, "storage"), Cell(s, "createdAt")});
    }
  }
  // Where it lives: its host's disk, and whether the object store has it (any host can then
  // restore it) or it is local-only (lost with its host).
  return FormatTable({"SNAPSHOT ID", "NAMES", "FROM SANDBOX", "HOST", "STORAGE", "CREATED"}, rows);
}

std::string FormatHostList(const json& hosts) {
  std::vector<std::vector<std::string>> rows;
  if (hosts.is_array()) {
    for (const auto& h : hosts) {
      rows.push_back({Cell(h, "hostID"), Cell(h, "state"), Cell(h, "endpoint"),
                      Cell(h, "sandboxes"), Cell(h, "vcpuReserved") + "/" + Cell(h, "vcpuTotal"),
                      Cell(h, "memoryMBReserved") + "/" + Cell(h, "memoryMBTotal"),
                      Cell(h, "lastHeartbeat")});
    }
  }
  return FormatTable(
      {"HOST", "STATE", "ENDPOINT", "SANDBOXES", "VCPU", "MEM(MiB)", "LAST-HEARTBEAT"}, rows);
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

void PrintResult(const json& response, bool as_json, const std::string& text) {
  if (!as_json) {
    std::fputs(text.c_str(), stdout);
  } else if (!response.is_null()) {
    PrintJson(response);
  }
}

}  // namespace moat::cli
