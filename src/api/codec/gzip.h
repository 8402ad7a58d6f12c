// gzip for `Content-Encoding: gzip` uploads to envd's /files (zlib).
#pragma once

#include <string>
#include <string_view>

#include "common/status.h"

namespace moat::api::codec {

// Inflates a gzip (or zlib) stream; invalid_argument if corrupt, resource_exhausted past
// `max_output` bytes (a decompression bomb).
Result<std::string> GunzipBounded(std::string_view data, size_t max_output);

}  // namespace moat::api::codec
