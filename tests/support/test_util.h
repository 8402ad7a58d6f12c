// Helpers shared by the integration and e2e tests.
#pragma once

#include <string>
#include <string_view>

namespace moat::test_support {

// Lower-case hex SHA-256 of `data`.
std::string Sha256Hex(std::string_view data);
// This process's resident set size in KiB (VmRSS), -1 if unknown.
long VmRssKiB();
// How many fds this process has open.
int OpenFdCount();
// What this process's fds point to, one "fd -> target" per line (for a failure's message).
std::string OpenFdList();
// How many processes have `needle` in their command line (a test's unique temp dir, say).
int CountProcessesMentioning(const std::string& needle);
// The directory tests find build outputs in: $MOAT_BUILD_DIR, else "build".
std::string BuildDir();

}  // namespace moat::test_support
