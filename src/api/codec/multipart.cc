#include "api/codec/multipart.h"

#include <strings.h>

#include <algorithm>

namespace moat::api::codec {
namespace {

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool StartsWithNoCase(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && ::strncasecmp(s.data(), prefix.data(), prefix.size()) == 0;
}

// The value of `param` in a header like `form-data; name="file"; filename="a.txt"`.
std::string HeaderParam(std::string_view header, std::string_view param) {
  size_t pos = 0;
  while (pos < header.size()) {
    size_t semi = header.find(';', pos);
    std::string_view item =
        Trim(header.substr(pos, semi == std::string_view::npos ? semi : semi - pos));
    size_t eq = item.find('=');
    if (eq != std::string_view::npos && Trim(item.substr(0, eq)).size() == param.size() &&
        StartsWithNoCase(Trim(item.substr(0, eq)), param)) {
      std::string_view v = Trim(item.substr(eq + 1));
      if (v.size() >= 2 && v.front() == '"') {
        // Quoted: up to the closing quote (the client escapes quotes inside as %22).
        size_t close = v.find('"', 1);
        return std::string(v.substr(1, close == std::string_view::npos ? v.size() - 1 : close - 1));
      }
      return std::string(v);
    }
    if (semi == std::string_view::npos) break;
    pos = semi + 1;
  }
  return {};
}

std::string UnescapeFilename(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      std::string_view esc = s.substr(i, 3);
      char c = 0;
      if (esc == "%22") c = '"';
      if (esc == "%0D" || esc == "%0d") c = '\r';
      if (esc == "%0A" || esc == "%0a") c = '\n';
      if (c != 0) {
        out.push_back(c);
        i += 2;
        continue;
      }
    }
    out.push_back(s[i]);
  }
  return out;
}

}  // namespace

Result<std::string> MultipartBoundary(std::string_view content_type) {
  if (!StartsWithNoCase(Trim(content_type), "multipart/")) {
    return InvalidArgument("Content-Type is not multipart: \"" + std::string(content_type) + "\"");
  }
  std::string b = HeaderParam(content_type, "boundary");
  if (b.empty() || b.size() > 200) {
    return InvalidArgument("multipart Content-Type without a valid boundary");
  }
  return b;
}

Result<std::vector<MultipartPart>> ParseMultipart(std::string_view body, std::string_view boundary,
                                                  size_t max_parts) {
  std::string delim = "--" + std::string(boundary);
  std::vector<MultipartPart> parts;
  // The first delimiter may be preceded by a preamble.
  size_t pos = body.find(delim);
  if (pos == std::string_view::npos) return InvalidArgument("multipart: no boundary in the body");
  pos += delim.size();
  std::string next_delim = "\r\n" + delim;
  for (;;) {
    if (body.substr(pos, 2) == "--") return parts;  // the closing delimiter
    if (body.substr(pos, 2) != "\r\n") return InvalidArgument("multipart: malformed delimiter");
    pos += 2;
    if (parts.size() == max_parts) {
      return InvalidArgument("multipart: more than " + std::to_string(max_parts) + " parts");
    }
    MultipartPart part;
    // Headers, up to an empty line.
    for (;;) {
      size_t eol = body.find("\r\n", pos);
      if (eol == std::string_view::npos) return InvalidArgument("multipart: truncated headers");
      std::string_view line = body.substr(pos, eol - pos);
      pos = eol + 2;
      if (line.empty()) break;
      size_t colon = line.find(':');
      if (colon == std::string_view::npos) return InvalidArgument("multipart: bad header line");
      std::string_view name = Trim(line.substr(0, colon));
      std::string_view value = Trim(line.substr(colon + 1));
      if (name.size() == 19 && StartsWithNoCase(name, "content-disposition")) {
        part.name = HeaderParam(value, "name");
        part.filename = UnescapeFilename(HeaderParam(value, "filename"));
      } else if (name.size() == 12 && StartsWithNoCase(name, "content-type")) {
        part.content_type = std::string(value);
      }
    }
    size_t end = body.find(next_delim, pos);
    if (end == std::string_view::npos)
      return InvalidArgument("multipart: missing closing boundary");
    part.data = body.substr(pos, end - pos);
    parts.push_back(std::move(part));
    pos = end + next_delim.size();
  }
}

}  // namespace moat::api::codec
