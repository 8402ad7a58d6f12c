// gzip for envd's /files (zlib): `Content-Encoding: gzip` uploads are inflated as they stream
// in, and downloads are compressed as they stream out when the client sends
// `Accept-Encoding: gzip`. Memory stays bounded by zlib's window and one buffer either way.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "common/status.h"

namespace moat::api::codec {

// Bounds on what a client's compressed data may expand to (a decompression bomb).
struct InflateLimits {
  uint64_t max_output = uint64_t{1} << 30;  // resource_exhausted past this many bytes
  // resource_exhausted once the output passes `ratio_after` bytes and `max_ratio` times the
  // input consumed so far; 0: no bound. Deflate cannot expand past ~1032:1, so only data
  // (nearly) all one byte value comes near 1000:1.
  uint64_t max_ratio = 1000;
  uint64_t ratio_after = uint64_t{1} << 20;
};

// Inflates a gzip (or zlib) stream piece by piece as its input arrives.
class GunzipStream {
 public:
  // The output goes out in pieces of at most this many bytes.
  static constexpr size_t kPiece = 64 * 1024;
  using Sink = std::function<Status(std::string_view)>;

  explicit GunzipStream(InflateLimits limits = {});
  ~GunzipStream();
  GunzipStream(const GunzipStream&) = delete;
  GunzipStream& operator=(const GunzipStream&) = delete;

  // Inflates `input`, handing the output to `sink` as it comes; stops at the first error: the
  // sink's, invalid_argument for corrupt data, resource_exhausted past the limits. Input after
  // the end of the gzip stream is ignored.
  Status Write(std::string_view input, const Sink& sink);
  // The input is complete: invalid_argument unless the gzip stream ended.
  Status Finish() const;
  bool ended() const;
  uint64_t total_in() const;
  uint64_t total_out() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Inflates a whole gzip (or zlib) stream; invalid_argument if corrupt, resource_exhausted past
// `max_output` bytes (a decompression bomb). For data already in memory; uploads stream
// (GunzipStream).
Result<std::string> GunzipBounded(std::string_view data, size_t max_output);

// Whether an Accept-Encoding header value allows gzip: `gzip`, `x-gzip` or `*` with a q-value
// above 0, unless gzip itself is refused with q=0. Unparsable parts are ignored.
bool AcceptsGzip(std::string_view accept_encoding);

// Compresses one stream into a single gzip member, chunk by chunk, with memory bounded by
// zlib's window whatever the stream's length.
class GzipWriter {
 public:
  // `level`: zlib's 1 (fastest) to 9; a download favours speed.
  explicit GzipWriter(int level = 1);
  ~GzipWriter();
  GzipWriter(const GzipWriter&) = delete;
  GzipWriter& operator=(const GzipWriter&) = delete;

  // The compressed bytes that `data` completes; often empty, as zlib buffers input.
  Result<std::string> Write(std::string_view data);
  // Everything still buffered, and the gzip trailer. Nothing may be written after it.
  Result<std::string> Finish();

 private:
  Result<std::string> Deflate(std::string_view data, int flush);

  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace moat::api::codec
