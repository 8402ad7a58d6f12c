// Protobuf's canonical JSON mapping as the Connect JSON codec uses it (E2B-WIRE §5): base64
// bytes, 64-bit integers as strings, enums by name, RFC 3339 timestamps, lowerCamelCase names
// (snake_case accepted when parsing). Parsers take untrusted input and never throw.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "common/status.h"

namespace moat::api::codec {

using nlohmann::json;

std::string Base64Encode(std::string_view data);
// Standard or URL-safe alphabet, with or without padding.
Result<std::string> Base64Decode(std::string_view text);

// "2026-01-01T12:00:00.123456789Z" (fraction digits trimmed to 0, 3, 6 or 9).
std::string Rfc3339(int64_t unix_ns);
// Whole seconds, "2026-01-01T12:00:00Z".
std::string Rfc3339Seconds(int64_t unix_s);
// Parses RFC 3339 (Z or ±hh:mm, optional fraction) into unix seconds.
Result<int64_t> ParseRfc3339(std::string_view text);

// The member `camel` (or its snake_case spelling `snake`), or null if absent.
const json* Field(const json& msg, std::string_view camel, std::string_view snake = {});
// Typed getters: absent → nullopt; present with the wrong type → invalid_argument naming it.
Result<std::optional<std::string>> StringField(const json& msg, std::string_view camel,
                                               std::string_view snake = {});
Result<std::optional<bool>> BoolField(const json& msg, std::string_view camel,
                                      std::string_view snake = {});
// Integers: JSON numbers or decimal strings (int64 on the wire), range-checked.
Result<std::optional<int64_t>> IntField(const json& msg, std::string_view camel, int64_t min,
                                        int64_t max, std::string_view snake = {});
Result<std::optional<std::string>> BytesField(const json& msg, std::string_view camel,
                                              std::string_view snake = {});
Result<std::map<std::string, std::string>> StringMapField(const json& msg, std::string_view camel,
                                                          std::string_view snake = {});
// An enum given by name ("SIGNAL_SIGKILL") or number; `names` maps names to numbers.
Result<std::optional<int64_t>> EnumField(const json& msg, std::string_view camel,
                                         const std::map<std::string, int64_t>& names,
                                         std::string_view snake = {});

// Parses a request message: a JSON object, else invalid_argument.
Result<json> ParseMessage(std::string_view text);

}  // namespace moat::api::codec
