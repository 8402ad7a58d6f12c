// How big a template's warm pool should be (WarmPoolWant): its floor, grown by one clone per
// create that found it dry, bounded by --warm-max, never below the floor. And whether a new VM
// may start on the host's memory (HostMemoryAdmits, --memory-reserve-mb).
#include <gtest/gtest.h>

#include "agent/agent.h"

namespace moat::agent {
namespace {

TEST(WarmPoolWant, StaysAtItsFloorWhileCreatesFindClones) {
  EXPECT_EQ(WarmPoolWant(2, 0, 16), 2u);
  EXPECT_EQ(WarmPoolWant(0, 0, 16), 0u);
  EXPECT_EQ(WarmPoolWant(1, 0, 0), 1u);
}

TEST(WarmPoolWant, GrowsByOnePerDryCreateUpToTheMaximum) {
  EXPECT_EQ(WarmPoolWant(2, 1, 16), 3u);
  EXPECT_EQ(WarmPoolWant(2, 5, 16), 7u);
  EXPECT_EQ(WarmPoolWant(2, 14, 16), 16u);
  EXPECT_EQ(WarmPoolWant(2, 40, 16), 16u);
}

TEST(WarmPoolWant, AMaximumBelowTheFloorNeverShrinksIt) {
  EXPECT_EQ(WarmPoolWant(4, 3, 2), 4u);
  EXPECT_EQ(WarmPoolWant(4, 3, 0), 4u);  // 0: no growth
}

TEST(HostMemoryAdmits, AdmitsAtOrAboveTheReserve) {
  MemInfo mem{.total_bytes = uint64_t{24} << 30, .available_bytes = uint64_t{1024} << 20};
  EXPECT_TRUE(HostMemoryAdmits(mem, 1024, "sandbox x").ok());
  EXPECT_TRUE(HostMemoryAdmits(mem, 512, "sandbox x").ok());
  mem.available_bytes = 0;
  EXPECT_TRUE(HostMemoryAdmits(mem, 0, "sandbox x").ok()) << "0: no check";
}

TEST(HostMemoryAdmits, RefusesBelowTheReserveNamingBothFiguresAndWhat) {
  MemInfo mem{.total_bytes = uint64_t{24} << 30,
              .available_bytes = (uint64_t{1023} << 20) + (uint64_t{1} << 19)};
  Status s = HostMemoryAdmits(mem, 1024, "sandbox sbx_1");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), ErrorCode::kResourceExhausted);
  EXPECT_NE(s.message().find("1023 MiB available"), std::string::npos) << s.ToString();
  EXPECT_NE(s.message().find("1024 MiB reserve (--memory-reserve-mb)"), std::string::npos)
      << s.ToString();
  EXPECT_NE(s.message().find("sandbox sbx_1 refused"), std::string::npos) << s.ToString();
}

TEST(HostMemoryAdmits, ThisHostsMeminfoReads) {
  auto mem = ReadMeminfo();
  ASSERT_TRUE(mem.ok()) << mem.status().ToString();
  EXPECT_GT(mem->total_bytes, 0u);
  EXPECT_LE(mem->available_bytes, mem->total_bytes);
}

}  // namespace
}  // namespace moat::agent
