#include "api/codec/gzip.h"

#include <zlib.h>

namespace moat::api::codec {

Result<std::string> GunzipBounded(std::string_view data, size_t max_output) {
  z_stream zs{};
  // 15 + 32: any window size, gzip or zlib header detected automatically.
  if (inflateInit2(&zs, 15 + 32) != Z_OK) return Internal("inflateInit2 failed");
  std::string out;
  // zlib's API takes non-const input pointers but does not write through them.
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  zs.avail_in = static_cast<uInt>(data.size());
  char buf[64 * 1024];
  int rc = Z_OK;
  while (rc != Z_STREAM_END) {
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = sizeof buf;
    rc = inflate(&zs, Z_NO_FLUSH);
    if (rc != Z_OK && rc != Z_STREAM_END) {
      inflateEnd(&zs);
      return InvalidArgument("gzip: corrupt or truncated data");
    }
    out.append(buf, sizeof buf - zs.avail_out);
    if (out.size() > max_output) {
      inflateEnd(&zs);
      return ResourceExhausted("gzip: inflated data exceeds " + std::to_string(max_output) +
                               " bytes");
    }
    if (rc == Z_OK && zs.avail_in == 0 && zs.avail_out != 0) {
      inflateEnd(&zs);
      return InvalidArgument("gzip: truncated data");
    }
  }
  inflateEnd(&zs);
  return out;
}

}  // namespace moat::api::codec
