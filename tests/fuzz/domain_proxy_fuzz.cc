// libFuzzer target for the domain proxy's peeking (net/domain_proxy.h): the first bytes of a
// guest's TCP connection, read for the SNI of a TLS ClientHello or the Host of an HTTP/1
// request. The guest is untrusted. Checks that nothing crashes, that a found host is a
// plausible lower-case name of at most 253 characters, and that a verdict does not change once
// more bytes arrive (the proxy stops reading at the first one that is not "need more").
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "net/domain_proxy.h"

using moat::net::PeekedHost;

namespace {

void CheckFound(const PeekedHost& p) {
  if (p.state != PeekedHost::kFound) {
    if (!p.host.empty()) std::abort();
    return;
  }
  if (p.host.empty() || p.host.size() > 253) std::abort();
  for (char c : p.host) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.';
    if (!ok) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);  // bytes as chars
  PeekedHost whole = moat::net::PeekHost(in);
  CheckFound(whole);
  CheckFound(moat::net::PeekTlsServerName(in));
  CheckFound(moat::net::PeekHttpHost(in));
  // Grown as the proxy reads it: the first verdict that is not kNeedMore is the final one.
  for (size_t n = 1; n < size; n = n * 2 + 1) {
    PeekedHost prefix = moat::net::PeekHost(in.substr(0, n));
    CheckFound(prefix);
    if (prefix.state == PeekedHost::kNeedMore) continue;
    if (prefix.state != whole.state || prefix.host != whole.host) std::abort();
    break;
  }
  return 0;
}
