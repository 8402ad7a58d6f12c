// `moat template`'s calls to moatd, strictly as shared/E2B-TEMPLATES.md §1-§2 describe them: a
// build from a parsed Dockerfile (register it, upload what its COPY steps need, start it, follow
// its logs to the end), and the list, info and delete of templates.
#pragma once

#include <chrono>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cli/api_client.h"
#include "cli/dockerfile.h"
#include "cli/template_archive.h"
#include "common/status.h"

namespace moat::cli {

using nlohmann::json;

// How often the build status is polled: the SDK's pace (E2B-TEMPLATES §1, step 5).
inline constexpr std::chrono::milliseconds kBuildPollInterval{200};

// A line of a build's log: one of the status endpoint's logEntries, or one of the client's own
// (uploads), stamped with the time it happened.
struct BuildLogLine {
  std::string timestamp;  // RFC 3339
  std::string level;      // debug, info, warn, error
  std::string message;
};

// What a build shows as it goes. Both may be null.
struct BuildObserver {
  std::function<void(const BuildLogLine&)> log;
  std::function<void()> polled;  // after each status poll: lets a progress line tick
};

struct TemplateBuildOptions {
  std::string name;  // [namespace/]alias[:tag]; checked by the server
  int cpu_count = 2;
  int memory_mb = 1024;
  std::optional<int> min_free_disk_mb;
  bool no_cache = false;  // the start call's top-level force: no cached layer is reused
  std::chrono::milliseconds poll_interval = kBuildPollInterval;
};

// The files of one COPY step: what it matched in the context and their filesHash.
struct CopyFiles {
  size_t step = 0;  // index in DockerfileTemplate::steps
  std::string source;
  std::vector<ContextEntry> entries;
  std::string files_hash;
};

// Matches and hashes every COPY step, in step order. Errors name the Dockerfile line.
Result<std::vector<CopyFiles>> PrepareCopies(const BuildContext& context,
                                             const DockerfileTemplate& dockerfile);

// The body of POST /v2/templates/{templateID}/builds/{buildID} (TemplateBuildStartV2): the COPY
// steps carry the hashes of `copies`, in order.
json BuildStartBody(const DockerfileTemplate& dockerfile, const std::vector<CopyFiles>& copies,
                    bool force);

struct TemplateBuildResult {
  std::string template_id;
  std::string build_id;
  std::string name;
};

// The whole build: POST /v3/templates, for each distinct filesHash GET /templates/{id}/files/{hash}
// and, when the server lacks the files, a PUT of their tar.gz to the URL it gave (no API key:
// the URL authenticates itself), POST /v2/templates/{id}/builds/{buildID}, then the status polled
// with logsOffset until the build is ready or failed and a page brings no more log lines. A
// failed build is an error carrying the server's reason.message.
Result<TemplateBuildResult> BuildTemplate(ApiClient& api, const BuildContext& context,
                                          const DockerfileTemplate& dockerfile,
                                          const TemplateBuildOptions& options,
                                          const BuildObserver& observer);

// A template name from a directory: its base name lower-cased, every run of characters outside
// [a-z0-9_-] as one '-', no '-' at either end; "" when nothing is left.
std::string TemplateNameFromDir(std::string_view dir);

// GET /templates: Template[].
Result<json> ListTemplates(ApiClient& api);
// GET /templates/{templateID} (a name works too): TemplateWithBuilds. not_found "template X not
// found".
Result<json> GetTemplate(ApiClient& api, const std::string& name_or_id);
// DELETE /templates/{templateID} (a name works too). not_found "template X not found".
Status DeleteTemplate(ApiClient& api, const std::string& name_or_id);

}  // namespace moat::cli
