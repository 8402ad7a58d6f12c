#include "guest/files.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

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

}  // namespace
}  // namespace moat::guest
