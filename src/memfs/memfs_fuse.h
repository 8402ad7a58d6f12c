// FuseMount: memfs's FUSE side (libfuse 3 low-level API): one mount whose root directory holds
// the MemoryFiles, read-only. Linux's fs/fuse/file.c decides what the options below mean for the
// VMs that map these files (shared/FLEET.md §6):
// - every open answers FOPEN_KEEP_CACHE (keep_cache): without it each open would drop the page
//   cache that the other VMs mapping the file share; never FOPEN_DIRECT_IO, which would bypass
//   the page cache (and make MAP_PRIVATE mappings fail);
// - allow_other + default_permissions: VMMs run as jail uids, and the kernel checks the files'
//   mode (0444, root's) itself; O_RDWR opens are accepted (QEMU before 8.2 opens its memory file
//   read-write, which only root passes); WRITE, SETATTR and every namespace change answer EROFS;
// - attributes and entries do not time out (a year): files are immutable; a removed control
//   file is told to the kernel (InvalidateEntry);
// - a multi-threaded loop: reads of different chunks proceed in parallel.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <string_view>

#include "common/status.h"
#include "memfs/memory_files.h"

struct fuse_session;

namespace moat::memfs {

class FuseMount {
 public:
  // Mounts at `mount_dir`, after detaching a stale mount a dead memfs left there (stat fails
  // with ENOTCONN). A live FUSE mount there is an error (another memfs?).
  static Result<std::unique_ptr<FuseMount>> Mount(MemoryFiles& files, const std::string& mount_dir);
  // Unmount()s and closes the session (its /dev/fuse descriptor).
  ~FuseMount();
  FuseMount(const FuseMount&) = delete;
  FuseMount& operator=(const FuseMount&) = delete;

  // Serves requests until SIGTERM, SIGINT or SIGHUP (libfuse's handlers: the calling thread must
  // be the only one that does not block them) or until the mount goes away.
  Status Run(int max_threads);
  // Tells the kernel to forget the dentry of `name` in the root (its control file is gone).
  void InvalidateEntry(std::string_view name);
  // Lazy unmount (MNT_DETACH, as libfuse does for root): VMs still mapping a file keep the
  // superblock until they close it. Idempotent.
  void Unmount();

  const std::string& mount_dir() const { return mount_dir_; }

 private:
  FuseMount(MemoryFiles& files, std::string mount_dir)
      : files_(files), mount_dir_(std::move(mount_dir)) {}

  MemoryFiles& files_;
  std::string mount_dir_;
  struct fuse_session* session_ = nullptr;
  std::atomic<bool> mounted_{false};
};

// Detaches (umount2 MNT_DETACH) a mount at `mount_dir` whose FUSE daemon is gone; ok when there
// is none. Returns whether one was detached.
Result<bool> DetachStaleMount(const std::string& mount_dir);

}  // namespace moat::memfs
