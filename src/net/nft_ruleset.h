// The nftables rulesets, as text for `nft -f -`: pure functions, unit-tested without root.
//
// Two tables (docs/networking.md):
//  - in each slot's namespace, table `ip moat`: NAT between the guest's fixed address and the
//    slot address, DNS forwarding, the ingress DNAT moatd's port proxy uses, the `egress`
//    and `domains` chains, which ApplyPolicy replaces atomically (`domains` redirects what
//    the egress chain would reject on ports 80/443 to the domain proxy, when the policy names
//    domains), and the byte counters of usage metering (SlotCounters);
//  - in the host namespace, one table per agent (`ip moat_host_<pool>`): slots may not reach
//    the host or each other, and their traffic is masqueraded on the way out.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/egress_policy.h"
#include "common/status.h"
#include "net/net_config.h"
#include "net/slot_allocator.h"

namespace moat::net {

inline constexpr char kSlotTable[] = "moat";
// The port of the slot's domain proxy on the gateway address (net/domain_proxy.h), and the
// guest's destination ports whose connections it sees when the policy has domain names: HTTP
// (Host header) and HTTPS (TLS SNI).
inline constexpr uint16_t kDomainProxyPort = 15080;
inline constexpr uint16_t kDomainPorts[] = {80, 443};

// The slot table's named counters, kept from set-up to teardown (EgressChainUpdate never
// touches them). Both count at postrouting, after every filter verdict of the slot, once per
// IPv4 packet (its IP length): egress what leaves the slot towards the host side (the guest's
// packets the slot forwards: what the policy let through, DNS, answers to moatd's port proxy;
// and the domain proxy's connections on the guest's behalf); ingress what is sent to the guest
// on its tap (from outside, from the domain proxy, and the slot's own ICMP rejections).
inline constexpr char kEgressCounter[] = "egress_bytes";
inline constexpr char kIngressCounter[] = "ingress_bytes";

struct SlotCounters {
  uint64_t egress_bytes = 0;
  uint64_t ingress_bytes = 0;
};

// Reads what `nft -j list counters table ip moat` prints: both counters must be there, once
// each, with unsigned byte counts; anything else is an error (never an exception).
Result<SlotCounters> ParseSlotCounters(std::string_view nft_json);

// The whole slot table, created once when the slot is set up (the namespace is new and empty).
std::string SlotRuleset(const SlotAddresses& slot, const NetConfig& config,
                        const EgressPolicy& policy);
// Replaces the rules of the slot's egress and domains chains in one transaction (nft -f is
// atomic): connections already established keep going; new ones see the new policy.
std::string EgressChainUpdate(const SlotAddresses& slot, const NetConfig& config,
                              const EgressPolicy& policy);

// What no sandbox reaches whatever its policy: the pool, the fixed ranges (0/8, 127/8,
// 169.254/16 with the metadata address, multicast, 240/4) and the config's always_denied.
std::vector<Ipv4Cidr> AlwaysDeniedRanges(const NetConfig& config);

// "moat_host_10_200_0_0_16".
std::string HostTableName(const Ipv4Cidr& pool);
// Creates (or, if a crashed agent left it, replaces) the host table.
std::string HostRuleset(const NetConfig& config);

}  // namespace moat::net
