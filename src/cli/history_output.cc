#include "cli/history_output.h"

#include <cmath>
#include <cstdio>
#include <vector>

#include "cli/output.h"

namespace moat::cli {
namespace {

using nlohmann::json;

constexpr size_t kCommandWidth = 60;       // a command's cell in the commands table
constexpr size_t kDetailWidth = 60;        // an event's detail, an error's reason
constexpr size_t kFullCommandWidth = 500;  // a command's heading with --output

std::string Printf(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

// The number `key` of `object`, if it has one.
std::optional<double> Number(const json& object, std::string_view key) {
  if (!object.is_object()) return std::nullopt;
  auto it = object.find(key);
  if (it == object.end() || !it->is_number()) return std::nullopt;
  return it->get<double>();
}

std::string Text(const json& object, std::string_view key) {
  if (!object.is_object()) return "";
  auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : "";
}

// An RFC 3339 time to the second ("…12:00:00.250Z" → "…12:00:00Z"); "-" for none.
std::string ShortTime(const json& object, std::string_view key) {
  std::string t = Text(object, key);
  if (t.empty()) return "-";
  size_t dot = t.find('.');
  if (dot != std::string::npos) {
    size_t end = dot + 1;
    while (end < t.size() && t[end] >= '0' && t[end] <= '9') ++end;
    t.erase(dot, end - dot);
  }
  return t;
}

std::string Duration(const json& object, std::string_view key) {
  auto ms = Number(object, key);
  return ms ? HumanDuration(*ms / 1000) : "-";
}

// "fork of <id>" / "snapshot <name>" / "-".
std::string Parent(const json& history) {
  const json& p = history.is_object() && history.contains("parent") ? history["parent"] : json();
  if (!p.is_object()) return "-";
  std::string kind = Text(p, "kind"), id = Text(p, "id");
  return kind == "fork" ? "fork of " + id : kind + " " + id;
}

// Untrusted output for a terminal: control characters but newlines and tabs shown as '?'.
std::string Printable(std::string_view text) {
  std::string out(text);
  for (char& c : out) {
    auto u = static_cast<unsigned char>(c);
    if ((u < 0x20 && c != '\n' && c != '\t') || u == 0x7f) c = '?';
  }
  return out;
}

// `text` indented by `prefix`, one line each, ending in a newline.
std::string Indented(std::string_view text, std::string_view prefix) {
  std::string out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    size_t end = nl == std::string_view::npos ? text.size() : nl;
    out += std::string(prefix) + std::string(text.substr(pos, end - pos)) + "\n";
    pos = end + 1;
  }
  return out;
}

// "field:  value" lines, the values aligned (a table without its header).
std::string FieldLines(const std::vector<std::vector<std::string>>& rows) {
  std::string table = FormatTable({"", ""}, rows);
  return table.substr(table.find('\n') + 1);
}

std::string CommandExit(const json& c) {
  if (auto code = Number(c, "exitCode")) return Printf("%.0f", *code);
  if (std::string signal = Text(c, "signal"); !signal.empty()) return signal;
  if (!Text(c, "error").empty()) return "error";
  return Text(c, "endedAt").empty() ? "running" : "-";
}

std::string CommandLine(const json& c, size_t width) {
  std::string line = OneLine(Text(c, "command"), width);
  return Text(c, "kind") == "code" ? "(code) " + line : line;
}

// One stream of a command: its size, then the head and tail moatd kept of it.
std::string StreamBlock(const json& c, const char* name) {
  const json& s = c.is_object() && c.contains(name) ? c[name] : json();
  double bytes = Number(s, "bytes").value_or(0);
  if (bytes <= 0) return std::string("  ") + name + ": none\n";
  std::string head = Text(s, "head"), tail = Text(s, "tail");
  std::string out = std::string("  ") + name + " (" + HumanBytes(bytes) + "):\n";
  out += Indented(Printable(head), "    ");
  double dropped = bytes - static_cast<double>(head.size() + tail.size());
  if (dropped > 0) out += "    … " + HumanBytes(dropped) + " not kept …\n";
  out += Indented(Printable(tail), "    ");
  return out;
}

}  // namespace

std::string HumanDuration(double seconds) {
  if (!(seconds > 0)) return "0s";
  if (seconds < 1) return Printf("%.0fms", std::floor(seconds * 1000));
  if (seconds < 10) return Printf("%.1fs", std::floor(seconds * 10) / 10);
  auto s = static_cast<int64_t>(seconds);
  char buf[64];
  if (s < 60) {
    std::snprintf(buf, sizeof buf, "%llds", static_cast<long long>(s));
  } else if (s < 3600) {
    std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  } else {
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(s / 3600),
                  static_cast<long long>(s % 3600 / 60));
  }
  return buf;
}

std::string HumanBytes(double bytes) {
  if (bytes < 1024) return Printf("%.0f B", bytes < 0 ? 0 : bytes);
  const char* units[] = {"KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = bytes / 1024;
  size_t u = 0;
  while (v >= 1024 && u + 1 < std::size(units)) {
    v /= 1024;
    ++u;
  }
  return Printf("%.1f ", v) + units[u];
}

std::string OneLine(std::string_view text, size_t max) {
  std::string out;
  size_t points = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    auto u = static_cast<unsigned char>(text[i]);
    bool starts_point = (u & 0xC0) != 0x80;
    if (starts_point && ++points > max) {
      // Cut one code point earlier to make room for the ellipsis.
      while (!out.empty()) {
        auto last = static_cast<unsigned char>(out.back());
        out.pop_back();
        if ((last & 0xC0) != 0x80) break;
      }
      return out + "…";
    }
    out += u < 0x20 || u == 0x7f ? ' ' : text[i];
  }
  return out;
}

int NoteMoreItems(const json& page, bool as_json, const char* what) {
  if (as_json || !page.is_object() || !page.contains("nextToken")) return 0;
  const json& next = page["nextToken"];
  if (next.is_string() && !next.get<std::string>().empty()) {
    std::fflush(stdout);
    std::fprintf(stderr, "moat: there are more %s: raise --limit or narrow --from/--to\n", what);
  }
  return 0;
}

std::string FormatAuditList(const json& page, bool with_team) {
  std::vector<std::vector<std::string>> rows;
  const json& items = page.is_object() && page.contains("items") ? page["items"] : json();
  if (items.is_array()) {
    for (const auto& a : items) {
      std::string outcome = Cell(a, "outcome");
      if (auto status = Number(a, "status")) outcome += Printf(" (%.0f)", *status);
      std::string key = Text(a, "keyName");
      if (key.empty()) key = Cell(a, "keyID");
      std::vector<std::string> row = {ShortTime(a, "at")};
      if (with_team) row.push_back(Cell(a, "teamID"));
      for (std::string cell : {Cell(a, "action"), OneLine(Cell(a, "target"), kDetailWidth), outcome,
                               key, Cell(a, "source")}) {
        row.push_back(cell.empty() ? "-" : cell);
      }
      rows.push_back(std::move(row));
    }
  }
  std::vector<std::string> header = {"TIME"};
  if (with_team) header.push_back("TEAM");
  for (const char* h : {"ACTION", "TARGET", "OUTCOME", "KEY", "SOURCE"}) header.push_back(h);
  return FormatTable(header, rows);
}

std::string FormatUsage(const json& report) {
  bool by_template = false, by_team = false;
  if (report.is_object() && report.contains("groupBy") && report["groupBy"].is_array()) {
    for (const auto& g : report["groupBy"]) {
      by_template = by_template || g == "template";
      by_team = by_team || g == "team";
    }
  }
  std::vector<std::string> header = {"BUCKET"};
  if (by_team) header.push_back("TEAM");
  if (by_template) header.push_back("TEMPLATE");
  for (const char* h : {"RUNNING", "PAUSED", "IDLE", "VCPU-S", "GIB-S", "CREATES", "FORKS",
                        "EGRESS", "INGRESS", "SNAPSHOT GiB-h"}) {
    header.push_back(h);
  }
  auto figures = [](const json& f, std::vector<std::string> row) {
    auto num = [&f](std::string_view key, auto format) {
      auto v = Number(f, key);
      return v ? format(*v) : std::string("-");
    };
    auto duration = [](double v) { return HumanDuration(v); };
    auto bytes = [](double v) { return HumanBytes(v); };
    auto count = [](double v) { return Printf("%.0f", v); };
    auto tenths = [](double v) { return Printf("%.1f", v); };
    for (std::string cell :
         {num("runningSeconds", duration), num("pausedSeconds", duration),
          num("idleSeconds", duration), num("vcpuSeconds", count), num("gibSeconds", count),
          num("creates", count), num("forks", count), num("egressBytes", bytes),
          num("ingressBytes", bytes), num("snapshotByteHours", [&](double v) {
            return tenths(v / (1024.0 * 1024.0 * 1024.0));
          })}) {
      row.push_back(std::move(cell));
    }
    return row;
  };
  std::vector<std::vector<std::string>> rows;
  const json& list = report.is_object() && report.contains("rows") ? report["rows"] : json();
  if (list.is_array()) {
    for (const auto& r : list) {
      std::vector<std::string> keys = {ShortTime(r, "bucket")};
      if (by_team) keys.push_back(Cell(r, "teamID"));
      if (by_template) keys.push_back(Cell(r, "templateID"));
      rows.push_back(figures(r, std::move(keys)));
    }
  }
  std::vector<std::string> total = {"TOTAL"};
  if (by_team) total.push_back("");
  if (by_template) total.push_back("");
  rows.push_back(
      figures(report.is_object() && report.contains("totals") ? report["totals"] : json(),
              std::move(total)));
  return FormatTable(header, rows);
}

std::string HistoryOutcome(const json& h) {
  if (Text(h, "endedAt").empty()) return Text(h, "state").empty() ? "-" : Text(h, "state");
  std::string reason = Text(h, "endReason");
  if (reason == "killed") {
    std::string by = Text(h, "endedBy");
    return by.empty() ? "killed" : "killed by " + OneLine(by, kDetailWidth);
  }
  if (reason == "error") {
    std::string why = Text(h, "endDetail");
    return why.empty() ? "error" : "error: " + OneLine(why, kDetailWidth);
  }
  if (reason == "host_lost") return "host lost";
  if (!reason.empty()) return reason;
  return Text(h, "state").empty() ? "ended" : Text(h, "state");
}

std::string FormatHistoryList(const json& page) {
  std::vector<std::vector<std::string>> rows;
  const json& items = page.is_object() && page.contains("items") ? page["items"] : json();
  if (items.is_array()) {
    for (const auto& h : items) {
      rows.push_back({Cell(h, "sandboxID"), Cell(h, "templateID"), ShortTime(h, "createdAt"),
                      Duration(h, "durationMs"), HistoryOutcome(h), Parent(h)});
    }
  }
  return FormatTable({"SANDBOX", "TEMPLATE", "CREATED", "DURATION", "STATE/END", "PARENT"}, rows);
}

std::string FormatHistoryDetail(const json& h, const json& commands, bool with_output) {
  bool alive = Text(h, "endedAt").empty();
  std::vector<std::vector<std::string>> fields = {
      {"sandbox:", Cell(h, "sandboxID")},
      {"template:", Cell(h, "templateID")},
      {alive ? "state:" : "ended:",
       alive ? HistoryOutcome(h) : ShortTime(h, "endedAt") + " (" + HistoryOutcome(h) + ")"},
  };
  std::string created = ShortTime(h, "createdAt");
  const json& by = h.is_object() && h.contains("createdBy") ? h["createdBy"] : json();
  if (std::string key = Text(by, "keyName"); !key.empty()) created += " by key " + key;
  fields.push_back({"created:", created});
  fields.push_back({"duration:", Duration(h, "durationMs") + (alive ? " so far" : "")});
  if (std::string parent = Parent(h); parent != "-") fields.push_back({"parent:", parent});
  if (std::string host = Text(h, "hostID"); !host.empty()) fields.push_back({"host:", host});
  fields.push_back({"size:", Cell(h, "cpuCount") + " vCPU, " + Cell(h, "memoryMB") + " MiB"});
  fields.push_back({"metadata:", OneLine(Cell(h, "metadata"), 200)});
  fields.push_back({"network:", "egress " + HumanBytes(Number(h, "egressBytes").value_or(0)) +
                                    ", ingress " +
                                    HumanBytes(Number(h, "ingressBytes").value_or(0))});
  if (h.is_object() && h.contains("children") && h["children"].is_array() &&
      !h["children"].empty()) {
    std::string forks;
    for (const auto& c : h["children"]) forks += (forks.empty() ? "" : ", ") + Cell(c, "sandboxID");
    fields.push_back({"forks:", forks});
  }
  std::string out = FieldLines(fields);

  std::vector<std::vector<std::string>> events;
  if (h.is_object() && h.contains("events") && h["events"].is_array()) {
    for (const auto& e : h["events"]) {
      double took = Number(e, "durationMs").value_or(0);
      events.push_back({ShortTime(e, "at"), Cell(e, "kind"),
                        took > 0 ? HumanDuration(took / 1000) : "-",
                        OneLine(Cell(e, "detail"), kDetailWidth)});
    }
  }
  out += "\nevents:\n" + FormatTable({"TIME", "EVENT", "TOOK", "DETAIL"}, events);

  // The API sends the newest first; read in the order they ran.
  std::vector<json> ran;
  if (commands.is_array()) ran.assign(commands.rbegin(), commands.rend());
  if (ran.empty()) return out + "\ncommands: none\n";
  out += "\ncommands:\n";
  if (!with_output) {
    std::vector<std::vector<std::string>> rows;
    for (const auto& c : ran) {
      rows.push_back({ShortTime(c, "startedAt"), CommandExit(c), Duration(c, "durationMs"),
                      CommandLine(c, kCommandWidth)});
    }
    return out + FormatTable({"STARTED", "EXIT", "DURATION", "COMMAND"}, rows);
  }
  for (const auto& c : ran) {
    out += "\n" + ShortTime(c, "startedAt") + "  exit " + CommandExit(c) + "  " +
           Duration(c, "durationMs") + "  " + CommandLine(c, kFullCommandWidth) + "\n";
    if (std::string error = Text(c, "error"); !error.empty()) {
      out += "  error: " + OneLine(error, 500) + "\n";
    }
    out += StreamBlock(c, "stdout") + StreamBlock(c, "stderr");
  }
  return out;
}

}  // namespace moat::cli
