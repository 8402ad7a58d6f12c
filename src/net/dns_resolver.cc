#include "net/dns_resolver.h"

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netdb.h>
#include <netinet/in.h>
#include <resolv.h>

#include <algorithm>
#include <memory>

namespace moat::net {

Result<std::vector<Ipv4Address>> ResolveIpv4(const std::string& name, Ipv4Address resolver,
                                             std::chrono::milliseconds timeout) {
  // res_state is large and holds sockets after a query: one per call, closed on every path.
  auto state = std::make_unique<struct __res_state>();
  if (res_ninit(state.get()) != 0) return Internal("res_ninit failed");
  struct Closer {
    res_state s;
    ~Closer() { res_nclose(s); }
  } closer{state.get()};
  state->nscount = 1;
  state->nsaddr_list[0].sin_family = AF_INET;
  state->nsaddr_list[0].sin_port = htons(53);
  state->nsaddr_list[0].sin_addr.s_addr = htonl(resolver.value);
  state->retry = 2;
  state->retrans = static_cast<int>(std::max<int64_t>(1, timeout.count() / 2000));
  state->options &= ~(RES_DNSRCH | RES_DEFNAMES);  // the name as given, no search list

  unsigned char answer[4096];
  int n = res_nquery(state.get(), name.c_str(), ns_c_in, ns_t_a, answer, sizeof(answer));
  if (n < 0) {
    switch (state->res_h_errno) {
      case HOST_NOT_FOUND:
      case NO_DATA: return NotFound(name + " has no IPv4 address");
      case TRY_AGAIN:
        return Unavailable("no answer from the resolver " + resolver.ToString() + " for " + name);
      default: return Unavailable("resolving " + name + " with " + resolver.ToString() + " failed");
    }
  }
  ns_msg msg;
  if (ns_initparse(answer, n, &msg) < 0) return Internal("unparsable DNS answer for " + name);
  std::vector<Ipv4Address> out;
  for (int i = 0; i < ns_msg_count(msg, ns_s_an); ++i) {
    ns_rr rr;
    if (ns_parserr(&msg, ns_s_an, i, &rr) < 0) break;
    if (ns_rr_type(rr) != ns_t_a || ns_rr_class(rr) != ns_c_in || ns_rr_rdlen(rr) != 4) continue;
    const unsigned char* d = ns_rr_rdata(rr);
    out.push_back(Ipv4Address{(uint32_t{d[0]} << 24) | (uint32_t{d[1]} << 16) |
                              (uint32_t{d[2]} << 8) | uint32_t{d[3]}});
  }
  if (out.empty()) return NotFound(name + " has no IPv4 address");
  return out;
}

}  // namespace moat::net
