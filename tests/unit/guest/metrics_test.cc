#include "guest/metrics.h"

#include <gtest/gtest.h>

namespace moat::guest {
namespace {

constexpr const char* kStat1 =
    "cpu  100 0 100 700 100 0 0 0 0 0\n"
    "cpu0 50 0 50 350 50 0 0 0 0 0\n"
    "cpu1 50 0 50 350 50 0 0 0 0 0\n"
    "intr 12345 0 0\n"
    "ctxt 999\n";
constexpr const char* kStat2 =
    "cpu  200 0 200 1200 200 0 0 0 10 10\n"
    "cpu0 100 0 100 600 100 0 0 0 0 0\n"
    "cpu1 100 0 100 600 100 0 0 0 0 0\n";

TEST(ParseProcStat, SumsTheAggregateLineAndCountsCpus) {
  auto s = ParseProcStat(kStat1);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->total, 1000u);
  EXPECT_EQ(s->idle, 800u);
  EXPECT_EQ(s->cpu_count, 2);
}

TEST(ParseProcStat, RejectsTextWithoutACpuLine) {
  EXPECT_FALSE(ParseProcStat("intr 1\n").ok());
  EXPECT_FALSE(ParseProcStat("cpu a b c d\n").ok());
}

TEST(CpuUsedPct, IsTheBusyShareOfTheDelta) {
  auto a = *ParseProcStat(kStat1);
  auto b = *ParseProcStat(kStat2);
  // Total delta 800 (the guest columns are already in user), idle delta 600: 25% busy.
  EXPECT_DOUBLE_EQ(CpuUsedPct(a, b), 25.0);
  EXPECT_DOUBLE_EQ(CpuUsedPct(b, a), 0.0);
  EXPECT_DOUBLE_EQ(CpuUsedPct(a, a), 0.0);
}

TEST(ParseMeminfo, UsesMemAvailable) {
  auto m = ParseMeminfo(
      "MemTotal:        2048000 kB\nMemFree:          100000 kB\n"
      "MemAvailable:    1024000 kB\nBuffers: 1 kB\n");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->total_bytes, 2048000u * 1024);
  EXPECT_EQ(m->available_bytes, 1024000u * 1024);
}

TEST(ParseMeminfo, FallsBackToFreePlusCachesOnOldKernels) {
  auto m = ParseMeminfo("MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 10 kB\nCached: 40 kB\n");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->available_bytes, 150u * 1024);
  EXPECT_FALSE(ParseMeminfo("MemFree: 1 kB\n").ok());
}

}  // namespace
}  // namespace moat::guest
