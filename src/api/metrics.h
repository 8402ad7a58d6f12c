// moatd's Prometheus metrics (GET /metrics): request errors by route, create and exec latency
// histograms, the port proxy's requests by outcome and its open connections. Sandboxes by state
// (fleet-wide and per host) and each host's capacity, reservations, state and last heartbeat are
// read from the store when scraped, so every replica reports the whole fleet. Thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "api/store/store.h"

namespace moat::api {

// What GET /metrics reads from the store when scraped: sandboxes by state, fleet-wide and per
// host, and each registered host's capacity and heartbeat.
struct StoreGauges {
  std::map<std::string, int64_t> sandboxes_by_state;
  struct Host {
    // Its hosts row (a fleet agent's); none for `moatd serve`'s "local".
    std::optional<store::HostRecord> record;
    std::map<std::string, int64_t> sandboxes_by_state;
  };
  std::map<std::string, Host> hosts;  // by host id
  // Snapshots recorded for the object store, by state: how many, and their bytes.
  std::map<std::string, std::pair<int64_t, int64_t>> stored_snapshots;
};

class Histogram {
 public:
  // Upper bounds in seconds.
  static constexpr std::array<double, 12> kBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                      0.1,   0.25,   0.5,   1,    2.5,   10};
  void Observe(double seconds);
  // Prometheus text lines for `name` (with _bucket, _sum, _count).
  std::string Render(const std::string& name) const;

 private:
  mutable std::mutex mu_;
  std::array<uint64_t, kBuckets.size()> counts_{};
  uint64_t count_ = 0;
  double sum_ = 0;
};

class Metrics {
 public:
  Histogram& create_latency() { return create_; }
  // Time from an exec request to the process's start event.
  Histogram& exec_start_latency() { return exec_; }
  // One request answered: counted by route pattern and status class; errors (>= 400) apart.
  void CountRequest(const std::string& route, int http_status);
  // One request to a sandbox port (PortProxy), by outcome: "relayed", "sandbox_not_found", …
  void CountPortProxy(std::string_view outcome);
  // Connections the port proxy is connecting or relaying now.
  void SetPortProxyActive(int64_t n);
  // A dashboard sign-in, by outcome: "ok", "refused" (a wrong key or request), "limited" (429).
  void CountSignIn(std::string_view outcome);
  // Web terminals open now: +1 when one opens, -1 when it closes.
  void AddWebTerminals(int64_t delta);
  // Text appended to every exposition: this host's own counters (`moatd serve`: its snapshot
  // store's). Set once, before scrapes.
  void SetHostCollector(std::function<std::string()> collect) { host_ = std::move(collect); }
  // The whole exposition, with what the store said (`gauges`).
  std::string Render(const StoreGauges& gauges) const;

 private:
  std::function<std::string()> host_;
  Histogram create_;
  Histogram exec_;
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;  // (route, status) → count
  std::map<std::string, uint64_t, std::less<>> port_proxy_;   // outcome → count
  int64_t port_proxy_active_ = 0;
  std::map<std::string, uint64_t, std::less<>> sign_ins_;  // outcome → count
  int64_t web_terminals_ = 0;
};

}  // namespace moat::api
