#include "agent/disk.h"

#include <sys/stat.h>

#include "common/child_process.h"
#include "common/fs.h"

namespace moat::agent {

Status CreateOverlay(const std::string& base, const std::string& overlay) {
  if (!PathExists(base)) return NotFound("disk image " + base + " does not exist");
  if (PathExists(overlay)) return Status(ErrorCode::kAlreadyExists, overlay + " already exists");
  auto child = ChildProcess::Spawn(
      {.argv = {"qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", base, overlay},
       .env = std::vector<std::string>{"PATH=/usr/bin:/bin"}});
  if (!child.ok()) return child.status().Annotate("qemu-img create");
  MOAT_ASSIGN_OR_RETURN(int st, child->Wait(std::chrono::milliseconds(10000)));
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    ::unlink(overlay.c_str());
    return Internal("qemu-img create " + overlay + ": " + DescribeWaitStatus(st));
  }
  return Status::Ok();
}

Result<uint64_t> AllocatedBytes(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) < 0) return ErrnoError("stat(" + path + ")");
  return static_cast<uint64_t>(st.st_blocks) * 512;
}

}  // namespace moat::agent
