#include "guest/users.h"

#include <gtest/gtest.h>

namespace moat::guest {
namespace {

constexpr const char* kPasswd =
    "root:x:0:0:root:/root:/bin/bash\n"
    "# a comment\n"
    "broken line without fields\n"
    "bad:x:notanumber:0::/:/bin/sh\n"
    "user:x:1000:1000:User,,,:/home/user:/bin/bash\r\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin";
constexpr const char* kGroup =
    "root:x:0:\n"
    "sudo:x:27:user,other\n"
    "docker:x:999:user\n"
    "user:x:1000:\n"
    "garbage\n";

TEST(ParsePasswd, SkipsCommentsAndMalformedLines) {
  auto users = ParsePasswd(kPasswd);
  ASSERT_EQ(users.size(), 3u);
  EXPECT_EQ(users[1].name, "user");
  EXPECT_EQ(users[1].uid, 1000u);
  EXPECT_EQ(users[1].home, "/home/user");
  EXPECT_EQ(users[1].shell, "/bin/bash");  // the \r of a CRLF line is not part of it
}

TEST(ParseGroup, ReadsMembers) {
  auto groups = ParseGroup(kGroup);
  ASSERT_EQ(groups.size(), 4u);
  EXPECT_EQ(groups[1].members, (std::vector<std::string>{"user", "other"}));
  EXPECT_TRUE(groups[0].members.empty());
}

TEST(UserTable, FindsUsersByNameOrUidWithSupplementaryGroups) {
  auto table = UserTable::FromText(kPasswd, kGroup);
  auto user = table.Find("user");
  ASSERT_TRUE(user.ok());
  EXPECT_EQ(user->groups, (std::vector<gid_t>{1000, 27, 999}));
  auto by_uid = table.Find("65534");
  ASSERT_TRUE(by_uid.ok());
  EXPECT_EQ(by_uid->name, "nobody");
  EXPECT_EQ(table.Find("ghost").status().code(), ErrorCode::kNotFound);
}

TEST(UserTable, KnowsRootEvenWithoutAPasswdFile) {
  auto table = UserTable::FromText("", "");
  auto root = table.Find("root");
  ASSERT_TRUE(root.ok());
  EXPECT_EQ(root->uid, 0u);
  EXPECT_EQ(root->home, "/root");
  EXPECT_EQ(table.UserName(0), "root");
  EXPECT_EQ(table.UserName(4242), "4242");
}

TEST(UserTable, NamesOwnersAndGroups) {
  auto table = UserTable::FromText(kPasswd, kGroup);
  EXPECT_EQ(table.UserName(1000), "user");
  EXPECT_EQ(table.GroupName(27), "sudo");
  EXPECT_TRUE(table.Exists("user"));
  EXPECT_FALSE(table.Exists("bad"));
}

}  // namespace
}  // namespace moat::guest
