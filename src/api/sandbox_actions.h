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
#include "common/status.h"

namespace moat::api {

inline constexpr int64_t kMaxTimeoutSeconds = 24 * 3600;

struct CreateSandboxAction {
  std::string template_id = "base";
  int64_t timeout_s = 300;
  std::map<std::string, std::string> metadata;
  std::map<std::string, std::string> env_vars;
  bool auto_pause = false;
};

// POST /v2/sandboxes and POST /sandboxes (`default_timeout_s`: 300 and 15).
Result<CreateSandboxAction> ParseCreateSandbox(std::string_view body, int64_t default_timeout_s);
// {"timeout": s} (timeout, connect) or {"duration": s} (refreshes): the seconds, or
// `default_s` when the field is absent (nullopt default: the field is required).
Result<int64_t> ParseSeconds(std::string_view body, std::string_view field,
                             std::optional<int64_t> default_s);
// The query of GET /v2/sandboxes (and GET /sandboxes, `v2` false: running only, no paging).
Result<store::SandboxFilter> ParseListQuery(const codec::QueryParams& query, bool v2);

}  // namespace moat::api
