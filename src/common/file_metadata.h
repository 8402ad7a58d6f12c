// File metadata as E2B's envd keeps it (E2B-WIRE §3, api/guest-channel.md "write_file"): a
// file's string map, sent as `X-Metadata-<key>: <value>` headers on upload and stored in the
// guest as one extended attribute `user.e2b.<key>` per key. The host checks a write's metadata
// before anything is written; the guest checks it again before it sets any attribute.
#pragma once

#include <map>
#include <string>
#include <string_view>

#include "common/status.h"

namespace moat {

inline constexpr std::string_view kMetadataXattrPrefix = "user.e2b.";
// A key fits XATTR_NAME_MAX (255) with the prefix.
inline constexpr size_t kMaxMetadataKey = 255 - kMetadataXattrPrefix.size();
// The attributes' names (prefix included) and values together.
inline constexpr size_t kMaxMetadataBytes = 4096;

using FileMetadata = std::map<std::string, std::string>;

// Lower-cases the keys and checks the map as envd does: every key 1..kMaxMetadataKey bytes, keys
// and values printable ASCII (0x20..0x7e), all of it within kMaxMetadataBytes. InvalidArgument
// "invalid metadata: …" (envd's text) naming the key otherwise.
Result<FileMetadata> NormalizeMetadata(const FileMetadata& metadata);

// Whether `s` is printable ASCII only (what a metadata key or value may hold).
bool IsPrintableAscii(std::string_view s);

}  // namespace moat
