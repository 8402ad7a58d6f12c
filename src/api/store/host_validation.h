// The checks both stores make of host calls before they touch the database (private to the
// store implementations), so that SqliteStore and PgStore refuse the same input the same way.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "api/store/store.h"

namespace moat::api::store {

inline Status CheckRegistration(const HostRegistration& h) {
  if (h.id.empty()) return InvalidArgument("host registration: empty host id");
  if (h.vcpu_total < 0 || h.mem_total_mb < 0) {
    return InvalidArgument("host \"" + h.id + "\": negative totals (vcpu_total " +
                           std::to_string(h.vcpu_total) + ", mem_total_mb " +
                           std::to_string(h.mem_total_mb) + ")");
  }
  return Status::Ok();
}

inline Status CheckNeed(const std::string& host_id, int64_t vcpus, int64_t mem_mb) {
  if (vcpus < 0 || mem_mb < 0) {
    return InvalidArgument("host \"" + host_id + "\": negative need (vcpus " +
                           std::to_string(vcpus) + ", mem_mb " + std::to_string(mem_mb) + ")");
  }
  return Status::Ok();
}

inline Status CheckOvercommit(double cpu_overcommit, double mem_overcommit) {
  if (!std::isfinite(cpu_overcommit) || cpu_overcommit <= 0 || !std::isfinite(mem_overcommit) ||
      mem_overcommit <= 0) {
    return InvalidArgument("overcommit ratios must be positive numbers (cpu " +
                           std::to_string(cpu_overcommit) + ", memory " +
                           std::to_string(mem_overcommit) + ")");
  }
  return Status::Ok();
}

}  // namespace moat::api::store
