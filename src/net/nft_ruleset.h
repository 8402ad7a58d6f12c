// The nftables rulesets, as text for `nft -f -`: pure functions, unit-tested without root.
//
// Two tables (docs/networking.md):
//  - in each slot's namespace, table `ip moat`: NAT between the guest's fixed address and the
//    slot address, DNS forwarding, the ingress DNAT moatd's port proxy uses, and the `egress`
//    chain, which ApplyPolicy replaces atomically;
//  - in the host namespace, one table per agent (`ip moat_host_<pool>`): slots may not reach
//    the host or each other, and their traffic is masqueraded on the way out.
#pragma once

#include <string>

#include "net/egress_policy.h"
#include "net/net_config.h"
#include "net/slot_allocator.h"

namespace moat::net {

inline constexpr char kSlotTable[] = "moat";

// The whole slot table, created once when the slot is set up (the namespace is new and empty).
std::string SlotRuleset(const SlotAddresses& slot, const NetConfig& config,
                        const EgressPolicy& policy);
// Replaces the rules of the slot's egress chain in one transaction (nft -f is atomic):
// connections already established keep going; new ones see the new policy.
std::string EgressChainUpdate(const SlotAddresses& slot, const NetConfig& config,
                              const EgressPolicy& policy);

// "moat_host_10_200_0_0_16".
std::string HostTableName(const Ipv4Cidr& pool);
// Creates (or, if a crashed agent left it, replaces) the host table.
std::string HostRuleset(const NetConfig& config);

}  // namespace moat::net
