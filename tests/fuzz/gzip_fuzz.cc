// libFuzzer target for gzip (Content-Encoding: gzip uploads to envd's /files): the compressed
// bytes come from the client. Inflates them whole (GunzipBounded) and as a stream fed in uneven
// pieces (GunzipStream, what uploads use), and checks that neither crashes, that neither hands
// out more than its bound (decompression bombs), that both agree, that what inflates
// re-compresses and inflates to the same bytes, and that the Accept-Encoding parser takes any
// header value.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "api/codec/gzip.h"

namespace codec = moat::api::codec;
using moat::ErrorCode;

namespace {

constexpr size_t kMaxOutput = 256 * 1024;

bool Expected(const moat::Status& s) {
  return s.code() == ErrorCode::kInvalidArgument || s.code() == ErrorCode::kResourceExhausted;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);  // bytes as chars
  auto whole = codec::GunzipBounded(in, kMaxOutput);
  if (!whole.ok() && !Expected(whole.status())) std::abort();
  if (whole.ok() && whole->size() > kMaxOutput) std::abort();

  // The same bytes as a stream, in pieces of 1, 4, 13, ... bytes.
  codec::GunzipStream stream(codec::InflateLimits{.max_output = kMaxOutput, .max_ratio = 0});
  std::string streamed;
  moat::Status status;
  size_t off = 0;
  for (size_t chunk = 1; off < size && status.ok(); chunk = chunk * 3 % 61 + 1) {
    size_t n = std::min(chunk, size - off);
    status = stream.Write(in.substr(off, n), [&](std::string_view piece) {
      if (piece.size() > codec::GunzipStream::kPiece) std::abort();
      streamed.append(piece);
      return moat::Status::Ok();
    });
    off += n;
  }
  if (status.ok()) status = stream.Finish();
  if (streamed.size() > kMaxOutput) std::abort();
  // (After an error zlib's count may include output that was never handed out.)
  if (status.ok() && stream.total_out() != streamed.size()) std::abort();
  if (!status.ok() && !Expected(status)) std::abort();
  if (whole.ok() != status.ok()) std::abort();
  if (whole.ok() && *whole != streamed) std::abort();

  if (whole.ok()) {
    // Compress in two writes and inflate again: the same bytes.
    codec::GzipWriter w;
    auto a = w.Write(std::string_view(*whole).substr(0, whole->size() / 2));
    auto b = w.Write(std::string_view(*whole).substr(whole->size() / 2));
    auto c = w.Finish();
    if (!a.ok() || !b.ok() || !c.ok()) std::abort();
    auto again = codec::GunzipBounded(*a + *b + *c, kMaxOutput);
    if (!again.ok() || *again != *whole) std::abort();
  }
  (void)codec::AcceptsGzip(in);
  return 0;
}
