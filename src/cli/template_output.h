// What `moat template` prints: the list and one template for people (--json prints the API's
// own answer), and a build's log as it streams.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "cli/template_client.h"

namespace moat::cli {

// `template list`: Template[] as a table.
std::string FormatTemplateList(const nlohmann::json& templates);
// `template info`: TemplateWithBuilds as "field: value" lines, then its builds as a table.
std::string FormatTemplateInfo(const nlohmann::json& tmpl);

// "HH:MM:SS level message": the timestamp in local time (its raw time of day if unparsable),
// the level padded to five columns, and the message without ANSI escapes or other control
// characters (it comes from the build, so from whatever the Dockerfile runs).
std::string FormatBuildLogLine(const BuildLogLine& line);

// "[3/7] RUN pip install flask" from a builder's step line ("[builder 3/7] RUN pip install flask",
// "CACHED [builder 3/7] …"); nullopt for other lines.
std::optional<std::string> BuildProgressLabel(std::string_view message);

}  // namespace moat::cli
