// PortProxy: moatd's proxy to TCP ports inside sandboxes (DESIGN §3, docs/networking.md). A
// request addressed to port P of sandbox S — `Host: P-S.<domain>`, or `E2b-Sandbox-Id: S` with
// `E2b-Sandbox-Port: P`, P not envd's 49983 — is forwarded, once its head and body are read, to
// the address the resolver gives for (S, P); then bytes are relayed both ways until the upstream
// closes. That serves plain and streamed HTTP and WebSocket (after its 101) alike.
// The client connection serves this one exchange, because a second request on it could name
// another sandbox or carry an API key: the upstream gets `Connection: close` (for an upgrade,
// `Connection: Upgrade`), the client gets `Connection: close` on the final response head, and
// nothing the client sends after a plain request is forwarded. Public traffic in E2B's terms —
// no API key, no envd access token — unless the sandbox was created with
// `network.allowPublicTraffic: false`: then the request must carry the sandbox's
// trafficAccessToken (kTrafficTokenHeader), which is not passed on to the sandbox.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>

#include "api/data_plane.h"
#include "api/history.h"
#include "api/http/message.h"
#include "api/metrics.h"
#include "common/relay.h"
#include "common/status.h"

namespace moat::api {

struct PortProxyOptions {
  std::chrono::milliseconds connect_timeout{5000};
  // A proxied connection on which nothing moves either way for this long is closed.
  std::chrono::milliseconds idle_timeout{std::chrono::minutes(10)};
  size_t max_connections = 1024;  // relayed at once; 503 past it
  // The sandbox domain: `<port>-<id>.<domain>` names resolve to moatd (wildcard DNS). Sent to
  // clients as each sandbox's `domain` (the SDK's getHost); empty: null (the client's
  // E2B_DOMAIN). The proxy itself routes any domain.
  std::string domain;
};

class PortProxy {
 public:
  // A null resolver: this moatd has no sandbox networking; every request answers 502.
  // `history` (null: none): where code-interpreter runs relayed (`POST /execute` to port
  // kCodeInterpreterPort) are recorded, as commands of kind "code" (host/code_run_capture.h).
  PortProxy(PortProxyOptions options, PortResolver resolver, Metrics& metrics,
            HistoryLog* history = nullptr);
  PortProxy(const PortProxy&) = delete;
  PortProxy& operator=(const PortProxy&) = delete;

  // Serves one request for `port` of `sandbox_id` (`port` as the request named it; out of
  // 1..65535 is a 400). Errors are answered through `w` as {"code","message"}; otherwise the
  // connection is taken over and relayed until done. Returns the HTTP status the client got
  // (the upstream's, 0 if it sent none that could be read), for the request log and metrics.
  int Serve(http::Request& req, const std::string& sandbox_id, int port, http::ResponseWriter& w);
  // What Serve checks before it connects: the port, that the sandbox runs with a network, and
  // its traffic token. The endpoint, or nullopt once the error is answered through `w`
  // (*http_status: its status). ApiServer::Admit calls it before reading a request's body.
  std::optional<SandboxEndpoint> Resolve(const http::Request& req, const std::string& sandbox_id,
                                         int port, http::ResponseWriter& w, int* http_status);

  // Refuses new requests (503) and shuts down the upstream side of every relayed connection,
  // so that their handlers return. For server shutdown.
  void Shutdown();
  size_t active() const;

 private:
  int Fail(http::ResponseWriter& w, std::string_view outcome, const Status& status,
           int http_status);

  PortProxyOptions options_;
  PortResolver resolver_;
  Metrics& metrics_;
  HistoryLog* history_;

  mutable std::mutex mu_;
  std::set<int> upstreams_;  // upstream fds being relayed (owned by their Serve calls)
  size_t active_ = 0;        // admitted requests, connecting or relaying
  bool stopping_ = false;
};

// The request as it goes upstream: method, target and headers as received, except hop-by-hop
// headers (Connection, Keep-Alive, TE, Transfer-Encoding, … and those Connection names), Expect
// (the body is already here) and X-API-Key (never into a sandbox). Adds X-Forwarded-For (appended
// to), X-Forwarded-Host and X-Forwarded-Proto (unless present), `Connection: close` — or, for an
// upgrade (WebSocket), `Upgrade` and `Connection: Upgrade` — and Content-Length for a body.
std::string UpstreamRequest(const http::Request& req, std::string_view client_ip,
                            std::string_view upstream_host = {});

}  // namespace moat::api
