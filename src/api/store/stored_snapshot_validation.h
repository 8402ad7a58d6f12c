// What both stores check of a StoredSnapshotRecord before it is written, and the words of its
// kinds and states (private to the store implementations), so that SqliteStore and PgStore
// refuse the same records the same way.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "api/store/store.h"

namespace moat::api::store {

inline constexpr std::string_view kStoredLocalOnly = "local-only";
inline constexpr std::string_view kStoredUploading = "uploading";
inline constexpr std::string_view kStoredUploaded = "uploaded";
inline constexpr std::string_view kStoredDeleting = "deleting";

// [A-Za-z0-9_-], 1 to 64 characters: the key is a path segment in the object store.
inline bool IsStoredSnapshotKey(std::string_view key) {
  if (key.empty() || key.size() > 64) return false;
  for (char c : key) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

inline bool IsStoredSnapshotKind(std::string_view kind) {
  return kind == "paused" || kind == "named" || kind == "fork" || kind == "template";
}

inline bool IsStoredSnapshotState(std::string_view state) {
  return state == kStoredLocalOnly || state == kStoredUploading || state == kStoredUploaded ||
         state == kStoredDeleting;
}

inline Status CheckStoredSnapshot(const StoredSnapshotRecord& r) {
  if (!IsStoredSnapshotKey(r.key)) {
    return InvalidArgument("stored snapshot: bad key \"" + r.key +
                           "\" ([A-Za-z0-9_-], 1 to 64 characters)");
  }
  if (!IsStoredSnapshotKind(r.kind)) {
    return InvalidArgument("stored snapshot \"" + r.key + "\": bad kind \"" + r.kind +
                           "\" (paused, named, fork or template)");
  }
  if (!IsStoredSnapshotState(r.state)) {
    return InvalidArgument("stored snapshot \"" + r.key + "\": bad state \"" + r.state +
                           "\" (local-only, uploading, uploaded or deleting)");
  }
  return Status::Ok();
}

// A sweep's start time is its mark in the store, where 0 means that none is running.
inline Status CheckSweepStart(int64_t now_ms) {
  if (now_ms <= 0) {
    return InvalidArgument("storage sweep: start time " + std::to_string(now_ms) +
                           " (must be positive)");
  }
  return Status::Ok();
}

}  // namespace moat::api::store
