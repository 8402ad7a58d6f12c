#include "common/fs.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

namespace moat {
namespace {

class FsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = MakeTempDir("/tmp", "moat-fs-test.");
    ASSERT_TRUE(d.ok());
    dir_ = *d;
  }
  void TearDown() override {
    ASSERT_TRUE(RemoveTree(dir_).ok());
    EXPECT_FALSE(PathExists(dir_));
  }
  std::string dir_;
};

TEST_F(FsTest, WriteFileAtomicReplacesContentAndSetsMode) {
  std::string p = dir_ + "/f";
  ASSERT_TRUE(WriteFileAtomic(p, "one", 0600).ok());
  ASSERT_TRUE(WriteFileAtomic(p, "two", 0600).ok());
  EXPECT_EQ(*ReadFile(p), "two");
  struct stat st {};
  ASSERT_EQ(::stat(p.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(FsTest, MakeDirsCreatesParentsAndRefusesAFileInTheWay) {
  ASSERT_TRUE(MakeDirs(dir_ + "/a/b/c").ok());
  EXPECT_TRUE(PathExists(dir_ + "/a/b/c"));
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/file", "x").ok());
  EXPECT_FALSE(MakeDirs(dir_ + "/file/sub").ok());
}

TEST_F(FsTest, RemoveTreeRemovesNestedContentAndToleratesMissingPaths) {
  ASSERT_TRUE(MakeDirs(dir_ + "/t/x/y").ok());
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/t/x/y/z", "data").ok());
  ASSERT_TRUE(RemoveTree(dir_ + "/t").ok());
  EXPECT_FALSE(PathExists(dir_ + "/t"));
  EXPECT_TRUE(RemoveTree(dir_ + "/never").ok());
}

TEST_F(FsTest, ReadFileOfAMissingPathIsNotFound) {
  auto r = ReadFile(dir_ + "/missing");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kNotFound);
}

}  // namespace
}  // namespace moat
