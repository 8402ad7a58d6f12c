// libFuzzer target for multipart/form-data (envd's POST /files upload, E2B-WIRE §3): the
// Content-Type's boundary and the body come from the client. Input: the Content-Type header, a
// newline, then the body. Parses the body whole (ParseMultipart) and as it would arrive, in
// uneven pieces (MultipartReader, what uploads use), and checks that neither crashes, that the
// part count stays within its bound, that parts lie inside the body and hold no delimiter, and
// that both parsers find the same parts.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "api/codec/multipart.h"

namespace codec = moat::api::codec;

namespace {

struct Part {
  std::string name, filename, content_type, data;
  bool operator==(const Part&) const = default;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);  // bytes as chars
  size_t nl = in.find('\n');
  std::string_view content_type = in.substr(0, nl);
  std::string_view body = nl == std::string_view::npos ? std::string_view() : in.substr(nl + 1);

  auto boundary = codec::MultipartBoundary(content_type);
  if (!boundary.ok()) return 0;
  if (boundary->empty() || boundary->size() > 200) std::abort();
  constexpr size_t kMaxParts = 8;
  auto parts = codec::ParseMultipart(body, *boundary, kMaxParts);
  if (parts.ok()) {
    if (parts->size() > kMaxParts) std::abort();
    for (const auto& p : *parts) {
      if (p.data.data() < body.data() ||
          p.data.data() + p.data.size() > body.data() + body.size()) {
        std::abort();
      }
      if (p.data.find("\r\n--" + *boundary) != std::string_view::npos) std::abort();
    }
  }

  // The reader, fed 1, 4, 13, ... bytes at a time.
  size_t off = 0, chunk = 1;
  codec::MultipartReader reader(
      [&](char* buf, size_t n) -> moat::Result<size_t> {
        size_t k = std::min({n, chunk, body.size() - off});
        if (k > 0) std::memcpy(buf, body.data() + off, k);
        off += k;
        chunk = chunk * 3 % 61 + 1;
        return k;
      },
      *boundary, kMaxParts);
  std::vector<Part> streamed;
  bool ok = false;
  for (size_t events = 0;; ++events) {
    // Every event but the last consumes a byte or more: a reader that does not end is a hang.
    if (events > body.size() + 2 * kMaxParts + 2) std::abort();
    auto e = reader.Next();
    if (!e.ok()) break;
    if (e->kind == codec::MultipartReader::Event::Kind::kEnd) {
      ok = true;
      break;
    }
    if (e->kind == codec::MultipartReader::Event::Kind::kPart) {
      if (streamed.size() == kMaxParts) std::abort();
      streamed.push_back({e->part.name, e->part.filename, e->part.content_type, ""});
    } else if (e->kind == codec::MultipartReader::Event::Kind::kData) {
      if (streamed.empty()) std::abort();
      streamed.back().data.append(e->data);
    }
  }
  if (parts.ok() && ok) {
    std::vector<Part> whole;
    for (const auto& p : *parts) {
      whole.push_back({p.name, p.filename, p.content_type, std::string(p.data)});
    }
    if (whole != streamed) std::abort();
  }
  if (parts.ok() != ok) std::abort();
  return 0;
}
