#include "agent/guest_identity.h"

namespace moat::agent {

using nlohmann::json;

json IdentityToJson(const GuestIdentity& id) {
  return {{"env", id.env}, {"user", id.user}, {"workdir", id.workdir}};
}

Result<GuestIdentity> IdentityFromJson(const json& j, std::string_view where) {
  std::string w(where);
  if (!j.is_object()) return InvalidArgument(w + ": \"identity\" must be an object");
  GuestIdentity id;
  for (auto& [key, v] : j.items()) {
    if (key == "env") {
      if (!v.is_object()) return InvalidArgument(w + ": \"identity.env\" must be an object");
      for (auto& [name, value] : v.items()) {
        if (!value.is_string()) {
          return InvalidArgument(w + ": \"identity.env." + name + "\" must be a string");
        }
        id.env[name] = value.get<std::string>();
      }
    } else if (key == "user" || key == "workdir") {
      if (!v.is_string()) return InvalidArgument(w + ": \"identity." + key + "\" must be a string");
      (key == "user" ? id.user : id.workdir) = v.get<std::string>();
    } else {
      return InvalidArgument(w + ": unknown key \"identity." + key + "\"");
    }
  }
  return id;
}

}  // namespace moat::agent
