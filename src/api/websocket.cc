#include "api/websocket.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cctype>

#include "api/codec/protojson.h"
#include "common/utf8.h"

namespace moat::api::websocket {
namespace {

constexpr std::string_view kGuid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

// Whether a comma-separated header value (`Connection: keep-alive, Upgrade`) holds `token`.
bool HasToken(std::string_view value, std::string_view token) {
  while (!value.empty()) {
    size_t comma = value.find(',');
    std::string_view item = value.substr(0, comma);
    while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
    while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
    if (EqualsIgnoreCase(item, token)) return true;
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
  return false;
}

std::string Sha1(std::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), digest, &len, EVP_sha1(), nullptr);
  // EVP_Digest wrote `len` bytes of unsigned chars; reading them as chars is the same bytes.
  return std::string(reinterpret_cast<const char*>(digest), len);
}

void AppendHeader(std::string& out, Opcode opcode, size_t size, bool fin, bool masked) {
  out.push_back(static_cast<char>((fin ? 0x80 : 0) | static_cast<uint8_t>(opcode)));
  uint8_t mask_bit = masked ? 0x80 : 0;
  if (size < 126) {
    out.push_back(static_cast<char>(mask_bit | size));
  } else if (size <= 0xffff) {
    out.push_back(static_cast<char>(mask_bit | 126));
    out.push_back(static_cast<char>(size >> 8));
    out.push_back(static_cast<char>(size & 0xff));
  } else {
    out.push_back(static_cast<char>(mask_bit | 127));
    for (int shift = 56; shift >= 0; shift -= 8) {
      out.push_back(static_cast<char>((static_cast<uint64_t>(size) >> shift) & 0xff));
    }
  }
}

bool IsControl(Opcode op) {
  return (static_cast<uint8_t>(op) & 0x8) != 0;
}

// Codes an endpoint may put in a close frame (§7.4): the defined ones but 1004-1006 and 1015
// (reserved, never sent), and the registered and private ranges.
bool IsSendableCloseCode(uint16_t code) {
  if (code >= 3000 && code <= 4999) return true;
  return code >= 1000 && code <= 1014 && code != 1004 && code != 1005 && code != 1006;
}

}  // namespace

std::string AcceptKey(std::string_view client_key) {
  std::string input(client_key);
  input.append(kGuid);
  return codec::Base64Encode(Sha1(input));
}

Result<std::string> CheckUpgrade(const http::Request& req) {
  if (req.method != "GET") return InvalidArgument("a WebSocket handshake is a GET");
  if (req.version < 11) return InvalidArgument("a WebSocket handshake needs HTTP/1.1");
  if (!HasToken(req.Header("Upgrade"), "websocket")) {
    return InvalidArgument("expected header Upgrade: websocket");
  }
  if (!HasToken(req.Header("Connection"), "upgrade")) {
    return InvalidArgument("expected header Connection: Upgrade");
  }
  if (req.Header("Sec-WebSocket-Version") != "13") {
    return InvalidArgument("expected header Sec-WebSocket-Version: 13");
  }
  std::string key = req.Header("Sec-WebSocket-Key");
  auto raw = codec::Base64Decode(key);
  if (key.size() != 24 || !raw.ok() || raw->size() != 16) {
    return InvalidArgument("header Sec-WebSocket-Key must be 16 bytes in base64");
  }
  return key;
}

std::string HandshakeResponse(std::string_view client_key) {
  return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Accept: " +
         AcceptKey(client_key) + "\r\n\r\n";
}

std::string EncodeFrame(Opcode opcode, std::string_view payload, bool fin) {
  std::string out;
  out.reserve(payload.size() + 10);
  AppendHeader(out, opcode, payload.size(), fin, false);
  out.append(payload);
  return out;
}

std::string EncodeMaskedFrame(Opcode opcode, std::string_view payload, uint32_t mask_key,
                              bool fin) {
  std::string out;
  out.reserve(payload.size() + 14);
  AppendHeader(out, opcode, payload.size(), fin, true);
  char mask[4] = {static_cast<char>(mask_key >> 24), static_cast<char>((mask_key >> 16) & 0xff),
                  static_cast<char>((mask_key >> 8) & 0xff), static_cast<char>(mask_key & 0xff)};
  out.append(mask, 4);
  for (size_t i = 0; i < payload.size(); ++i) out.push_back(payload[i] ^ mask[i % 4]);
  return out;
}

std::string ClosePayload(uint16_t code, std::string_view reason) {
  std::string out;
  out.push_back(static_cast<char>(code >> 8));
  out.push_back(static_cast<char>(code & 0xff));
  // A control frame carries at most 125 bytes; the reason is cut there at a character boundary
  // (never inside a UTF-8 sequence: byte n is where the next character would start).
  std::string r = ValidUtf8(reason);
  if (r.size() > 123) {
    size_t n = 123;
    while (n > 0 && (static_cast<uint8_t>(r[n]) & 0xC0) == 0x80) --n;
    r.resize(n);
  }
  out.append(r);
  return out;
}

Result<CloseReason> ParseClose(std::string_view payload) {
  CloseReason out;
  if (payload.empty()) return out;
  if (payload.size() == 1) return InvalidArgument("a close frame's payload of one byte");
  uint16_t code = static_cast<uint16_t>((static_cast<uint8_t>(payload[0]) << 8) |
                                        static_cast<uint8_t>(payload[1]));
  if (!IsSendableCloseCode(code)) {
    return InvalidArgument("close code " + std::to_string(code) + " may not be sent");
  }
  out.code = code;
  out.reason = std::string(payload.substr(2));
  if (ValidUtf8(out.reason) != out.reason) {
    return InvalidArgument("a close frame's reason is not UTF-8");
  }
  return out;
}

Status MessageReader::Fail(uint16_t code, std::string message) {
  failed_ = true;
  close_code_ = code;
  return InvalidArgument(std::move(message));
}

Result<std::optional<Message>> MessageReader::Next() {
  if (failed_) return InvalidArgument("the WebSocket stream already failed");
  for (;;) {
    // Drop what was consumed once it is the larger part of the buffer (amortised O(1) a byte).
    if (consumed_ > 0 && consumed_ * 2 >= buffer_.size()) {
      buffer_.erase(0, consumed_);
      consumed_ = 0;
    }
    std::string_view in = std::string_view(buffer_).substr(consumed_);
    if (in.size() < 2) return std::optional<Message>();
    uint8_t b0 = static_cast<uint8_t>(in[0]);
    uint8_t b1 = static_cast<uint8_t>(in[1]);
    bool fin = (b0 & 0x80) != 0;
    if ((b0 & 0x70) != 0) return Fail(kCloseProtocolError, "reserved bits set (no extension)");
    uint8_t op = b0 & 0x0f;
    if (op > 0xA || (op > 0x2 && op < 0x8)) {
      return Fail(kCloseProtocolError, "unknown opcode " + std::to_string(op));
    }
    Opcode opcode = static_cast<Opcode>(op);
    bool masked = (b1 & 0x80) != 0;
    if (require_mask_ && !masked) return Fail(kCloseProtocolError, "a client frame is not masked");
    uint64_t size = b1 & 0x7f;
    size_t header = 2;
    if (size == 126) {
      if (in.size() < 4) return std::optional<Message>();
      size =
          (static_cast<uint64_t>(static_cast<uint8_t>(in[2])) << 8) | static_cast<uint8_t>(in[3]);
      if (size < 126) return Fail(kCloseProtocolError, "a length not in its shortest form");
      header = 4;
    } else if (size == 127) {
      if (in.size() < 10) return std::optional<Message>();
      size = 0;
      for (size_t i = 2; i < 10; ++i) size = (size << 8) | static_cast<uint8_t>(in[i]);
      if (size >> 63) return Fail(kCloseProtocolError, "a length with its top bit set");
      if (size <= 0xffff) return Fail(kCloseProtocolError, "a length not in its shortest form");
      header = 10;
    }
    if (IsControl(opcode)) {
      if (!fin) return Fail(kCloseProtocolError, "a fragmented control frame");
      if (size > 125) return Fail(kCloseProtocolError, "a control frame over 125 bytes");
    } else {
      // Judged from the header alone, so that an oversized frame is never buffered.
      size_t so_far = fragmented_ ? fragments_.size() : 0;
      if (size > max_message_ || so_far + size > max_message_) {
        return Fail(kCloseTooBig, "a message over " + std::to_string(max_message_) + " bytes");
      }
      if (opcode == Opcode::kContinuation && !fragmented_) {
        return Fail(kCloseProtocolError, "a continuation frame with no message to continue");
      }
      if (opcode != Opcode::kContinuation && fragmented_) {
        return Fail(kCloseProtocolError, "a new message before the last one's final fragment");
      }
    }
    size_t mask_size = masked ? 4 : 0;
    if (in.size() < header + mask_size + size) return std::optional<Message>();
    const char* mask = in.data() + header;
    std::string payload(in.substr(header + mask_size, size));
    if (masked) {
      for (size_t i = 0; i < payload.size(); ++i) payload[i] ^= mask[i % 4];
    }
    consumed_ += header + mask_size + size;

    Message m;
    if (IsControl(opcode)) {
      if (opcode == Opcode::kClose) {
        auto close = ParseClose(payload);
        if (!close.ok()) return Fail(kCloseProtocolError, close.status().message());
      }
      m.opcode = opcode;
      m.payload = std::move(payload);
      return std::optional<Message>(std::move(m));
    }
    if (opcode != Opcode::kContinuation) {
      fragmented_ = opcode;
      fragments_ = std::move(payload);
    } else {
      fragments_.append(payload);
    }
    if (!fin) continue;
    m.opcode = *fragmented_;
    m.payload = std::move(fragments_);
    fragments_.clear();
    fragmented_.reset();
    if (m.opcode == Opcode::kText && ValidUtf8(m.payload) != m.payload) {
      return Fail(kCloseInvalidData, "a text message that is not UTF-8");
    }
    return std::optional<Message>(std::move(m));
  }
}

}  // namespace moat::api::websocket
