// Usage metering (docs/usage.md): the cost units of a hosted meter, computed from what the store
// keeps — each sandbox's lifecycle events (running and paused time, and what it reserved while
// running), the commands run in it (idle time), its network buckets and the snapshots stored.
// Computed when asked, never accumulated: a moatd restart can neither count a second twice nor
// lose one, since every figure is a function of durable timestamps (a sandbox still alive is
// counted up to `now`).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "api/store/history.h"
#include "common/status.h"

namespace moat::api {

struct UsageQuery {
  int64_t from_ms = 0;
  int64_t to_ms = 0;
  int64_t bucket_ms = 86400000;  // 3600000 (hour) or 86400000 (day), UTC
  bool by_template = false;
  bool by_team = false;
  int64_t now_ms = 0;  // where a sandbox still alive is counted up to
};

struct UsageFigures {
  double running_seconds = 0;
  double paused_seconds = 0;
  double vcpu_seconds = 0;
  double gib_seconds = 0;
  double idle_seconds = 0;  // running with no command in flight
  int64_t creates = 0;
  int64_t forks = 0;
  int64_t egress_bytes = 0;
  int64_t ingress_bytes = 0;
  double snapshot_byte_hours = 0;
  void Add(const UsageFigures& o);
};

struct UsageRow {
  int64_t bucket_ms = 0;
  std::string template_id;  // when by_template
  std::string team_id;      // when by_team
  UsageFigures figures;
};

struct UsageReport {
  std::vector<UsageRow> rows;  // by bucket, then team, then template
  UsageFigures totals;
};

// InvalidArgument for an empty or reversed window, or a bucket that is neither an hour nor a
// day, or a window of more than 10,000 buckets (checked before the store is read).
Status CheckUsageQuery(const UsageQuery& query);
// The report over [from, to) (CheckUsageQuery's errors).
Result<UsageReport> ComputeUsage(const store::UsageInput& input, const UsageQuery& query);

// The report as CSV: a header line, then one line per row.
std::string UsageCsv(const UsageReport& report, const UsageQuery& query);

}  // namespace moat::api
