// DomainProxy: what makes domain names in a sandbox's allowOut work (E2B `network.allowOut`
// entries like "api.example.com" or "*.example.com"). One per slot whose policy names domains,
// run by the agent and listening inside the slot's namespace on the gateway address.
//
// The slot's `domains` chain (net/nft_ruleset.h) redirects to it the guest's TCP connections
// to ports 80 and 443 that the address lists would reject. For each one the proxy:
//  1. reads the start of what the guest sends until it names a host: the SNI of a TLS
//     ClientHello, or the Host header of an HTTP/1 request head (nothing is decrypted);
//  2. refuses unless the policy allows that name (HTTP gets a 403 naming it, TLS a close);
//  3. resolves the name with the sandbox's own resolver and connects, from the slot's
//     namespace, to the destination the guest chose if it is one of the name's addresses, or
//     else to the first of them — so a guest that claims an allowed name reaches that name's
//     servers and nothing else (no "SNI says allowed.com, IP is anything"); addresses that
//     are always denied (the pool, metadata, loopback, ...) are never used;
//  4. sends on what it read and relays bytes both ways (common/relay.h) until either side ends.
// Past the first request the bytes are not inspected: several HTTP requests on one
// connection, or a TLS session, go to the server the first one named (a shared server may
// serve other names on that connection: the limit of any SNI/Host filter).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/egress_policy.h"
#include "common/ipv4.h"
#include "common/status.h"
#include "common/unique_fd.h"

namespace moat::net {

// What the first bytes of a connection say about the host it is for.
struct PeekedHost {
  enum State {
    kNeedMore,  // not enough bytes yet to tell
    kFound,     // `host` holds the name (lower case, without port)
    kNone,      // the bytes name no host: not TLS or HTTP/1, or TLS without SNI, no Host
  };
  State state = kNeedMore;
  std::string host;
  bool http = false;  // the bytes are an HTTP request (a refusal can be answered with a 403)
};

// The SNI host_name of a TLS ClientHello (which may span several records).
PeekedHost PeekTlsServerName(std::string_view bytes);
// The Host header of an HTTP/1.x request head.
PeekedHost PeekHttpHost(std::string_view bytes);
// TLS when the first byte is a handshake record (0x16), HTTP otherwise.
PeekedHost PeekHost(std::string_view bytes);

// Where a connection for `name` goes: `original` when it is one of `resolved`, else the first
// of `resolved`; addresses inside `denied` are dropped first. Nullopt: nowhere to go.
std::optional<Ipv4Address> ChooseUpstream(Ipv4Address original,
                                          const std::vector<Ipv4Address>& resolved,
                                          const std::vector<Ipv4Cidr>& denied);

struct DomainProxyOptions {
  Ipv4Address resolver;                // the sandbox's upstream resolver
  std::vector<Ipv4Cidr> denied;        // never connected to (the slot's always-denied ranges)
  std::vector<uint16_t> denied_ports;  // never connected to (the control plane's)
  size_t max_connections = 256;        // at once; more are closed at accept
  size_t max_peek_bytes = 32 * 1024;   // a first message naming no host within this is refused
  std::chrono::milliseconds peek_timeout{10'000};
  std::chrono::milliseconds resolve_timeout{4'000};
  std::chrono::milliseconds connect_timeout{5'000};
  std::chrono::milliseconds idle_timeout{std::chrono::minutes(10)};
};

class DomainProxy {
 public:
  // Listens on kGatewayAddress:kDomainProxyPort inside the namespace `netns_fd` (duplicated;
  // the caller keeps its fd). `label` names the slot in logs.
  static Result<std::unique_ptr<DomainProxy>> Start(int netns_fd, std::string label,
                                                    EgressPolicy policy,
                                                    DomainProxyOptions options);
  // Stops accepting, ends every relayed connection and waits for their threads.
  ~DomainProxy();
  DomainProxy(const DomainProxy&) = delete;
  DomainProxy& operator=(const DomainProxy&) = delete;

  // New connections are judged by `policy`; established ones go on.
  void SetPolicy(EgressPolicy policy);
  size_t active_connections() const;

 private:
  DomainProxy(UniqueFd netns, UniqueFd listener, UniqueFd wake, std::string label,
              EgressPolicy policy, DomainProxyOptions options);
  void AcceptLoop();
  void Serve(UniqueFd client);
  // Registers / forgets an fd that Stop must shut down to end a blocked relay.
  void Track(int fd);
  void Untrack(int fd);

  struct Workers;  // the connections' threads, joined once done

  const UniqueFd netns_;
  const UniqueFd listener_;
  const UniqueFd wake_;  // eventfd: tells AcceptLoop to stop
  const std::string label_;
  const DomainProxyOptions options_;
  mutable std::mutex mu_;
  std::unique_ptr<Workers> workers_;
  EgressPolicy policy_;
  std::set<int> live_fds_;  // client and upstream sockets of live connections
  bool stopping_ = false;
  std::thread acceptor_;
};

}  // namespace moat::net
