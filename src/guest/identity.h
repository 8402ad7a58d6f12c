// The `identity` op: a restored or forked sandbox learns its wall clock, fresh entropy and the
// defaults for later execs (env, user, workdir, hostname).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "common/status.h"
#include "guest/request.h"

namespace moat::guest {

// Defaults that later requests fall back on.
struct Defaults {
  std::string user;  // empty: `user` if it exists, else root
  std::map<std::string, std::string> env;
  std::string workdir;  // empty: the user's home
};

struct IdentityRequest {
  std::optional<int64_t> unix_ns;
  std::string entropy;  // raw bytes (decoded from hex)
  std::optional<std::map<std::string, std::string>> env;
  std::optional<std::string> user;
  std::optional<std::string> workdir;
  std::optional<std::string> hostname;
};

inline constexpr size_t kMinEntropyBytes = 32;
// Where a VM's moat-guest keeps the sandbox's create-time env vars for services inside the
// guest, as a JSON object (mode 0600, root): docs/code-interpreter.md "Environment".
inline constexpr const char* kEnvFilePath = "/run/moat/env.json";

// Writes `env` to `path` as a JSON object, atomically (a temporary file renamed over it).
Status WriteEnvFile(const std::map<std::string, std::string>& env, const std::string& path);
inline constexpr size_t kMaxEntropyBytes = 4096;

Result<std::string> HexDecode(std::string_view hex);
Result<IdentityRequest> ParseIdentity(const Json& request);
// Sets the clock, mixes in the entropy and reseeds the CRNG, and sets the hostname only when
// `system` (moat-guest is PID 1 of a VM); the defaults are always updated.
Status ApplyIdentity(const IdentityRequest& identity, bool system, Defaults* defaults);

}  // namespace moat::guest
