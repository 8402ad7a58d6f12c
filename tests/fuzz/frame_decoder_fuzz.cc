// libFuzzer target for the channel decoder: it reads bytes from the guest, which is untrusted.
// Checks that both modes never crash, never return a frame over the limits, and that the
// buffered byte count stays bounded.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "channel/frame.h"

using moat::channel::FrameDecoder;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  for (auto mode : {FrameDecoder::Mode::kStrict, FrameDecoder::Mode::kResync}) {
    FrameDecoder d(mode);
    // Feed in uneven chunks to exercise partial headers and payloads.
    size_t off = 0;
    size_t chunk = 1;
    while (off < size) {
      size_t n = std::min(chunk, size - off);
      d.Feed(std::string_view(reinterpret_cast<const char*>(data) + off, n));  // bytes as chars
      off += n;
      chunk = chunk * 3 % 97 + 1;
      for (;;) {
        auto r = d.Next();
        if (!r.ok() || !r->has_value()) break;
        if ((*r)->payload.size() > moat::channel::kMaxPayload) std::abort();
      }
      if (d.buffered() > moat::channel::kMaxPayload + 2 * moat::channel::kHeaderSize + size) {
        std::abort();
      }
    }
  }
  return 0;
}
