#include "net/slot_allocator.h"

#include <gtest/gtest.h>

#include <set>

namespace moat::net {
namespace {

Ipv4Cidr Pool(const char* text) {
  return *Ipv4Cidr::Parse(text);
}

TEST(SlotAddresses, DefaultPoolHolds16384SlotsOfFourAddresses) {
  EXPECT_EQ(*SlotCount(Pool(kDefaultPool)), 16384u);
  auto first = SlotAddresses::For(Pool(kDefaultPool), 0);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->subnet.ToString(), "10.200.0.0/30");
  EXPECT_EQ(first->host_address.ToString(), "10.200.0.1");
  EXPECT_EQ(first->slot_address.ToString(), "10.200.0.2");
  EXPECT_EQ(first->netns, "moat-10.200.0.0");
  EXPECT_EQ(first->host_link, "moat0ac80000h");
  EXPECT_EQ(first->ns_link, "moat0ac80000g");
  auto s65 = SlotAddresses::For(Pool(kDefaultPool), 65);
  ASSERT_TRUE(s65.ok());
  EXPECT_EQ(s65->subnet.ToString(), "10.200.1.4/30");
  EXPECT_EQ(s65->host_address.ToString(), "10.200.1.5");
  EXPECT_EQ(s65->slot_address.ToString(), "10.200.1.6");
  auto last = SlotAddresses::For(Pool(kDefaultPool), 16383);
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(last->host_address.ToString(), "10.200.255.253");
  EXPECT_EQ(last->slot_address.ToString(), "10.200.255.254");
  EXPECT_EQ(last->host_link, "moat0ac8fffch");
  EXPECT_FALSE(SlotAddresses::For(Pool(kDefaultPool), 16384).ok());
}

TEST(SlotAddresses, NamesAreUniqueFitIfnamsizAndSayMoat) {
  std::set<std::string> links;
  std::set<std::string> netns;
  for (uint32_t i = 0; i < 16384; ++i) {
    auto s = SlotAddresses::For(Pool("10.0.0.0/16"), i);
    ASSERT_TRUE(s.ok());
    EXPECT_LE(s->host_link.size(), 15u);
    EXPECT_EQ(s->host_link.find("moat"), 0u);
    EXPECT_EQ(s->netns.find("moat"), 0u);
    links.insert(s->host_link);
    links.insert(s->ns_link);
    netns.insert(s->netns);
  }
  EXPECT_EQ(links.size(), 2u * 16384);
  EXPECT_EQ(netns.size(), 16384u);
  // The largest address a pool may hold still fits.
  auto top = SlotAddresses::For(Pool("255.255.255.0/24"), 63);
  ASSERT_TRUE(top.ok());
  EXPECT_EQ(top->host_link, "moatfffffffch");
}

TEST(SlotAddresses, PoolMustBeSlash8ToSlash30) {
  EXPECT_FALSE(SlotCount(Pool("10.0.0.0/31")).ok());
  EXPECT_FALSE(SlotCount(Pool("0.0.0.0/0")).ok());
  EXPECT_EQ(*SlotCount(Pool("10.0.0.0/30")), 1u);
  EXPECT_EQ(*SlotCount(Pool("10.0.0.0/8")), 1u << 22);
}

TEST(SlotAllocator, HandsOutFreshSlotsInOrderThenReusesReleasedSlotsLast) {
  SlotAllocator a(4);
  EXPECT_EQ(*a.Allocate(), 0u);
  EXPECT_EQ(*a.Allocate(), 1u);
  a.Release(0);
  // 0 is free again, but the never-used 2 and 3 come first.
  EXPECT_EQ(*a.Allocate(), 2u);
  a.Release(1);
  EXPECT_EQ(*a.Allocate(), 3u);
  // Then the released ones, oldest release first.
  EXPECT_EQ(*a.Allocate(), 0u);
  EXPECT_EQ(*a.Allocate(), 1u);
  auto full = a.Allocate();
  ASSERT_FALSE(full.ok());
  EXPECT_EQ(full.status().code(), ErrorCode::kResourceExhausted);
  EXPECT_EQ(a.in_use(), 4u);
  a.Release(3);
  a.Release(3);   // twice: ignored
  a.Release(99);  // out of range: ignored
  EXPECT_EQ(a.in_use(), 3u);
  EXPECT_EQ(*a.Allocate(), 3u);
}

TEST(SlotAllocator, ReservedSlotsAreSkippedAndOnceReleasedReusedLast) {
  SlotAllocator a(4);
  ASSERT_TRUE(a.Reserve(1).ok());
  EXPECT_EQ(a.Reserve(1).code(), ErrorCode::kAlreadyExists);
  EXPECT_EQ(a.Reserve(4).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(*a.Allocate(), 0u);
  EXPECT_EQ(*a.Allocate(), 2u);
  a.Release(1);
  EXPECT_EQ(*a.Allocate(), 3u);
  EXPECT_EQ(*a.Allocate(), 1u);
  EXPECT_FALSE(a.Allocate().ok());
  // A slot reserved beyond the fresh ones and released stays fresh.
  SlotAllocator b(4);
  ASSERT_TRUE(b.Reserve(3).ok());
  b.Release(3);
  EXPECT_EQ(*b.Allocate(), 0u);
  EXPECT_EQ(*b.Allocate(), 1u);
  EXPECT_EQ(*b.Allocate(), 2u);
  EXPECT_EQ(*b.Allocate(), 3u);
}

TEST(SlotAllocator, CyclesThroughAllSlotsBeforeReusingOne) {
  SlotAllocator a(16384);
  std::set<uint32_t> seen;
  for (int i = 0; i < 16384; ++i) {
    auto s = a.Allocate();
    ASSERT_TRUE(s.ok());
    seen.insert(*s);
    a.Release(*s);
  }
  EXPECT_EQ(seen.size(), 16384u);
  EXPECT_EQ(a.in_use(), 0u);
  EXPECT_EQ(*a.Allocate(), 0u);
}

}  // namespace
}  // namespace moat::net
