// String maps (metadata, env vars, host labels) as the JSON object text the stores keep (private
// to the store implementations).
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>

namespace moat::api::store {

// A JSON object of strings as a map; other values, and text that is not an object, are skipped.
inline std::map<std::string, std::string> StringMapFromJson(const std::string& text) {
  std::map<std::string, std::string> out;
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_object()) return out;
  for (auto& [k, v] : j.items()) {
    if (v.is_string()) out[k] = v.get<std::string>();
  }
  return out;
}

// A map as JSON text. PostgreSQL refuses text that is not UTF-8: invalid bytes become U+FFFD
// here rather than an exception.
inline std::string JsonText(const std::map<std::string, std::string>& m) {
  return nlohmann::json(m).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace moat::api::store
