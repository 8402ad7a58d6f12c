#include "guest/network.h"

#include <gtest/gtest.h>

namespace moat::guest {
namespace {

TEST(GuestNetwork, DefaultIsTheFixedSandboxAddressBehindTheSlotGateway) {
  NetworkRequest r = DefaultNetwork();
  EXPECT_EQ(r.interface, "eth0");
  EXPECT_EQ(r.address, 0xa9fe0015u);  // 169.254.0.21
  EXPECT_EQ(r.prefix, 30u);
  EXPECT_EQ(r.gateway, 0xa9fe0016u);  // 169.254.0.22
  EXPECT_EQ(r.dns, (std::vector<std::string>{"169.254.0.22"}));
}

TEST(GuestNetwork, ParsesTheHostsRequest) {
  auto r = ParseNetwork({{"op", "network"},
                         {"interface", "eth0"},
                         {"address", "169.254.0.21/30"},
                         {"gateway", "169.254.0.22"},
                         {"mac", "02:00:a9:fe:00:15"},
                         {"dns", {"169.254.0.22"}}});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->address, 0xa9fe0015u);
  EXPECT_EQ(r->gateway, 0xa9fe0016u);
  auto no_dns = ParseNetwork({{"address", "169.254.0.21/30"}, {"gateway", "169.254.0.22"}});
  ASSERT_TRUE(no_dns.ok());
  EXPECT_EQ(no_dns->interface, "eth0");
  EXPECT_TRUE(no_dns->dns.empty());
}

TEST(GuestNetwork, RefusesBadRequests) {
  auto bad = [](nlohmann::json j) { return !ParseNetwork(j).ok(); };
  nlohmann::json ok = {{"address", "169.254.0.21/30"}, {"gateway", "169.254.0.22"}};
  EXPECT_FALSE(bad(ok));
  auto with = [&](const char* key, nlohmann::json v) {
    auto c = ok;
    c[key] = std::move(v);
    return c;
  };
  EXPECT_TRUE(bad(with("address", "169.254.0.21")));
  EXPECT_TRUE(bad(with("address", "169.254.0.21/31")));
  EXPECT_TRUE(bad(with("address", "169.254.0.21/0")));
  EXPECT_TRUE(bad(with("address", "169.254.0.321/30")));
  EXPECT_TRUE(bad(with("gateway", "169.254.0.30")));  // outside the /30
  EXPECT_TRUE(bad(with("gateway", "169.254.0.21")));  // the interface's own address
  EXPECT_TRUE(bad(with("interface", "../eth0")));
  EXPECT_TRUE(bad(with("interface", "averyveryverylongname")));
  EXPECT_TRUE(bad(with("dns", {"1.1.1.1", "1.1.1.2", "1.1.1.3", "1.1.1.4"})));
  EXPECT_TRUE(bad(with("dns", {"resolver"})));
  EXPECT_TRUE(bad(with("dns", "1.1.1.1")));
  EXPECT_TRUE(bad(nlohmann::json{{"gateway", "169.254.0.22"}}));
}

TEST(GuestNetwork, ResolvConfNamesTheResolversOrSaysThereIsNone) {
  EXPECT_EQ(ResolvConf({"169.254.0.22"}), "# written by moat-guest\nnameserver 169.254.0.22\n");
  std::string none = ResolvConf({});
  EXPECT_EQ(none.find("nameserver"), std::string::npos);
}

TEST(GuestNetwork, ApplyingToAMissingInterfaceIsNotFound) {
  auto r = ParseNetwork(
      {{"interface", "moatnosuch0"}, {"address", "169.254.0.21/30"}, {"gateway", "169.254.0.22"}});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(ApplyNetwork(*r).code(), ErrorCode::kNotFound);
}

}  // namespace
}  // namespace moat::guest
