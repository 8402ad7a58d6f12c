// TestInternet: the outside world for networking tests, made of namespaces the test owns. A
// namespace behind a veth holds 198.51.100.1 and 203.0.113.1 (documentation ranges) with HTTP
// servers on :8000 and on :3000 (a "control plane" port) and a UDP responder on :53 (a stand-in
// resolver); the host end of the link is 198.51.100.254 with its own HTTP server on :8001.
// A guard table drops anything the slots of `pool` forward to any other destination, so even a
// broken policy cannot reach the machine's real uplink (it shows up as a timeout instead of the
// expected rejection). Stop() (or the destructor) removes all of it.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/child_process.h"
#include "common/status.h"
#include "net/ipv4.h"
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

// Fetches each URL once with a 3 s timeout ("dns:<ip>" sends one UDP datagram to port 53) and
// prints {"target": "ok:<first 64 bytes of the body>" | "err:<reason>"}: run in a guest with
// `python3 -c kProbeScript url...`.
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
