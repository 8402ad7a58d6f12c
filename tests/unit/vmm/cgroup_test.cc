#include "vmm/cgroup.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace moat::vmm {
namespace {

using ::testing::ElementsAre;
using ::testing::Pair;

// /proc/self/cgroup of a process in a v1 hybrid layout, separate cpu and cpuacct hierarchies.
constexpr char kHybrid[] =
    "9:name=systemd:/\n8:pids:/\n7:blkio:/\n6:freezer:/\n5:devices:/\n"
    "4:memory:/process_api/e7c6\n3:cpuset:/\n2:cpuacct:/\n1:cpu:/\n0::/\n";

TEST(CgroupLayout, ParsesV1HybridWithOneHierarchyPerController) {
  auto layout = ParseCgroupLayout(CgroupVersion::kV1, "/sys/fs/cgroup", kHybrid);
  ASSERT_TRUE(layout.ok()) << layout.status().ToString();
  ASSERT_EQ(layout->hierarchies.size(), 3u);
  EXPECT_EQ(layout->hierarchies[0].controller, "memory");
  EXPECT_EQ(layout->hierarchies[0].mount, "/sys/fs/cgroup/memory");
  EXPECT_EQ(layout->hierarchies[0].self_path, "/process_api/e7c6");
  EXPECT_EQ(layout->hierarchies[1].mount, "/sys/fs/cgroup/cpu");
  EXPECT_EQ(layout->hierarchies[2].mount, "/sys/fs/cgroup/pids");
}

TEST(CgroupLayout, FindsCpuInACombinedCpuCpuacctHierarchy) {
  auto layout = ParseCgroupLayout(CgroupVersion::kV1, "/sys/fs/cgroup",
                                  "5:cpu,cpuacct:/a\n4:memory:/b\n3:pids:/c\n");
  ASSERT_TRUE(layout.ok());
  EXPECT_EQ(layout->hierarchies[1].controller, "cpu");
  EXPECT_EQ(layout->hierarchies[1].self_path, "/a");
}

TEST(CgroupLayout, V1WithoutAControllerIsAnErrorNamingIt) {
  auto layout = ParseCgroupLayout(CgroupVersion::kV1, "/sys/fs/cgroup", "4:memory:/\n1:cpu:/\n");
  ASSERT_FALSE(layout.ok());
  EXPECT_THAT(layout.status().message(), ::testing::HasSubstr("pids"));
}

TEST(CgroupLayout, ParsesV2AsOneHierarchy) {
  auto layout = ParseCgroupLayout(CgroupVersion::kV2, "/sys/fs/cgroup", "0::/system.slice/x\n");
  ASSERT_TRUE(layout.ok());
  ASSERT_EQ(layout->hierarchies.size(), 1u);
  EXPECT_EQ(layout->hierarchies[0].mount, "/sys/fs/cgroup");
  EXPECT_EQ(layout->hierarchies[0].self_path, "/system.slice/x");
  EXPECT_FALSE(ParseCgroupLayout(CgroupVersion::kV2, "/sys/fs/cgroup", "4:memory:/\n").ok());
  EXPECT_FALSE(ParseCgroupLayout(CgroupVersion::kV2, "/sys/fs/cgroup", "garbage\n").ok());
}

TEST(CgroupDirs, DefaultParentIsMoatUnderTheAgentsOwnCgroup) {
  auto layout = ParseCgroupLayout(CgroupVersion::kV1, "/sys/fs/cgroup", kHybrid);
  ASSERT_TRUE(layout.ok());
  EXPECT_THAT(CgroupDirsFor(*layout, "", "vm1"),
              ElementsAre("/sys/fs/cgroup/memory/process_api/e7c6/moat/vm1",
                          "/sys/fs/cgroup/cpu/moat/vm1", "/sys/fs/cgroup/pids/moat/vm1"));
}

TEST(CgroupDirs, ExplicitParentIsRelativeToEachHierarchyRoot) {
  auto layout = ParseCgroupLayout(CgroupVersion::kV2, "/sys/fs/cgroup", "0::/agent\n");
  ASSERT_TRUE(layout.ok());
  EXPECT_THAT(CgroupDirsFor(*layout, "/moat.slice/", "vm1"),
              ElementsAre("/sys/fs/cgroup/moat.slice/vm1"));
  EXPECT_THAT(CgroupDirsFor(*layout, "", "vm1"), ElementsAre("/sys/fs/cgroup/agent/moat/vm1"));
}

TEST(CgroupLimits, V1FilesPerController) {
  CgroupLimits l{512ull << 20, 1.5, 100};
  EXPECT_THAT(CgroupLimitFiles(CgroupVersion::kV1, "memory", l),
              ElementsAre(Pair("memory.limit_in_bytes", "536870912")));
  EXPECT_THAT(CgroupLimitFiles(CgroupVersion::kV1, "cpu", l),
              ElementsAre(Pair("cpu.cfs_period_us", "100000"), Pair("cpu.cfs_quota_us", "150000")));
  EXPECT_THAT(CgroupLimitFiles(CgroupVersion::kV1, "pids", l),
              ElementsAre(Pair("pids.max", "100")));
}

TEST(CgroupLimits, V2FilesInOneDirectoryAndZeroMeansNoLimit) {
  CgroupLimits l{1ull << 30, 2, 64};
  EXPECT_THAT(CgroupLimitFiles(CgroupVersion::kV2, "", l),
              ElementsAre(Pair("memory.max", "1073741824"), Pair("memory.swap.max", "0"),
                          Pair("cpu.max", "200000 100000"), Pair("pids.max", "64")));
  EXPECT_TRUE(CgroupLimitFiles(CgroupVersion::kV2, "", CgroupLimits{}).empty());
}

TEST(CgroupLimits, CpuWeightIsCpuWeightOnV2AndScaledSharesOnV1) {
  CgroupLimits l;
  l.cpu_weight = kBackgroundCpuWeight;
  EXPECT_THAT(CgroupLimitFiles(CgroupVersion::kV2, "", l), ElementsAre(Pair("cpu.weight", "1")));
  // v1's floor is 2 shares; 100 (normal) is 1024.
  EXPECT_THAT(CgroupLimitFiles(CgroupVersion::kV1, "cpu", l),
              ElementsAre(Pair("cpu.shares", "10")));
  EXPECT_TRUE(CgroupLimitFiles(CgroupVersion::kV1, "memory", l).empty());
  EXPECT_EQ(CpuWeightFile(CgroupVersion::kV1, kNormalCpuWeight),
            std::make_pair(std::string("cpu.shares"), std::string("1024")));
  EXPECT_EQ(CpuWeightFile(CgroupVersion::kV2, kNormalCpuWeight),
            std::make_pair(std::string("cpu.weight"), std::string("100")));
  // Out of range: clamped.
  EXPECT_EQ(CpuWeightFile(CgroupVersion::kV2, 0).second, "1");
  EXPECT_EQ(CpuWeightFile(CgroupVersion::kV2, 50000).second, "10000");
  EXPECT_EQ(CpuWeightFile(CgroupVersion::kV1, 0).second, "10");
}

TEST(Cgroup, CreateRejectsNamesThatEscapeTheParent) {
  auto layout = ParseCgroupLayout(CgroupVersion::kV2, "/nonexistent", "0::/\n");
  ASSERT_TRUE(layout.ok());
  for (const char* bad : {"", "..", "a/b", "x y"}) {
    EXPECT_EQ(Cgroup::Create(*layout, "", bad, {}).status().code(), ErrorCode::kInvalidArgument)
        << bad;
  }
  EXPECT_EQ(Cgroup::Create(*layout, "../up", "ok", {}).status().code(),
            ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace moat::vmm
