// Guest resource metrics: CPU use from /proc/stat deltas, memory from /proc/meminfo, disk from
// statvfs("/").
#pragma once

#include <cstdint>
#include <string_view>

#include "common/proc_text.h"
#include "common/status.h"
#include "guest/request.h"

namespace moat::guest {

struct CpuSample {
  uint64_t total = 0;  // jiffies, all states
  uint64_t idle = 0;   // idle + iowait
  int cpu_count = 0;
};
Result<CpuSample> ParseProcStat(std::string_view text);
// Percentage of non-idle time between two samples, 0..100.
double CpuUsedPct(const CpuSample& before, const CpuSample& after);

using ::moat::MemInfo;
using ::moat::ParseMeminfo;

// Keeps the previous CPU sample so that each report covers the time since the last one.
class MetricsCollector {
 public:
  MetricsCollector();
  // {"cpu_count","cpu_used_pct","mem_total","mem_used","disk_total","disk_used"}
  Result<Json> Collect();

 private:
  CpuSample last_;
};

}  // namespace moat::guest
