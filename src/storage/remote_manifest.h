// The manifest of a snapshot in the store (snapshots/<id>/manifest.json, shared/FLEET.md §5): a
// chunk map per file of the snapshot — "mem" (guest RAM), "state" (device state), "disk.qcow2"
// (the disk overlay), "disk.raw" (the base image the overlay sits on) — plus the host's own
// snapshot manifest (agent::SnapshotManifest as JSON, opaque here) and the prefetch trace.
//
// Decoding reads bytes from the store, which another host (or anyone with write access to the
// bucket) wrote: it is strict (unknown version, a file name outside the allowed set, a chunk map
// whose count does not match its size, a hash that is not 64 hex digits, sizes past 1 TiB are
// invalid_argument naming the field) and has a fuzz target.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "storage/chunking.h"

namespace moat::storage {

inline constexpr int kRemoteManifestVersion = 1;
// Decoding refuses longer texts (a 1 TiB file is 262,144 chunks, about 18 MB of manifest).
inline constexpr size_t kMaxRemoteManifestBytes = size_t{64} << 20;
// And files larger than this.
inline constexpr uint64_t kMaxRemoteFileBytes = uint64_t{1} << 40;

struct RemoteManifest {
  int version = kRemoteManifestVersion;
  std::string snapshot_id;  // [A-Za-z0-9_-], 1..64: the key under snapshots/
  std::string kind;         // "paused" | "named" | "fork" | "template"
  std::string origin_host;  // the host that uploaded it (may be empty)
  int64_t created_unix_ms = 0;
  // The host's snapshot manifest (agent::SnapshotManifest as JSON): an object.
  nlohmann::json meta = nlohmann::json::object();
  // By file name: "mem", "state", "disk.qcow2", "disk.raw" (each optional).
  std::map<std::string, ChunkMap> files;
  // Chunk indexes of "mem" in the order a first restore touched them (at most one entry each,
  // each < the chunk count): fetched ahead on later restores. Empty: none recorded yet.
  std::vector<uint32_t> prefetch;
};

bool IsValidSnapshotKeyId(std::string_view id);
bool IsValidRemoteFileName(std::string_view name);
// "snapshots/<id>/manifest.json"
std::string ManifestKey(std::string_view snapshot_id);

std::string EncodeRemoteManifest(const RemoteManifest& m);
Result<RemoteManifest> DecodeRemoteManifest(std::string_view text);

}  // namespace moat::storage
