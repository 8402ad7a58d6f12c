// Sandbox IDs: 20 characters of [a-z0-9] (they appear in host names: <port>-<id>.<domain>).
#pragma once

#include <string>
#include <string_view>

namespace moat {

inline constexpr size_t kSandboxIdLength = 20;

// A fresh random ID from the kernel's CSPRNG (~103 bits).
std::string NewSandboxId();
bool IsValidSandboxId(std::string_view id);
// Snapshot ids share the alphabet ("snap" + 16 characters): safe as directory names.
bool IsValidSnapshotName(std::string_view id);

}  // namespace moat
