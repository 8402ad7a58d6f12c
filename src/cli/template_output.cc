#include "cli/template_output.h"

#include <cstdio>
#include <ctime>
#include <regex>
#include <vector>

#include "cli/output.h"

namespace moat::cli {
namespace {

using nlohmann::json;

// An RFC 3339 time as seconds since the epoch.
std::optional<std::time_t> ParseRfc3339(std::string_view ts) {
  std::tm tm{};
  int consumed = 0;
  const std::string s(ts);
  if (std::sscanf(s.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                  &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &consumed) != 6 ||
      consumed != 19) {
    return std::nullopt;
  }
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  size_t i = 19;
  if (i < s.size() && s[i] == '.') {
    for (++i; i < s.size() && s[i] >= '0' && s[i] <= '9';) ++i;
  }
  long offset = 0;
  if (i < s.size() && (s[i] == 'Z' || s[i] == 'z')) {
    ++i;
  } else if (i + 6 == s.size() && (s[i] == '+' || s[i] == '-') && s[i + 3] == ':') {
    int h = 0, m = 0;
    if (std::sscanf(s.c_str() + i + 1, "%2d:%2d", &h, &m) != 2) return std::nullopt;
    offset = (s[i] == '-' ? -1 : 1) * (h * 3600L + m * 60L);
    i += 6;
  } else {
    return std::nullopt;
  }
  if (i != s.size()) return std::nullopt;
  return ::timegm(&tm) - offset;
}

std::string LocalClock(std::string_view ts) {
  if (auto t = ParseRfc3339(ts)) {
    std::tm tm{};
    ::localtime_r(&*t, &tm);
    char buf[16];
    std::strftime(buf, sizeof buf, "%H:%M:%S", &tm);
    return buf;
  }
  return ts.size() >= 19 ? std::string(ts.substr(11, 8)) : "--:--:--";
}

// Drops ANSI escape sequences (CSI, OSC and two-byte ones) and control characters but for tab
// and newline.
std::string Printable(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == 0x1b && i + 1 < s.size()) {
      const char kind = s[++i];
      if (kind == '[') {  // CSI: parameters, then one final byte in @..~
        while (i + 1 < s.size() && !(s[i + 1] >= '@' && s[i + 1] <= '~')) ++i;
        ++i;
      } else if (kind == ']') {  // OSC: up to BEL or ESC backslash
        while (i + 1 < s.size() && s[i + 1] != '\a' && s[i + 1] != 0x1b) ++i;
        ++i;
        if (i < s.size() && s[i] == 0x1b) ++i;
      }
      continue;
    }
    if ((c < 0x20 && c != '\t' && c != '\n') || c == 0x7f) continue;
    out += static_cast<char>(c);
  }
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

}  // namespace

std::string FormatTemplateList(const json& templates) {
  std::vector<std::vector<std::string>> rows;
  if (templates.is_array()) {
    for (const auto& t : templates) {
      rows.push_back({Cell(t, "templateID"), Cell(t, "aliases"), Cell(t, "buildStatus"),
                      Cell(t, "cpuCount"), Cell(t, "memoryMB"), Cell(t, "diskSizeMB"),
                      Cell(t, "public"), Cell(t, "updatedAt")});
    }
  }
  return FormatTable(
      {"TEMPLATE ID", "NAMES", "STATUS", "VCPU", "MEM(MiB)", "DISK(MiB)", "PUBLIC", "UPDATED"},
      rows);
}

std::string FormatTemplateInfo(const json& tmpl) {
  std::string out =
      FormatFields(tmpl, {"templateID", "aliases", "names", "public", "buildID", "buildStatus",
                          "cpuCount", "memoryMB", "diskSizeMB", "envdVersion", "createdAt",
                          "updatedAt", "lastSpawnedAt", "spawnCount", "buildCount"});
  const json builds = tmpl.is_object() && tmpl.contains("builds") ? tmpl["builds"] : json::array();
  if (!builds.is_array() || builds.empty()) return out + "\nbuilds: none\n";
  std::vector<std::vector<std::string>> rows;
  for (const auto& b : builds) {
    rows.push_back({Cell(b, "buildID"), Cell(b, "status"), Cell(b, "cpuCount"), Cell(b, "memoryMB"),
                    Cell(b, "createdAt"), Cell(b, "finishedAt")});
  }
  return out + "\n" +
         FormatTable({"BUILD ID", "STATUS", "VCPU", "MEM(MiB)", "CREATED", "FINISHED"}, rows);
}

std::string FormatBuildLogLine(const BuildLogLine& line) {
  std::string level = line.level.empty() ? "info" : Printable(line.level);
  if (level.size() < 5) level.resize(5, ' ');
  return LocalClock(line.timestamp) + " " + level + " " + Printable(line.message);
}

std::optional<std::string> BuildProgressLabel(std::string_view message) {
  static const std::regex kStep(R"(\[(?:[A-Za-z_-]+ )?(\d+)/(\d+)\]\s*(.*))");
  const std::string text = Printable(message);
  std::smatch m;
  if (!std::regex_search(text, m, kStep)) return std::nullopt;
  std::string rest = m[3].str();
  rest = rest.substr(0, rest.find('\n'));
  return "[" + m[1].str() + "/" + m[2].str() + "] " + rest;
}

}  // namespace moat::cli
