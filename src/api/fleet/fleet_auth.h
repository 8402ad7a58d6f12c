// The fleet token (api/agent-api.md, "Authentication"): the one secret that API replicas and
// host agents share. A replica signs each request to an agent with
//   X-Moat-Fleet: t=<unix seconds>,sig=<hex HMAC-SHA256(token, t "\n" METHOD "\n" target "\n"
//   host-id)>
// and the agent accepts it only within kFleetSignatureWindow of its own clock, for its own host
// id. The token never travels. Control-plane code: no agent/, vmm/, channel/ or net/ includes.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"

namespace moat::api::fleet {

inline constexpr std::string_view kFleetHeader = "X-Moat-Fleet";
// How far a signature's `t` may be from the verifier's clock, either way.
inline constexpr std::chrono::seconds kFleetSignatureWindow{60};
inline constexpr size_t kMinFleetTokenBytes = 32;

// Seconds since the Unix epoch, now (the clock signatures carry).
int64_t UnixNow();

class FleetToken {
 public:
  // The first line of `path` (without its "\n" or "\r\n"): invalid_argument naming the file when
  // it is shorter than kMinFleetTokenBytes, an errno error when it cannot be read. A file that
  // its group or others may read is accepted with a warning in the log.
  static Result<FleetToken> FromFile(const std::string& path);
  // The token itself (tests, and callers that hold it already); the same length rule.
  static Result<FleetToken> FromSecret(std::string secret);

  // hex HMAC-SHA256(token, t "\n" method "\n" target "\n" host_id); `target` is the request's
  // path and query as sent ("/v1/sandboxes/x?a=b").
  std::string Signature(int64_t t, std::string_view method, std::string_view target,
                        std::string_view host_id) const;
  // The X-Moat-Fleet value for a request made at `now`.
  std::string Header(int64_t now, std::string_view method, std::string_view target,
                     std::string_view host_id) const;
  // Whether `header` (an X-Moat-Fleet value) signs this request for `host_id` within the window
  // around `now`: ok, or unauthenticated saying why (missing, malformed, out of the window —
  // with the skew —, or a signature that does not match). The signature is compared in
  // constant time.
  Status Verify(std::string_view header, std::string_view method, std::string_view target,
                std::string_view host_id, int64_t now) const;

 private:
  explicit FleetToken(std::string secret) : secret_(std::move(secret)) {}
  std::string secret_;
};

}  // namespace moat::api::fleet
