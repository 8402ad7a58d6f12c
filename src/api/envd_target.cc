#include "api/envd_target.h"

#include <strings.h>

#include <cstdlib>

#include "api/codec/protojson.h"
#include "api/data_plane.h"

namespace moat::api::routes {
namespace {

bool IsSandboxId(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) return false;
  }
  return true;
}

// "8080" → 8080; 0 for anything but 1..65535 in decimal (the port proxy answers 400 then).
int ParsePort(std::string_view s) {
  if (s.empty() || s.size() > 5 || s.find_first_not_of("0123456789") != std::string_view::npos) {
    return 0;
  }
  int port = std::atoi(std::string(s).c_str());
  return port <= 65535 ? port : 0;
}

}  // namespace

std::optional<EnvdTarget> EnvdTargetOf(const http::Request& req) {
  std::string id = req.Header("E2b-Sandbox-Id");
  if (!id.empty()) {
    EnvdTarget t{id, kEnvdPort};
    std::string port = req.Header("E2b-Sandbox-Port");
    if (!port.empty()) t.port = ParsePort(port);
    return t;
  }
  // Host: <port>-<id>.<domain>[:listen port]
  std::string host = req.Header("Host");
  size_t dot = host.find('.');
  if (dot == std::string::npos) return std::nullopt;
  std::string label = host.substr(0, dot);
  size_t dash = label.find('-');
  if (dash == std::string::npos || dash == 0) return std::nullopt;
  std::string port = label.substr(0, dash);
  if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos) {
    return std::nullopt;
  }
  std::string sid = label.substr(dash + 1);
  if (!IsSandboxId(sid)) return std::nullopt;
  return EnvdTarget{sid, ParsePort(port)};
}

Result<std::string> BasicAuthUser(const http::Request& req) {
  std::string auth = req.Header("Authorization");
  if (auth.empty()) return std::string();
  if (auth.size() < 6 || ::strncasecmp(auth.c_str(), "Basic ", 6) != 0) {
    return InvalidArgument("Authorization: expected Basic credentials");
  }
  auto decoded = codec::Base64Decode(auth.substr(6));
  if (!decoded.ok()) return InvalidArgument("Authorization: bad base64");
  std::string user = decoded->substr(0, decoded->find(':'));
  return user;
}

}  // namespace moat::api::routes

namespace moat::api {

std::string MaskedHost(std::string_view mask, uint16_t port) {
  constexpr std::string_view kPort = "${PORT}";
  std::string out;
  for (size_t i = 0; i < mask.size();) {
    if (mask.substr(i, kPort.size()) == kPort) {
      out += std::to_string(port);
      i += kPort.size();
    } else {
      out += mask[i++];
    }
  }
  return out;
}

}  // namespace moat::api
