#include "api/usage.h"

#include <algorithm>
#include <cstdio>
#include <tuple>

#include "api/codec/protojson.h"

namespace moat::api {
namespace {

using store::CommandRecord;
using store::HistoryRecord;
using store::SandboxEvent;

struct Interval {
  int64_t begin = 0, end = 0;
};

bool IsEndKind(const std::string& kind) {
  return kind == store::kEndKilled || kind == store::kEndTimeout || kind == store::kEndError ||
         kind == store::kEndHostLost || kind == "ended";
}

// Where the sandbox ran and where it was paused, from its events (and its record's end).
void Segments(const HistoryRecord& h, const std::vector<const SandboxEvent*>& events,
              int64_t now_ms, std::vector<Interval>* running, std::vector<Interval>* paused) {
  int64_t end = h.ended_at_ms > 0 ? h.ended_at_ms : now_ms;
  enum { kRunning, kPaused, kEnded } state = kRunning;
  int64_t since = h.created_at_ms;
  auto close = [&](int64_t at) {
    at = std::max(at, since);
    if (at > since) (state == kRunning ? running : paused)->push_back({since, at});
    since = at;
  };
  for (const SandboxEvent* e : events) {
    if (state == kEnded) break;
    if (e->kind == "paused" && state == kRunning) {
      close(e->at_ms);
      state = kPaused;
    } else if (e->kind == "resumed" && state == kPaused) {
      close(e->at_ms);
      state = kRunning;
    } else if (IsEndKind(e->kind)) {
      close(e->at_ms);
      state = kEnded;
    }
  }
  if (state != kEnded) close(end);
}

// Sorts and merges overlapping intervals: the result is disjoint and ordered.
void Merge(std::vector<Interval>& list) {
  std::sort(list.begin(), list.end(),
            [](const Interval& a, const Interval& b) { return a.begin < b.begin; });
  size_t out = 0;
  for (const Interval& iv : list) {
    if (out > 0 && iv.begin <= list[out - 1].end) {
      list[out - 1].end = std::max(list[out - 1].end, iv.end);
    } else {
      list[out++] = iv;
    }
  }
  list.resize(out);
}

// The part of `span` covered by none of `busy` (disjoint and ordered: Merge), found from the
// first busy interval that ends after the span begins.
double UncoveredSeconds(const Interval& span, const std::vector<Interval>& busy) {
  int64_t covered = 0;
  auto it = std::upper_bound(busy.begin(), busy.end(), span.begin,
                             [](int64_t t, const Interval& b) { return t < b.end; });
  for (; it != busy.end() && it->begin < span.end; ++it) {
    covered += std::min(it->end, span.end) - std::max(it->begin, span.begin);
  }
  return static_cast<double>(span.end - span.begin - covered) / 1000.0;
}

}  // namespace

void UsageFigures::Add(const UsageFigures& o) {
  running_seconds += o.running_seconds;
  paused_seconds += o.paused_seconds;
  vcpu_seconds += o.vcpu_seconds;
  gib_seconds += o.gib_seconds;
  idle_seconds += o.idle_seconds;
  creates += o.creates;
  forks += o.forks;
  egress_bytes += o.egress_bytes;
  ingress_bytes += o.ingress_bytes;
  snapshot_byte_hours += o.snapshot_byte_hours;
}

Status CheckUsageQuery(const UsageQuery& q) {
  if (q.bucket_ms != 3600000 && q.bucket_ms != 86400000) {
    return InvalidArgument("usage buckets are an hour or a day");
  }
  if (q.to_ms <= q.from_ms) return InvalidArgument("\"to\" must be after \"from\"");
  if ((q.to_ms - q.from_ms) / q.bucket_ms > 10000) {
    return InvalidArgument("the window spans more than 10000 buckets; use a coarser groupBy");
  }
  return Status::Ok();
}

Result<UsageReport> ComputeUsage(const store::UsageInput& input, const UsageQuery& q) {
  MOAT_RETURN_IF_ERROR(CheckUsageQuery(q));
  using Key = std::tuple<int64_t, std::string, std::string>;  // bucket, team, template
  std::map<Key, UsageFigures> rows;
  auto bucket_of = [&](int64_t t) { return t - ((t % q.bucket_ms) + q.bucket_ms) % q.bucket_ms; };
  auto row = [&](int64_t bucket, const std::string& team, const std::string& tmpl) -> auto& {
    return rows[Key{bucket, q.by_team ? team : "", q.by_template ? tmpl : ""}];
  };
  // Calls fn(bucket, begin, end) for each piece of [begin, end) ∩ [from, to) within one bucket.
  auto split = [&](Interval iv, auto&& fn) {
    int64_t b = std::max(iv.begin, q.from_ms), e = std::min(iv.end, q.to_ms);
    while (b < e) {
      int64_t bucket = bucket_of(b);
      int64_t piece_end = std::min(e, bucket + q.bucket_ms);
      fn(bucket, b, piece_end);
      b = piece_end;
    }
  };

  std::map<std::string, std::vector<const SandboxEvent*>> events;
  for (const auto& e : input.events) events[e.sandbox_id].push_back(&e);
  for (auto& [id, list] : events) {
    std::stable_sort(list.begin(), list.end(),
                     [](const SandboxEvent* a, const SandboxEvent* b) { return a->seq < b->seq; });
  }
  std::map<std::string, std::vector<Interval>> busy;
  std::map<std::string, const HistoryRecord*> by_id;
  for (const auto& h : input.histories) by_id[h.sandbox_id] = &h;
  for (const CommandRecord& c : input.commands) {
    auto h = by_id.find(c.sandbox_id);
    if (h == by_id.end()) continue;
    int64_t end = c.ended_at_ms > 0            ? c.ended_at_ms
                  : h->second->ended_at_ms > 0 ? h->second->ended_at_ms
                                               : q.now_ms;
    if (end > c.started_at_ms) busy[c.sandbox_id].push_back({c.started_at_ms, end});
  }
  for (auto& [id, list] : busy) Merge(list);

  static const std::vector<const SandboxEvent*> kNoEvents;
  static const std::vector<Interval> kNoBusy;
  for (const HistoryRecord& h : input.histories) {
    auto ev = events.find(h.sandbox_id);
    std::vector<Interval> running, paused;
    Segments(h, ev == events.end() ? kNoEvents : ev->second, q.now_ms, &running, &paused);
    auto bz = busy.find(h.sandbox_id);
    const auto& busy_list = bz == busy.end() ? kNoBusy : bz->second;
    double gib = static_cast<double>(h.memory_mb) / 1024.0;
    for (const Interval& iv : running) {
      split(iv, [&](int64_t bucket, int64_t b, int64_t e) {
        UsageFigures& f = row(bucket, h.team_id, h.template_id);
        double secs = static_cast<double>(e - b) / 1000.0;
        f.running_seconds += secs;
        f.vcpu_seconds += secs * h.cpu_count;
        f.gib_seconds += secs * gib;
        f.idle_seconds += UncoveredSeconds({b, e}, busy_list);
      });
    }
    for (const Interval& iv : paused) {
      split(iv, [&](int64_t bucket, int64_t b, int64_t e) {
        row(bucket, h.team_id, h.template_id).paused_seconds += static_cast<double>(e - b) / 1000.0;
      });
    }
    if (h.created_at_ms >= q.from_ms && h.created_at_ms < q.to_ms) {
      UsageFigures& f = row(bucket_of(h.created_at_ms), h.team_id, h.template_id);
      if (h.parent_kind == "fork") {
        ++f.forks;
      } else {
        ++f.creates;
      }
    }
  }
  for (const auto& n : input.net) {
    if (n.hour_ms < q.from_ms || n.hour_ms >= q.to_ms) continue;
    auto h = by_id.find(n.sandbox_id);
    if (h == by_id.end()) continue;
    UsageFigures& f = row(bucket_of(n.hour_ms), h->second->team_id, h->second->template_id);
    f.egress_bytes += n.egress_bytes;
    f.ingress_bytes += n.ingress_bytes;
  }
  for (const auto& s : input.snapshots) {
    Interval iv{s.created_at_ms, s.deleted_at_ms > 0 ? s.deleted_at_ms : q.now_ms};
    split(iv, [&](int64_t bucket, int64_t b, int64_t e) {
      row(bucket, s.team_id, s.template_id).snapshot_byte_hours +=
          static_cast<double>(s.bytes) * static_cast<double>(e - b) / 3600000.0;
    });
  }

  UsageReport report;
  for (auto& [key, figures] : rows) {
    report.totals.Add(figures);
    report.rows.push_back(UsageRow{std::get<0>(key), std::get<2>(key), std::get<1>(key), figures});
  }
  return report;
}

std::string UsageCsv(const UsageReport& report, const UsageQuery& q) {
  std::string out = "bucket";
  if (q.by_team) out += ",teamID";
  if (q.by_template) out += ",templateID";
  out +=
      ",runningSeconds,pausedSeconds,vcpuSeconds,gibSeconds,idleSeconds,creates,forks,"
      "egressBytes,ingressBytes,snapshotByteHours\n";
  auto quoted = [](const std::string& s) {
    std::string q = "\"";
    // A cell a spreadsheet would run as a formula starts with a quote mark instead.
    if (!s.empty() && std::string_view("=+-@\t\r").find(s.front()) != std::string_view::npos) {
      q += '\'';
    }
    for (char c : s) {
      if (c == '"') q += '"';
      q += c;
    }
    return q + "\"";
  };
  auto num = [](double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.3f", v);
    return std::string(buf);
  };
  for (const UsageRow& r : report.rows) {
    out += codec::Rfc3339(r.bucket_ms * 1000000);
    if (q.by_team) out += "," + quoted(r.team_id);
    if (q.by_template) out += "," + quoted(r.template_id);
    const UsageFigures& f = r.figures;
    out += "," + num(f.running_seconds) + "," + num(f.paused_seconds) + "," + num(f.vcpu_seconds) +
           "," + num(f.gib_seconds) + "," + num(f.idle_seconds) + "," + std::to_string(f.creates) +
           "," + std::to_string(f.forks) + "," + std::to_string(f.egress_bytes) + "," +
           std::to_string(f.ingress_bytes) + "," + num(f.snapshot_byte_hours) + "\n";
  }
  return out;
}

}  // namespace moat::api
