// The control API's requests, parsed into typed actions (E2B-WIRE §2). Parsing validates
// everything a client sends; the SandboxController executes actions and trusts them.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "api/codec/query.h"
#include "api/store/store.h"
#include "common/egress_policy.h"
#include "common/status.h"

namespace moat::api {

inline constexpr int64_t kMaxTimeoutSeconds = 24 * 3600;

struct CreateSandboxAction {
  std::string template_id = "base";
  int64_t timeout_s = 300;
  std::map<std::string, std::string> metadata;
  std::map<std::string, std::string> env_vars;
  bool auto_pause = false;
  // `allow_internet_access` and the `network` object.
  net::EgressPolicy egress;
  // `network.allowPublicTraffic` (default true): false guards the sandbox's ports with a
  // traffic access token.
  bool allow_public_traffic = true;
  // `autoPauseMemory`, `autoResume` ({"enabled": bool}), `network.maskRequestHost`.
  store::SandboxOptions options;
};

// POST /v2/sandboxes and POST /sandboxes (`default_timeout_s`: 300 and 15).
Result<CreateSandboxAction> ParseCreateSandbox(std::string_view body, int64_t default_timeout_s);
// PUT /sandboxes/{id}/network: `allow_internet_access`, `allowOut`, `denyOut` (and the
// proxying fields moat does not apply). The body replaces the whole policy.
Result<net::EgressPolicy> ParseNetworkUpdate(std::string_view body);
// POST /sandboxes/{id}/pause: {"memory": bool} (default true; an empty body too). false keeps
// only the filesystem.
Result<bool> ParsePauseKeepsMemory(std::string_view body);
// {"timeout": s} (timeout, connect) or {"duration": s} (refreshes): the seconds, or
// `default_s` when the field is absent (nullopt default: the field is required).
Result<int64_t> ParseSeconds(std::string_view body, std::string_view field,
                             std::optional<int64_t> default_s);
// The query of GET /v2/sandboxes (and GET /sandboxes, `v2` false: running only, no paging).
Result<store::SandboxFilter> ParseListQuery(const codec::QueryParams& query, bool v2);

struct CreateSnapshotAction {
  std::string name;  // empty: unnamed
};

// POST /sandboxes/{sandboxID}/snapshots {"name"?}. A name is 1..128 of [A-Za-z0-9._:/-], not
// "base" (it is usable as a templateID, where "base" means the built-in template).
Result<CreateSnapshotAction> ParseCreateSnapshot(std::string_view body);
// GET /snapshots?sandboxID=&name=&limit=&nextToken= (the team is the caller's).
Result<store::SnapshotFilter> ParseSnapshotListQuery(const codec::QueryParams& query);

// GET /sandboxes/{id}/metrics?start=&end= (unix seconds, each optional, start <= end).
struct MetricsRange {
  std::optional<int64_t> start_s, end_s;
};
Result<MetricsRange> ParseMetricsQuery(const codec::QueryParams& query);

}  // namespace moat::api
