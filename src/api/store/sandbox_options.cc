#include <nlohmann/json.hpp>

#include "api/store/store.h"

namespace moat::api::store {

std::string SandboxOptionsToJson(const SandboxOptions& o) {
  nlohmann::json j = nlohmann::json::object();
  // Only what differs from the defaults: most sandboxes store "{}".
  if (!o.auto_pause_memory) j["autoPauseMemory"] = false;
  if (o.auto_resume) j["autoResume"] = true;
  if (!o.mask_request_host.empty()) j["maskRequestHost"] = o.mask_request_host;
  if (!o.default_user.empty()) j["defaultUser"] = o.default_user;
  return j.dump();
}

SandboxOptions SandboxOptionsFromJson(std::string_view text) {
  SandboxOptions o;
  auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return o;
  if (auto it = j.find("autoPauseMemory"); it != j.end() && it->is_boolean()) {
    o.auto_pause_memory = it->get<bool>();
  }
  if (auto it = j.find("autoResume"); it != j.end() && it->is_boolean()) {
    o.auto_resume = it->get<bool>();
  }
  if (auto it = j.find("maskRequestHost"); it != j.end() && it->is_string()) {
    o.mask_request_host = it->get<std::string>();
  }
  if (auto it = j.find("defaultUser"); it != j.end() && it->is_string()) {
    o.default_user = it->get<std::string>();
  }
  return o;
}

}  // namespace moat::api::store
