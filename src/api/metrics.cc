#include "api/metrics.h"

#include <cstdio>

#include "api/history.h"

namespace moat::api {
namespace {

std::string Escape(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out.push_back('\\');
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out.push_back(c);
  }
  return out;
}

std::string Num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

}  // namespace

void Histogram::Observe(double seconds) {
  std::lock_guard lock(mu_);
  for (size_t i = 0; i < kBuckets.size(); ++i) {
    if (seconds <= kBuckets[i]) ++counts_[i];
  }
  ++count_;
  sum_ += seconds;
}

std::string Histogram::Render(const std::string& name) const {
  std::lock_guard lock(mu_);
  std::string out = "# TYPE " + name + " histogram\n";
  for (size_t i = 0; i < kBuckets.size(); ++i) {
    out += name + "_bucket{le=\"" + Num(kBuckets[i]) + "\"} " + std::to_string(counts_[i]) + "\n";
  }
  out += name + "_bucket{le=\"+Inf\"} " + std::to_string(count_) + "\n";
  out += name + "_sum " + Num(sum_) + "\n";
  out += name + "_count " + std::to_string(count_) + "\n";
  return out;
}

void Metrics::CountRequest(const std::string& route, int http_status) {
  std::lock_guard lock(mu_);
  ++requests_[{route, http_status}];
}

void Metrics::CountPortProxy(std::string_view outcome) {
  std::lock_guard lock(mu_);
  auto it = port_proxy_.find(outcome);
  if (it == port_proxy_.end()) it = port_proxy_.emplace(std::string(outcome), 0).first;
  ++it->second;
}

void Metrics::SetPortProxyActive(int64_t n) {
  std::lock_guard lock(mu_);
  port_proxy_active_ = n;
}

std::string Metrics::Render(const StoreGauges& gauges) const {
  std::string out = "# HELP moat_sandboxes Sandboxes by state.\n# TYPE moat_sandboxes gauge\n";
  for (const auto& [state, n] : gauges.sandboxes_by_state) {
    out += "moat_sandboxes{state=\"" + Escape(state) + "\"} " + std::to_string(n) + "\n";
  }
  out += "# HELP moat_host_sandboxes Sandboxes recorded on each host, by state.\n";
  out += "# TYPE moat_host_sandboxes gauge\n";
  for (const auto& [id, h] : gauges.hosts) {
    for (const auto& [state, n] : h.sandboxes_by_state) {
      out += "moat_host_sandboxes{host=\"" + Escape(id) + "\",state=\"" + Escape(state) + "\"} " +
             std::to_string(n) + "\n";
    }
  }
  // Registered hosts (a fleet's agents): one series per host for each gauge.
  auto host_gauge = [&](const char* name, const char* help, auto value) {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " gauge\n";
    for (const auto& [id, h] : gauges.hosts) {
      if (h.record)
        out += std::string(name) + "{host=\"" + Escape(id) + "\"} " + value(*h.record) + "\n";
    }
  };
  out += "# HELP moat_host_state The host's state (1 for the state it is in).\n";
  out += "# TYPE moat_host_state gauge\n";
  for (const auto& [id, h] : gauges.hosts) {
    if (!h.record) continue;
    for (const char* state : {"active", "draining", "lost"}) {
      out += "moat_host_state{host=\"" + Escape(id) + "\",state=\"" + state + "\"} " +
             (store::HostStateName(h.record->state) == state ? "1" : "0") + "\n";
    }
  }
  using H = store::HostRecord;
  host_gauge("moat_host_vcpus", "vCPUs the host offers.",
             [](const H& h) { return std::to_string(h.vcpu_total); });
  host_gauge("moat_host_vcpus_reserved", "vCPUs reserved by sandboxes placed on the host.",
             [](const H& h) { return std::to_string(h.vcpu_reserved); });
  host_gauge("moat_host_memory_bytes", "Memory the host offers.",
             [](const H& h) { return std::to_string(h.mem_total_mb * 1048576); });
  host_gauge("moat_host_memory_reserved_bytes", "Memory reserved by sandboxes placed on the host.",
             [](const H& h) { return std::to_string(h.mem_reserved_mb * 1048576); });
  host_gauge("moat_host_warm_sandboxes", "Warm clones of the base template ready on the host.",
             [](const H& h) { return std::to_string(h.warm_base); });
  host_gauge(
      "moat_host_last_heartbeat_timestamp_seconds",
      "When the host's last heartbeat reached the store (the database's clock).", [](const H& h) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.3f", static_cast<double>(h.heartbeat_at_ms) / 1000);
        return std::string(buf);
      });
  out += "# HELP moat_sandbox_create_seconds Time to create a sandbox, until its agent answers.\n";
  out += create_.Render("moat_sandbox_create_seconds");
  out += "# HELP moat_exec_start_seconds Time from an exec request to the process start.\n";
  out += exec_.Render("moat_exec_start_seconds");
  std::lock_guard lock(mu_);
  out += "# HELP moat_http_requests_total Requests answered, by route and status.\n";
  out += "# TYPE moat_http_requests_total counter\n";
  for (const auto& [key, n] : requests_) {
    out += "moat_http_requests_total{route=\"" + Escape(key.first) + "\",status=\"" +
           std::to_string(key.second) + "\"} " + std::to_string(n) + "\n";
  }
  out += "# HELP moat_http_errors_total Requests answered with a status >= 400, by route.\n";
  out += "# TYPE moat_http_errors_total counter\n";
  std::map<std::string, uint64_t> errors;
  for (const auto& [key, n] : requests_) {
    if (key.second >= 400) errors[key.first] += n;
  }
  for (const auto& [route, n] : errors) {
    out += "moat_http_errors_total{route=\"" + Escape(route) + "\"} " + std::to_string(n) + "\n";
  }
  out += "# HELP moat_port_proxy_requests_total Requests to sandbox ports, by outcome.\n";
  out += "# TYPE moat_port_proxy_requests_total counter\n";
  for (const auto& [outcome, n] : port_proxy_) {
    out += "moat_port_proxy_requests_total{outcome=\"" + Escape(outcome) + "\"} " +
           std::to_string(n) + "\n";
  }
  out += "# HELP moat_port_proxy_connections Connections to sandbox ports open now.\n";
  out += "# TYPE moat_port_proxy_connections gauge\n";
  out += "moat_port_proxy_connections " + std::to_string(port_proxy_active_) + "\n";
  out += "# HELP moat_dashboard_sign_ins_total Dashboard sign-ins, by outcome.\n";
  out += "# TYPE moat_dashboard_sign_ins_total counter\n";
  for (const char* outcome : {"ok", "refused", "limited"}) {
    auto it = sign_ins_.find(outcome);
    out += std::string("moat_dashboard_sign_ins_total{outcome=\"") + outcome + "\"} " +
           std::to_string(it == sign_ins_.end() ? 0 : it->second) + "\n";
  }
  out += "# HELP moat_web_terminals Web terminals open now.\n# TYPE moat_web_terminals gauge\n";
  out += "moat_web_terminals " + std::to_string(web_terminals_) + "\n";
  HistoryLog::Counters& h = HistoryLog::counters();
  out += "# HELP moat_history_writes_total History records written, by kind.\n";
  out += "# TYPE moat_history_writes_total counter\n";
  for (const auto& [kind, n] : {std::pair<const char*, int64_t>{"history", h.history.load()},
                                {"event", h.event.load()},
                                {"command", h.command.load()},
                                {"audit", h.audit.load()},
                                {"console", h.console.load()}}) {
    out +=
        std::string("moat_history_writes_total{kind=\"") + kind + "\"} " + std::to_string(n) + "\n";
  }
  out +=
      "# HELP moat_history_write_errors_total History writes that failed (the action went on).\n";
  out += "# TYPE moat_history_write_errors_total counter\n";
  out += "moat_history_write_errors_total " + std::to_string(h.errors.load()) + "\n";
  out += "# HELP moat_usage_meter_passes_total Passes over running sandboxes' network counters.\n";
  out += "# TYPE moat_usage_meter_passes_total counter\n";
  out += "moat_usage_meter_passes_total " + std::to_string(h.meter_passes.load()) + "\n";
  out += "# HELP moat_history_pruned_total Rows pruned past the retention period.\n";
  out += "# TYPE moat_history_pruned_total counter\n";
  out += "moat_history_pruned_total " + std::to_string(h.pruned.load()) + "\n";
  out += "# HELP moat_stored_snapshots Snapshots recorded for the object store, by state.\n";
  out += "# TYPE moat_stored_snapshots gauge\n";
  for (const auto& [state, cb] : gauges.stored_snapshots) {
    out +=
        "moat_stored_snapshots{state=\"" + Escape(state) + "\"} " + std::to_string(cb.first) + "\n";
  }
  out += "# HELP moat_stored_snapshot_bytes Their files' bytes (zero chunks included), by state.\n";
  out += "# TYPE moat_stored_snapshot_bytes gauge\n";
  for (const auto& [state, cb] : gauges.stored_snapshots) {
    out += "moat_stored_snapshot_bytes{state=\"" + Escape(state) + "\"} " +
           std::to_string(cb.second) + "\n";
  }
  if (host_) out += host_();
  return out;
}

void Metrics::CountSignIn(std::string_view outcome) {
  std::lock_guard lock(mu_);
  auto it = sign_ins_.find(outcome);
  if (it == sign_ins_.end()) it = sign_ins_.emplace(std::string(outcome), 0).first;
  ++it->second;
}

void Metrics::AddWebTerminals(int64_t delta) {
  std::lock_guard lock(mu_);
  web_terminals_ += delta;
}

}  // namespace moat::api
