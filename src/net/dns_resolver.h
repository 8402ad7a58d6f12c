// ResolveIpv4: the A records of a name, asked of one given resolver (not the host's
// /etc/resolv.conf): the domain proxy checks a connection's destination against what the
// sandbox's own resolver answers for the name it claims. Blocking; libresolv underneath.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "common/ipv4.h"
#include "common/status.h"

namespace moat::net {

// The IPv4 addresses `name` resolves to (CNAMEs followed by the resolver), in answer order.
// Errors: not_found for NXDOMAIN or no A record; unavailable when the resolver does not answer
// within about `timeout` (two tries).
Result<std::vector<Ipv4Address>> ResolveIpv4(const std::string& name, Ipv4Address resolver,
                                             std::chrono::milliseconds timeout);

}  // namespace moat::net
