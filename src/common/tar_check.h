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
Status CheckTarArchive(const std::string& archive, const std::string& plain_tar,
                       uint64_t max_bytes);

}  // namespace moat
