// Content-addressed chunks (shared/FLEET.md §5): a snapshot's files are cut into 4 MiB chunks,
// each stored once as chunks/<sha256 of its bytes>, so that forks and re-pauses of one sandbox,
// and every snapshot of one template, share what they have in common. An all-zero chunk is
// never stored: its hash in a chunk map is null.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace moat::storage {

inline constexpr uint64_t kChunkSize = uint64_t{4} << 20;

// One file as chunks: chunks[i] covers bytes [i * kChunkSize, min(size, (i+1) * kChunkSize));
// nullopt where those bytes are all zero. The last chunk's object holds only the bytes up to
// `size`. chunks.size() == ceil(size / kChunkSize).
struct ChunkMap {
  uint64_t size = 0;
  std::vector<std::optional<std::string>> chunks;  // lowercase hex SHA-256, or nullopt

  // Bytes of chunk `index` (kChunkSize except perhaps the last).
  uint64_t ChunkLength(size_t index) const;
  // Bytes that are not in all-zero chunks.
  uint64_t NonZeroBytes() const;
  bool operator==(const ChunkMap&) const = default;
};

// 64 lowercase hex digits.
bool IsValidChunkHash(std::string_view hash);
// "chunks/<hash>" (a key of the store).
std::string ChunkKey(std::string_view hash);
bool IsAllZero(std::string_view data);
// The name of a chunk of these bytes: their lowercase hex SHA-256.
std::string ChunkHash(std::string_view data);

// Reads `path` and hashes each non-zero chunk. Holes of a sparse file (SEEK_DATA/SEEK_HOLE) are
// zero without being read. Errors name the path.
Result<ChunkMap> ChunkFile(const std::string& path);
// Bytes of chunk `index` of `path` (ChunkLength of that index), checked against the map:
// failed_precondition when the file has changed since it was chunked.
Result<std::string> ReadChunk(const std::string& path, const ChunkMap& map, size_t index);

}  // namespace moat::storage
