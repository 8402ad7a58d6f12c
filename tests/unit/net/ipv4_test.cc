#include "common/ipv4.h"

#include <gtest/gtest.h>

namespace moat::net {
namespace {

TEST(Ipv4Address, ParsesAndFormatsDottedQuads) {
  auto a = Ipv4Address::Parse("10.200.3.4");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->value, 0x0ac80304u);
  EXPECT_EQ(a->ToString(), "10.200.3.4");
  EXPECT_EQ(Ipv4Address::Parse("255.255.255.255")->value, 0xffffffffu);
  EXPECT_EQ(Ipv4Address::Parse("0.0.0.0")->value, 0u);
}

TEST(Ipv4Address, RejectsAnythingButFourDecimalOctets) {
  for (const char* bad :
       {"", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1.2.3.04", "01.2.3.4", "a.b.c.d", "1.2.3.4 ",
        " 1.2.3.4", "1..2.3", "1.2.3.-1", "1.2.3.4/", "::1", "1234.1.1.1"}) {
    EXPECT_FALSE(Ipv4Address::Parse(bad).ok()) << bad;
  }
}

TEST(Ipv4Cidr, ParsesPrefixesAndBareAddressesAsSlash32) {
  auto c = Ipv4Cidr::Parse("10.200.0.0/16");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->prefix, 16u);
  EXPECT_EQ(c->Size(), 65536u);
  EXPECT_EQ(c->ToString(), "10.200.0.0/16");
  EXPECT_TRUE(c->Contains(*Ipv4Address::Parse("10.200.255.1")));
  EXPECT_FALSE(c->Contains(*Ipv4Address::Parse("10.201.0.1")));
  auto host = Ipv4Cidr::Parse("1.2.3.4");
  ASSERT_TRUE(host.ok());
  EXPECT_EQ(host->prefix, 32u);
  auto all = Ipv4Cidr::Parse("0.0.0.0/0");
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->Mask(), 0u);
  EXPECT_TRUE(all->Contains(*Ipv4Address::Parse("8.8.8.8")));
}

TEST(Ipv4Cidr, RejectsHostBitsAndBadPrefixes) {
  auto c = Ipv4Cidr::Parse("10.200.0.1/16");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("10.200.0.0/16"), std::string::npos);
  for (const char* bad :
       {"10.0.0.0/33", "10.0.0.0/", "10.0.0.0/-1", "10.0.0.0/08", "10.0.0.0/1x"}) {
    EXPECT_FALSE(Ipv4Cidr::Parse(bad).ok()) << bad;
  }
}

}  // namespace
}  // namespace moat::net
