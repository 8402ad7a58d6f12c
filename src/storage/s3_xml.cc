#include "storage/s3_xml.h"

#include <optional>

namespace moat::storage::s3xml {
namespace {

constexpr size_t kMaxMessageBytes = 200;

struct Element {
  std::string_view text;  // between the tags, still escaped
  size_t end = 0;         // just past the closing tag
};

// The first <name>…</name> (or <name attr="…">…</name>) at or after `from`; nullopt when there
// is none or it is not closed. A self-closing <name/> counts as absent.
std::optional<Element> FindElement(std::string_view xml, std::string_view name, size_t from = 0) {
  std::string open = "<" + std::string(name);
  std::string close = "</" + std::string(name) + ">";
  size_t pos = from;
  for (;;) {
    pos = xml.find(open, pos);
    if (pos == std::string_view::npos) return std::nullopt;
    size_t after = pos + open.size();
    if (after >= xml.size()) return std::nullopt;
    char c = xml[after];
    if (c != '>' && c != ' ' && c != '\t' && c != '\r' && c != '\n') {
      pos = after;  // a longer name ("<KeyCount" when looking for "<Key")
      continue;
    }
    size_t gt = xml.find('>', after);
    if (gt == std::string_view::npos) return std::nullopt;
    if (xml[gt - 1] == '/') {
      pos = gt;
      continue;
    }
    size_t end = xml.find(close, gt + 1);
    if (end == std::string_view::npos) return std::nullopt;
    return Element{xml.substr(gt + 1, end - gt - 1), end + close.size()};
  }
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xc0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xe0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  } else {
    out->push_back(static_cast<char>(0xf0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  }
}

// A numeric character reference's code point ("#38", "#x26"), or nullopt.
std::optional<uint32_t> CharRef(std::string_view ref) {
  if (ref.size() < 2 || ref[0] != '#') return std::nullopt;
  bool hex = ref[1] == 'x' || ref[1] == 'X';
  std::string_view digits = ref.substr(hex ? 2 : 1);
  if (digits.empty() || digits.size() > 8) return std::nullopt;
  uint32_t cp = 0;
  for (char c : digits) {
    uint32_t d;
    if (c >= '0' && c <= '9') {
      d = static_cast<uint32_t>(c - '0');
    } else if (hex && c >= 'a' && c <= 'f') {
      d = static_cast<uint32_t>(c - 'a' + 10);
    } else if (hex && c >= 'A' && c <= 'F') {
      d = static_cast<uint32_t>(c - 'A' + 10);
    } else {
      return std::nullopt;
    }
    cp = cp * (hex ? 16 : 10) + d;
  }
  if (cp == 0 || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return std::nullopt;
  return cp;
}

Result<uint64_t> ParseSize(std::string_view text) {
  if (text.empty() || text.size() > 19) return InvalidArgument("bad <Size>");
  uint64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return InvalidArgument("bad <Size>");
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  return v;
}

}  // namespace

std::string XmlUnescape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    char c = text[i];
    size_t semi = c == '&' ? text.find(';', i + 1) : std::string_view::npos;
    if (semi == std::string_view::npos || semi - i > 12) {
      out.push_back(c);
      ++i;
      continue;
    }
    std::string_view ref = text.substr(i + 1, semi - i - 1);
    if (ref == "amp") {
      out.push_back('&');
    } else if (ref == "lt") {
      out.push_back('<');
    } else if (ref == "gt") {
      out.push_back('>');
    } else if (ref == "quot") {
      out.push_back('"');
    } else if (ref == "apos") {
      out.push_back('\'');
    } else if (auto cp = CharRef(ref)) {
      AppendUtf8(*cp, &out);
    } else {
      out.push_back(c);
      ++i;
      continue;
    }
    i = semi + 1;
  }
  return out;
}

Result<ListPage> ParseListObjectsV2(std::string_view xml) {
  ListPage page;
  size_t pos = 0;
  while (auto contents = FindElement(xml, "Contents", pos)) {
    auto key = FindElement(contents->text, "Key");
    if (!key) return InvalidArgument("ListObjectsV2: a <Contents> without a <Key>");
    ObjectInfo info;
    info.key = XmlUnescape(key->text);
    if (auto size = FindElement(contents->text, "Size")) {
      auto parsed = ParseSize(size->text);
      if (!parsed.ok()) return InvalidArgument("ListObjectsV2: bad <Size> for " + info.key);
      info.size = *parsed;
    }
    page.objects.push_back(std::move(info));
    pos = contents->end;
  }
  // Neither appears inside <Contents>, so the first in the document is the page's own.
  if (auto truncated = FindElement(xml, "IsTruncated")) {
    page.truncated = truncated->text == "true";
  }
  if (auto token = FindElement(xml, "NextContinuationToken")) {
    page.next_continuation_token = XmlUnescape(token->text);
  }
  if (page.truncated && page.next_continuation_token.empty()) {
    return InvalidArgument("ListObjectsV2: truncated page without a NextContinuationToken");
  }
  return page;
}

ErrorBody ParseErrorBody(std::string_view xml) {
  ErrorBody out;
  auto error = FindElement(xml, "Error");
  std::string_view scope = error ? error->text : xml;
  if (auto code = FindElement(scope, "Code")) {
    out.code = XmlUnescape(code->text.substr(0, 100));
  }
  if (auto message = FindElement(scope, "Message")) {
    out.message = XmlUnescape(message->text.substr(0, kMaxMessageBytes * 2));
    if (out.message.size() > kMaxMessageBytes) out.message.resize(kMaxMessageBytes);
  }
  for (std::string* s : {&out.code, &out.message}) {
    for (char& c : *s) {
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
    }
  }
  return out;
}

}  // namespace moat::storage::s3xml
