// Typed access to the fields of untrusted JSON requests. Every accessor checks the type first
// (nlohmann's getters throw on a mismatch) and names the field in its error:
//   invalid_argument: field "pid" must be an integer
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace moat::guest {

using Json = nlohmann::json;

// Absent or null fields are nullopt; a present field of the wrong type is an error.
Result<std::optional<std::string>> OptString(const Json& obj, std::string_view field);
Result<std::optional<int64_t>> OptInt(const Json& obj, std::string_view field, int64_t min,
                                      int64_t max);
Result<std::optional<bool>> OptBool(const Json& obj, std::string_view field);
Result<std::optional<std::vector<std::string>>> OptStringArray(const Json& obj,
                                                               std::string_view field);
Result<std::optional<std::map<std::string, std::string>>> OptStringMap(const Json& obj,
                                                                       std::string_view field);
Result<std::string> RequiredString(const Json& obj, std::string_view field);
Result<int64_t> RequiredInt(const Json& obj, std::string_view field, int64_t min, int64_t max);

// Serialises without throwing: invalid UTF-8 (file names, argv) is replaced, not fatal.
std::string DumpJson(const Json& value);
// The END payload for a status: {} or {"error":{"code","message"}}.
Json EndJson(const Status& status);

}  // namespace moat::guest
