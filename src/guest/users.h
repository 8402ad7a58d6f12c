// Users and groups from /etc/passwd and /etc/group, parsed by hand: moat-guest is static, and
// getpwnam/getgrnam need NSS modules that a static binary cannot load.
#pragma once

#include <sys/types.h>

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace moat::guest {

struct UserInfo {
  std::string name;
  uid_t uid = 0;
  gid_t gid = 0;
  std::string home;
  std::string shell;
  std::vector<gid_t> groups;  // supplementary groups, the primary one included
};

struct GroupEntry {
  std::string name;
  gid_t gid = 0;
  std::vector<std::string> members;
};

// Malformed lines are skipped (a broken line must not hide every other user).
std::vector<UserInfo> ParsePasswd(std::string_view text);
std::vector<GroupEntry> ParseGroup(std::string_view text);

// A snapshot of the user database; load one per request (the files change when a sandbox runs
// useradd).
class UserTable {
 public:
  static UserTable FromText(std::string_view passwd, std::string_view group);
  // Missing files are an empty table; root is always known.
  static UserTable Load(const std::string& passwd_path = "/etc/passwd",
                        const std::string& group_path = "/etc/group");

  // By name, or by a decimal uid. NotFound names the user.
  Result<UserInfo> Find(std::string_view name_or_uid) const;
  bool Exists(std::string_view name) const;
  // Names for stat entries; the number as text when unknown.
  std::string UserName(uid_t uid) const;
  std::string GroupName(gid_t gid) const;

 private:
  UserInfo WithGroups(UserInfo user) const;

  std::vector<UserInfo> users_;
  std::vector<GroupEntry> groups_;
};

}  // namespace moat::guest
