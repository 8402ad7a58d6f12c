// The host<->guest channel's frame codec (api/guest-channel.md). Used by both ends, so it has no
// dependency beyond the standard library and common/status.h.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/status.h"

namespace moat::channel {

inline constexpr uint32_t kVersion = 1;
inline constexpr uint32_t kMinVersion = 1;
inline constexpr size_t kHeaderSize = 12;
inline constexpr uint32_t kMaxPayload = 128 * 1024;
inline constexpr uint32_t kMaxJsonPayload = 64 * 1024;
inline constexpr uint32_t kInitialWindow = 1024 * 1024;
inline constexpr uint32_t kMaxStreams = 1024;
inline constexpr std::string_view kHelloMagic = "MOATCHAN";

enum class FrameType : uint8_t {
  kHello = 1,
  kRequest = 2,
  kData = 3,
  kEof = 4,
  kMessage = 5,
  kWindow = 6,
  kEnd = 7,
  kCancel = 8,
  kPing = 9,
  kPong = 10,
};

// Sub-channels of DATA and EOF frames.
enum class SubChannel : uint8_t { kStdin = 0, kStdout = 1, kStderr = 2 };

struct Frame {
  FrameType type = FrameType::kPing;
  uint8_t flags = 0;
  uint32_t stream = 0;
  std::string payload;
};

std::string_view FrameTypeName(FrameType type);

// Appends one encoded frame to `out`. The payload must be at most kMaxPayload bytes.
void AppendFrame(std::string& out, FrameType type, uint8_t flags, uint32_t stream,
                 std::string_view payload);
std::string EncodeFrame(FrameType type, uint8_t flags, uint32_t stream, std::string_view payload);
// HELLO payload: the magic followed by the JSON text.
std::string EncodeHello(std::string_view json);
std::string EncodeWindow(uint32_t stream, uint32_t credit);
// Parses a WINDOW payload.
Result<uint32_t> DecodeWindowCredit(std::string_view payload);

// Incremental decoder over a byte stream. Bytes in, frames out; never trusts a length before
// checking it against the limits.
class FrameDecoder {
 public:
  enum class Mode {
    kStrict,  // an invalid header is an error; the connection must be closed
    kResync,  // an invalid header drops bytes until the next valid HELLO (see the spec)
  };
  explicit FrameDecoder(Mode mode) : mode_(mode) {}

  // Switches modes without losing buffered bytes (the host resynchronises until the guest's
  // HELLO, then validates strictly).
  void SetMode(Mode mode) { mode_ = mode; }

  void Feed(std::string_view bytes) { buf_.append(bytes); }
  // The next complete frame, nullopt if more bytes are needed, or an error (kStrict only).
  Result<std::optional<Frame>> Next();
  // Drops everything buffered (for example when the peer disconnects).
  void Reset() {
    buf_.clear();
    pos_ = 0;
  }
  size_t buffered() const { return buf_.size() - pos_; }
  // Bytes thrown away while resynchronising, for diagnostics.
  uint64_t discarded() const { return discarded_; }

 private:
  // Drops bytes up to the next plausible HELLO frame start. Returns true if one was found.
  bool SkipToHello();
  void Compact();

  Mode mode_;
  std::string buf_;
  size_t pos_ = 0;
  uint64_t discarded_ = 0;
};

}  // namespace moat::channel
