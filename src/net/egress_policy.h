// A sandbox's egress policy: internet access on or off, and the E2B `network` object's
// `allowOut` / `denyOut` lists. What is always denied whatever the policy (the host, other
// slots, link-local metadata, control-plane ports) is not part of it: see net_config.h.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "common/status.h"
#include "net/ipv4.h"

namespace moat::net {

// Bounds a client-supplied policy (each list), so that the ruleset stays small.
inline constexpr size_t kMaxPolicyEntries = 1024;

struct EgressPolicy {
  // E2B's `allow_internet_access`. False is the same as a `denyOut` of 0.0.0.0/0.
  bool allow_internet_access = true;
  // Evaluated in this order: allow_out wins over deny_out, which wins over the default
  // (allow_internet_access). Stored normalised (sorted, no entry inside another).
  std::vector<Ipv4Cidr> allow_out;
  std::vector<Ipv4Cidr> deny_out;

  // From the create or update body: `allow_internet_access` (absent: true) and the `network`
  // object (absent or null: no lists). Domain names in allowOut (matched by TLS SNI / HTTP
  // Host in E2B) are not supported yet and are refused rather than ignored. Unknown keys of
  // `network` that change nothing here (allowPublicTraffic, maskRequestHost, ...) are ignored.
  static Result<EgressPolicy> FromE2b(const nlohmann::json& network,
                                      std::optional<bool> allow_internet_access);
  // Does the guest reach anything beyond the always-allowed? (DNS is forwarded only then.)
  bool AllowsAnyEgress() const { return allow_internet_access || !allow_out.empty(); }
  // {"allow_internet_access":b,"allow_out":[...],"deny_out":[...]}
  nlohmann::json ToJson() const;
  static Result<EgressPolicy> FromJson(const nlohmann::json& j);
  friend bool operator==(const EgressPolicy&, const EgressPolicy&) = default;
};

// Sorted, duplicates and entries contained in another entry removed: nftables refuses
// overlapping intervals in one set.
std::vector<Ipv4Cidr> NormalizeCidrs(std::vector<Ipv4Cidr> cidrs);

}  // namespace moat::net
