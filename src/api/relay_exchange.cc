#include "api/relay_exchange.h"

#include "api/errors.h"
#include "api/http/proxying.h"
#include "api/http/server.h"

namespace moat::api {

using http::FilterResponseHead;
using http::IsUpgrade;

Result<RelayedExchange> RelayExchange(const http::Request& req, http::ResponseWriter& w,
                                      int upstream_fd, std::string first,
                                      std::chrono::milliseconds idle_timeout,
                                      const std::string& what,
                                      std::function<void(std::string_view)> on_downstream) {
  auto client = w.Hijack();
  if (!client.ok()) return client.status();
  bool upgrade = IsUpgrade(req);
  RelayOptions options;
  options.idle_timeout = idle_timeout;
  // A plain request is whole already: anything more the client sends could be a request for
  // another sandbox, or with an API key in it, and must not reach this upstream. An upgrade's
  // client speaks on after the 101 — and may have started already.
  options.forward_client = upgrade;
  options.on_client_bytes = std::move(on_downstream);
  if (upgrade) first += client->buffered;
  RelayedExchange out;
  options.head_filter = [&out, upgrade](std::string_view head) {
    return FilterResponseHead(head, upgrade, &out.status);
  };
  out.stats = Relay(client->fd, upstream_fd, std::move(first), options);
  const RelayStats& st = out.stats;
  if (st.to_client == 0 && st.end != RelayEnd::kClientGone) {
    // Nothing reached the client yet, so it can still have a proper answer.
    Status why = Unavailable(what + " closed the connection without a response");
    out.status = 502;
    if (st.end == RelayEnd::kIdleTimeout) {
      why = DeadlineExceeded(what + " sent no response within the idle timeout");
      out.status = 504;
    } else if (st.end == RelayEnd::kBadResponse) {
      why = Unavailable(what + " did not answer in HTTP/1.x: " + st.error.message());
    }
    auto writer = http::HijackedResponseWriter(client->fd);
    SendRestError(*writer, why, out.status);
  }
  return out;
}

}  // namespace moat::api
