// `moat team quotas`: what it sends and prints. A quota is named on the command line in kebab case
// (max-sandboxes) and in the API in camel case (maxSandboxes, api/openapi.json TeamQuotas).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/status.h"

namespace moat::cli {

// `--set NAME=VALUE` arguments as a PUT /teams/{teamID}/quotas body: VALUE is a non-negative
// integer, or `default` (null: back to moatd's default). NAME is kebab or camel case; an unknown
// one, a bad value or a quota given twice is invalid_argument naming it.
Result<nlohmann::json> ParseQuotaSets(const std::vector<std::string>& sets);

// The TeamQuotas answer as people read it: the team, then one row per quota with its limit
// (marked when it is the default) and what the team uses of it now.
std::string FormatQuotas(const nlohmann::json& quotas);

}  // namespace moat::cli
