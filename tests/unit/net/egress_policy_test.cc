#include "common/egress_policy.h"

#include <gtest/gtest.h>

namespace moat::net {
namespace {

using nlohmann::json;

std::vector<std::string> Strings(const std::vector<Ipv4Cidr>& cidrs) {
  std::vector<std::string> out;
  for (const auto& c : cidrs) out.push_back(c.ToString());
  return out;
}

TEST(EgressPolicy, DefaultsToInternetOnWithNoLists) {
  auto p = EgressPolicy::FromE2b(json(), std::nullopt);
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(p->allow_internet_access);
  EXPECT_TRUE(p->allow_out.empty());
  EXPECT_TRUE(p->deny_out.empty());
  EXPECT_TRUE(p->AllowsAnyEgress());
  auto off = EgressPolicy::FromE2b(json(), false);
  ASSERT_TRUE(off.ok());
  EXPECT_FALSE(off->AllowsAnyEgress());
}

TEST(EgressPolicy, ReadsE2bNetworkListsNormalised) {
  json network = {{"allowOut", {"1.1.1.1", "10.0.0.0/8", "10.1.0.0/16", "1.1.1.1/32"}},
                  {"denyOut", {"0.0.0.0/0"}},
                  {"allowPublicTraffic", true}};
  auto p = EgressPolicy::FromE2b(network, true);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(Strings(p->allow_out), (std::vector<std::string>{"1.1.1.1/32", "10.0.0.0/8"}));
  EXPECT_EQ(Strings(p->deny_out), (std::vector<std::string>{"0.0.0.0/0"}));
  EXPECT_TRUE(p->AllowsAnyEgress());
}

TEST(EgressPolicy, ReadsDomainNamesOfAllowOutAndMatchesThem) {
  auto p = EgressPolicy::FromE2b(
      {{"allowOut", {"API.Example.com.", "*.cdn.example.net", "10.0.0.0/8", "api.example.com"}},
       {"denyOut", {"0.0.0.0/0"}}},
      std::nullopt);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->allow_domains, (std::vector<std::string>{"*.cdn.example.net", "api.example.com"}));
  EXPECT_EQ(Strings(p->allow_out), (std::vector<std::string>{"10.0.0.0/8"}));
  EXPECT_TRUE(p->AllowsDomain("api.example.com"));
  EXPECT_TRUE(p->AllowsDomain("API.EXAMPLE.COM."));
  EXPECT_FALSE(p->AllowsDomain("example.com"));
  EXPECT_FALSE(p->AllowsDomain("xapi.example.com"));
  EXPECT_TRUE(p->AllowsDomain("a.cdn.example.net"));
  EXPECT_TRUE(p->AllowsDomain("a.b.cdn.example.net"));
  EXPECT_FALSE(p->AllowsDomain("cdn.example.net"));  // the wildcard needs a label before it
  EXPECT_FALSE(p->AllowsDomain("evilcdn.example.net"));
  EXPECT_FALSE(p->AllowsDomain(""));
  // Internet off but names allowed: DNS must work.
  auto off = EgressPolicy::FromE2b({{"allowOut", {"example.com"}}}, false);
  ASSERT_TRUE(off.ok());
  EXPECT_TRUE(off->AllowsAnyEgress());
  auto back = EgressPolicy::FromJson(p->ToJson());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, *p);
}

TEST(EgressPolicy, RefusesBadDomainsDomainsInDenyOutBadEntriesAndHugeLists) {
  auto deny = EgressPolicy::FromE2b({{"denyOut", {"example.com"}}}, true);
  ASSERT_FALSE(deny.ok());
  EXPECT_NE(deny.status().message().find("only allowOut takes domain names"), std::string::npos);
  for (const char* bad : {"*", "*.", "a..b", "a.*.b", "ex ample.com", "exa$mple.com", "-*.x"}) {
    auto p = EgressPolicy::FromE2b({{"allowOut", {bad}}}, true);
    EXPECT_FALSE(p.ok()) << bad;
  }
  EXPECT_FALSE(EgressPolicy::FromE2b({{"allowOut", {std::string(64, 'a') + ".com"}}}, true).ok());
  auto proxy = EgressPolicy::FromE2b({{"egressProxy", {{"address", "10.0.0.1:3128"}}}}, true);
  ASSERT_FALSE(proxy.ok());
  EXPECT_NE(proxy.status().message().find("egressProxy"), std::string::npos);
  EXPECT_FALSE(EgressPolicy::FromE2b({{"rules", {{"a.com", json::array({1})}}}}, true).ok());
  EXPECT_TRUE(EgressPolicy::FromE2b({{"rules", json::object()},
                                     {"egressProxy", nullptr},
                                     {"maskRequestHost", "x"},
                                     {"httpsPorts", {8443}}},
                                    true)
                  .ok());
  EXPECT_FALSE(EgressPolicy::FromE2b({{"denyOut", {"10.0.0.1/8"}}}, true).ok());
  EXPECT_FALSE(EgressPolicy::FromE2b({{"denyOut", {"300.0.0.1"}}}, true).ok());
  EXPECT_FALSE(EgressPolicy::FromE2b({{"denyOut", {7}}}, true).ok());
  EXPECT_FALSE(EgressPolicy::FromE2b({{"denyOut", "1.2.3.4"}}, true).ok());
  EXPECT_FALSE(EgressPolicy::FromE2b(json::array(), true).ok());
  json many = json::array();
  for (size_t i = 0; i <= kMaxPolicyEntries; ++i) many.push_back("1.2.3.4");
  EXPECT_FALSE(EgressPolicy::FromE2b({{"denyOut", many}}, true).ok());
}

TEST(EgressPolicy, RoundTripsThroughItsJson) {
  auto p =
      EgressPolicy::FromE2b({{"allowOut", {"8.8.8.8"}}, {"denyOut", {"192.168.0.0/16"}}}, false);
  ASSERT_TRUE(p.ok());
  auto back = EgressPolicy::FromJson(p->ToJson());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, *p);
  EXPECT_FALSE(EgressPolicy::FromJson(json::object()).ok());
}

TEST(NormalizeCidrs, DropsDuplicatesAndContainedEntries) {
  std::vector<Ipv4Cidr> in;
  for (const char* c : {"10.1.2.0/24", "10.0.0.0/8", "192.168.1.1", "192.168.1.1/32",
                        "192.168.0.0/24", "192.168.1.0/24"}) {
    in.push_back(*Ipv4Cidr::Parse(c));
  }
  EXPECT_EQ(Strings(NormalizeCidrs(in)),
            (std::vector<std::string>{"10.0.0.0/8", "192.168.0.0/24", "192.168.1.0/24"}));
}

}  // namespace
}  // namespace moat::net
