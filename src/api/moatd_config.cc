#include "api/moatd_config.h"

#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <utility>

#include "common/fs.h"

namespace moat::api {
namespace {

std::string ExecutableDir() {
  char buf[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return ".";
  std::string path(buf, static_cast<size_t>(n));
  return path.substr(0, path.rfind('/'));
}

}  // namespace

Status ValidateConfig(MoatdConfig& c) {
  size_t colon = c.listen.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return InvalidArgument("--listen: expected HOST:PORT, got \"" + c.listen + "\"");
  }
  std::string port = c.listen.substr(colon + 1);
  char* end = nullptr;
  long p = std::strtol(port.c_str(), &end, 10);
  if (port.empty() || *end != '\0' || p < 0 || p > 65535) {
    return InvalidArgument("--listen: port must be 0..65535, got \"" + port + "\"");
  }
  c.listen_host = c.listen.substr(0, colon);
  if (c.listen_host.size() > 2 && c.listen_host.front() == '[' && c.listen_host.back() == ']') {
    c.listen_host = c.listen_host.substr(1, c.listen_host.size() - 2);
  }
  c.listen_port = static_cast<uint16_t>(p);
  if (c.max_body_bytes < 1024 * 1024) {
    return InvalidArgument("--max-body-bytes: must be at least 1048576, got " +
                           std::to_string(c.max_body_bytes));
  }
  if (c.data_dir.empty()) return InvalidArgument("--data-dir: must not be empty");
  Status made = MakeDirs(c.data_dir, 0711);
  if (!made.ok()) return made.Annotate("--data-dir");
  if (c.guest_dir.empty()) c.guest_dir = ExecutableDir() + "/../guest";
  // The jail binds these paths into the VMM's namespace: they must be absolute and canonical.
  for (auto [flag, dir] : {std::pair{"--data-dir", &c.data_dir}, {"--guest-dir", &c.guest_dir}}) {
    char real[PATH_MAX];
    if (::realpath(dir->c_str(), real) == nullptr) {
      return ErrnoError(std::string(flag) + ": " + *dir);
    }
    *dir = real;
  }
  for (const char* f : {"/vmlinux", "/rootfs.ext4"}) {
    if (!PathExists(c.guest_dir + f)) {
      return NotFound("--guest-dir: " + c.guest_dir + f + " not found (run `make guest`)");
    }
  }
  return Status::Ok();
}

}  // namespace moat::api
