#include "guest/metrics.h"

#include <sys/statvfs.h>

#include <cmath>
#include <vector>

#include "common/fs.h"

namespace moat::guest {
Result<CpuSample> ParseProcStat(std::string_view text) {
  CpuSample sample;
  bool have_total = false;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    start = end + 1;
    auto w = Words(line);
    if (w.empty() || w[0].substr(0, 3) != "cpu") continue;
    if (w[0] != "cpu") {
      ++sample.cpu_count;
      continue;
    }
    // cpu user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is
    // already counted in user, so only the first eight fields add up to the total.
    if (w.size() < 5) return InvalidArgument("/proc/stat: short cpu line");
    uint64_t v[8] = {};
    for (size_t i = 1; i < w.size() && i <= 8; ++i) {
      if (!ParseU64(w[i], &v[i - 1])) return InvalidArgument("/proc/stat: bad cpu field");
    }
    for (uint64_t x : v) sample.total += x;
    sample.idle = v[3] + v[4];
    have_total = true;
  }
  if (!have_total) return InvalidArgument("/proc/stat: no cpu line");
  return sample;
}

double CpuUsedPct(const CpuSample& before, const CpuSample& after) {
  if (after.total <= before.total || after.idle < before.idle) return 0.0;
  double total = static_cast<double>(after.total - before.total);
  double idle = static_cast<double>(after.idle - before.idle);
  double pct = 100.0 * (total - idle) / total;
  if (pct < 0) pct = 0;
  if (pct > 100) pct = 100;
  return std::round(pct * 100) / 100;
}

MetricsCollector::MetricsCollector() {
  auto text = ReadFile("/proc/stat");
  if (text.ok()) {
    auto sample = ParseProcStat(*text);
    if (sample.ok()) last_ = *sample;
  }
}

Result<Json> MetricsCollector::Collect() {
  MOAT_ASSIGN_OR_RETURN(std::string stat_text, ReadFile("/proc/stat"));
  MOAT_ASSIGN_OR_RETURN(CpuSample now, ParseProcStat(stat_text));
  MOAT_ASSIGN_OR_RETURN(std::string mem_text, ReadFile("/proc/meminfo"));
  MOAT_ASSIGN_OR_RETURN(MemInfo mem, ParseMeminfo(mem_text));
  struct statvfs vfs {};
  if (::statvfs("/", &vfs) < 0) return ErrnoError("statvfs(/)");
  double cpu = CpuUsedPct(last_, now);
  last_ = now;
  uint64_t block = vfs.f_frsize;
  return Json{
      {"cpu_count", now.cpu_count},
      {"cpu_used_pct", cpu},
      {"mem_total", mem.total_bytes},
      {"mem_used", mem.total_bytes - mem.available_bytes},
      {"disk_total", static_cast<uint64_t>(vfs.f_blocks) * block},
      {"disk_used", static_cast<uint64_t>(vfs.f_blocks - vfs.f_bfree) * block},
  };
}

}  // namespace moat::guest
