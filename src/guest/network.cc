#include "guest/network.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <net/route.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "common/fs.h"
#include "common/unique_fd.h"
#include "net/slot_allocator.h"

namespace moat::guest {
namespace {

constexpr size_t kMaxDns = 3;  // glibc reads at most three nameserver lines

Result<uint32_t> ParseAddress(const std::string& text, std::string_view field) {
  in_addr a{};
  if (text.size() > 15 || ::inet_pton(AF_INET, text.c_str(), &a) != 1) {
    return InvalidArgument("field \"" + std::string(field) + "\" is not an IPv4 address");
  }
  return ntohl(a.s_addr);
}

sockaddr_in SockAddr(uint32_t address) {
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(address);
  return sin;
}

// Copies a sockaddr_in into the generic sockaddr field of an ifreq/rtentry/arpreq: both are
// 16 bytes, and sockaddr is the storage these ioctls define for an AF_INET address.
void Put(sockaddr* dst, uint32_t address) {
  sockaddr_in sin = SockAddr(address);
  static_assert(sizeof(sockaddr_in) == sizeof(sockaddr));
  std::memcpy(dst, &sin, sizeof sin);
}

ifreq IfReq(const std::string& name) {
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, name.c_str(), IFNAMSIZ - 1);
  return ifr;
}

uint32_t Get(const sockaddr& src) {
  sockaddr_in sin{};
  std::memcpy(&sin, &src, sizeof sin);
  return ntohl(sin.sin_addr.s_addr);
}

// Is the interface already up with this address and mask, the default route via this gateway
// and resolv.conf as requested? What a restored sandbox finds (every slot looks the same from
// inside): then only the neighbour entry needs forgetting, and the guest skips re-adding the
// address, which would drop and rebuild its routes and cost a restore ~100 ms under TCG.
bool AlreadyApplied(int sock, const NetworkRequest& r) {
  ifreq ifr = IfReq(r.interface);
  if (::ioctl(sock, SIOCGIFADDR, &ifr) < 0 || Get(ifr.ifr_addr) != r.address) return false;
  ifr = IfReq(r.interface);
  if (::ioctl(sock, SIOCGIFNETMASK, &ifr) < 0 ||
      Get(ifr.ifr_netmask) != (~uint32_t{0} << (32 - r.prefix))) {
    return false;
  }
  ifr = IfReq(r.interface);
  if (::ioctl(sock, SIOCGIFFLAGS, &ifr) < 0 || (ifr.ifr_flags & IFF_UP) == 0) return false;
  // /proc/net/route: "Iface Destination Gateway ..." with addresses in network byte order, hex.
  auto routes = ReadFile("/proc/net/route");
  char want[64];
  std::snprintf(want, sizeof want, "\n%s\t00000000\t%08X\t", r.interface.c_str(), htonl(r.gateway));
  if (!routes.ok() || routes->find(want) == std::string::npos) return false;
  auto resolv = ReadFile("/etc/resolv.conf");
  return resolv.ok() && *resolv == ResolvConf(r.dns);
}

}  // namespace

NetworkRequest DefaultNetwork() {
  NetworkRequest r;
  r.interface = net::kGuestInterface;
  in_addr a{};
  ::inet_pton(AF_INET, net::kGuestAddress, &a);
  r.address = ntohl(a.s_addr);
  r.prefix = net::kGuestPrefix;
  ::inet_pton(AF_INET, net::kGatewayAddress, &a);
  r.gateway = ntohl(a.s_addr);
  r.dns = {net::kGatewayAddress};
  return r;
}

Result<NetworkRequest> ParseNetwork(const Json& request) {
  NetworkRequest r;
  MOAT_ASSIGN_OR_RETURN(auto iface, OptString(request, "interface"));
  r.interface = iface.value_or(net::kGuestInterface);
  if (r.interface.empty() || r.interface.size() >= IFNAMSIZ ||
      r.interface.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789") != std::string::npos) {
    return InvalidArgument("field \"interface\" must be 1 to 15 of [a-z0-9]");
  }
  MOAT_ASSIGN_OR_RETURN(std::string address, RequiredString(request, "address"));
  size_t slash = address.find('/');
  if (slash == std::string::npos) return InvalidArgument("field \"address\" needs a /prefix");
  MOAT_ASSIGN_OR_RETURN(r.address, ParseAddress(address.substr(0, slash), "address"));
  std::string prefix = address.substr(slash + 1);
  if (prefix.empty() || prefix.size() > 2 ||
      prefix.find_first_not_of("0123456789") != std::string::npos || std::stoi(prefix) < 1 ||
      std::stoi(prefix) > 30) {
    return InvalidArgument("field \"address\" needs a prefix of 1 to 30");
  }
  r.prefix = static_cast<unsigned>(std::stoi(prefix));
  MOAT_ASSIGN_OR_RETURN(std::string gateway, RequiredString(request, "gateway"));
  MOAT_ASSIGN_OR_RETURN(r.gateway, ParseAddress(gateway, "gateway"));
  uint32_t mask = ~uint32_t{0} << (32 - r.prefix);
  if ((r.gateway & mask) != (r.address & mask) || r.gateway == r.address) {
    return InvalidArgument("field \"gateway\" must be another address in the interface's subnet");
  }
  MOAT_ASSIGN_OR_RETURN(auto dns, OptStringArray(request, "dns"));
  if (dns) {
    if (dns->size() > kMaxDns) return InvalidArgument("field \"dns\" holds at most 3 addresses");
    for (const auto& d : *dns) MOAT_RETURN_IF_ERROR(ParseAddress(d, "dns").status());
    r.dns = *dns;
  }
  return r;
}

bool InterfaceExists(const std::string& name) {
  return ::if_nametoindex(name.c_str()) != 0;
}

std::string ResolvConf(const std::vector<std::string>& dns) {
  if (dns.empty()) return "# written by moat-guest: this sandbox has no DNS resolver\n";
  std::string text = "# written by moat-guest\n";
  for (const auto& d : dns) text += "nameserver " + d + "\n";
  return text;
}

namespace {

// Address, netmask, up.
Status ConfigureInterface(int sock, const NetworkRequest& r) {
  const std::string& dev = r.interface;
  // SIOCSIFADDR / SIOCSIFNETMASK read ifr_name and the AF_INET address in ifr_addr (the same
  // storage as ifr_netmask); SIOCGIFFLAGS / SIOCSIFFLAGS read and write ifr_flags.
  ifreq ifr = IfReq(dev);
  Put(&ifr.ifr_addr, r.address);
  if (::ioctl(sock, SIOCSIFADDR, &ifr) < 0) return ErrnoError("ioctl(SIOCSIFADDR, " + dev + ")");
  ifr = IfReq(dev);
  Put(&ifr.ifr_netmask, ~uint32_t{0} << (32 - r.prefix));
  if (::ioctl(sock, SIOCSIFNETMASK, &ifr) < 0) {
    return ErrnoError("ioctl(SIOCSIFNETMASK, " + dev + ")");
  }
  ifr = IfReq(dev);
  if (::ioctl(sock, SIOCGIFFLAGS, &ifr) < 0) return ErrnoError("ioctl(SIOCGIFFLAGS, " + dev + ")");
  ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
  if (::ioctl(sock, SIOCSIFFLAGS, &ifr) < 0) return ErrnoError("ioctl(SIOCSIFFLAGS, " + dev + ")");
  return Status::Ok();
}

// A restored guest may remember the previous slot's gateway; the gateway's MAC is the same in
// every slot, but forget the entry anyway so that nothing stale survives. SIOCDARP reads arp_pa
// and arp_dev; ENXIO: there was no entry.
Status ForgetGateway(int sock, const NetworkRequest& r) {
  arpreq arp{};
  Put(&arp.arp_pa, r.gateway);
  std::strncpy(arp.arp_dev, r.interface.c_str(), sizeof arp.arp_dev - 1);
  if (::ioctl(sock, SIOCDARP, &arp) < 0 && errno != ENXIO) {
    return ErrnoError("ioctl(SIOCDARP, " + r.interface + ")");
  }
  return Status::Ok();
}

// Default route. SIOCADDRT reads the rtentry, whose rt_dev points at a NUL-terminated name that
// lives (in `dev_name`) until the call returns. EEXIST: it is already there.
Status AddDefaultRoute(int sock, const NetworkRequest& r) {
  rtentry rt{};
  Put(&rt.rt_dst, 0);
  Put(&rt.rt_genmask, 0);
  Put(&rt.rt_gateway, r.gateway);
  rt.rt_flags = RTF_UP | RTF_GATEWAY;
  char dev_name[IFNAMSIZ] = {};
  std::strncpy(dev_name, r.interface.c_str(), IFNAMSIZ - 1);
  rt.rt_dev = dev_name;
  if (::ioctl(sock, SIOCADDRT, &rt) < 0 && errno != EEXIST) {
    return ErrnoError("ioctl(SIOCADDRT, default via " + r.interface + ")");
  }
  return Status::Ok();
}

}  // namespace

Status ApplyNetwork(const NetworkRequest& r) {
  if (!InterfaceExists(r.interface)) return NotFound("no network interface " + r.interface);
  UniqueFd sock(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!sock) return ErrnoError("socket(AF_INET)");
  if (AlreadyApplied(sock.get(), r)) return ForgetGateway(sock.get(), r);
  MOAT_RETURN_IF_ERROR(ConfigureInterface(sock.get(), r));
  MOAT_RETURN_IF_ERROR(ForgetGateway(sock.get(), r));
  MOAT_RETURN_IF_ERROR(AddDefaultRoute(sock.get(), r));
  return WriteFileAtomic("/etc/resolv.conf", ResolvConf(r.dns), 0644);
}

}  // namespace moat::guest
