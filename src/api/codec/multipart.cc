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

// One line of a part's head into `part`.
Status ParsePartHeaderLine(std::string_view line, MultipartPart* part) {
  size_t colon = line.find(':');
  if (colon == std::string_view::npos) return InvalidArgument("multipart: bad header line");
  std::string_view name = Trim(line.substr(0, colon));
  std::string_view value = Trim(line.substr(colon + 1));
  if (name.size() == 19 && StartsWithNoCase(name, "content-disposition")) {
    part->name = HeaderParam(value, "name");
    part->filename = UnescapeFilename(HeaderParam(value, "filename"));
  } else if (name.size() == 12 && StartsWithNoCase(name, "content-type")) {
    part->content_type = std::string(value);
  }
  return Status::Ok();
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
      MOAT_RETURN_IF_ERROR(ParsePartHeaderLine(line, &part));
    }
    size_t end = body.find(next_delim, pos);
    if (end == std::string_view::npos)
      return InvalidArgument("multipart: missing closing boundary");
    part.data = body.substr(pos, end - pos);
    parts.push_back(std::move(part));
    pos = end + next_delim.size();
  }
}

MultipartReader::MultipartReader(Source source, std::string_view boundary, size_t max_parts,
                                 size_t max_header_bytes)
    : source_(std::move(source)),
      delim_("--" + std::string(boundary)),
      next_delim_("\r\n--" + std::string(boundary)),
      max_parts_(max_parts),
      max_header_bytes_(max_header_bytes) {}

Status MultipartReader::Fail(Status s) {
  failed_ = std::move(s);
  return failed_;
}

Result<bool> MultipartReader::Fill() {
  constexpr size_t kPiece = 64 * 1024;
  buf_.erase(0, pos_);
  pos_ = 0;
  size_t old = buf_.size();
  buf_.resize(old + kPiece);
  auto n = source_(buf_.data() + old, kPiece);
  buf_.resize(old + (n.ok() ? *n : 0));
  if (!n.ok()) return n.status();
  return *n > 0;
}

Result<MultipartReader::Event> MultipartReader::Next() {
  if (!failed_.ok()) return failed_;
  Event ev;
  for (;;) {
    std::string_view pending = std::string_view(buf_).substr(pos_);
    switch (state_) {
      case State::kEnd: return ev;
      case State::kPreamble: {
        // The first delimiter may be preceded by a preamble, which is dropped.
        size_t at = pending.find(delim_);
        if (at != std::string_view::npos) {
          pos_ += at + delim_.size();
          state_ = State::kDelimiter;
          continue;
        }
        if (pending.size() >= delim_.size()) pos_ += pending.size() - (delim_.size() - 1);
        break;
      }
      case State::kDelimiter:
        if (pending.size() >= 2) {
          if (pending.substr(0, 2) == "--") {  // the closing delimiter
            state_ = State::kEnd;
            return ev;
          }
          if (pending.substr(0, 2) != "\r\n") {
            return Fail(InvalidArgument("multipart: malformed delimiter"));
          }
          pos_ += 2;
          if (parts_ == max_parts_) {
            return Fail(
                InvalidArgument("multipart: more than " + std::to_string(max_parts_) + " parts"));
          }
          part_ = MultipartPart{};
          state_ = State::kHeaders;
          continue;
        }
        break;
      case State::kHeaders: {
        size_t eol = pending.find("\r\n");
        if (eol != std::string_view::npos) {
          std::string_view line = pending.substr(0, eol);
          pos_ += eol + 2;
          if (!line.empty()) {
            Status parsed = ParsePartHeaderLine(line, &part_);
            if (!parsed.ok()) return Fail(parsed);
            continue;
          }
          ++parts_;
          state_ = State::kData;
          ev.kind = Event::Kind::kPart;
          ev.part = std::move(part_);
          return ev;
        }
        if (pending.size() > max_header_bytes_) {
          return Fail(InvalidArgument("multipart: a part's headers exceed " +
                                      std::to_string(max_header_bytes_) + " bytes"));
        }
        break;
      }
      case State::kData: {
        size_t at = pending.find(next_delim_);
        if (at == 0) {
          pos_ += next_delim_.size();
          state_ = State::kDelimiter;
          ev.kind = Event::Kind::kPartEnd;
          return ev;
        }
        // Data up to the delimiter, or up to where a delimiter could still begin.
        size_t safe = at != std::string_view::npos ? at
                      : pending.size() >= next_delim_.size()
                          ? pending.size() - (next_delim_.size() - 1)
                          : 0;
        if (safe > 0) {
          ev.kind = Event::Kind::kData;
          ev.data = pending.substr(0, safe);
          pos_ += safe;
          return ev;
        }
        break;
      }
    }
    // More input is needed.
    auto more = Fill();
    if (!more.ok()) return Fail(more.status());
    if (!*more) {
      switch (state_) {
        case State::kPreamble: return Fail(InvalidArgument("multipart: no boundary in the body"));
        case State::kDelimiter: return Fail(InvalidArgument("multipart: malformed delimiter"));
        case State::kHeaders: return Fail(InvalidArgument("multipart: truncated headers"));
        default: return Fail(InvalidArgument("multipart: missing closing boundary"));
      }
    }
  }
}

}  // namespace moat::api::codec
