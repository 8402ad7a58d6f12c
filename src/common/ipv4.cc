#include "common/ipv4.h"

#include <charconv>

namespace moat::net {

Result<Ipv4Address> Ipv4Address::Parse(std::string_view text) {
  uint32_t value = 0;
  size_t pos = 0;
  for (int part = 0; part < 4; ++part) {
    if (part > 0) {
      if (pos >= text.size() || text[pos] != '.') {
        return InvalidArgument("not an IPv4 address: \"" + std::string(text) + "\"");
      }
      ++pos;
    }
    size_t start = pos;
    while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9' && pos - start < 4) ++pos;
    unsigned octet = 0;
    auto [end, ec] = std::from_chars(text.data() + start, text.data() + pos, octet);
    // No empty parts, no leading zeros (some parsers read them as octal), each part 0..255.
    if (ec != std::errc() || end != text.data() + pos || octet > 255 || pos - start > 3 ||
        (pos - start > 1 && text[start] == '0')) {
      return InvalidArgument("not an IPv4 address: \"" + std::string(text) + "\"");
    }
    value = value << 8 | octet;
  }
  if (pos != text.size())
    return InvalidArgument("not an IPv4 address: \"" + std::string(text) + "\"");
  return Ipv4Address{value};
}

std::string Ipv4Address::ToString() const {
  return std::to_string(value >> 24) + "." + std::to_string((value >> 16) & 255) + "." +
         std::to_string((value >> 8) & 255) + "." + std::to_string(value & 255);
}

Result<Ipv4Cidr> Ipv4Cidr::Parse(std::string_view text) {
  size_t slash = text.find('/');
  MOAT_ASSIGN_OR_RETURN(Ipv4Address address, Ipv4Address::Parse(text.substr(0, slash)));
  unsigned prefix = 32;
  if (slash != std::string_view::npos) {
    std::string_view p = text.substr(slash + 1);
    auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), prefix);
    if (p.empty() || ec != std::errc() || end != p.data() + p.size() || prefix > 32 ||
        (p.size() > 1 && p[0] == '0')) {
      return InvalidArgument("not an IPv4 CIDR: \"" + std::string(text) + "\"");
    }
  }
  Ipv4Cidr cidr{address, prefix};
  if ((address.value & ~cidr.Mask()) != 0) {
    return InvalidArgument("CIDR \"" + std::string(text) + "\" has host bits set (did you mean " +
                           Ipv4Address{address.value & cidr.Mask()}.ToString() + "/" +
                           std::to_string(prefix) + "?)");
  }
  return cidr;
}

std::string Ipv4Cidr::ToString() const {
  return address.ToString() + "/" + std::to_string(prefix);
}

}  // namespace moat::net
