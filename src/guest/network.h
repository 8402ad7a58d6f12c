// The guest's network: eth0 gets the fixed sandbox address, a default route via the slot's
// gateway and /etc/resolv.conf. Applied at boot when an eth0 exists, and again on the
// `network` op, which the host sends after every boot, restore and fork (a restored guest
// keeps its address, but its route and neighbour entries must be right for the new slot).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "guest/request.h"

namespace moat::guest {

struct NetworkRequest {
  std::string interface;  // "eth0"
  uint32_t address = 0;   // host byte order
  unsigned prefix = 30;
  uint32_t gateway = 0;
  std::vector<std::string> dns;  // resolver addresses, dotted; empty: no resolver
};

// The configuration every sandbox uses (src/net/slot_allocator.h): 169.254.0.21/30 via
// 169.254.0.22, which is also the resolver.
NetworkRequest DefaultNetwork();
// {"op":"network","interface":"eth0","address":"169.254.0.21/30","gateway":"169.254.0.22",
//  "dns":["169.254.0.22"]}; the gateway must be inside the address's subnet.
Result<NetworkRequest> ParseNetwork(const Json& request);
bool InterfaceExists(const std::string& name);
// Configures the interface (address, up, default route; forgets the gateway's neighbour
// entry) and writes /etc/resolv.conf. NotFound if the interface does not exist.
Status ApplyNetwork(const NetworkRequest& request);
// "nameserver 169.254.0.22\n" lines, or a comment saying there is no resolver.
std::string ResolvConf(const std::vector<std::string>& dns);

}  // namespace moat::guest
