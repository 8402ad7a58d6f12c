// DataPlane: what serves a request that names a sandbox (envd's routes, or a port inside the
// sandbox: api/envd_target.h) once ApiServer has told it apart from the control routes.
//
//  - LocalDataPlane (host side: `moatd serve`, and every `moatd agent`): envd's routes over the
//    guest channel and the port proxy to the sandbox's slot address.
//  - fleet::RelayDataPlane (`moatd api`): relays the request as bytes to the agent of the host
//    that runs the sandbox, which serves it with its LocalDataPlane.
//
// The control plane holds only this interface: no guest channel, slot address or VM is reached
// through it but by the host that owns them.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "api/envd_target.h"
#include "api/http/message.h"
#include "api/http/server.h"
#include "common/status.h"

namespace moat::api {

// Where port `port` of a sandbox is reached from moatd: for a sandbox with a network slot,
// `{slot address, port}` (the slot's DNAT forwards it to the guest).
struct SandboxEndpoint {
  std::string ipv4;  // dotted quad
  uint16_t port = 0;
  // Non-empty: the sandbox's ports are not public; a request must carry this value in
  // kTrafficTokenHeader (403 otherwise), and the header is not passed on.
  std::string traffic_access_token;
  // Non-empty: the Host header sent upstream instead of the client's (E2B's
  // network.maskRequestHost, its "${PORT}" replaced); the client's goes in X-Forwarded-Host.
  std::string upstream_host;
  // The sandbox's team: what the port proxy records (code-interpreter runs) is filed under it.
  std::string team_id;
};

// `mask` with every "${PORT}" replaced by `port` (empty stays empty).
std::string MaskedHost(std::string_view mask, uint16_t port);

inline constexpr char kTrafficTokenHeader[] = "e2b-traffic-access-token";

// Resolves (sandbox id, port inside the sandbox). Errors: not_found when the sandbox is unknown
// or not running (502, as E2B answers); failed_precondition when it has no network (502);
// anything else is a 502 too. Called on connection threads, concurrently.
using PortResolver =
    std::function<Result<SandboxEndpoint>(const std::string& sandbox_id, uint16_t port)>;

// How a data-plane request was answered, for ApiServer's request log and metrics.
struct DataPlaneAnswer {
  std::string route;  // "envd POST /files", "(port proxy)", "(relay)", …
  int status = 0;     // 0: not answered (Admit lets the request through)
  bool warn = false;  // moatd's own failure: logged as a warning
};

class DataPlane {
 public:
  virtual ~DataPlane() = default;
  // From the request's head alone: how its body is read and whether it authenticates. A request
  // with a body that would be refused anyway is answered here through `w` (answer->status set),
  // before any of its body is read.
  virtual http::Admission Admit(http::Request& req, const routes::EnvdTarget& target, bool has_body,
                                http::ResponseWriter& w, DataPlaneAnswer* answer) = 0;
  // Serves the admitted request.
  virtual DataPlaneAnswer Handle(http::Request& req, const routes::EnvdTarget& target,
                                 http::ResponseWriter& w) = 0;
  // Refuses new requests and ends relayed connections so that their handlers return.
  virtual void Shutdown() = 0;
};

}  // namespace moat::api
