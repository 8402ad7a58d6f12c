#include "common/file_metadata.h"

#include <cstdio>

namespace moat {

namespace {

// The offset of the first byte outside 0x20..0x7e, or npos.
size_t FirstNonPrintable(std::string_view s) {
  for (size_t i = 0; i < s.size(); ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c > 0x7e) return i;
  }
  return std::string_view::npos;
}

}  // namespace

bool IsPrintableAscii(std::string_view s) {
  return FirstNonPrintable(s) == std::string_view::npos;
}

Result<FileMetadata> NormalizeMetadata(const FileMetadata& metadata) {
  // envd's own words (E2B-WIRE §3), prefixed "invalid metadata: ".
  auto non_printable = [](std::string_view what, std::string_view s) -> Status {
    size_t i = FirstNonPrintable(s);
    if (i == std::string_view::npos) return Status::Ok();
    char hex[8];
    std::snprintf(hex, sizeof hex, "0x%02x", static_cast<unsigned char>(s[i]));
    return InvalidArgument("invalid metadata: metadata " + std::string(what) +
                           " contains non-printable-ASCII byte " + hex + " at offset " +
                           std::to_string(i));
  };
  FileMetadata out;
  size_t total = 0;
  for (const auto& [raw_key, value] : metadata) {
    std::string key = raw_key;
    for (char& c : key) {
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    }
    if (key.empty()) return InvalidArgument("invalid metadata: metadata key must not be empty");
    MOAT_RETURN_IF_ERROR(non_printable("key", key));
    if (key.size() > kMaxMetadataKey) {
      return InvalidArgument("invalid metadata: metadata key \"" + key.substr(0, 64) +
                             "...\" exceeds " + std::to_string(kMaxMetadataKey) + " bytes");
    }
    MOAT_RETURN_IF_ERROR(non_printable("value for key \"" + key + "\"", value));
    total += kMetadataXattrPrefix.size() + key.size() + value.size();
    if (total > kMaxMetadataBytes) {
      return InvalidArgument("invalid metadata: total metadata size exceeds " +
                             std::to_string(kMaxMetadataBytes) + " bytes");
    }
    out[key] = value;
  }
  return out;
}

}  // namespace moat
