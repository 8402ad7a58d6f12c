#include "guest/request.h"

namespace moat::guest {
namespace {

Status WrongType(std::string_view field, std::string_view want) {
  return InvalidArgument("field \"" + std::string(field) + "\" must be " + std::string(want));
}

const Json* Field(const Json& obj, std::string_view field) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(field);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

}  // namespace

Result<std::optional<std::string>> OptString(const Json& obj, std::string_view field) {
  const Json* v = Field(obj, field);
  if (v == nullptr) return std::optional<std::string>();
  if (!v->is_string()) return WrongType(field, "a string");
  return std::optional<std::string>(v->get<std::string>());
}

Result<std::optional<int64_t>> OptInt(const Json& obj, std::string_view field, int64_t min,
                                      int64_t max) {
  const Json* v = Field(obj, field);
  if (v == nullptr) return std::optional<int64_t>();
  if (!v->is_number_integer()) return WrongType(field, "an integer");
  if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
    return InvalidArgument("field \"" + std::string(field) + "\" is out of range");
  }
  int64_t n = v->get<int64_t>();
  if (n < min || n > max) {
    return InvalidArgument("field \"" + std::string(field) + "\" must be between " +
                           std::to_string(min) + " and " + std::to_string(max));
  }
  return std::optional<int64_t>(n);
}

Result<std::optional<bool>> OptBool(const Json& obj, std::string_view field) {
  const Json* v = Field(obj, field);
  if (v == nullptr) return std::optional<bool>();
  if (!v->is_boolean()) return WrongType(field, "a boolean");
  return std::optional<bool>(v->get<bool>());
}

Result<std::optional<std::vector<std::string>>> OptStringArray(const Json& obj,
                                                               std::string_view field) {
  const Json* v = Field(obj, field);
  if (v == nullptr) return std::optional<std::vector<std::string>>();
  if (!v->is_array()) return WrongType(field, "an array of strings");
  std::vector<std::string> out;
  for (const auto& item : *v) {
    if (!item.is_string()) return WrongType(field, "an array of strings");
    out.push_back(item.get<std::string>());
  }
  return std::optional<std::vector<std::string>>(std::move(out));
}

Result<std::optional<std::map<std::string, std::string>>> OptStringMap(const Json& obj,
                                                                       std::string_view field) {
  const Json* v = Field(obj, field);
  if (v == nullptr) return std::optional<std::map<std::string, std::string>>();
  if (!v->is_object()) return WrongType(field, "an object of strings");
  std::map<std::string, std::string> out;
  for (const auto& [k, item] : v->items()) {
    if (!item.is_string()) return WrongType(field, "an object of strings");
    out[k] = item.get<std::string>();
  }
  return std::optional<std::map<std::string, std::string>>(std::move(out));
}

Result<std::string> RequiredString(const Json& obj, std::string_view field) {
  MOAT_ASSIGN_OR_RETURN(auto v, OptString(obj, field));
  if (!v) return InvalidArgument("field \"" + std::string(field) + "\" is required");
  return *v;
}

Result<int64_t> RequiredInt(const Json& obj, std::string_view field, int64_t min, int64_t max) {
  MOAT_ASSIGN_OR_RETURN(auto v, OptInt(obj, field, min, max));
  if (!v) return InvalidArgument("field \"" + std::string(field) + "\" is required");
  return *v;
}

std::string DumpJson(const Json& value) {
  return value.dump(-1, ' ', false, Json::error_handler_t::replace);
}

Json EndJson(const Status& status) {
  if (status.ok()) return Json::object();
  std::string message = status.message();
  // Keep END frames well under the JSON payload limit whatever the message holds.
  if (message.size() > 4096) message.resize(4096);
  return Json{
      {"error", {{"code", std::string(ErrorCodeName(status.code()))}, {"message", message}}}};
}

}  // namespace moat::guest
