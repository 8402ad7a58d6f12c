#include "guest/users.h"

#include <algorithm>
#include <charconv>

#include "common/fs.h"

namespace moat::guest {
namespace {

std::vector<std::string_view> SplitFields(std::string_view line, char sep) {
  std::vector<std::string_view> out;
  size_t start = 0;
  for (;;) {
    size_t at = line.find(sep, start);
    if (at == std::string_view::npos) {
      out.push_back(line.substr(start));
      return out;
    }
    out.push_back(line.substr(start, at - start));
    start = at + 1;
  }
}

template <typename T>
bool ParseId(std::string_view s, T* out) {
  if (s.empty()) return false;
  unsigned long v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || v > 0xfffffffeUL) return false;
  *out = static_cast<T>(v);
  return true;
}

template <typename F>
void ForEachLine(std::string_view text, F f) {
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (!line.empty() && line.front() != '#') f(line);
    start = end + 1;
  }
}

UserInfo Root() {
  UserInfo root;
  root.name = "root";
  root.home = "/root";
  root.shell = "/bin/sh";
  return root;
}

}  // namespace

std::vector<UserInfo> ParsePasswd(std::string_view text) {
  std::vector<UserInfo> out;
  ForEachLine(text, [&](std::string_view line) {
    // name:password:uid:gid:gecos:home:shell
    auto f = SplitFields(line, ':');
    if (f.size() != 7 || f[0].empty()) return;
    UserInfo u;
    u.name = std::string(f[0]);
    if (!ParseId(f[2], &u.uid) || !ParseId(f[3], &u.gid)) return;
    u.home = std::string(f[5]);
    u.shell = std::string(f[6]);
    out.push_back(std::move(u));
  });
  return out;
}

std::vector<GroupEntry> ParseGroup(std::string_view text) {
  std::vector<GroupEntry> out;
  ForEachLine(text, [&](std::string_view line) {
    // name:password:gid:member,member
    auto f = SplitFields(line, ':');
    if (f.size() != 4 || f[0].empty()) return;
    GroupEntry g;
    g.name = std::string(f[0]);
    if (!ParseId(f[2], &g.gid)) return;
    if (!f[3].empty()) {
      for (auto m : SplitFields(f[3], ',')) {
        if (!m.empty()) g.members.emplace_back(m);
      }
    }
    out.push_back(std::move(g));
  });
  return out;
}

UserTable UserTable::FromText(std::string_view passwd, std::string_view group) {
  UserTable t;
  t.users_ = ParsePasswd(passwd);
  t.groups_ = ParseGroup(group);
  return t;
}

UserTable UserTable::Load(const std::string& passwd_path, const std::string& group_path) {
  auto passwd = ReadFile(passwd_path);
  auto group = ReadFile(group_path);
  return FromText(passwd.ok() ? *passwd : std::string(), group.ok() ? *group : std::string());
}

UserInfo UserTable::WithGroups(UserInfo user) const {
  user.groups.push_back(user.gid);
  for (const auto& g : groups_) {
    if (std::find(g.members.begin(), g.members.end(), user.name) != g.members.end() &&
        std::find(user.groups.begin(), user.groups.end(), g.gid) == user.groups.end()) {
      user.groups.push_back(g.gid);
    }
  }
  return user;
}

Result<UserInfo> UserTable::Find(std::string_view name_or_uid) const {
  if (name_or_uid.empty()) return InvalidArgument("empty user name");
  uid_t uid = 0;
  bool numeric = ParseId(name_or_uid, &uid);
  for (const auto& u : users_) {
    if (numeric ? u.uid == uid : u.name == name_or_uid) return WithGroups(u);
  }
  if (name_or_uid == "root" || (numeric && uid == 0)) return WithGroups(Root());
  return NotFound("user " + std::string(name_or_uid) + " does not exist");
}

bool UserTable::Exists(std::string_view name) const {
  return std::any_of(users_.begin(), users_.end(),
                     [&](const UserInfo& u) { return u.name == name; });
}

std::string UserTable::UserName(uid_t uid) const {
  for (const auto& u : users_) {
    if (u.uid == uid) return u.name;
  }
  return uid == 0 ? "root" : std::to_string(uid);
}

std::string UserTable::GroupName(gid_t gid) const {
  for (const auto& g : groups_) {
    if (g.gid == gid) return g.name;
  }
  return gid == 0 ? "root" : std::to_string(gid);
}

}  // namespace moat::guest
