// A sandbox's egress policy: internet access on or off, and the E2B `network` object's
// `allowOut` / `denyOut` lists. What is always denied whatever the policy (the host, other
// slots, link-local metadata, control-plane ports) is not part of it: see net_config.h.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/ipv4.h"
#include "common/status.h"

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
  // The domain names of allowOut ("example.com", or "*.example.com" for any name under it),
  // lower case, sorted, without a trailing dot. A TCP connection to port 80 or 443 that the
  // lists above would reject is allowed when its HTTP Host / TLS SNI names one of these and
  // its destination is an address of that name (docs/networking.md, net/domain_proxy.h).
  std::vector<std::string> allow_domains;

  // From the create or update body: `allow_internet_access` (absent: true) and the `network`
  // object (absent or null: no lists). `egressProxy` and `rules` (proxying and header
  // rewriting moat does not do) are refused when set; keys that change nothing here
  // (allowPublicTraffic, read by the API; maskRequestHost, httpsPorts) are ignored.
  static Result<EgressPolicy> FromE2b(const nlohmann::json& network,
                                      std::optional<bool> allow_internet_access);
  // Does the guest reach anything beyond the always-allowed? (DNS is forwarded only then.)
  bool AllowsAnyEgress() const {
    return allow_internet_access || !allow_out.empty() || !allow_domains.empty();
  }
  // Does `host` (any case, trailing dot allowed) match an entry of allow_domains?
  bool AllowsDomain(std::string_view host) const;
  // {"allow_internet_access":b,"allow_out":[...],"deny_out":[...],"allow_domains":[...]}
  nlohmann::json ToJson() const;
  static Result<EgressPolicy> FromJson(const nlohmann::json& j);
  friend bool operator==(const EgressPolicy&, const EgressPolicy&) = default;
};

// Sorted, duplicates and entries contained in another entry removed: nftables refuses
// overlapping intervals in one set.
std::vector<Ipv4Cidr> NormalizeCidrs(std::vector<Ipv4Cidr> cidrs);

// `text` with A-Z as a-z (host names and header names compare case-insensitively).
std::string LowerAscii(std::string_view text);

// `text` as an allow_domains entry: lower-cased, trailing dot dropped, checked (labels of
// letters, digits, '-' and '_', 1..63 characters each, 253 in all; "*." only as the first
// label). Errors name what is wrong.
Result<std::string> NormalizeDomain(std::string_view text);

}  // namespace moat::net
