// RelayExchange: hands one HTTP exchange over to a byte relay (common/relay.h) — the port proxy's
// (host/port_proxy.h) and the fleet relay's (api/fleet/relay_data_plane.h) last step.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <string_view>

#include "api/http/message.h"
#include "common/relay.h"
#include "common/status.h"

namespace moat::api {

// What RelayExchange did: the HTTP status the client got (the upstream's, or the 502/504 sent in
// its place; 0 if none could be read) and how the relay ended.
struct RelayedExchange {
  int status = 0;
  RelayStats stats;
};
// Takes the client connection over and relays one exchange with `upstream_fd`: `first` goes
// upstream before anything else (for an upgrade, followed by what the client already sent, and
// the client speaks on after the 101; otherwise nothing more of the client's is forwarded). The
// response heads pass through http::FilterResponseHead. When nothing reached the client, it gets
// a 502 (closed, or not HTTP) or 504 (idle) naming `what`. internal when the connection cannot be
// taken over (nothing sent then). `on_downstream`, when set, sees every byte relayed to the
// client as it is written, response heads included (RelayOptions::on_client_bytes); not the
// 502/504 sent in place of an answer.
Result<RelayedExchange> RelayExchange(
    const http::Request& req, http::ResponseWriter& w, int upstream_fd, std::string first,
    std::chrono::milliseconds idle_timeout, const std::string& what,
    std::function<void(std::string_view)> on_downstream = nullptr);

}  // namespace moat::api
