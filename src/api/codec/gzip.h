// gzip for envd's /files (zlib): `Content-Encoding: gzip` uploads are inflated, and downloads
// are compressed as they stream when the client sends `Accept-Encoding: gzip`.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "common/status.h"

namespace moat::api::codec {

// Inflates a gzip (or zlib) stream; invalid_argument if corrupt, resource_exhausted past
// `max_output` bytes (a decompression bomb).
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
