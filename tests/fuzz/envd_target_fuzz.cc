// libFuzzer target for sandbox targeting (api/envd_target.h): which sandbox and port a
// request is for (E2b-Sandbox-Id / E2b-Sandbox-Port, or the Host header) and the Linux user
// of its `Authorization: Basic`. Every header comes from a client. Input: header values
// separated by '\n', in the order Host, E2b-Sandbox-Id, E2b-Sandbox-Port, Authorization.
// Checks that nothing crashes, that a port is 0..65535, that an id taken from Host is a
// sandbox id (lower-case letters and digits, at most 64), and that the user holds no ':'.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "api/envd_target.h"

namespace routes = moat::api::routes;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);  // bytes as chars
  moat::api::http::Request req;
  for (const char* name : {"Host", "E2b-Sandbox-Id", "E2b-Sandbox-Port", "Authorization"}) {
    size_t nl = in.find('\n');
    std::string_view value = in.substr(0, nl);
    in = nl == std::string_view::npos ? std::string_view() : in.substr(nl + 1);
    if (!value.empty()) req.headers[name] = std::string(value);
  }

  auto t = routes::EnvdTargetOf(req);
  if (t) {
    if (t->sandbox_id.empty() || t->port < 0 || t->port > 65535) std::abort();
    if (!req.HasHeader("E2b-Sandbox-Id")) {
      if (t->sandbox_id.size() > 64) std::abort();
      for (char c : t->sandbox_id) {
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) std::abort();
      }
    }
  }
  auto user = routes::BasicAuthUser(req);
  if (user.ok() && user->find(':') != std::string::npos) std::abort();
  if (!req.HasHeader("Authorization") && (!user.ok() || !user->empty())) std::abort();
  return 0;
}
