// Helpers shared by the benchmarks: durations in milliseconds, percentile summaries, `--flag
// value` parsing and writing the JSON result.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/fs.h"
#include "common/status.h"

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

// Parses `--flag value` pairs into `flags` (each setter gets its value). An unknown flag or a
// missing value is printed with `usage`; then it returns false.
using FlagSetters = std::map<std::string, std::function<void(const std::string&)>>;
inline bool ParseFlags(int argc, char** argv, const FlagSetters& flags, const char* usage) {
  for (int i = 1; i < argc; i += 2) {
    auto it = flags.find(argv[i]);
    if (it == flags.end() || i + 1 >= argc) {
      std::fprintf(stderr, "%s: %s %s\nusage: %s\n", argv[0],
                   it == flags.end() ? "unknown flag" : "no value for", argv[i], usage);
      return false;
    }
    it->second(argv[i + 1]);
  }
  return true;
}

// A count flag's value: at least 1.
inline int AtLeastOne(const std::string& v) {
  return std::max(1, std::atoi(v.c_str()));
}

// Writes `out` (pretty, newline-terminated) to `path`, creating its directory.
inline Status WriteJson(const std::string& path, const nlohmann::json& out) {
  if (path.find('/') != std::string::npos) (void)MakeDirs(path.substr(0, path.rfind('/')));
  return WriteFileAtomic(path, out.dump(2) + "\n");
}

}  // namespace moat::bench
