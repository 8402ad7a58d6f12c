// The guest's identity: what moat-guest is told after every boot and restore (with the clock and
// fresh entropy), and what state.json keeps so that a re-adopted sandbox still knows it.
#pragma once

#include <map>
#include <string>

namespace moat::agent {

struct GuestIdentity {
  std::map<std::string, std::string> env;
  std::string user;     // default user for execs; empty: the guest's default ("user")
  std::string workdir;  // default cwd; empty: the user's home
};

}  // namespace moat::agent
