#include "host/port_proxy.h"

#include <openssl/crypto.h>
#include <sys/socket.h>

#include <functional>
#include <memory>

#include "api/errors.h"
#include "api/http/proxying.h"
#include "api/http/server.h"
#include "api/relay_exchange.h"
#include "common/builtin_templates.h"
#include "common/cleanup.h"
#include "common/log.h"
#include "common/relay.h"
#include "host/code_run_capture.h"

namespace moat::api {
namespace {

using http::ClientIp;
using http::FilterResponseHead;
using http::IsUpgrade;

}  // namespace

std::string UpstreamRequest(const http::Request& req, std::string_view client_ip,
                            std::string_view upstream_host) {
  http::HeaderNames drop = {"X-API-Key", kTrafficTokenHeader};
  if (!upstream_host.empty()) drop.insert("Host");
  // X-Forwarded-Host keeps the client's Host either way.
  std::string out = http::ProxiedHead(req, drop, client_ip);
  if (!upstream_host.empty()) out += "Host: " + std::string(upstream_host) + "\r\n";
  if (!req.body.empty() || req.HasHeader("Content-Length") || req.HasHeader("Transfer-Encoding")) {
    out += "Content-Length: " + std::to_string(req.body.size()) + "\r\n";
  }
  out += "\r\n";
  out += req.body;
  return out;
}

PortProxy::PortProxy(PortProxyOptions options, PortResolver resolver, Metrics& metrics,
                     HistoryLog* history)
    : options_(options), resolver_(std::move(resolver)), metrics_(metrics), history_(history) {}

int PortProxy::Fail(http::ResponseWriter& w, std::string_view outcome, const Status& status,
                    int http_status) {
  metrics_.CountPortProxy(outcome);
  SendRestError(w, status, http_status);
  return http_status;
}

std::optional<SandboxEndpoint> PortProxy::Resolve(const http::Request& req,
                                                  const std::string& sandbox_id, int port,
                                                  http::ResponseWriter& w, int* http_status) {
  auto fail = [&](std::string_view outcome, const Status& s, int code) {
    *http_status = Fail(w, outcome, s, code);
    return std::nullopt;
  };
  if (port < 1 || port > 65535) {
    return fail("bad_port",
                InvalidArgument("the sandbox port (E2b-Sandbox-Port, or <port>-<sandboxID> in the "
                                "host name) must be a number in 1..65535"),
                400);
  }
  std::string what = "port " + std::to_string(port) + " of sandbox " + sandbox_id;
  if (!resolver_) {
    return fail("no_network",
                FailedPrecondition(what + ": this moatd runs sandboxes without networking"), 502);
  }
  auto endpoint = resolver_(sandbox_id, static_cast<uint16_t>(port));
  if (!endpoint.ok()) {
    const Status& s = endpoint.status();
    if (s.code() == ErrorCode::kNotFound) {
      // As E2B's proxy answers for a sandbox killed, ended or never there (its SDK reads the
      // JSON): 502 {"sandboxId", "message": "The sandbox was not found", "code": 502}.
      metrics_.CountPortProxy("sandbox_not_found");
      SendSandboxNotRunning(w, sandbox_id);
      *http_status = 502;
      return std::nullopt;
    }
    // The resolver's own words may name slots and addresses: they go to the log only.
    LogDebug("api.port_proxy_unresolved",
             {{"sandbox", sandbox_id}, {"port", port}, {"error", s.ToString()}});
    if (s.code() == ErrorCode::kFailedPrecondition) {
      return fail("no_network", FailedPrecondition(what + ": the sandbox has no network"), 502);
    }
    return fail("error", Unavailable(what + ": its network address is unknown"), 502);
  }
  if (const std::string& token = endpoint->traffic_access_token; !token.empty()) {
    std::string given = req.Header(kTrafficTokenHeader);
    if (given.size() != token.size() || CRYPTO_memcmp(given.data(), token.data(), token.size())) {
      return fail("forbidden",
                  Status(ErrorCode::kPermissionDenied,
                         what + " is not public: send the sandbox's trafficAccessToken in the " +
                             kTrafficTokenHeader + " header"),
                  403);
    }
  }
  return std::move(*endpoint);
}

int PortProxy::Serve(http::Request& req, const std::string& sandbox_id, int port,
                     http::ResponseWriter& w) {
  int failed = 0;
  auto endpoint = Resolve(req, sandbox_id, port, w, &failed);
  if (!endpoint) return failed;
  std::string what = "port " + std::to_string(port) + " of sandbox " + sandbox_id;
  {
    std::lock_guard lock(mu_);
    if (stopping_) return Fail(w, "shutting_down", Unavailable("moatd is shutting down"), 503);
    if (active_ >= options_.max_connections) {
      return Fail(
          w, "over_capacity",
          ResourceExhausted("too many proxied connections (" +
                            std::to_string(options_.max_connections) + "); try again later"),
          503);
    }
    metrics_.SetPortProxyActive(static_cast<int64_t>(++active_));
  }
  Cleanup release([this] {
    std::lock_guard lock(mu_);
    metrics_.SetPortProxyActive(static_cast<int64_t>(--active_));
  });

  auto upstream =
      http::ConnectTcp(endpoint->ipv4, std::to_string(endpoint->port), options_.connect_timeout);
  if (!upstream.ok()) {
    LogDebug("api.port_proxy_unreachable",
             {{"sandbox", sandbox_id},
              {"port", port},
              {"upstream", endpoint->ipv4 + ":" + std::to_string(endpoint->port)},
              {"error", upstream.status().ToString()}});
    return Fail(w, "upstream_unreachable",
                Unavailable(what + " is not reachable: " + upstream.status().message()), 502);
  }
  int upstream_fd = upstream->get();
  {
    std::lock_guard lock(mu_);
    if (stopping_) return Fail(w, "shutting_down", Unavailable("moatd is shutting down"), 503);
    upstreams_.insert(upstream_fd);
  }
  // Declared after `upstream`, so it runs first: Shutdown() never sees a closed fd.
  Cleanup forget([this, upstream_fd] {
    std::lock_guard lock(mu_);
    upstreams_.erase(upstream_fd);
  });

  // A code-interpreter run is recorded in the history from what the client gets of its answer.
  std::unique_ptr<CodeRunCapture> code_run;
  if (history_ != nullptr && history_->enabled() && port == kCodeInterpreterPort &&
      req.method == "POST" && req.path == "/execute") {
    code_run = CodeRunCapture::Start(*history_, sandbox_id, endpoint->team_id, req.body);
  }
  std::function<void(std::string_view)> on_downstream;
  if (code_run) {
    on_downstream = [capture = code_run.get()](std::string_view bytes) {
      capture->Downstream(bytes);
    };
  }

  auto started = std::chrono::steady_clock::now();
  auto relayed = RelayExchange(req, w, upstream_fd,
                               UpstreamRequest(req, ClientIp(req.peer), endpoint->upstream_host),
                               options_.idle_timeout, what, std::move(on_downstream));
  if (!relayed.ok()) {
    if (code_run) code_run->Finish(RelayEnd::kUpstreamError, 500);
    return Fail(w, "error", relayed.status().Annotate("port proxy"), 500);
  }
  if (code_run) code_run->Finish(relayed->stats.end, relayed->status);
  const RelayStats& st = relayed->stats;
  int status = relayed->status;
  std::string_view outcome = "relayed";
  if (st.end == RelayEnd::kIdleTimeout) outcome = "idle_timeout";
  if (st.end == RelayEnd::kBadResponse) outcome = "bad_response";
  if (st.to_client == 0 && st.end != RelayEnd::kClientGone && outcome == "relayed") {
    outcome = "no_response";
  }
  metrics_.CountPortProxy(outcome);
  LogDebug("api.port_proxy", {{"sandbox", sandbox_id},
                              {"port", port},
                              {"status", status},
                              {"end", RelayEndName(st.end)},
                              {"bytes_up", st.to_upstream},
                              {"bytes_down", st.to_client},
                              {"ms", std::chrono::duration_cast<std::chrono::milliseconds>(
                                         std::chrono::steady_clock::now() - started)
                                         .count()}});
  return status;
}

void PortProxy::Shutdown() {
  std::lock_guard lock(mu_);
  stopping_ = true;
  for (int fd : upstreams_) ::shutdown(fd, SHUT_RDWR);
}

size_t PortProxy::active() const {
  std::lock_guard lock(mu_);
  return active_;
}

}  // namespace moat::api
