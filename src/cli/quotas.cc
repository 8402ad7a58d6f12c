#include "cli/quotas.h"

#include <cerrno>
#include <cstdlib>
#include <string_view>

#include "cli/output.h"

namespace moat::cli {
namespace {

using nlohmann::json;

struct QuotaName {
  std::string_view cli;
  std::string_view api;
  std::string_view usage;  // the TeamQuotas usage field it limits; empty: none
};

constexpr QuotaName kQuotas[] = {
    {"max-sandboxes", "maxSandboxes", "sandboxes"},
    {"max-vcpus", "maxVcpus", "vcpus"},
    {"max-memory-mib", "maxMemoryMiB", "memoryMiB"},
    {"max-creates-per-minute", "maxCreatesPerMinute", "createsLastMinute"},
    {"max-metadata-bytes", "maxMetadataBytes", ""},
};

std::string Number(const json& v) {
  return v.is_number() ? v.dump() : "-";
}

}  // namespace

Result<json> ParseQuotaSets(const std::vector<std::string>& sets) {
  json body = json::object();
  for (const auto& arg : sets) {
    size_t eq = arg.find('=');
    if (eq == std::string::npos || eq == 0) {
      return InvalidArgument("--set wants NAME=VALUE (got \"" + arg + "\")");
    }
    std::string name = arg.substr(0, eq), value = arg.substr(eq + 1);
    const QuotaName* quota = nullptr;
    for (const auto& q : kQuotas) {
      if (name == q.cli || name == q.api) quota = &q;
    }
    if (quota == nullptr) {
      std::string known;
      for (const auto& q : kQuotas) known += (known.empty() ? "" : ", ") + std::string(q.cli);
      return InvalidArgument("--set: unknown quota \"" + name + "\" (known: " + known + ")");
    }
    std::string key(quota->api);
    if (body.contains(key)) return InvalidArgument("--set: " + name + " is given twice");
    if (value == "default") {
      body[key] = nullptr;
      continue;
    }
    char* end = nullptr;
    errno = 0;
    long long n = std::strtoll(value.c_str(), &end, 10);
    if (value.empty() || *end != '\0' || errno != 0 || n < 0) {
      return InvalidArgument("--set " + name +
                             ": expected a non-negative integer or \"default\", got \"" + value +
                             "\"");
    }
    body[key] = n;
  }
  return body;
}

std::string FormatQuotas(const json& q) {
  std::string out = "team: " + Cell(q, "teamName") + " (" + Cell(q, "teamID") + ")\n";
  const json empty = json::object();
  const json& limits = q.contains("quotas") ? q["quotas"] : empty;
  const json& set = q.contains("set") ? q["set"] : empty;
  const json& usage = q.contains("usage") ? q["usage"] : empty;
  std::vector<std::vector<std::string>> rows;
  for (const auto& quota : kQuotas) {
    std::string key(quota.api);
    std::string limit = limits.contains(key) ? Number(limits[key]) : "-";
    if (!set.contains(key)) limit += " (default)";
    std::string used = "-";
    if (!quota.usage.empty() && usage.contains(std::string(quota.usage))) {
      used = Number(usage[std::string(quota.usage)]);
    }
    rows.push_back({std::string(quota.cli), limit, used});
  }
  return out + FormatTable({"QUOTA", "LIMIT", "USED"}, rows);
}

}  // namespace moat::cli
