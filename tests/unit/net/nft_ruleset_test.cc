#include "net/nft_ruleset.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

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
