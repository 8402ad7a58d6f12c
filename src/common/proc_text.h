// Parsers of /proc's text files: /proc/meminfo is what the guest reports as its memory and what
// the host agent admits new VMs by.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace moat {

// The blank- or tab-separated words of one line.
std::vector<std::string_view> Words(std::string_view line);
// A whole decimal number, nothing else.
bool ParseU64(std::string_view s, uint64_t* out);

struct MemInfo {
  uint64_t total_bytes = 0;
  // MemAvailable (the kernel's estimate of what can be allocated without swapping); on kernels
  // without it, MemFree + Buffers + Cached. At most total_bytes.
  uint64_t available_bytes = 0;
};
Result<MemInfo> ParseMeminfo(std::string_view text);
// This machine's (the caller's) /proc/meminfo.
Result<MemInfo> ReadMeminfo();

}  // namespace moat
