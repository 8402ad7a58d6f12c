// The guest's identity: what moat-guest is told after every boot and restore (with the clock and
// fresh entropy), and what state.json keeps so that a re-adopted sandbox still knows it (and a
// paused sandbox's manifest, so that one that reboots on resume is told it again).
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "common/status.h"

namespace moat::agent {

struct GuestIdentity {
  std::map<std::string, std::string> env;
  std::string user;     // default user for execs; empty: the guest's default ("user")
  std::string workdir;  // default cwd; empty: the user's home
  bool operator==(const GuestIdentity&) const = default;
};

nlohmann::json IdentityToJson(const GuestIdentity& id);
// `where` names the file in errors ("state.json", "manifest").
Result<GuestIdentity> IdentityFromJson(const nlohmann::json& j, std::string_view where);

}  // namespace moat::agent
