// What every envd ("in-sandbox") route shares: finding the target sandbox (E2b-Sandbox-Id or
// Host 49983-<id>.<domain>), the access token, the Linux user (Authorization: Basic), and the
// Connect protocol's unary and server-streaming shapes (E2B-WIRE §1, §4, §8).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "api/envd_target.h"
#include "api/history.h"
#include "api/http/message.h"
#include "api/http/router.h"
#include "api/metrics.h"
#include "api/store/store.h"
#include "channel/guest_client.h"

namespace moat::api::routes {

using nlohmann::json;

inline constexpr const char* kDefaultUser = "user";

// The guest channel of a running sandbox on this host (the host agent provides it):
// not_found once it is not running, failed_precondition once its guest broke the protocol.
using GuestLookup =
    std::function<Result<std::shared_ptr<channel::GuestClient>>(const std::string& sandbox_id)>;

// One envd request, once its sandbox is known to be running and its token checked.
struct EnvdCall {
  http::Request& req;
  store::SandboxRecord record;
  std::string user;  // never empty
  Metrics& metrics;
  const GuestLookup& guest_of;
  HistoryLog* history = nullptr;  // where commands are recorded; null: nowhere
  Result<std::shared_ptr<channel::GuestClient>> Guest() { return guest_of(record.id); }
};

// The record of a running sandbox (not_found otherwise): what envd checks a request against
// (its access token) and runs with (its env vars).
using RunningLookup = std::function<Result<store::SandboxRecord>(const std::string& sandbox_id)>;
// Records that a sandbox's guest broke the protocol (running → error, compare-and-set).
using FaultReporter = std::function<void(const std::string& sandbox_id, const std::string& fault)>;

// What the envd routes need of their host: `moatd serve` binds them to its SandboxController, a
// fleet agent to the shared store (for its own sandboxes) and its own agent.
struct EnvdContext {
  RunningLookup find_running;
  FaultReporter report_fault;
  Metrics* metrics;  // a pointer: see ControlContext
  GuestLookup guest_of;
  HistoryLog* history = nullptr;  // commands are recorded here (null: not at all)
};

enum class EnvdErrors { kRest, kConnect };
// What proves a request may act on the sandbox: nothing (GET /health), its access token in
// X-Access-Token, or, for /files, either the token or a signed URL (SignedFileAccess).
enum class EnvdAuth { kNone, kToken, kTokenOrSignature };
// Wraps an envd handler: resolves the sandbox (502 when it is not running), checks `auth`, and
// the user; errors in `errors` shape.
http::Handler WithSandbox(EnvdContext& ctx, EnvdErrors errors, EnvdAuth auth,
                          std::function<void(EnvdCall&, http::ResponseWriter&)> handler);

// Connect unary over JSON: the request message in, the response message (or an error) out.
using UnaryFn = std::function<Result<json>(EnvdCall&, const json&)>;
http::Handler ConnectUnary(EnvdContext& ctx, UnaryFn fn);

// The sending side of a server stream. Headers go out with the first message, so errors that
// come before it still travel in the end-stream message of a 200 response, as Connect wants.
class StreamSink {
 public:
  StreamSink(http::ResponseWriter& w, json keepalive_message, std::chrono::seconds keepalive)
      : w_(w), keepalive_message_(std::move(keepalive_message)), keepalive_(keepalive) {}
  // False once the client is gone.
  bool Send(const json& message);
  // Sends the keepalive message if nothing went out for the keepalive interval.
  bool KeepaliveIfDue();
  // When the next keepalive is due.
  std::chrono::steady_clock::time_point KeepaliveDue() const { return last_ + keepalive_; }
  // The end-stream message; the response is then complete.
  void Finish(const Status& status);
  bool client_gone() const { return gone_; }
  // Once messages went out: ends the response with no end-stream message, so that the client
  // sees its connection drop — what E2B's clients see when a sandbox dies under a stream, and
  // read as "the sandbox was killed" (Node: "terminated"). Before that, does nothing.
  // Returns whether it cut.
  bool Cut();

 private:
  bool Begin();
  http::ResponseWriter& w_;
  json keepalive_message_;
  std::chrono::seconds keepalive_;
  std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
  bool begun_ = false;
  bool gone_ = false;
};

// The stream's limits from the request: Connect-Timeout-Ms (none if absent or 0) and
// Keepalive-Ping-Interval (seconds; 50 if absent).
struct StreamLimits {
  std::optional<std::chrono::steady_clock::time_point> deadline;
  int64_t timeout_ms = 0;
  std::chrono::seconds keepalive{50};
};
StreamLimits StreamLimitsOf(const http::Request& req);

// Connect server streaming over JSON: one request message in, messages out through the sink,
// then the end-stream message with the returned status.
using StreamFn = std::function<Status(EnvdCall&, const json&, const StreamLimits&, StreamSink&)>;
http::Handler ConnectServerStream(EnvdContext& ctx, json keepalive_message, StreamFn fn);

}  // namespace moat::api::routes
