// A sandbox's writable disk: a qcow2 overlay over the template's read-only raw image, so that
// creating one costs a few KB and a few milliseconds whatever the image size.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"

namespace moat::agent {

// Creates `overlay` (qcow2) backed by `base` (raw). Fails if `overlay` exists.
Status CreateOverlay(const std::string& base, const std::string& overlay);

// Bytes actually allocated on the host for `path` (st_blocks * 512): what a sandbox's disk costs.
Result<uint64_t> AllocatedBytes(const std::string& path);

}  // namespace moat::agent
