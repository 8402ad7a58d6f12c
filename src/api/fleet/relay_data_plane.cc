#include "api/fleet/relay_data_plane.h"

#include <sys/socket.h>

#include "api/auth.h"
#include "api/errors.h"
#include "api/fleet/agent_wire.h"
#include "api/http/client.h"
#include "api/http/proxying.h"
#include "api/relay_exchange.h"
#include "common/cleanup.h"
#include "common/log.h"
#include "common/relay.h"

namespace moat::api::fleet {
namespace {

constexpr size_t kPumpBytes = 64 * 1024;

std::string RouteOf(const routes::EnvdTarget& target) {
  return target.port == routes::kEnvdPort ? "(relay envd)" : "(relay port)";
}

// envd's Connect paths are /<package>.<Service>/<Method>; the rest (/files, /health) are REST.
bool IsConnectPath(const std::string& path) {
  return path.find('.') < path.find('/', 1);
}

// Streams the request body to the agent in the framing the head announced: Content-Length
// (copied as is) or chunked. A failed write ends the pump quietly — the agent answered early
// (401, 413, …) and closed — and its answer is relayed next; a client that fails is an error.
Status PumpBody(http::BodySource& body, int upstream, bool chunked,
                std::chrono::milliseconds timeout) {
  std::string buf(kPumpBytes, '\0');
  for (;;) {
    MOAT_ASSIGN_OR_RETURN(size_t n, body.Read(buf.data(), buf.size()));
    if (n == 0) break;
    std::string_view data(buf.data(), n);
    std::string framed;
    if (chunked) {
      char size[24];
      std::snprintf(size, sizeof size, "%zx\r\n", n);
      framed = std::string(size) + std::string(data) + "\r\n";
      data = framed;
    }
    if (!http::WriteAllWithin(upstream, data, timeout).ok()) return Status::Ok();
  }
  if (chunked) (void)http::WriteAllWithin(upstream, "0\r\n\r\n", timeout);
  return Status::Ok();
}

}  // namespace

RelayDataPlane::RelayDataPlane(store::Store& store, FleetHostDirectory& hosts, FleetToken token,
                               Metrics& metrics, RelayDataPlaneOptions options)
    : routes_(store),
      hosts_(hosts),
      token_(std::move(token)),
      metrics_(metrics),
      options_(options) {
  routes_.Watch();  // routes of sandboxes that change are dropped as the store says so
}

std::optional<store::SandboxRecord> RelayDataPlane::Running(const routes::EnvdTarget& target,
                                                            http::ResponseWriter& w, int* status) {
  auto record = routes_.Running(target.sandbox_id);
  if (!record.ok()) {
    // The store is down and the route is not cached: say so (503), never guess.
    *status = 503;
    SendRestError(w, record.status().Annotate("looking up sandbox " + target.sandbox_id), 503);
    return std::nullopt;
  }
  if (*record) return std::move(**record);
  // envd and ports alike, as E2B answers for a sandbox that is not running.
  *status = 502;
  SendSandboxNotRunning(w, target.sandbox_id);
  return std::nullopt;
}

http::Admission RelayDataPlane::Admit(http::Request& req, const routes::EnvdTarget& target,
                                      bool has_body, http::ResponseWriter& w,
                                      DataPlaneAnswer* answer) {
  http::Admission a;
  // Bodies stream through to the agent, which applies its own limits per route.
  a.body = http::Admission::Body::kStream;
  a.body_limit = options_.max_body_bytes;
  if (target.port < 1 || target.port > 65535) {
    // The agent would say the same; no need to cross to it.
    *answer = {RouteOf(target), 400, false};
    SendRestError(w,
                  InvalidArgument("the sandbox port (E2b-Sandbox-Port, or <port>-<sandboxID> in "
                                  "the host name) must be a number in 1..65535"),
                  400);
    return a;
  }
  if (target.port != routes::kEnvdPort) {
    // Public traffic to a sandbox port: the agent's port proxy judges the traffic token.
    if (!has_body) return a;
    int status = 0;
    if (!Running(target, w, &status)) *answer = {RouteOf(target), status, false};
    return a;
  }
  auto record = routes_.Running(target.sandbox_id);
  bool running = record.ok() && *record;
  // /files also takes a signed URL in place of the token.
  Status access = running ? CheckEnvdAccess(req, (**record).access_token, req.path == "/files")
                          : Unauthenticated("the sandbox is not running");
  a.authenticated = access.ok();
  // As on the host itself: a body that would be refused is refused before it is read.
  if (!has_body || a.authenticated) return a;
  int status = 0;
  if (!Running(target, w, &status)) {
    *answer = {RouteOf(target), status, false};
    return a;
  }
  if (IsConnectPath(req.path)) {
    SendConnectUnaryError(w, access);
  } else {
    SendRestError(w, access);
  }
  *answer = {RouteOf(target), 401, false};
  return a;
}

DataPlaneAnswer RelayDataPlane::Handle(http::Request& req, const routes::EnvdTarget& target,
                                       http::ResponseWriter& w) {
  int status = 0;
  auto record = Running(target, w, &status);
  if (!record) return {RouteOf(target), status, status == 503};
  status = Relay(req, target, *record, w);
  return {RouteOf(target), status, status == 500};
}

int RelayDataPlane::Relay(http::Request& req, const routes::EnvdTarget& target,
                          const store::SandboxRecord& record, http::ResponseWriter& w) {
  std::string what = "sandbox " + record.id + " (host " + record.host_id + ")";
  auto fail = [&](const Status& s, int code) {
    SendRestError(w, s, code);
    return code;
  };
  {
    std::lock_guard lock(mu_);
    if (stopping_) return fail(Unavailable("moatd is shutting down"), 503);
    if (active_ >= options_.max_connections) {
      return fail(
          ResourceExhausted("too many relayed connections (" +
                            std::to_string(options_.max_connections) + "); try again later"),
          503);
    }
    ++active_;
  }
  Cleanup release([this] {
    std::lock_guard lock(mu_);
    --active_;
  });
  auto url = hosts_.Endpoint(record.host_id);
  if (!url.ok()) return fail(url.status().Annotate(what), 502);
  auto endpoint = http::ParseEndpoint(*url);
  if (!endpoint.ok()) return fail(endpoint.status().Annotate(what), 502);
  auto upstream = http::ConnectTcp(endpoint->host, endpoint->port, options_.connect_timeout);
  if (!upstream.ok()) {
    hosts_.Invalidate(record.host_id);
    LogWarn("fleet.relay_unreachable", {{"sandbox", record.id},
                                        {"host", record.host_id},
                                        {"endpoint", *url},
                                        {"error", upstream.status().ToString()}});
    return fail(Unavailable(what + " is not reachable: " + upstream.status().message()), 502);
  }
  int upstream_fd = upstream->get();
  {
    std::lock_guard lock(mu_);
    if (stopping_) return fail(Unavailable("moatd is shutting down"), 503);
    upstreams_.insert(upstream_fd);
  }
  Cleanup forget([this, upstream_fd] {
    std::lock_guard lock(mu_);
    upstreams_.erase(upstream_fd);
  });

  // The head: as received, signed for this host, sandbox and port, and framed for the body.
  std::string target_path = req.raw_query.empty() ? req.path : req.path + "?" + req.raw_query;
  std::string head =
      http::ProxiedHead(req, {"X-API-Key", std::string(kFleetHeader)}, http::ClientIp(req.peer));
  head += std::string(kFleetHeader) + ": " +
          token_.Header(UnixNow(), req.method, target_path,
                        DataPlaneSubject(record.host_id, record.id, target.port)) +
          "\r\n";
  bool chunked = false;
  if (req.body_stream != nullptr) {
    if (req.HasHeader("Content-Length")) {
      head += "Content-Length: " + req.Header("Content-Length") + "\r\n";
    } else if (req.HasHeader("Transfer-Encoding")) {
      head += "Transfer-Encoding: chunked\r\n";
      chunked = true;
    }
  } else if (!req.body.empty() || req.HasHeader("Content-Length")) {
    head += "Content-Length: " + std::to_string(req.body.size()) + "\r\n";
  }
  head += "\r\n";
  if (req.body_stream == nullptr) head += req.body;
  if (Status s = http::WriteAllWithin(upstream_fd, head, options_.idle_timeout); !s.ok()) {
    return fail(Unavailable(what + " closed the connection: " + s.message()), 502);
  }
  if (req.body_stream != nullptr) {
    if (Status s = PumpBody(*req.body_stream, upstream_fd, chunked, options_.idle_timeout);
        !s.ok()) {
      // The client's body failed (too large, too slow, malformed): answered as the server would.
      return fail(s, http::BodyErrorHttpStatus(s));
    }
  }

  // The body went ahead already; only an upgrade's client bytes follow.
  auto relayed = RelayExchange(req, w, upstream_fd, "", options_.idle_timeout, what);
  if (!relayed.ok()) return fail(relayed.status().Annotate("relay"), 500);
  const RelayStats& st = relayed->stats;
  int status = relayed->status;
  LogDebug("fleet.relay", {{"sandbox", record.id},
                           {"host", record.host_id},
                           {"port", target.port},
                           {"status", status},
                           {"end", RelayEndName(st.end)},
                           {"bytes_up", st.to_upstream},
                           {"bytes_down", st.to_client}});
  return status;
}

void RelayDataPlane::Shutdown() {
  std::lock_guard lock(mu_);
  stopping_ = true;
  for (int fd : upstreams_) ::shutdown(fd, SHUT_RDWR);
}

size_t RelayDataPlane::active() const {
  std::lock_guard lock(mu_);
  return active_;
}

}  // namespace moat::api::fleet
