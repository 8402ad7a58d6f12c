// What a proxy that relays one HTTP/1.x exchange as bytes needs (the port proxy, and the fleet's
// relay of data-plane traffic to the owning host): the request head as it goes upstream, the
// response heads as the client gets them, and a TCP connection with a deadline.
#pragma once

#include <chrono>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "api/http/message.h"
#include "common/relay.h"
#include "common/status.h"
#include "common/unique_fd.h"

namespace moat::api::http {

using HeaderNames = std::set<std::string, CaseInsensitiveLess>;

// The comma-separated tokens of a header value (Connection: keep-alive, Upgrade), trimmed.
std::vector<std::string> HeaderTokens(std::string_view list);
// A protocol upgrade (WebSocket): an Upgrade header and `Connection: upgrade`.
bool IsUpgrade(const Request& req);
// "10.0.0.1:5000" → "10.0.0.1", "::1:5000" → "::1" (PeerName's forms); "" if unknown.
std::string ClientIp(const std::string& peer);

// The request line and headers as they go upstream, each line ending in CRLF, without the blank
// line and without body framing: the headers as received except hop-by-hop ones (Connection,
// Keep-Alive, TE, Transfer-Encoding, Content-Length, … and those Connection names), Expect, and
// `drop`. Adds X-Forwarded-For (appended to), X-Forwarded-Host and X-Forwarded-Proto (unless
// present), and `Connection: close` — or, for an upgrade, `Upgrade` and `Connection: Upgrade`.
std::string ProxiedHead(const Request& req, const HeaderNames& drop, std::string_view client_ip);

// The response heads as the client gets them. The final one says `Connection: close` (the client
// connection ends with this exchange) and mutes the client; a 101 for an upgrade passes untouched
// and the client speaks on; other 1xx pass. *status: the head's status code.
Result<HeadDecision> FilterResponseHead(std::string_view head, bool upgrade, int* status);

// A TCP connection to host:port (a numeric address or a name), or an error once `timeout` has
// passed without one. Non-blocking, close-on-exec, TCP_NODELAY. Messages name neither host nor
// port (callers decide what a client may learn).
Result<UniqueFd> ConnectTcp(const std::string& host, const std::string& port,
                            std::chrono::milliseconds timeout);

// Writes all of `data` to a non-blocking fd, waiting at most `timeout` for each stretch of
// progress; unavailable when the peer is gone, deadline_exceeded when it stops reading.
Status WriteAllWithin(int fd, std::string_view data, std::chrono::milliseconds timeout);

}  // namespace moat::api::http
