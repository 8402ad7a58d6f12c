#include "vmm/jail.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/fs.h"

namespace moat::vmm {
namespace {

TEST(JailIdAllocator, HandsOutDistinctIdsAndFailsWhenExhausted) {
  JailIdAllocator ids(900000, 3);
  auto a = ids.Allocate();
  auto b = ids.Allocate();
  auto c = ids.Allocate();
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(*a, 900000u);
  EXPECT_EQ(*b, 900001u);
  EXPECT_EQ(*c, 900002u);
  EXPECT_EQ(ids.Allocate().status().code(), ErrorCode::kResourceExhausted);
  ids.Release(*b);
  auto again = ids.Allocate();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, 900001u);
}

TEST(JailIdAllocator, ReservedIdsAreSkippedUntilReleased) {
  JailIdAllocator ids(100, 3);
  ASSERT_TRUE(ids.Reserve(100).ok());
  EXPECT_EQ(ids.Reserve(100).code(), ErrorCode::kAlreadyExists);
  EXPECT_EQ(ids.Reserve(99).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(ids.Reserve(103).code(), ErrorCode::kInvalidArgument);
  auto a = ids.Allocate();
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(*a, 101u);
  ids.Release(100);
  EXPECT_TRUE(ids.Reserve(100).ok());
}

TEST(JailIdAllocator, ReusesReleasedIdsLast) {
  JailIdAllocator ids(100, 4);
  auto a = ids.Allocate();
  ids.Release(*a);
  EXPECT_EQ(*ids.Allocate(), 101u);
}

class PreparedJailTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = MakeTempDir("/tmp", "moat-jail-test.");
    ASSERT_TRUE(dir.ok());
    dir_ = *dir;
    ASSERT_TRUE(MakeDirs(dir_ + "/root").ok());
    ASSERT_TRUE(MakeDirs(dir_ + "/sb").ok());
    ASSERT_TRUE(WriteFileAtomic(dir_ + "/sb/disk.img", "x").ok());
    spec_.uid = 900123;
    spec_.gid = 900123;
    spec_.root_dir = dir_ + "/root";
  }
  void TearDown() override { (void)RemoveTree(dir_); }
  std::string dir_;
  JailSpec spec_;
};

TEST_F(PreparedJailTest, RefusesRootAndRelativePaths) {
  JailSpec s = spec_;
  s.uid = 0;
  EXPECT_EQ(PreparedJail::Prepare(s, nullptr).status().code(), ErrorCode::kInvalidArgument);
  s = spec_;
  s.binds = {{"relative/path", true}};
  EXPECT_EQ(PreparedJail::Prepare(s, nullptr).status().code(), ErrorCode::kInvalidArgument);
  s = spec_;
  s.binds = {{"/", false}};
  EXPECT_EQ(PreparedJail::Prepare(s, nullptr).status().code(), ErrorCode::kInvalidArgument);
  s = spec_;
  s.binds = {{dir_ + "/missing", false}};
  EXPECT_EQ(PreparedJail::Prepare(s, nullptr).status().code(), ErrorCode::kNotFound);
}

TEST_F(PreparedJailTest, PlansBindsParentsFirstAtTheSamePathsUnderTheRoot) {
  JailSpec s = spec_;
  // The file comes first and the directory twice: the plan sorts and merges them.
  s.binds = {{dir_ + "/sb/disk.img", false}, {dir_ + "/sb", false}, {dir_ + "/sb/", true}};
  auto j = PreparedJail::Prepare(s, nullptr);
  ASSERT_TRUE(j.ok()) << j.status().ToString();
  std::vector<std::string> targets;
  for (const auto& b : (*j)->binds()) {
    if (b.source.rfind(dir_, 0) == 0) targets.push_back(b.target);
  }
  std::string root = dir_ + "/root";
  ASSERT_EQ(targets.size(), 2u);
  EXPECT_EQ(targets[0], root + dir_ + "/sb");
  EXPECT_EQ(targets[1], root + dir_ + "/sb/disk.img");
  for (const auto& b : (*j)->binds()) {
    if (b.target == root + dir_ + "/sb") {
      EXPECT_TRUE(b.writable);
      EXPECT_TRUE(b.is_dir);
    }
    if (b.source == "/usr") {
      EXPECT_FALSE(b.writable);
    }
  }
  // Every directory's parent is created before it.
  const auto& dirs = (*j)->dirs();
  for (size_t i = 0; i < dirs.size(); ++i) {
    std::string parent = dirs[i].substr(0, dirs[i].rfind('/'));
    if (parent == root) continue;
    auto at = std::find(dirs.begin(), dirs.end(), parent);
    ASSERT_NE(at, dirs.end()) << parent;
    EXPECT_LT(at - dirs.begin(), static_cast<long>(i));
  }
  EXPECT_THAT(dirs, ::testing::Contains(root + "/dev"));
}

}  // namespace
}  // namespace moat::vmm
