#include "common/proc_text.h"

#include <charconv>
#include <string>

#include "common/fs.h"

namespace moat {

std::vector<std::string_view> Words(std::string_view line) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    size_t start = i;
    while (i < line.size() && line[i] != ' ' && line[i] != '\t') ++i;
    if (i > start) out.push_back(line.substr(start, i - start));
  }
  return out;
}

bool ParseU64(std::string_view s, uint64_t* out) {
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && end == s.data() + s.size();
}

Result<MemInfo> ParseMeminfo(std::string_view text) {
  MemInfo info;
  bool have_total = false;
  bool have_available = false;
  uint64_t free_kb = 0, buffers_kb = 0, cached_kb = 0;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    auto w = Words(text.substr(start, end - start));
    start = end + 1;
    if (w.size() < 2) continue;
    uint64_t kb = 0;
    if (!ParseU64(w[1], &kb)) continue;
    if (w[0] == "MemTotal:") {
      info.total_bytes = kb * 1024;
      have_total = true;
    } else if (w[0] == "MemAvailable:") {
      info.available_bytes = kb * 1024;
      have_available = true;
    } else if (w[0] == "MemFree:") {
      free_kb = kb;
    } else if (w[0] == "Buffers:") {
      buffers_kb = kb;
    } else if (w[0] == "Cached:") {
      cached_kb = kb;
    }
  }
  if (!have_total) return InvalidArgument("/proc/meminfo: no MemTotal");
  if (!have_available) info.available_bytes = (free_kb + buffers_kb + cached_kb) * 1024;
  if (info.available_bytes > info.total_bytes) info.available_bytes = info.total_bytes;
  return info;
}

Result<MemInfo> ReadMeminfo() {
  MOAT_ASSIGN_OR_RETURN(std::string text, ReadFile("/proc/meminfo"));
  return ParseMeminfo(text);
}

}  // namespace moat
