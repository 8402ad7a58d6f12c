#include "channel/frame.h"

#include <cstring>

namespace moat::channel {
namespace {

void PutU32(std::string& out, uint32_t v) {
  char b[4] = {static_cast<char>(v & 0xff), static_cast<char>((v >> 8) & 0xff),
               static_cast<char>((v >> 16) & 0xff), static_cast<char>((v >> 24) & 0xff)};
  out.append(b, 4);
}

uint32_t GetU32(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);  // byte view of the buffer
  return static_cast<uint32_t>(u[0]) | (static_cast<uint32_t>(u[1]) << 8) |
         (static_cast<uint32_t>(u[2]) << 16) | (static_cast<uint32_t>(u[3]) << 24);
}

bool KnownType(uint8_t t) {
  return t >= static_cast<uint8_t>(FrameType::kHello) &&
         t <= static_cast<uint8_t>(FrameType::kPong);
}

// Checks a header; returns an empty string if valid, else why not.
std::string CheckHeader(const char* h, uint32_t* length) {
  *length = GetU32(h);
  auto type = static_cast<uint8_t>(h[4]);
  auto flags = static_cast<uint8_t>(h[5]);
  if (*length > kMaxPayload) {
    return "frame payload of " + std::to_string(*length) + " bytes exceeds the limit of " +
           std::to_string(kMaxPayload);
  }
  if (!KnownType(type)) return "unknown frame type " + std::to_string(type);
  if (h[6] != 0 || h[7] != 0) return "reserved header bytes are not zero";
  auto ft = static_cast<FrameType>(type);
  if ((ft == FrameType::kData || ft == FrameType::kEof) && flags > 2) {
    return "unknown sub-channel " + std::to_string(flags);
  }
  if (ft != FrameType::kData && ft != FrameType::kEof && flags != 0) {
    return "flags set on a " + std::string(FrameTypeName(ft)) + " frame";
  }
  uint32_t stream = GetU32(h + 8);
  bool connection_level =
      ft == FrameType::kHello || ft == FrameType::kPing || ft == FrameType::kPong;
  if (connection_level != (stream == 0)) {
    return std::string(FrameTypeName(ft)) + " frame on stream " + std::to_string(stream);
  }
  if (ft == FrameType::kWindow && *length != 4) return "WINDOW payload is not 4 bytes";
  if ((ft == FrameType::kPing || ft == FrameType::kPong) && *length > 64) {
    return "PING/PONG payload over 64 bytes";
  }
  // The JSON limit is on the JSON text; only a HELLO carries the magic in front of it.
  size_t json_limit = kMaxJsonPayload + (ft == FrameType::kHello ? kHelloMagic.size() : 0);
  if ((ft == FrameType::kRequest || ft == FrameType::kMessage || ft == FrameType::kEnd ||
       ft == FrameType::kHello) &&
      *length > json_limit) {
    return "JSON payload over " + std::to_string(kMaxJsonPayload) + " bytes";
  }
  return {};
}

}  // namespace

std::string_view FrameTypeName(FrameType type) {
  switch (type) {
    case FrameType::kHello: return "HELLO";
    case FrameType::kRequest: return "REQUEST";
    case FrameType::kData: return "DATA";
    case FrameType::kEof: return "EOF";
    case FrameType::kMessage: return "MESSAGE";
    case FrameType::kWindow: return "WINDOW";
    case FrameType::kEnd: return "END";
    case FrameType::kCancel: return "CANCEL";
    case FrameType::kPing: return "PING";
    case FrameType::kPong: return "PONG";
  }
  return "UNKNOWN";
}

void AppendFrame(std::string& out, FrameType type, uint8_t flags, uint32_t stream,
                 std::string_view payload) {
  PutU32(out, static_cast<uint32_t>(payload.size()));
  out.push_back(static_cast<char>(type));
  out.push_back(static_cast<char>(flags));
  out.push_back(0);
  out.push_back(0);
  PutU32(out, stream);
  out.append(payload);
}

std::string EncodeFrame(FrameType type, uint8_t flags, uint32_t stream, std::string_view payload) {
  std::string out;
  out.reserve(kHeaderSize + payload.size());
  AppendFrame(out, type, flags, stream, payload);
  return out;
}

std::string EncodeHello(std::string_view json) {
  std::string payload(kHelloMagic);
  payload.append(json);
  return EncodeFrame(FrameType::kHello, 0, 0, payload);
}

std::string EncodeWindow(uint32_t stream, uint32_t credit) {
  std::string payload;
  PutU32(payload, credit);
  return EncodeFrame(FrameType::kWindow, 0, stream, payload);
}

Result<uint32_t> DecodeWindowCredit(std::string_view payload) {
  if (payload.size() != 4) return InvalidArgument("WINDOW payload is not 4 bytes");
  return GetU32(payload.data());
}

void FrameDecoder::Compact() {
  // Keep the buffer from growing without bound: drop consumed bytes once they dominate.
  if (pos_ > 0 && (pos_ >= buf_.size() || pos_ > 64 * 1024)) {
    buf_.erase(0, pos_);
    pos_ = 0;
  }
}

bool FrameDecoder::SkipToHello() {
  // A HELLO starts kHeaderSize bytes before its magic. Search from one byte past the current
  // position so that a bad frame at pos_ is always skipped.
  size_t from = pos_ + 1 + kHeaderSize;
  for (;;) {
    size_t at = buf_.find(kHelloMagic, from);
    if (at == std::string::npos) {
      // Keep the tail that could still be the start of a HELLO header + magic.
      size_t keep = kHeaderSize + kHelloMagic.size() - 1;
      size_t new_pos = buf_.size() > keep ? buf_.size() - keep : 0;
      if (new_pos > pos_) {
        discarded_ += new_pos - pos_;
        pos_ = new_pos;
      }
      Compact();
      return false;
    }
    size_t start = at - kHeaderSize;
    uint32_t len = 0;
    if (start > pos_ && CheckHeader(buf_.data() + start, &len).empty() &&
        static_cast<FrameType>(buf_[start + 4]) == FrameType::kHello) {
      discarded_ += start - pos_;
      pos_ = start;
      return true;
    }
    from = at + 1;
  }
}

Result<std::optional<Frame>> FrameDecoder::Next() {
  for (;;) {
    if (buf_.size() - pos_ < kHeaderSize) {
      Compact();
      return std::optional<Frame>();
    }
    uint32_t len = 0;
    std::string why = CheckHeader(buf_.data() + pos_, &len);
    bool hello_ok = true;
    if (why.empty() && static_cast<FrameType>(buf_[pos_ + 4]) == FrameType::kHello) {
      // The magic must follow a HELLO header; check it as soon as it is buffered.
      size_t have = std::min(buf_.size() - pos_ - kHeaderSize, kHelloMagic.size());
      if (len < kHelloMagic.size() ||
          std::memcmp(buf_.data() + pos_ + kHeaderSize, kHelloMagic.data(), have) != 0) {
        why = "HELLO without the MOATCHAN magic";
        hello_ok = false;
      }
    }
    if (!why.empty()) {
      if (mode_ == Mode::kStrict) return InvalidArgument("channel protocol error: " + why);
      (void)hello_ok;
      if (!SkipToHello()) return std::optional<Frame>();
      continue;
    }
    if (buf_.size() - pos_ < kHeaderSize + len) {
      Compact();
      return std::optional<Frame>();
    }
    Frame f;
    f.type = static_cast<FrameType>(buf_[pos_ + 4]);
    f.flags = static_cast<uint8_t>(buf_[pos_ + 5]);
    f.stream = GetU32(buf_.data() + pos_ + 8);
    f.payload.assign(buf_, pos_ + kHeaderSize, len);
    pos_ += kHeaderSize + len;
    Compact();
    if (f.type == FrameType::kHello) f.payload.erase(0, kHelloMagic.size());
    return std::optional<Frame>(std::move(f));
  }
}

}  // namespace moat::channel
