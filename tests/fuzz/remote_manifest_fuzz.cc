// libFuzzer target for the remote manifest decoder: the manifest comes from the object store,
// which another host (or anyone with write access to the bucket) wrote. Checks that decoding
// never crashes, and that what it accepts encodes to a text it accepts again, unchanged.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "storage/remote_manifest.h"

using moat::storage::DecodeRemoteManifest;
using moat::storage::EncodeRemoteManifest;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // uint8_t and char are both byte types: viewing the same bytes as chars is well defined.
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto m = DecodeRemoteManifest(text);
  if (!m.ok()) return 0;
  auto again = DecodeRemoteManifest(EncodeRemoteManifest(*m));
  if (!again.ok()) std::abort();
  // `meta` is opaque here (a number too large for a double comes back as null); the rest must
  // survive the round trip exactly.
  if (again->snapshot_id != m->snapshot_id || again->kind != m->kind ||
      again->origin_host != m->origin_host || again->created_unix_ms != m->created_unix_ms ||
      again->files != m->files || again->prefetch != m->prefetch) {
    std::abort();
  }
  for (const auto& [name, map] : m->files) {
    if (map.chunks.size() != (map.size + moat::storage::kChunkSize - 1) / moat::storage::kChunkSize)
      std::abort();
  }
  return 0;
}
