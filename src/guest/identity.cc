#include "guest/identity.h"

#include <fcntl.h>
#include <linux/random.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "common/fs.h"
#include "common/log.h"
#include "common/unique_fd.h"

namespace moat::guest {
namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

Status AddEntropy(const std::string& bytes) {
  UniqueFd fd(::open("/dev/urandom", O_WRONLY | O_CLOEXEC));
  if (!fd) return ErrnoError("open(/dev/urandom)");
  // struct rand_pool_info ends in a flexible array of u32; build it in a u32 buffer so that it
  // is aligned, with room for the bytes rounded up to whole words.
  size_t words = (bytes.size() + 3) / 4;
  std::vector<uint32_t> buf(2 + words, 0);
  auto* info = reinterpret_cast<rand_pool_info*>(buf.data());  // aligned, sized as above
  info->entropy_count = static_cast<int>(bytes.size() * 8);
  info->buf_size = static_cast<int>(bytes.size());
  std::memcpy(buf.data() + 2, bytes.data(), bytes.size());
  // RNDADDENTROPY reads the header and buf_size bytes that follow it; both are in `buf`.
  if (::ioctl(fd.get(), RNDADDENTROPY, info) < 0) return ErrnoError("ioctl(RNDADDENTROPY)");
  // RNDRESEEDCRNG takes no argument; it makes the CRNG use the new entropy now, so that forked
  // sandboxes stop sharing their parent's random stream.
  if (::ioctl(fd.get(), RNDRESEEDCRNG) < 0) return ErrnoError("ioctl(RNDRESEEDCRNG)");
  return Status::Ok();
}

}  // namespace

Status WriteEnvFile(const std::map<std::string, std::string>& env, const std::string& path) {
  MOAT_RETURN_IF_ERROR(MakeDirs(path.substr(0, path.rfind('/')), 0755));
  return WriteFileAtomic(
      path, Json(env).dump(-1, ' ', false, Json::error_handler_t::replace) + "\n", 0600);
}

Result<std::string> HexDecode(std::string_view hex) {
  if (hex.size() % 2 != 0) return InvalidArgument("hex string has an odd length");
  std::string out;
  out.reserve(hex.size() / 2);
  for (size_t i = 0; i < hex.size(); i += 2) {
    int hi = HexValue(hex[i]);
    int lo = HexValue(hex[i + 1]);
    if (hi < 0 || lo < 0) return InvalidArgument("hex string has a non-hex character");
    out.push_back(static_cast<char>(hi * 16 + lo));
  }
  return out;
}

Result<IdentityRequest> ParseIdentity(const Json& request) {
  IdentityRequest id;
  MOAT_ASSIGN_OR_RETURN(id.unix_ns, OptInt(request, "unix_ns", 0, INT64_MAX));
  MOAT_ASSIGN_OR_RETURN(auto entropy_hex, OptString(request, "entropy"));
  if (entropy_hex) {
    auto bytes = HexDecode(*entropy_hex);
    if (!bytes.ok()) return bytes.status().Annotate("field \"entropy\"");
    if (bytes->size() < kMinEntropyBytes || bytes->size() > kMaxEntropyBytes) {
      return InvalidArgument("field \"entropy\" must hold " + std::to_string(kMinEntropyBytes) +
                             " to " + std::to_string(kMaxEntropyBytes) + " bytes");
    }
    id.entropy = std::move(*bytes);
  }
  MOAT_ASSIGN_OR_RETURN(id.env, OptStringMap(request, "env"));
  MOAT_ASSIGN_OR_RETURN(id.user, OptString(request, "user"));
  MOAT_ASSIGN_OR_RETURN(id.workdir, OptString(request, "workdir"));
  MOAT_ASSIGN_OR_RETURN(id.hostname, OptString(request, "hostname"));
  if (id.hostname && (id.hostname->empty() || id.hostname->size() > 64)) {
    return InvalidArgument("field \"hostname\" must be 1 to 64 characters");
  }
  return id;
}

Status ApplyIdentity(const IdentityRequest& identity, bool system, Defaults* defaults) {
  if (system) {
    if (identity.unix_ns) {
      timespec ts{};
      ts.tv_sec = *identity.unix_ns / 1000000000;
      ts.tv_nsec = *identity.unix_ns % 1000000000;
      if (::clock_settime(CLOCK_REALTIME, &ts) < 0) return ErrnoError("clock_settime");
    }
    if (!identity.entropy.empty()) MOAT_RETURN_IF_ERROR(AddEntropy(identity.entropy));
    if (identity.hostname &&
        ::sethostname(identity.hostname->data(), identity.hostname->size()) < 0) {
      return ErrnoError("sethostname");
    }
  }
  if (identity.env) {
    defaults->env = *identity.env;
    // For in-guest services started before this sandbox existed (the code interpreter's
    // kernels, in the template's snapshot): root-only, replaced whole.
    // Not fatal: only such services read it, and a sandbox whose root broke /run/moat must
    // still get its identity.
    if (system) {
      if (Status s = WriteEnvFile(*identity.env, kEnvFilePath); !s.ok()) {
        LogWarn("guest.env_file_failed", {{"path", kEnvFilePath}, {"error", s.ToString()}});
      }
    }
  }
  if (identity.user) defaults->user = *identity.user;
  if (identity.workdir) defaults->workdir = *identity.workdir;
  return Status::Ok();
}

}  // namespace moat::guest
