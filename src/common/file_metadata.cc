#include "common/file_metadata.h"

#include <cstdio>

namespace moat {

bool IsPrintableAscii(std::string_view s) {
  for (unsigned char c : s) {
    if (c < 0x20 || c > 0x7e) return false;
  }
  return true;
}

Result<FileMetadata> NormalizeMetadata(const FileMetadata& metadata) {
  // envd's own words (E2B-WIRE §3), prefixed "invalid metadata: ".
  auto non_printable = [](std::string_view what, std::string_view s) -> Status {
    for (size_t i = 0; i < s.size(); ++i) {
      auto c = static_cast<unsigned char>(s[i]);
      if (c < 0x20 || c > 0x7e) {
        char hex[8];
        std::snprintf(hex, sizeof hex, "0x%02x", c);
        return InvalidArgument("invalid metadata: metadata " + std::string(what) +
                               " contains non-printable-ASCII byte " + hex + " at offset " +
                               std::to_string(i));
      }
    }
    return Status::Ok();
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
