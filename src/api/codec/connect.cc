#include "api/codec/connect.h"

#include <nlohmann/json.hpp>

namespace moat::api::codec {

std::string EncodeEnvelope(uint8_t flags, std::string_view message) {
  std::string out;
  out.reserve(5 + message.size());
  out.push_back(static_cast<char>(flags));
  uint32_t n = static_cast<uint32_t>(message.size());
  for (int shift = 24; shift >= 0; shift -= 8)
    out.push_back(static_cast<char>((n >> shift) & 0xff));
  out.append(message);
  return out;
}

Result<std::vector<Envelope>> DecodeEnvelopes(std::string_view body, size_t max_message) {
  std::vector<Envelope> out;
  size_t pos = 0;
  while (pos < body.size()) {
    if (body.size() - pos < 5) return InvalidArgument("connect envelope: truncated header");
    Envelope e;
    e.flags = static_cast<uint8_t>(body[pos]);
    uint32_t n = 0;
    for (int i = 1; i <= 4; ++i) n = (n << 8) | static_cast<uint8_t>(body[pos + i]);
    pos += 5;
    if (e.flags & kEnvelopeCompressed) {
      return InvalidArgument("connect envelope: compressed messages are not supported");
    }
    if (n > max_message) {
      return InvalidArgument("connect envelope: message of " + std::to_string(n) +
                             " bytes exceeds " + std::to_string(max_message));
    }
    if (body.size() - pos < n) return InvalidArgument("connect envelope: truncated message");
    e.message.assign(body.substr(pos, n));
    pos += n;
    out.push_back(std::move(e));
  }
  return out;
}

std::string_view ConnectCodeName(ErrorCode code) {
  // Connect spells it the American way; every other name is moat's own (ErrorCodeName).
  return code == ErrorCode::kCancelled ? "canceled" : ErrorCodeName(code);
}

int ConnectHttpStatus(ErrorCode code) {
  switch (code) {
    case ErrorCode::kOk: return 200;
    case ErrorCode::kInvalidArgument: return 400;
    case ErrorCode::kNotFound: return 404;
    case ErrorCode::kAlreadyExists: return 409;
    case ErrorCode::kPermissionDenied: return 403;
    case ErrorCode::kFailedPrecondition: return 400;
    case ErrorCode::kResourceExhausted: return 429;
    case ErrorCode::kDeadlineExceeded: return 504;
    case ErrorCode::kUnavailable: return 503;
    case ErrorCode::kCancelled: return 499;
    case ErrorCode::kAborted: return 409;
    case ErrorCode::kInternal: return 500;
    case ErrorCode::kUnauthenticated: return 401;
  }
  return 500;
}

std::string EndStreamMessage(const Status& status) {
  if (status.ok()) return "{}";
  nlohmann::json j = {
      {"error",
       {{"code", std::string(ConnectCodeName(status.code()))}, {"message", status.message()}}}};
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace moat::api::codec
