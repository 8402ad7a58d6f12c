#include "common/sandbox_id.h"

#include <sys/random.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>

namespace moat {

std::string NewSandboxId() {
  static constexpr std::string_view kAlphabet = "abcdefghijklmnopqrstuvwxyz0123456789";
  std::string id;
  id.reserve(kSandboxIdLength);
  while (id.size() < kSandboxIdLength) {
    uint8_t buf[32];
    ssize_t n = ::getrandom(buf, sizeof buf, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      std::abort();  // getrandom cannot fail once the pool is initialised; no safe fallback
    }
    for (ssize_t i = 0; i < n && id.size() < kSandboxIdLength; ++i) {
      // Rejection sampling keeps the distribution uniform: 252 = 7 * 36.
      if (buf[i] < 252) id.push_back(kAlphabet[buf[i] % kAlphabet.size()]);
    }
  }
  return id;
}

bool IsValidSandboxId(std::string_view id) {
  if (id.size() != kSandboxIdLength) return false;
  for (char c : id) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) return false;
  }
  return true;
}

bool IsValidSnapshotName(std::string_view id) {
  if (id.size() != kSandboxIdLength || id.substr(0, 4) != "snap") return false;
  return IsValidSandboxId(id);
}

}  // namespace moat
