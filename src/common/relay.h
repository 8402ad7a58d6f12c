// Relay: copies bytes both ways between a client connection and an upstream one, on the calling
// thread, until the upstream closes, either side fails, or nothing moves for the idle timeout.
// Past the response head(s) it is protocol-blind, so a plain response, a chunked or streamed
// one, and a WebSocket after its 101 all pass the same way. Back-pressure: at most one buffer
// per direction is held, and a side is read only once what it sent before has been written to
// the other.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "common/status.h"

namespace moat {

// What to do with one response head from the upstream (status line to blank line).
struct HeadDecision {
  std::string head;          // what the client gets in its place
  bool interim = false;      // a 1xx (but 101): another head follows
  bool mute_client = false;  // forward nothing more from the client from now on
};
// An error ends the relay (RelayEnd::kBadResponse) before the head reaches the client.
using ResponseHeadFilter = std::function<Result<HeadDecision>(std::string_view head)>;

struct RelayOptions {
  std::chrono::milliseconds idle_timeout{600'000};
  size_t buffer_bytes = 64 * 1024;  // per direction
  // False: nothing the client sends is forwarded (only `first_to_upstream` is), and a client
  // that closes or resets ends the relay. True: a client EOF half-closes the upstream
  // (shutdown SHUT_WR) and the relay goes on until the upstream closes.
  bool forward_client = true;
  // Null: the upstream's bytes pass untouched. Otherwise the upstream must start with HTTP/1.x
  // response heads (at most 64 KiB each), which go through the filter.
  ResponseHeadFilter head_filter;
  // Null: nothing is called. Otherwise called on the relay's thread with each run of bytes as it
  // is written to the client (response heads as filtered included), in order: what the client
  // got, for an observer that reads the exchange (the port proxy's code-run history).
  std::function<void(std::string_view)> on_client_bytes;
};

enum class RelayEnd {
  kUpstreamClosed,  // the upstream sent EOF and all it sent reached the client
  kClientGone,      // the client reset, closed (when not forwarded) or was shut down
  kUpstreamError,   // reading or writing the upstream failed (a reset, say)
  kBadResponse,     // the head filter refused what the upstream sent
  kIdleTimeout,     // nothing moved either way for the idle timeout
};

struct RelayStats {
  RelayEnd end = RelayEnd::kUpstreamClosed;
  uint64_t to_upstream = 0;  // bytes written to the upstream, `first_to_upstream` included
  uint64_t to_client = 0;    // bytes written to the client
  Status error;              // kBadResponse: why
};

// `first_to_upstream` (a request head and body, say) goes to the upstream before anything the
// client sends from now on. Neither fd is closed here; both may be blocking (every call uses
// MSG_DONTWAIT after a poll).
RelayStats Relay(int client_fd, int upstream_fd, std::string first_to_upstream,
                 const RelayOptions& options);

const char* RelayEndName(RelayEnd end);

}  // namespace moat
