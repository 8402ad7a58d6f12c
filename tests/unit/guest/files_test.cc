#include "guest/files.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/fs.h"

namespace moat::guest {
namespace {

TEST(ResolvePath, KeepsAbsolutePathsAndNormalisesThem) {
  EXPECT_EQ(ResolvePath("/a/b/", "/home/u"), "/a/b");
  EXPECT_EQ(ResolvePath("/a//./b/../c", "/home/u"), "/a/c");
  EXPECT_EQ(ResolvePath("/", "/home/u"), "/");
  EXPECT_EQ(ResolvePath("/../..", "/home/u"), "/");
}

TEST(ResolvePath, TakesRelativePathsFromHome) {
  EXPECT_EQ(ResolvePath("notes.txt", "/home/user"), "/home/user/notes.txt");
  EXPECT_EQ(ResolvePath("./a/../b", "/home/user"), "/home/user/b");
  EXPECT_EQ(ResolvePath("../../../etc", "/home/user"), "/etc");
  EXPECT_EQ(ResolvePath("x", ""), "/x");
}

TEST(ParentDir, IsTheDirectoryPart) {
  EXPECT_EQ(ParentDir("/a/b"), "/a");
  EXPECT_EQ(ParentDir("/a"), "/");
}

TEST(PermissionsString, LooksLikeLs) {
  EXPECT_EQ(PermissionsString(S_IFREG | 0644), "-rw-r--r--");
  EXPECT_EQ(PermissionsString(S_IFDIR | 0755), "drwxr-xr-x");
  EXPECT_EQ(PermissionsString(S_IFDIR | 01777), "drwxrwxrwt");
  EXPECT_EQ(PermissionsString(S_IFREG | 04755), "-rwsr-xr-x");
  EXPECT_EQ(PermissionsString(S_IFLNK | 0777), "lrwxrwxrwx");
}

TEST(EntryJson, DescribesAFile) {
  struct stat st {};
  st.st_mode = S_IFREG | 0600;
  st.st_size = 12;
  st.st_uid = 1000;
  st.st_gid = 1000;
  st.st_mtim.tv_sec = 2;
  st.st_mtim.tv_nsec = 5;
  auto users = UserTable::FromText("user:x:1000:1000::/home/user:/bin/sh\n", "user:x:1000:\n");
  Json e = EntryJson("/home/user/f", st, users);
  EXPECT_EQ(e["name"], "f");
  EXPECT_EQ(e["type"], "file");
  EXPECT_EQ(e["size"], 12);
  EXPECT_EQ(e["mode"], 0600);
  EXPECT_EQ(e["owner"], "user");
  EXPECT_EQ(e["group"], "user");
  EXPECT_EQ(e["mtime_ns"], 2000000005);
  EXPECT_FALSE(e.contains("symlink_target"));
}

class FilesOnDisk : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = MakeTempDir("/tmp", "moat-files-");
    ASSERT_TRUE(dir.ok()) << dir.status().ToString();
    dir_ = *dir;
  }
  void TearDown() override { (void)RemoveTree(dir_); }
  std::string dir_;
  UserTable users_ = UserTable::FromText("", "");
};

TEST_F(FilesOnDisk, ASymlinkShowsWhereItLeadsNeverThroughAMagicLink) {
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/file1.txt", "hi", 0644).ok());
  ASSERT_EQ(::symlink("file1.txt", (dir_ + "/link").c_str()), 0);
  ASSERT_EQ(::symlink("missing", (dir_ + "/dangling").c_str()), 0);
  ASSERT_EQ(::symlink("/proc/self/fd/0", (dir_ + "/magic").c_str()), 0);
  auto link = StatPath(dir_ + "/link", users_);
  ASSERT_TRUE(link.ok()) << link.status().ToString();
  EXPECT_EQ((*link)["type"], "symlink");
  EXPECT_EQ((*link)["symlink_target"], "file1.txt");
  EXPECT_EQ((*link)["target"]["type"], "file");
  EXPECT_EQ((*link)["target"]["mode"], 0644);
  EXPECT_EQ((*link)["target"]["path"], dir_ + "/file1.txt");
  EXPECT_FALSE(StatPath(dir_ + "/dangling", users_)->contains("target"));
  EXPECT_FALSE(StatPath(dir_ + "/magic", users_)->contains("target"))
      << "what moat-guest holds open is nobody's business";
}

TEST_F(FilesOnDisk, AListingIsEnvdsWalkByteOrderEachDirectoryFollowedByItsContents) {
  for (const char* d : {"/b", "/b/y", "/b/x", "/a"}) ASSERT_TRUE(MakeDirs(dir_ + d).ok());
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/C.txt", "", 0644).ok());
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/a/f", "", 0644).ok());
  auto entries = ListDir(dir_, 2, users_, 100);
  ASSERT_TRUE(entries.ok()) << entries.status().ToString();
  std::vector<std::string> paths;
  for (const auto& e : *entries) paths.push_back(e["path"].get<std::string>().substr(dir_.size()));
  EXPECT_EQ(paths, (std::vector<std::string>{"/C.txt", "/a", "/a/f", "/b", "/b/x", "/b/y"}));
}

}  // namespace
}  // namespace moat::guest
