#include "net/slot_record.h"

#include <gtest/gtest.h>

#include "common/fs.h"

namespace moat::net {
namespace {

SlotRecord Record(uint32_t index) {
  SlotRecord r;
  r.slot = *SlotAddresses::For(*Ipv4Cidr::Parse(kDefaultPool), index);
  r.created_unix_ms = 1700000000000;
  r.owner_pid = 42;
  r.policy = *EgressPolicy::FromE2b({{"denyOut", {"198.51.100.0/24"}}}, false);
  return r;
}

TEST(SlotRecord, RoundTripsThroughJson) {
  SlotRecord r = Record(7);
  std::string text = SerializeSlotRecord(r);
  auto back = ParseSlotRecord(text);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->slot.netns, "moat-10.200.0.28");
  EXPECT_EQ(back->slot.host_link, r.slot.host_link);
  EXPECT_EQ(back->slot.slot_address, r.slot.slot_address);
  EXPECT_EQ(back->created_unix_ms, r.created_unix_ms);
  EXPECT_EQ(back->owner_pid, 42);
  EXPECT_EQ(back->policy, r.policy);
}

TEST(SlotRecord, RefusesNamesThatDoNotFollowFromPoolAndIndex) {
  auto j = nlohmann::json::parse(SerializeSlotRecord(Record(7)));
  auto with = [&](const char* key, nlohmann::json value) {
    auto copy = j;
    copy[key] = std::move(value);
    return ParseSlotRecord(copy.dump());
  };
  // A record must never make the agent delete a link or namespace that is not a moat slot's.
  EXPECT_FALSE(with("netns", "other-netns").ok());
  EXPECT_FALSE(with("host_link", "eth0").ok());
  EXPECT_FALSE(with("slot_address", "10.200.0.31").ok());
  EXPECT_FALSE(with("index", 16384).ok());
  EXPECT_FALSE(with("index", -1).ok());
  EXPECT_FALSE(with("pool", "10.200.0.1/16").ok());
  EXPECT_FALSE(with("version", 2).ok());
  EXPECT_FALSE(ParseSlotRecord("not json").ok());
  EXPECT_FALSE(ParseSlotRecord("[]").ok());
}

TEST(SlotRecord, LoadsEveryRecordOfADirectoryAndChecksFileNames) {
  auto dir = MakeTempDir("/tmp", "moat-net-records.");
  ASSERT_TRUE(dir.ok());
  struct Remove {
    std::string p;
    ~Remove() { (void)RemoveTree(p); }
  } remove{*dir};
  auto none = LoadSlotRecords(*dir + "/missing");
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
  for (uint32_t i : {3u, 1u}) {
    ASSERT_TRUE(
        WriteFileAtomic(SlotRecordPath(*dir, Record(i).slot), SerializeSlotRecord(Record(i))).ok());
  }
  ASSERT_TRUE(WriteFileAtomic(*dir + "/unrelated.txt", "x").ok());
  auto records = LoadSlotRecords(*dir);
  ASSERT_TRUE(records.ok()) << records.status().ToString();
  ASSERT_EQ(records->size(), 2u);
  EXPECT_EQ((*records)[0].slot.index, 1u);
  EXPECT_EQ((*records)[1].slot.index, 3u);
  // A record under another slot's name is refused, not trusted.
  ASSERT_TRUE(
      WriteFileAtomic(*dir + "/moat-10.200.0.40.json", SerializeSlotRecord(Record(2))).ok());
  EXPECT_FALSE(LoadSlotRecords(*dir).ok());
}

}  // namespace
}  // namespace moat::net
