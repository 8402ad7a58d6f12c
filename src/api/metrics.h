// moatd's Prometheus metrics (GET /metrics): request errors by route, create and exec latency
// histograms. Sandboxes by state are read from the store when scraped. Thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>

namespace moat::api {

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
  // The whole exposition; `by_state` are the sandboxes per state.
  std::string Render(const std::map<std::string, int64_t>& by_state) const;

 private:
  Histogram create_;
  Histogram exec_;
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;  // (route, status) → count
};

}  // namespace moat::api
