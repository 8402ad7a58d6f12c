// The networking configuration of one host agent: the slot pool, where slot records live, the
// resolver slots forward DNS to, and what every sandbox is always denied.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/ipv4.h"
#include "common/status.h"

namespace moat::net {

// Every slot's host-side veth joins this interface group; the host's nftables table matches
// the group rather than a name prefix. ("mo" in ASCII, far from the groups tools use.)
inline constexpr uint32_t kDefaultLinkGroup = 0x6d6f;

struct NetConfig {
  Ipv4Cidr pool = {{0x0ac80000}, 16};  // 10.200.0.0/16: 16,384 slots
  // A JSON record per slot (written before any resource is made, removed after the last one
  // is gone), so that a restarted agent can adopt or release what it left. Required.
  std::string state_dir;
  // Upstream resolvers: the guest's resolver is its gateway, and the slot forwards (DNATs) DNS
  // sent there to the first of these. Empty: no DNS in sandboxes. Must not be host addresses
  // (the host accepts nothing from slots).
  std::vector<Ipv4Address> dns_servers;
  // Denied to every sandbox on top of the fixed list (the pool, 0/8, 127/8, 169.254/16
  // including the 169.254.169.254 metadata address, multicast, 240/4): for instance the
  // control plane's addresses on a fleet, or the LAN.
  std::vector<Ipv4Cidr> always_denied;
  // TCP ports denied towards every destination: the control plane's. The host itself is
  // closed to sandboxes entirely, so this matters for control planes on other machines.
  std::vector<uint16_t> control_plane_ports = {3000};
  uint32_t link_group = kDefaultLinkGroup;
  std::string ip_binary = "/usr/sbin/ip";
  std::string nft_binary = "/usr/sbin/nft";

  // Checks the pool (/8../30, not overlapping 169.254/16 or 127/8), the state dir, the
  // binaries; names the bad key.
  Status Validate() const;
};

}  // namespace moat::net
