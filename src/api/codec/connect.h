// The Connect protocol's streaming envelope (E2B-WIRE §4):
//   flags (1 byte) | length (uint32 big-endian) | message
// Flag 0x02 marks the end-stream message; 0x01 (compressed) is never sent and rejected on input.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace moat::api::codec {

inline constexpr uint8_t kEnvelopeCompressed = 0x01;
inline constexpr uint8_t kEnvelopeEndStream = 0x02;

struct Envelope {
  uint8_t flags = 0;
  std::string message;
};

std::string EncodeEnvelope(uint8_t flags, std::string_view message);
// Decodes a whole request body into its envelopes. Errors (invalid_argument) for a truncated
// envelope, a compressed one, or a message longer than `max_message`.
Result<std::vector<Envelope>> DecodeEnvelopes(std::string_view body, size_t max_message);

// The Connect code name for a Status ("not_found", "deadline_exceeded", ...), and the HTTP
// status the protocol pairs with it (§4 table).
std::string_view ConnectCodeName(ErrorCode code);
int ConnectHttpStatus(ErrorCode code);
// The end-stream message: `{}` for ok, else {"error":{"code","message"}}.
std::string EndStreamMessage(const Status& status);

}  // namespace moat::api::codec
