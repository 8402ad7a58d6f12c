#include "net/nft_ruleset.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>

namespace moat::net {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

SlotAddresses Slot5() {
  return *SlotAddresses::For(*Ipv4Cidr::Parse(kDefaultPool), 5);
}

NetConfig Config() {
  NetConfig c;
  c.state_dir = "/var/lib/moat/net";
  return c;
}

EgressPolicy Policy(bool internet, std::vector<const char*> allow, std::vector<const char*> deny) {
  nlohmann::json network = {{"allowOut", allow}, {"denyOut", deny}};
  return *EgressPolicy::FromE2b(network, internet);
}

// A chain's rules, in order, without the "add rule ip moat <chain> " prefix.
std::vector<std::string> RulesOf(const std::string& text, const std::string& chain) {
  std::vector<std::string> out;
  const std::string prefix = "add rule ip moat " + chain + " ";
  size_t at = 0;
  while ((at = text.find(prefix, at)) != std::string::npos) {
    size_t end = text.find('\n', at);
    out.push_back(text.substr(at + prefix.size(), end - at - prefix.size()));
    at = end;
  }
  return out;
}

std::vector<std::string> EgressRulesOf(const std::string& text) {
  return RulesOf(text, "egress");
}

TEST(SlotRuleset, NatsTheGuestToTheSlotAddressAndLetsTheHostReachGuestPorts) {
  std::string t = SlotRuleset(Slot5(), Config(), EgressPolicy{});
  EXPECT_THAT(t, HasSubstr("table ip moat {"));
  EXPECT_THAT(t, HasSubstr("oifname \"moat0ac80014g\" ip saddr 169.254.0.21 snat to 10.200.0.22"));
  EXPECT_THAT(t, HasSubstr("iifname \"moat0ac80014g\" ip daddr 10.200.0.22 dnat to 169.254.0.21"));
  EXPECT_THAT(t, HasSubstr("type filter hook forward priority filter; policy drop;"));
  EXPECT_THAT(t, HasSubstr("iifname \"moat-tap\" oifname \"moat0ac80014g\" jump egress"));
  EXPECT_THAT(t, HasSubstr("iifname \"moat-tap\" reject"));
  // No resolver configured: no DNS forwarding.
  EXPECT_THAT(t, Not(HasSubstr("dport 53")));
}

TEST(SlotRuleset, EgressDeniesTheFixedRangesFirstThenAllowThenDenyThenDefault) {
  auto rules = EgressRulesOf(SlotRuleset(
      Slot5(), Config(), Policy(true, {"198.51.100.7"}, {"198.51.100.0/24", "203.0.113.0/24"})));
  ASSERT_EQ(rules.size(), 6u);
  EXPECT_EQ(rules[0], "ip saddr != 169.254.0.21 drop");
  EXPECT_EQ(rules[1],
            "ip daddr { 0.0.0.0/8, 10.200.0.0/16, 127.0.0.0/8, 169.254.0.0/16, 224.0.0.0/4, "
            "240.0.0.0/4 } reject with icmp type admin-prohibited");
  EXPECT_EQ(rules[2], "tcp dport { 3000 } reject with icmp type admin-prohibited");
  EXPECT_EQ(rules[3], "ip daddr { 198.51.100.7 } accept");
  EXPECT_EQ(rules[4],
            "ip daddr { 198.51.100.0/24, 203.0.113.0/24 } reject with icmp type admin-prohibited");
  // The chain ends in the default (internet on).
  EXPECT_EQ(rules[5], "accept");
}

TEST(SlotRuleset, InternetOffEndsInRejectAndDenyAllNeedsNoAddressSet) {
  auto off = EgressRulesOf(SlotRuleset(Slot5(), Config(), Policy(false, {}, {})));
  EXPECT_EQ(off.back(), "reject with icmp type admin-prohibited");
  auto deny_all =
      EgressRulesOf(SlotRuleset(Slot5(), Config(), Policy(true, {"1.1.1.1"}, {"0.0.0.0/0"})));
  EXPECT_EQ(deny_all[3], "ip daddr { 1.1.1.1 } accept");
  EXPECT_EQ(deny_all[4], "reject with icmp type admin-prohibited");
}

TEST(SlotRuleset, ExtraDeniedRangesAndPortsComeFromTheConfig) {
  NetConfig c = Config();
  c.always_denied = {*Ipv4Cidr::Parse("192.168.0.0/16"), *Ipv4Cidr::Parse("192.168.5.0/24")};
  c.control_plane_ports = {3000, 49983};
  auto rules = EgressRulesOf(SlotRuleset(Slot5(), c, EgressPolicy{}));
  EXPECT_THAT(rules[1], HasSubstr("192.168.0.0/16"));
  EXPECT_THAT(rules[1], Not(HasSubstr("192.168.5.0/24")));  // inside the /16: nft refuses overlaps
  EXPECT_EQ(rules[2], "tcp dport { 3000, 49983 } reject with icmp type admin-prohibited");
  c.control_plane_ports.clear();
  auto no_ports = EgressRulesOf(SlotRuleset(Slot5(), c, EgressPolicy{}));
  for (const auto& r : no_ports) EXPECT_THAT(r, Not(HasSubstr("dport")));
}

TEST(SlotRuleset, DnsToTheGatewayIsForwardedOnlyWhenAResolverIsSetAndEgressAllowed) {
  NetConfig c = Config();
  c.dns_servers = {*Ipv4Address::Parse("198.51.100.53")};
  std::string t = SlotRuleset(Slot5(), c, EgressPolicy{});
  EXPECT_THAT(t, HasSubstr("iifname \"moat-tap\" ip daddr 169.254.0.22 meta l4proto { tcp, udp } "
                           "th dport 53 dnat to 198.51.100.53"));
  auto rules = EgressRulesOf(t);
  // Before the fixed denials: an operator may point DNS at an address inside them.
  EXPECT_EQ(rules[1],
            "ip daddr 198.51.100.53 meta l4proto { tcp, udp } th dport 53 ct status dnat accept");
  auto off = EgressRulesOf(SlotRuleset(Slot5(), c, Policy(false, {}, {})));
  for (const auto& r : off) EXPECT_THAT(r, Not(HasSubstr("dport 53")));
}

TEST(SlotRuleset, DomainsRedirectWhatTheListsWouldRejectOnWebPortsToTheProxy) {
  auto p = *EgressPolicy::FromE2b(
      {{"allowOut", {"example.com", "198.51.100.7"}}, {"denyOut", {"203.0.113.0/24"}}}, false);
  NetConfig c = Config();
  c.dns_servers = {*Ipv4Address::Parse("192.0.2.53")};
  std::string t = SlotRuleset(Slot5(), c, p);
  EXPECT_THAT(t, HasSubstr("iifname \"moat-tap\" ip saddr 169.254.0.21 tcp dport { 80, 443 } "
                           "jump domains"));
  EXPECT_THAT(t, HasSubstr("iifname \"moat-tap\" ip saddr 169.254.0.21 tcp dport 15080 ct status "
                           "dnat accept"));
  auto rules = RulesOf(t, "domains");
  ASSERT_EQ(rules.size(), 4u) << t;
  EXPECT_THAT(rules[0], HasSubstr("169.254.0.0/16"));  // always denied: never redirected
  EXPECT_THAT(rules[0], HasSubstr("return"));
  EXPECT_EQ(rules[1], "ip daddr { 198.51.100.7 } return");
  EXPECT_EQ(rules[2], "ip daddr { 203.0.113.0/24 } meta l4proto tcp redirect to :15080");
  EXPECT_EQ(rules[3], "meta l4proto tcp redirect to :15080");  // internet off: everything else
  // DNS is forwarded: the guest must resolve the names it is allowed.
  EXPECT_THAT(EgressRulesOf(t)[1], HasSubstr("dport 53"));
  // Internet on and no denyOut: nothing the lists reject, nothing to redirect.
  auto on = *EgressPolicy::FromE2b({{"allowOut", {"example.com"}}}, true);
  EXPECT_EQ(RulesOf(SlotRuleset(Slot5(), Config(), on), "domains").size(), 1u);
  // No domains: an empty chain.
  EXPECT_TRUE(RulesOf(SlotRuleset(Slot5(), Config(), Policy(false, {}, {})), "domains").empty());
}

TEST(EgressChainUpdate, FlushesAndRefillsOnlyTheEgressChainInOneTransaction) {
  std::string t = EgressChainUpdate(Slot5(), Config(), Policy(false, {"198.51.100.0/24"}, {}));
  EXPECT_EQ(t.rfind("flush chain ip moat egress\nadd chain ip moat domains\nflush chain ip moat "
                    "domains\n",
                    0),
            0u);
  EXPECT_THAT(t, Not(HasSubstr("table")));
  auto rules = EgressRulesOf(t);
  EXPECT_EQ(rules,
            EgressRulesOf(SlotRuleset(Slot5(), Config(), Policy(false, {"198.51.100.0/24"}, {}))));
}

TEST(SlotRuleset, CountsBytesEachWayAtPostroutingInAChainOfItsOwn) {
  std::string t = SlotRuleset(Slot5(), Config(), EgressPolicy{});
  // Declared before any rule refers to them.
  size_t egress = t.find("  counter egress_bytes {\n  }\n");
  size_t ingress = t.find("  counter ingress_bytes {\n  }\n");
  ASSERT_NE(egress, std::string::npos) << t;
  ASSERT_NE(ingress, std::string::npos) << t;
  EXPECT_LT(std::max(egress, ingress), t.find("chain"));
  // After every verdict: out of the slot on the veth, to the guest on the tap.
  EXPECT_THAT(t, HasSubstr("  chain usage {\n"
                           "    type filter hook postrouting priority filter; policy accept;\n"
                           "    oifname \"moat0ac80014g\" counter name egress_bytes\n"
                           "    oifname \"moat-tap\" counter name ingress_bytes\n  }\n}\n"));
  // Nothing else counts, so that nothing counts twice.
  size_t counts = 0;
  for (size_t at = 0; (at = t.find("counter", at)) != std::string::npos; ++at) ++counts;
  EXPECT_EQ(counts, 4u) << t;
}

TEST(EgressChainUpdate, LeavesTheCountersAndTheirChainAlone) {
  for (const EgressPolicy& p : {EgressPolicy{}, Policy(false, {"198.51.100.0/24"}, {}),
                                *EgressPolicy::FromE2b({{"allowOut", {"example.com"}}}, false)}) {
    std::string t = EgressChainUpdate(Slot5(), Config(), p);
    EXPECT_THAT(t, Not(HasSubstr("counter"))) << t;
    EXPECT_THAT(t, Not(HasSubstr("usage"))) << t;
    EXPECT_THAT(t, Not(HasSubstr("delete"))) << t;
    // Only the two policy chains are flushed.
    for (size_t at = 0; (at = t.find("flush", at)) != std::string::npos; ++at) {
      EXPECT_TRUE(t.compare(at, 27, "flush chain ip moat egress\n") == 0 ||
                  t.compare(at, 28, "flush chain ip moat domains\n") == 0)
          << t.substr(at, 40);
    }
  }
}

TEST(ParseSlotCounters, ReadsBothCountersFromNftJson) {
  auto c = ParseSlotCounters(
      R"({"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
          {"counter": {"family": "ip", "name": "ingress_bytes", "table": "moat", "handle": 4,
                       "packets": 3, "bytes": 18446744073709551615}},
          {"counter": {"family": "ip", "name": "egress_bytes", "table": "moat", "handle": 3,
                       "packets": 0, "bytes": 0}},
          {"counter": {"family": "ip", "name": "other", "table": "moat", "bytes": 9}}]})");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->egress_bytes, 0u);
  EXPECT_EQ(c->ingress_bytes, 18446744073709551615ull);
}

TEST(ParseSlotCounters, MissingCountersAreNotFound) {
  // A slot set up before the counters existed: the table lists none.
  auto none = ParseSlotCounters(R"({"nftables": [{"metainfo": {"version": "1.0.6"}}]})");
  EXPECT_EQ(none.status().code(), ErrorCode::kNotFound);
  auto one = ParseSlotCounters(
      R"({"nftables": [{"counter": {"name": "egress_bytes", "table": "moat", "bytes": 1}}]})");
  EXPECT_EQ(one.status().code(), ErrorCode::kNotFound);
  EXPECT_THAT(one.status().message(), HasSubstr("ingress_bytes"));
  // Counters of another table are not the slot's.
  auto elsewhere = ParseSlotCounters(
      R"({"nftables": [{"counter": {"name": "egress_bytes", "table": "x", "bytes": 1}},
                       {"counter": {"name": "ingress_bytes", "table": "x", "bytes": 1}}]})");
  EXPECT_EQ(elsewhere.status().code(), ErrorCode::kNotFound);
}

TEST(ParseSlotCounters, MalformedOutputIsAnErrorNotACrash) {
  const char* const bad[] = {
      "",
      "Error: No such file or directory",
      "{\"nftables\": [",
      "[]",
      "null",
      R"({"nft": []})",
      R"({"nftables": {}})",
      R"({"nftables": [3]})",
      R"({"nftables": [{"counter": 3}]})",
      R"({"nftables": [{"counter": {"table": "moat", "bytes": 1}}]})",
      R"({"nftables": [{"counter": {"name": 7, "table": "moat", "bytes": 1}}]})",
      R"({"nftables": [{"counter": {"name": "egress_bytes", "table": "moat"}}]})",
      R"({"nftables": [{"counter": {"name": "egress_bytes", "table": "moat", "bytes": -1}}]})",
      R"({"nftables": [{"counter": {"name": "egress_bytes", "table": "moat", "bytes": 1.5}}]})",
      R"({"nftables": [{"counter": {"name": "egress_bytes", "table": "moat", "bytes": "1"}}]})",
      // Listed twice: which one is the slot's?
      R"({"nftables": [{"counter": {"name": "egress_bytes", "table": "moat", "bytes": 1}},
                       {"counter": {"name": "egress_bytes", "table": "moat", "bytes": 2}},
                       {"counter": {"name": "ingress_bytes", "table": "moat", "bytes": 1}}]})",
  };
  for (const char* text : bad) {
    auto c = ParseSlotCounters(text);
    EXPECT_FALSE(c.ok()) << text;
    EXPECT_EQ(c.status().code(), ErrorCode::kInvalidArgument) << text;
  }
}

TEST(HostRuleset, ClosesTheHostToSlotsSeparatesSlotsAndMasqueradesThePool) {
  NetConfig c = Config();
  EXPECT_EQ(HostTableName(c.pool), "moat_host_10_200_0_0_16");
  std::string t = HostRuleset(c);
  // Replaces a table a crashed agent left: create-if-missing, delete, create.
  EXPECT_EQ(
      t.rfind("table ip moat_host_10_200_0_0_16\ndelete table ip moat_host_10_200_0_0_16\n", 0),
      0u);
  EXPECT_THAT(t, HasSubstr("iifgroup 28015 ct state established,related accept\n"
                           "    iifgroup 28015 reject with icmp type admin-prohibited"));
  EXPECT_THAT(t, HasSubstr("iifgroup 28015 oifgroup 28015 reject"));
  EXPECT_THAT(t, HasSubstr("ip saddr 10.200.0.0/16 oifgroup != 28015 masquerade"));
  EXPECT_THAT(t, HasSubstr("type filter hook input priority filter - 10; policy accept;"));
}

}  // namespace
}  // namespace moat::net
