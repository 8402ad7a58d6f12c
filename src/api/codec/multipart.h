// multipart/form-data (RFC 7578) as the e2b client sends file uploads (E2B-WIRE §3): one part
// per file, name "file", filename = the target path with '"', CR and LF escaped as %22, %0D,
// %0A. The parser reads untrusted bytes: it bounds the part count and never reads past the body.
#pragma once

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

}  // namespace moat::api::codec
