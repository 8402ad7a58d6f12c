#include "net/egress_policy.h"

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

TEST(EgressPolicy, RefusesDomainsBadEntriesAndHugeLists) {
  auto domain = EgressPolicy::FromE2b({{"allowOut", {"example.com"}}}, true);
  ASSERT_FALSE(domain.ok());
  EXPECT_NE(domain.status().message().find("domain names"), std::string::npos);
  EXPECT_FALSE(EgressPolicy::FromE2b({{"allowOut", {"*.example.com"}}}, true).ok());
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
