// Uploaded archives (a custom template's COPY files) are checked before anything unpacks them.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"

namespace moat {

// Checks a tar archive, plain or gzipped: no absolute path, no ".." component (in names and
// hard-link targets), no device or fifo entry, every header's checksum right; at most
// `max_bytes` once uncompressed (resource_exhausted past it). With `plain_tar`, writes it there
// uncompressed. invalid_argument naming the bad entry.
// GNU long names, pax headers (`path`, `linkpath`, `size`; global ones too) and base-256 sizes
// are read as GNU tar reads them; what GNU tar and busybox tar would read differently (a pax size
// that disagrees with the header's, data after a link, a lone zero block, unknown entry types,
// malformed pax records or numbers) is refused, so that no crafted archive hides an entry.
Status CheckTarArchive(const std::string& archive, const std::string& plain_tar,
                       uint64_t max_bytes);

}  // namespace moat
