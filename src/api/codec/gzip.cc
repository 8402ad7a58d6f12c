#include "api/codec/gzip.h"

#include <zlib.h>

#include <cstdlib>

namespace moat::api::codec {

struct GunzipStream::State {
  z_stream zs{};
  bool ok = false;
  bool ended = false;
  InflateLimits limits;
  std::unique_ptr<char[]> out = std::make_unique<char[]>(kPiece);
};

GunzipStream::GunzipStream(InflateLimits limits) : state_(std::make_unique<State>()) {
  state_->limits = limits;
  // 15 + 32: any window size, gzip or zlib header detected automatically.
  state_->ok = inflateInit2(&state_->zs, 15 + 32) == Z_OK;
}

GunzipStream::~GunzipStream() {
  if (state_->ok) inflateEnd(&state_->zs);
}

bool GunzipStream::ended() const {
  return state_->ended;
}
uint64_t GunzipStream::total_in() const {
  return state_->zs.total_in;
}
uint64_t GunzipStream::total_out() const {
  return state_->zs.total_out;
}

Status GunzipStream::Write(std::string_view input, const Sink& sink) {
  if (!state_->ok) return Internal("gzip: inflateInit2 failed");
  z_stream& zs = state_->zs;
  const InflateLimits& limits = state_->limits;
  // Bytes after the gzip stream's end: a second member (pigz, `cat a.gz b.gz`) or junk. Either
  // way, an error rather than a silently truncated upload.
  auto trailing = [] {
    return InvalidArgument("gzip: data after the end of the gzip stream (one member only)");
  };
  if (state_->ended && !input.empty()) return trailing();
  while (!input.empty() && !state_->ended) {
    // zlib takes at most 4 GB at a time (uInt); pieces here are far smaller, but stay correct.
    std::string_view part = input.substr(0, 1u << 30);
    // zlib's API takes non-const input pointers but does not write through them.
    zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(part.data()));
    zs.avail_in = static_cast<uInt>(part.size());
    // Until zlib took all the input and had room to spare: a full output buffer may leave
    // more output pending inside zlib.
    bool full = true;
    while ((zs.avail_in > 0 || full) && !state_->ended) {
      // The output buffer is kPiece bytes, owned by the state; zlib writes at most avail_out.
      zs.next_out = reinterpret_cast<Bytef*>(state_->out.get());
      zs.avail_out = kPiece;
      int rc = inflate(&zs, Z_NO_FLUSH);
      if (rc == Z_STREAM_END) {
        state_->ended = true;
      } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
        return InvalidArgument("gzip: corrupt data");
      }
      size_t produced = kPiece - zs.avail_out;
      full = zs.avail_out == 0;
      if (zs.total_out > limits.max_output) {
        return ResourceExhausted("gzip: inflated data exceeds " +
                                 std::to_string(limits.max_output) + " bytes");
      }
      if (limits.max_ratio > 0 && zs.total_out > limits.ratio_after &&
          zs.total_out / limits.max_ratio > zs.total_in) {
        return ResourceExhausted("gzip: the data inflates more than " +
                                 std::to_string(limits.max_ratio) + ":1 (send it uncompressed)");
      }
      if (produced > 0) MOAT_RETURN_IF_ERROR(sink(std::string_view(state_->out.get(), produced)));
      // Z_BUF_ERROR with input left and output room: no progress is possible (cannot happen
      // with room in both, but never spin on it).
      if (rc == Z_BUF_ERROR && produced == 0 && zs.avail_in > 0) {
        return InvalidArgument("gzip: corrupt data");
      }
    }
    if (state_->ended && (zs.avail_in > 0 || input.size() > part.size())) return trailing();
    input.remove_prefix(part.size());
  }
  return Status::Ok();
}

Status GunzipStream::Finish() const {
  if (!state_->ended) return InvalidArgument("gzip: truncated data");
  return Status::Ok();
}

Result<std::string> GunzipBounded(std::string_view data, size_t max_output) {
  GunzipStream gunzip(InflateLimits{max_output, 0, 0});
  std::string out;
  MOAT_RETURN_IF_ERROR(gunzip.Write(data, [&out](std::string_view piece) {
    out.append(piece);
    return Status::Ok();
  }));
  MOAT_RETURN_IF_ERROR(gunzip.Finish());
  return out;
}

namespace {

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i] >= 'A' && a[i] <= 'Z' ? static_cast<char>(a[i] - 'A' + 'a') : a[i];
    if (x != b[i]) return false;
  }
  return true;
}

// The q-value of one `coding;q=0.5` element (1 without one, -1 if malformed).
double QValue(std::string_view params) {
  while (!params.empty()) {
    size_t semi = params.find(';');
    std::string_view p = Trim(params.substr(0, semi));
    params = semi == std::string_view::npos ? std::string_view() : params.substr(semi + 1);
    if (p.size() < 2 || (p[0] != 'q' && p[0] != 'Q') || p[1] != '=') continue;
    std::string value(Trim(p.substr(2)));
    char* end = nullptr;
    double q = std::strtod(value.c_str(), &end);
    if (value.empty() || *end != '\0' || q < 0 || q > 1) return -1;
    return q;
  }
  return 1;
}

}  // namespace

bool AcceptsGzip(std::string_view header) {
  double gzip = -1;  // unmentioned
  double any = -1;
  while (!header.empty()) {
    size_t comma = header.find(',');
    std::string_view element = header.substr(0, comma);
    header = comma == std::string_view::npos ? std::string_view() : header.substr(comma + 1);
    size_t semi = element.find(';');
    std::string_view coding = Trim(element.substr(0, semi));
    double q =
        QValue(semi == std::string_view::npos ? std::string_view() : element.substr(semi + 1));
    if (q < 0) continue;
    if (EqualsIgnoreCase(coding, "gzip") || EqualsIgnoreCase(coding, "x-gzip")) {
      gzip = q;
    } else if (coding == "*") {
      any = q;
    }
  }
  return gzip >= 0 ? gzip > 0 : any > 0;
}

struct GzipWriter::State {
  z_stream zs{};
  bool ok = false;
  bool finished = false;
};

GzipWriter::GzipWriter(int level) : state_(std::make_unique<State>()) {
  // 15 + 16: a 32 KB window with a gzip header and trailer (not zlib's).
  state_->ok = deflateInit2(&state_->zs, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) == Z_OK;
}

GzipWriter::~GzipWriter() {
  if (state_->ok) deflateEnd(&state_->zs);
}

Result<std::string> GzipWriter::Deflate(std::string_view data, int flush) {
  if (!state_->ok) return Internal("gzip: deflateInit2 failed");
  if (state_->finished) return FailedPrecondition("gzip: the stream is already finished");
  z_stream& zs = state_->zs;
  // zlib's API takes non-const input pointers but does not write through them.
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  zs.avail_in = static_cast<uInt>(data.size());
  std::string out;
  char buf[64 * 1024];
  for (;;) {
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = sizeof buf;
    int rc = deflate(&zs, flush);
    if (rc == Z_STREAM_ERROR) return Internal("gzip: deflate failed");
    out.append(buf, sizeof buf - zs.avail_out);
    if (rc == Z_STREAM_END) {
      state_->finished = true;
      return out;
    }
    // Done once zlib took all input and had room to spare (Z_BUF_ERROR: no progress possible).
    if (flush != Z_FINISH && zs.avail_in == 0 && zs.avail_out != 0) return out;
  }
}

Result<std::string> GzipWriter::Write(std::string_view data) {
  // deflate takes at most 4 GB at a time (uInt); chunks are far smaller, but stay correct.
  std::string out;
  do {
    std::string_view part = data.substr(0, 1u << 30);
    data.remove_prefix(part.size());
    MOAT_ASSIGN_OR_RETURN(std::string z, Deflate(part, Z_NO_FLUSH));
    out += z;
  } while (!data.empty());
  return out;
}

Result<std::string> GzipWriter::Finish() {
  return Deflate({}, Z_FINISH);
}

}  // namespace moat::api::codec
