// The server side of RFC 6455 (WebSocket) as pure functions over bytes: the opening handshake's
// checks and answer, frames out (unmasked, as a server sends them) and a reader that turns the
// bytes a client sends into whole messages (masking required, fragments joined, control frames
// between fragments, sizes bounded). No sockets here: web_terminal.cc owns the connection.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "api/http/message.h"
#include "common/status.h"

namespace moat::api::websocket {

enum class Opcode : uint8_t {
  kContinuation = 0x0,
  kText = 0x1,
  kBinary = 0x2,
  kClose = 0x8,
  kPing = 0x9,
  kPong = 0xA,
};

// Close codes (RFC 6455 §7.4.1).
inline constexpr uint16_t kCloseNormal = 1000;
inline constexpr uint16_t kCloseGoingAway = 1001;
inline constexpr uint16_t kCloseProtocolError = 1002;
inline constexpr uint16_t kCloseUnsupportedData = 1003;
inline constexpr uint16_t kCloseInvalidData = 1007;  // a text message that is not UTF-8
inline constexpr uint16_t kClosePolicy = 1008;
inline constexpr uint16_t kCloseTooBig = 1009;
inline constexpr uint16_t kCloseInternalError = 1011;

// The largest message (all its fragments together) a reader accepts by default.
inline constexpr size_t kDefaultMaxMessage = 1024 * 1024;

// Sec-WebSocket-Accept for a Sec-WebSocket-Key: base64(SHA-1(key + the RFC's GUID)).
std::string AcceptKey(std::string_view client_key);
// Whether `req` is a WebSocket opening handshake moatd can accept (§4.2.1): GET, HTTP/1.1,
// `Upgrade: websocket`, `Connection: upgrade`, version 13 and a key of 16 base64 bytes. The key
// to answer, or invalid_argument naming what is wrong.
Result<std::string> CheckUpgrade(const http::Request& req);
// The 101 answer to a handshake whose key was `client_key`, as raw bytes.
std::string HandshakeResponse(std::string_view client_key);

// One frame as a server sends it (no mask).
std::string EncodeFrame(Opcode opcode, std::string_view payload, bool fin = true);
// One frame as a client sends it, masked with `mask_key` (tests and the in-tree client).
std::string EncodeMaskedFrame(Opcode opcode, std::string_view payload, uint32_t mask_key,
                              bool fin = true);
// A close frame's payload: the code, then the reason (cut to fit a control frame's 125 bytes).
std::string ClosePayload(uint16_t code, std::string_view reason);

struct Message {
  Opcode opcode = Opcode::kText;  // kText, kBinary, kClose, kPing or kPong
  std::string payload;            // unmasked; a fragmented message joined
};

struct CloseReason {
  std::optional<uint16_t> code;  // none: the close frame had no payload
  std::string reason;
};
// A close frame's payload; invalid_argument when it is one byte long, names a code that may not
// be sent, or its reason is not UTF-8.
Result<CloseReason> ParseClose(std::string_view payload);

// Reads a client's frames into messages. Bytes are appended as they arrive, in any chunks; Next()
// returns each whole message once its last byte is in. Control frames (ping, pong, close) come
// out as they arrive, also between the fragments of a data message. A violation is an error,
// after which the reader is done; close_code() then says what to close the connection with
// (1002 protocol error, 1007 a text message that is not UTF-8, 1009 too big).
class MessageReader {
 public:
  explicit MessageReader(size_t max_message = kDefaultMaxMessage, bool require_mask = true)
      : max_message_(max_message), require_mask_(require_mask) {}

  void Append(std::string_view bytes) { buffer_.append(bytes); }
  Result<std::optional<Message>> Next();
  uint16_t close_code() const { return close_code_; }
  // Bytes appended and not yet consumed (a frame's header waits for no more than its own size,
  // so this stays near the largest frame allowed).
  size_t buffered() const { return buffer_.size() - consumed_; }

 private:
  Status Fail(uint16_t code, std::string message);

  size_t max_message_;
  bool require_mask_;
  std::string buffer_;
  size_t consumed_ = 0;               // of buffer_; compacted as it grows
  std::optional<Opcode> fragmented_;  // the opcode of the data message being joined
  std::string fragments_;
  uint16_t close_code_ = 0;
  bool failed_ = false;
};

}  // namespace moat::api::websocket
