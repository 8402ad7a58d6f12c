// ObjectStore: the snapshot store's objects (shared/FLEET.md §5), behind one interface with two
// implementations: S3ObjectStore (any S3-compatible server, libcurl + SigV4: s3_object_store.h)
// and LocalObjectStore (a directory: tests, and a store on a shared filesystem).
//
// Keys are relative to the store's prefix ("chunks/<sha256>", "snapshots/<id>/manifest.json"):
// [A-Za-z0-9._/-], no empty segment, no "." or ".." segment, at most 512 bytes. Objects are
// written whole (no multipart: chunks are 4 MiB) and are immutable once written, except
// manifests that a snapshot's owner may rewrite (prefetch trace).
//
// Errors: not_found for a missing key (Get, GetRange); unavailable when the store cannot be
// reached or keeps failing (5xx, timeouts) after the retries; permission_denied for 403;
// invalid_argument for a bad key or range; internal for anything else the server answers.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace moat::storage {

struct ObjectInfo {
  std::string key;  // relative to the store's prefix
  uint64_t size = 0;
};

// What a store did since it was made (metrics: docs/snapshots.md).
struct ObjectStoreStats {
  std::atomic<uint64_t> gets{0};       // Get and GetRange requests that succeeded
  std::atomic<uint64_t> get_bytes{0};  // body bytes they returned
  std::atomic<uint64_t> puts{0};
  std::atomic<uint64_t> put_bytes{0};
  std::atomic<uint64_t> heads{0};
  std::atomic<uint64_t> deletes{0};
  std::atomic<uint64_t> lists{0};     // list pages
  std::atomic<uint64_t> retries{0};   // attempts beyond each request's first
  std::atomic<uint64_t> failures{0};  // requests that failed after their last attempt
};

bool IsValidObjectKey(std::string_view key);

class ObjectStore {
 public:
  virtual ~ObjectStore() = default;

  virtual Status Put(const std::string& key, std::string_view body) = 0;
  virtual Result<std::string> Get(const std::string& key) = 0;
  // Bytes [offset, offset + length) of the object; fewer only where the object ends first.
  virtual Result<std::string> GetRange(const std::string& key, uint64_t offset,
                                       uint64_t length) = 0;
  // The object's size, or nullopt when there is none.
  virtual Result<std::optional<uint64_t>> Head(const std::string& key) = 0;
  // Deleting a key that does not exist succeeds.
  virtual Status Delete(const std::string& key) = 0;
  // Every object whose key starts with `prefix`, in key order (all pages).
  virtual Result<std::vector<ObjectInfo>> List(const std::string& prefix) = 0;
  // For logs and errors: "s3://bucket/prefix at http://127.0.0.1:4569" — never a credential.
  virtual std::string Describe() const = 0;

  ObjectStoreStats& stats() { return stats_; }

 protected:
  ObjectStoreStats stats_;
};

}  // namespace moat::storage
