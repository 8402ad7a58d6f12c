// The REST API's OpenAPI document: api/openapi.json, compiled in (served at /openapi.json).
#pragma once

#include <string_view>

namespace moat::api {

std::string_view OpenApiDocument();

}  // namespace moat::api
