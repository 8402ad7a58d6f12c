// The host agent's HTTP API on the wire (api/agent-api.md), in the one place both of its ends
// use: the agent's server (host/agent_server.h) and the control plane's client
// (api/fleet/remote_host_agent.h). Paths, id rules, the JSON of every body, and how an error
// becomes an HTTP status and {"code","message"} and back — so the two ends cannot drift apart.
// Decoders never throw: a body of the wrong shape is invalid_argument naming the field.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "api/host_agent.h"
#include "common/status.h"

namespace moat::api::fleet {

// The largest body either end sends or accepts on a control call (413 past it).
inline constexpr size_t kAgentBodyLimit = 1024 * 1024;

// Sandbox ids as the control plane mints them: 20 of [a-z0-9].
bool IsSandboxId(std::string_view id);

// What a relayed data-plane request (envd or a sandbox port, RelayDataPlane) is signed for — the
// `host_id` argument of FleetToken::Header/Verify: "<host>/<sandbox>:<port>", so that a signature
// holds for one sandbox's port on one host and cannot be replayed against another.
std::string DataPlaneSubject(std::string_view host_id, std::string_view sandbox_id, int port);
// Snapshot ids: "snap" + 16 of [a-z0-9].
bool IsSnapshotId(std::string_view id);
// A create's templateID: a snapshot id, or the name of the host's base template (1–64 of
// [A-Za-z0-9._-], not "." or ".."; it never reaches a path as anything but one name).
bool IsTemplateId(std::string_view id);

// "/v1/sandboxes/<id>" and "/v1/snapshots/<id>" (ids are [a-z0-9]: nothing to escape).
std::string SandboxPath(std::string_view id);
std::string SnapshotPath(std::string_view snapshot_id);

// Errors: the HTTP status of a code (not_found 404; already_exists, failed_precondition and
// aborted 409; invalid_argument 400; unavailable 503; internal 500; the rest as the public API
// maps them), and the body {"code":"<ErrorCodeName>","message":…}.
int AgentHttpStatus(ErrorCode code);
std::string ErrorBody(const Status& status);
// The Status a non-2xx answer carries: its body's code and message; a body without a known code
// (a proxy's page, a truncated answer) gives unavailable for 502/503/504 and internal otherwise,
// with the HTTP status and the start of the body.
Status StatusOfErrorAnswer(int http_status, std::string_view body);

// A JSON body: invalid_argument when it does not parse.
Result<nlohmann::json> ParseJsonBody(std::string_view body);
std::string DumpJson(const nlohmann::json& j);
// The string `key` of an object: invalid_argument naming it when it is absent or not a string.
// (The snapshot calls' bodies, {"name"} and {"snapshotID"}, are read with it.)
Result<std::string> StringField(const nlohmann::json& j, std::string_view key);

nlohmann::json TemplateToJson(const HostTemplateInfo& t);
Result<HostTemplateInfo> TemplateFromJson(const nlohmann::json& j);

nlohmann::json InventoryToJson(const HostInventory& inv);
Result<HostInventory> InventoryFromJson(const nlohmann::json& j);

// {"state":"running"|"paused"|"gone","fault"?:…}
nlohmann::json ProbeToJson(const HostSandboxStatus& s);
Result<HostSandboxStatus> ProbeFromJson(const nlohmann::json& j);

// {"id","templateID","envVars":{…},"egress":{…}|null}; the ids are checked (IsSandboxId,
// IsTemplateId).
nlohmann::json StartToJson(const HostSandboxStart& start);
Result<HostSandboxStart> StartFromJson(const nlohmann::json& j);

// {"childIDs":[ids]}; every id is checked (IsSandboxId).
nlohmann::json ForkToJson(const std::vector<std::string>& child_ids);
Result<std::vector<std::string>> ForkFromJson(const nlohmann::json& j);

// Custom template builds (docs/templates.md) run on the agent in the background: the control
// plane sends the uploads a build needs (PUT kTemplateFilePath pieces), starts it (POST
// /v1/templates/builds) and polls its log and outcome (GET /v1/templates/builds/{id}).
// The largest piece of an uploaded file per call.
inline constexpr size_t kTemplateFilePiece = 8 * 1024 * 1024;
// "/v1/template-files/<team>/<hash>": team ids are [a-z0-9], hashes 64 hex digits.
bool IsFilesHash(std::string_view hash);
bool IsTeamId(std::string_view team);
std::string TemplateFilePath(std::string_view team, std::string_view hash);
// {"buildID","templateID","teamID","start","vcpus","memoryMiB","minFreeDiskMiB","files":[hash]};
// BuildFromJson maps each hash to `files_dir`/<team>/<hash> (where the agent keeps them).
nlohmann::json BuildToJson(const HostTemplateBuild& b);
Result<HostTemplateBuild> BuildFromJson(const nlohmann::json& j, const std::string& files_dir);
// A build as the agent reports it: {"status":"building"|"ready"|"error","logs":[…],"next":N,
// "result":{"diskMiB","result"}?,"error":{"code","message","step"}?}.
struct BuildProgress {
  std::string status;
  std::vector<HostBuildLog> logs;
  int64_t next = 0;  // the offset to ask for next
  std::optional<HostTemplateBuilt> built;
  Status error;
  std::string step;
};
nlohmann::json ProgressToJson(const BuildProgress& p);
Result<BuildProgress> ProgressFromJson(const nlohmann::json& j);

// The fields of HostSandboxUsage, camelCase. netEgressBytes and netIngressBytes may be absent
// (agents from before them): 0.
nlohmann::json UsageToJson(const HostSandboxUsage& u);
Result<HostSandboxUsage> UsageFromJson(const nlohmann::json& j);

}  // namespace moat::api::fleet
