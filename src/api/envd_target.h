// Which sandbox (and port) a request is for, and as which Linux user: read from the headers a
// client sends (E2b-Sandbox-Id / E2b-Sandbox-Port, or Host 49983-<id>.<domain>; Authorization:
// Basic). Pure functions of the request, apart from the routes so that they can be fuzzed.
#pragma once

#include <optional>
#include <string>

#include "api/http/message.h"
#include "common/status.h"

namespace moat::api::routes {

inline constexpr int kEnvdPort = 49983;

// Where a request for a sandbox is going, from its headers; nullopt when it names no sandbox.
// A port other than kEnvdPort is the port proxy's (PortProxy).
struct EnvdTarget {
  std::string sandbox_id;
  int port = kEnvdPort;  // 0: the request named no valid port (not 1..65535 in decimal)
};
std::optional<EnvdTarget> EnvdTargetOf(const http::Request& req);
// The user of `Authorization: Basic base64("<user>:")`; empty if absent; invalid_argument if
// malformed.
Result<std::string> BasicAuthUser(const http::Request& req);

}  // namespace moat::api::routes
