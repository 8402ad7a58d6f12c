// multipart/form-data (RFC 7578) as the e2b client sends file uploads (E2B-WIRE §3): one part
// per file, name "file", filename = the target path with '"', CR and LF escaped as %22, %0D,
// %0A. The parsers read untrusted bytes: they bound the part count and never read past the body;
// MultipartReader holds no more than one piece of the body and a part's headers at a time.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace moat::api::codec {

struct MultipartPart {
  std::string name;          // the form field name
  std::string filename;      // unescaped; empty if the part has none
  std::string content_type;  // empty if absent
  std::string_view data;     // points into the body passed to ParseMultipart
};

// The boundary parameter of a multipart Content-Type, or invalid_argument.
Result<std::string> MultipartBoundary(std::string_view content_type);
// Splits `body` into its parts. `body` must outlive the result.
Result<std::vector<MultipartPart>> ParseMultipart(std::string_view body, std::string_view boundary,
                                                  size_t max_parts = 1024);

// The same format read as the body arrives: a part's headers, its data in pieces, its end.
// Same rules and errors as ParseMultipart; a part's headers may not pass max_header_bytes.
class MultipartReader {
 public:
  // Up to `size` more bytes of the body into `buf`: how many; 0 once the body is complete.
  using Source = std::function<Result<size_t>(char* buf, size_t size)>;
  struct Event {
    enum class Kind { kPart, kData, kPartEnd, kEnd };
    Kind kind = Kind::kEnd;
    MultipartPart part;     // kPart: its headers (data empty)
    std::string_view data;  // kData: valid until the next call to Next
  };

  MultipartReader(Source source, std::string_view boundary, size_t max_parts = 1024,
                  size_t max_header_bytes = 64 * 1024);
  // The next event; kEnd after the closing delimiter (what follows it is not read), and from
  // then on. An error is returned again by every later call.
  Result<Event> Next();

 private:
  enum class State { kPreamble, kDelimiter, kHeaders, kData, kEnd };
  // Reads more of the body onto the buffer (dropping what was consumed); false at its end.
  Result<bool> Fill();
  Status Fail(Status s);

  Source source_;
  std::string delim_;       // "--" boundary
  std::string next_delim_;  // CRLF "--" boundary
  size_t max_parts_;
  size_t max_header_bytes_;
  size_t parts_ = 0;
  State state_ = State::kPreamble;
  std::string buf_;
  size_t pos_ = 0;  // buf_[pos_..] is not consumed yet
  MultipartPart part_;
  Status failed_;
};

}  // namespace moat::api::codec
