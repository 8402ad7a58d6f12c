// IPv4 addresses and CIDR prefixes as values: parsing, formatting and the arithmetic the slot
// allocator and the egress policy need. Host byte order throughout.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"

namespace moat::net {

struct Ipv4Address {
  uint32_t value = 0;  // host byte order: 10.0.0.1 is 0x0a000001

  static Result<Ipv4Address> Parse(std::string_view text);
  std::string ToString() const;
  friend bool operator==(Ipv4Address a, Ipv4Address b) { return a.value == b.value; }
};

struct Ipv4Cidr {
  Ipv4Address address;  // the network address: host bits are zero
  unsigned prefix = 32;

  // "10.200.0.0/16" or a bare address ("1.2.3.4" is /32). Host bits set is an error, so that
  // "10.200.0.1/16" is not silently read as a different network.
  static Result<Ipv4Cidr> Parse(std::string_view text);
  std::string ToString() const;
  uint32_t Mask() const { return prefix == 0 ? 0 : ~uint32_t{0} << (32 - prefix); }
  uint64_t Size() const { return uint64_t{1} << (32 - prefix); }
  bool Contains(Ipv4Address a) const { return (a.value & Mask()) == address.value; }
  friend bool operator==(const Ipv4Cidr& a, const Ipv4Cidr& b) {
    return a.address == b.address && a.prefix == b.prefix;
  }
};

}  // namespace moat::net
