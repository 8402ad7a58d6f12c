#include "net/nft_ruleset.h"

#include <nlohmann/json.hpp>

namespace moat::net {
namespace {

constexpr char kReject[] = "reject with icmp type admin-prohibited";

// Destinations no sandbox reaches whatever its policy. 169.254/16 holds the metadata address
// 169.254.169.254 (and the guest's own link, which is never forwarded).
const char* const kFixedDenied[] = {"0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4",
                                    "240.0.0.0/4"};

// "{ a, b }", or "" for a list that holds 0.0.0.0/0 (the rule then matches any address).
std::string AddressSet(const std::vector<Ipv4Cidr>& cidrs) {
  std::string s = "{ ";
  for (size_t i = 0; i < cidrs.size(); ++i) {
    if (cidrs[i].prefix == 0) return "";
    if (i > 0) s += ", ";
    s += cidrs[i].prefix == 32 ? cidrs[i].address.ToString() : cidrs[i].ToString();
  }
  return s + " }";
}

std::string DaddrMatch(const std::vector<Ipv4Cidr>& cidrs) {
  std::string set = AddressSet(cidrs);
  return set.empty() ? "" : "ip daddr " + set + " ";
}

std::string EgressRules(const SlotAddresses& slot, const NetConfig& config,
                        const EgressPolicy& policy) {
  (void)slot;
  std::string prefix = std::string("add rule ip ") + kSlotTable + " egress ";
  std::string r;
  auto rule = [&](const std::string& text) { r += prefix + text + "\n"; };
  // Only the guest's own address leaves the tap (no spoofing behind the NAT).
  rule(std::string("ip saddr != ") + kGuestAddress + " drop");
  // DNS the slot itself redirected to the configured resolver (prerouting DNAT below).
  if (!config.dns_servers.empty() && policy.AllowsAnyEgress()) {
    rule("ip daddr " + config.dns_servers.front().ToString() +
         " meta l4proto { tcp, udp } th dport 53 ct status dnat accept");
  }
  rule(DaddrMatch(AlwaysDeniedRanges(config)) + kReject);
  if (!config.control_plane_ports.empty()) {
    std::string ports;
    for (uint16_t p : config.control_plane_ports) {
      ports += (ports.empty() ? "" : ", ") + std::to_string(p);
    }
    rule("tcp dport { " + ports + " } " + kReject);
  }
  if (!policy.allow_out.empty()) rule(DaddrMatch(policy.allow_out) + "accept");
  if (!policy.deny_out.empty()) rule(DaddrMatch(policy.deny_out) + kReject);
  rule(policy.allow_internet_access ? "accept" : kReject);
  return r;
}

// The `domains` chain (jumped to from prerouting for the guest's TCP to ports 80 and 443):
// redirects to the domain proxy exactly the connections the egress chain would reject on
// account of the policy's lists, so that the proxy may let through those naming an allowed
// domain. The always-denied ranges are never redirected (they are rejected in forward).
std::string DomainRules(const NetConfig& config, const EgressPolicy& policy) {
  if (policy.allow_domains.empty()) return "";
  std::string prefix = std::string("add rule ip ") + kSlotTable + " domains ";
  // (nft needs the protocol in the rule itself to redirect to a port.)
  const std::string redirect = "meta l4proto tcp redirect to :" + std::to_string(kDomainProxyPort);
  std::string r;
  auto rule = [&](const std::string& text) { r += prefix + text + "\n"; };
  rule(DaddrMatch(AlwaysDeniedRanges(config)) + "return");
  if (!policy.allow_out.empty()) rule(DaddrMatch(policy.allow_out) + "return");
  if (!policy.deny_out.empty()) rule(DaddrMatch(policy.deny_out) + redirect);
  if (!policy.allow_internet_access) rule(redirect);
  return r;
}

std::string DomainPortSet() {
  std::string s;
  for (uint16_t p : kDomainPorts) s += (s.empty() ? "" : ", ") + std::to_string(p);
  return "{ " + s + " }";
}

}  // namespace

std::string SlotRuleset(const SlotAddresses& slot, const NetConfig& config,
                        const EgressPolicy& policy) {
  const std::string tap = std::string("\"") + kTapName + "\"";
  const std::string veth = "\"" + slot.ns_link + "\"";
  const std::string slot_addr = slot.slot_address.ToString();
  std::string t = std::string("table ip ") + kSlotTable + " {\n";
  t += std::string("  counter ") + kEgressCounter + " {\n  }\n";
  t += std::string("  counter ") + kIngressCounter + " {\n  }\n";
  t += "  chain domains {\n  }\n";  // declared before the prerouting rule that jumps to it
  t += "  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n";
  if (!config.dns_servers.empty()) {
    t += "    iifname " + tap + " ip daddr " + kGatewayAddress +
         " meta l4proto { tcp, udp } th dport 53 dnat to " + config.dns_servers.front().ToString() +
         "\n";
  }
  // Only the guest's own address: a spoofed source must never get a connection (and SYN-ACKs
  // from the proxy) instead of the egress chain's drop.
  t += "    iifname " + tap + " ip saddr " + kGuestAddress + " tcp dport " + DomainPortSet() +
       " jump domains\n";
  // The host (moatd's port proxy) reaches guest ports at the slot address.
  t += "    iifname " + veth + " ip daddr " + slot_addr + " dnat to " + kGuestAddress + "\n  }\n";

  t += "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n";
  t += "    oifname " + veth + " ip saddr " + kGuestAddress + " snat to " + slot_addr + "\n  }\n";
  // The guest talks to nothing in the slot namespace itself (DNS is DNATed before input).
  t += "  chain input {\n    type filter hook input priority filter; policy accept;\n";
  // ... but the domain proxy, for what prerouting redirected there (a connection made to the
  // gateway's port directly is not DNATed and is rejected).
  t += "    iifname " + tap + " ip saddr " + kGuestAddress + " tcp dport " +
       std::to_string(kDomainProxyPort) + " ct status dnat accept\n";
  t += "    iifname " + tap + " " + kReject + "\n  }\n";
  t += "  chain forward {\n    type filter hook forward priority filter; policy drop;\n";
  t += "    ct state established,related accept\n";
  t += "    ct state invalid drop\n";
  t += "    iifname " + veth + " oifname " + tap + " ct status dnat accept\n";
  t += "    iifname " + tap + " oifname " + veth + " jump egress\n  }\n";
  t += "  chain egress {\n  }\n";
  // Usage metering, in a chain of its own that the policy's updates leave alone. At
  // postrouting every verdict has been given (what the egress chain drops or rejects never
  // gets here) and both directions pass, whichever hook they came from (forward for the
  // guest's traffic, output for the domain proxy's and the slot's rejections).
  t += "  chain usage {\n    type filter hook postrouting priority filter; policy accept;\n";
  t += "    oifname " + veth + " counter name " + kEgressCounter + "\n";
  t += "    oifname " + tap + " counter name " + kIngressCounter + "\n  }\n}\n";
  return t + EgressRules(slot, config, policy) + DomainRules(config, policy);
}

std::string EgressChainUpdate(const SlotAddresses& slot, const NetConfig& config,
                              const EgressPolicy& policy) {
  // `add chain` first: a slot set up before the domains chain existed (adopted after an
  // upgrade) gets it, so the flush cannot fail; its prerouting has no jump to it, so names are
  // refused there (fail closed) until the sandbox is restarted.
  return std::string("flush chain ip ") + kSlotTable + " egress\n" + "add chain ip " + kSlotTable +
         " domains\nflush chain ip " + kSlotTable + " domains\n" +
         EgressRules(slot, config, policy) + DomainRules(config, policy);
}

Result<SlotCounters> ParseSlotCounters(std::string_view nft_json) {
  using nlohmann::json;
  const json root = json::parse(nft_json, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return InvalidArgument("nft counters: not JSON");
  const auto items = root.is_object() ? root.find("nftables") : root.end();
  if (items == root.end() || !items->is_array()) {
    return InvalidArgument("nft counters: no \"nftables\" array");
  }
  SlotCounters out;
  bool seen_egress = false;
  bool seen_ingress = false;
  for (const json& item : *items) {
    if (!item.is_object()) return InvalidArgument("nft counters: an item is not an object");
    const auto counter = item.find("counter");
    if (counter == item.end()) continue;  // metainfo
    if (!counter->is_object()) return InvalidArgument("nft counters: a counter is not an object");
    const auto name = counter->find("name");
    const auto table = counter->find("table");
    const auto bytes = counter->find("bytes");
    if (name == counter->end() || !name->is_string() || table == counter->end() ||
        !table->is_string()) {
      return InvalidArgument("nft counters: a counter without a name or table");
    }
    if (table->get_ref<const std::string&>() != kSlotTable) continue;
    const std::string& n = name->get_ref<const std::string&>();
    bool* seen = n == kEgressCounter    ? &seen_egress
                 : n == kIngressCounter ? &seen_ingress
                                        : nullptr;
    if (seen == nullptr) continue;
    if (*seen) return InvalidArgument("nft counters: " + n + " listed twice");
    if (bytes == counter->end() || !bytes->is_number_unsigned()) {
      return InvalidArgument("nft counters: " + n + " has no unsigned \"bytes\"");
    }
    *seen = true;
    (n == kEgressCounter ? out.egress_bytes : out.ingress_bytes) = bytes->get<uint64_t>();
  }
  if (!seen_egress || !seen_ingress) {
    return NotFound(std::string("nft counters: ") +
                    (seen_egress ? kIngressCounter : kEgressCounter) + " is missing");
  }
  return out;
}

std::vector<Ipv4Cidr> AlwaysDeniedRanges(const NetConfig& config) {
  std::vector<Ipv4Cidr> cidrs{config.pool};
  for (const char* c : kFixedDenied) cidrs.push_back(*Ipv4Cidr::Parse(c));
  cidrs.insert(cidrs.end(), config.always_denied.begin(), config.always_denied.end());
  return NormalizeCidrs(std::move(cidrs));
}

std::string HostTableName(const Ipv4Cidr& pool) {
  std::string name = "moat_host_" + pool.ToString();
  for (char& c : name) {
    if (c == '.' || c == '/') c = '_';
  }
  return name;
}

std::string HostRuleset(const NetConfig& config) {
  const std::string table = "ip " + HostTableName(config.pool);
  const std::string group = std::to_string(config.link_group);
  const std::string pool = config.pool.ToString();
  std::string t = "table " + table + "\ndelete table " + table + "\n";
  t += "table " + table + " {\n";
  // Slots reach nothing on the host (any of its addresses, any port); replies to connections
  // the host opened (moatd's port proxy) come back.
  t += "  chain input {\n    type filter hook input priority filter - 10; policy accept;\n";
  t += "    iifgroup " + group + " ct state established,related accept\n";
  t += "    iifgroup " + group + " " + kReject + "\n  }\n";
  // No slot reaches another; whatever the slot namespaces let out still cannot reach the
  // always-denied ranges (defence in depth: a slot's table is the first line).
  t += "  chain forward {\n    type filter hook forward priority filter - 10; policy accept;\n";
  t += "    iifgroup " + group + " oifgroup " + group + " " + kReject + "\n";
  t += "    iifgroup " + group + " " + DaddrMatch(AlwaysDeniedRanges(config)) + kReject + "\n  }\n";
  t += "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n";
  t += "    ip saddr " + pool + " oifgroup != " + group + " masquerade\n  }\n}\n";
  return t;
}

}  // namespace moat::net
