// Helpers shared by the benchmarks: durations in milliseconds and percentile summaries.
#pragma once

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>
#include <vector>

namespace moat::bench {

using Clock = std::chrono::steady_clock;

inline double Ms(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

// {"n", "p50", "p95", "p99", "min", "max"} of `v` (not empty).
inline nlohmann::json Percentiles(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  auto at = [&](double q) { return v[std::min(v.size() - 1, static_cast<size_t>(q * v.size()))]; };
  return {{"n", v.size()},   {"p50", at(0.50)},  {"p95", at(0.95)},
          {"p99", at(0.99)}, {"min", v.front()}, {"max", v.back()}};
}

}  // namespace moat::bench
