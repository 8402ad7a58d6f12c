// TestInternet: the outside world for networking tests, made of namespaces the test owns. A
// namespace behind a veth holds 198.51.100.1 and 203.0.113.1 (documentation ranges) with HTTP
// servers on :8000 and on :3000 (a "control plane" port), web servers on :80 and :443 (TLS,
// self-signed) of each address that say which address answered, and a resolver on
// 198.51.100.1:53 with a small zone (below); the host end of the link is 198.51.100.254 with its
// own HTTP server on :8001. A guard table drops anything the slots of `pool` forward to any other
// destination, so even a broken policy cannot reach the machine's real uplink (it shows up as a
// timeout instead of the expected rejection). Stop() (or the destructor) removes all of it.
//
// The zone (A records, TTL 5; other types of these names: no answer; any other name: NXDOMAIN):
//   allowed.test, <anything>.wild.test       198.51.100.1  (:80 "internet80", :443 "tls-internet")
//   other.test, spoof.test, wild.test        203.0.113.1   (:80 "other80", :443 "tls-other")
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/child_process.h"
#include "common/ipv4.h"
#include "common/status.h"
#include "net/net_config.h"

namespace moat::test_support {

class TestInternet {
 public:
  static constexpr char kInternet[] = "http://198.51.100.1:8000/";
  static constexpr char kInternet2[] = "http://203.0.113.1:8000/";
  static constexpr char kControlPlane[] = "http://198.51.100.1:3000/";
  static constexpr char kMetadata[] = "http://169.254.169.254/";
  static constexpr char kHostAddress[] = "198.51.100.254";  // the host's end of the link
  static constexpr char kResolver[] = "198.51.100.1";       // give this to NetConfig::dns_servers
  static constexpr char kDnsProbe[] = "dns:169.254.0.22";   // the resolver a slot provides
  // By name, through the slot's resolver (the zone above).
  static constexpr char kAllowedHttp[] = "http://allowed.test/";    // ok:internet80
  static constexpr char kAllowedHttps[] = "https://allowed.test/";  // ok:tls-internet
  static constexpr char kOtherHttp[] = "http://other.test/";        // ok:other80
  static constexpr char kOtherHttps[] = "https://other.test/";      // ok:tls-other
  static constexpr char kWildHttp[] = "http://a.wild.test/";        // ok:internet80
  static constexpr char kWildHttps[] = "https://b.wild.test/";      // ok:tls-internet
  static constexpr char kWildBaseHttp[] = "http://wild.test/";      // ok:other80
  // A name the sender claims for an address that is not the name's: the Host header of a
  // request to 203.0.113.1:80, the TLS server name of a handshake with 203.0.113.1:443.
  static constexpr char kSpoofedHost[] = "host:allowed.test@http://203.0.113.1/";
  static constexpr char kSpoofedSni[] = "sni:allowed.test@https://203.0.113.1/";

  // `dir`: where the servers' documents go (removed by Stop); `pool`: the slots to guard.
  static Result<std::unique_ptr<TestInternet>> Start(const std::string& dir,
                                                     const net::NetConfig& config);
  ~TestInternet();
  void Stop();

  // http://198.51.100.254:8001/ (answers "host").
  std::string HostUrl() const;

 private:
  TestInternet() = default;
  std::string tag_, ns_, link_, dir_;
  std::vector<ChildProcess> servers_;
  bool stopped_ = true;
};

// Fetches each URL once with a 3 s timeout and prints
// {"target": "ok:<first 64 bytes of the body>" | "err:<reason>"}: run in a guest with
// `python3 -c kProbeScript target...`. A target is a URL (https: certificates are not checked;
// a response other than 2xx is "err:HTTP Error <code>: <reason>: <first 64 bytes of the body>"),
// "dns:<ip>" (one UDP datagram "query" to port 53; the test resolver answers "answer:query"), or
// "host:<name>@<url>" / "sni:<name>@<url>" (alike: connects to the URL's address and port and
// sends <name> as the Host header and, for https, as the TLS server name).
extern const char kProbeScript[];
// Did a probe result say the destination rejected the connection (ICMP admin-prohibited reads
// as EHOSTUNREACH)? A timeout would mean the packet went somewhere (and the guard dropped it).
bool Denied(const std::string& probe_result);
// `moat namespaces, links, nft tables` on the machine with "moat" in their names, as
// "<ns> <links> <tables>".
std::string MoatNetworkObjects();
// How many namespaces and host links of slots of `pool` (a /24) exist on the machine: what a
// test's own agent left, whatever else runs beside it.
int SlotObjects(const net::Ipv4Cidr& pool);

}  // namespace moat::test_support
