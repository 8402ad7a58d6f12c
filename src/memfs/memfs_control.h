// The control protocol between a host's agent and its `moatd memfs` (docs/snapshots.md, "Lazy
// memory"): both sides of it, and the supervisor the agent keeps memfs running with.
//
// memfs presents the snapshot memory files of one host under a FUSE mount; what each file holds
// is told by the agent through a control directory, not through the mount:
//
//   <control>/<name>.json   a file to present as <mount>/<name> (MemfsFileSpec), written by the
//                           agent (atomically: temporary name, then rename); memfs loads it on
//                           the first lookup of <name>. Immutable: to change what a name holds,
//                           remove it and write it again.
//   <control>/<name>.trace  written by memfs (once, only while absent): the chunk indexes reads
//                           first touched in the first seconds after the file's first open, in
//                           that order — the agent uploads it as the snapshot's prefetch list.
//   <control>/stats.json    written by memfs every second and at exit (ReadMemfsStats).
//   <control>/memfs.pid     the running memfs's pid; memfs.lock is held (flock) while it runs,
//                           so that one control directory has one memfs.
//
// Nothing here links libfuse: the agent links this, memfs links this and libfuse.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/child_process.h"
#include "common/status.h"
#include "storage/chunking.h"

namespace moat::memfs {

inline constexpr int kMemfsFileSpecVersion = 1;
// A file's size limit (the same as a remote manifest's).
inline constexpr uint64_t kMaxMemfsFileSize = uint64_t{1} << 40;
// FUSE's f_type (statfs(2)): how a live mount is recognised.
inline constexpr int64_t kFuseSuperMagic = 0x65735546;

// One file memfs presents.
struct MemfsFileSpec {
  std::string name;  // [A-Za-z0-9_-]{1,64}: the file's name under the mount
  // Its size and, per 4 MiB chunk, the chunk's hash in the store, or nullopt for all-zero.
  storage::ChunkMap chunks;
  // Chunk indexes to fetch ahead, in this order, on the file's first open (at most one entry
  // each, each < the chunk count).
  std::vector<uint32_t> prefetch;
  // After the prefetch, fetch every other non-zero chunk in the background (lower priority than
  // reads and the prefetch): after a cross-host restore, the store is then needed only briefly.
  bool fill = false;

  bool operator==(const MemfsFileSpec&) const = default;
};

// "stats" is not a file name: <control>/stats.json is memfs's.
inline constexpr std::string_view kReservedMemfsName = "stats";
// [A-Za-z0-9_-]{1,64}, except kReservedMemfsName.
bool IsValidMemfsName(std::string_view name);

// The control file's JSON: {"version":1,"size":N,"chunks":[hash|null,…],"prefetch":[…],
// "fill":bool}. The name is not in it: it is the file's name.
std::string EncodeMemfsFileSpec(const MemfsFileSpec& spec);
// Strict: unknown keys, a version other than 1 (absent means 1), a size past kMaxMemfsFileSize,
// a chunk count that does not match the size, a hash that is not 64 lowercase hex digits, a
// prefetch index out of range or repeated are invalid_argument naming the field.
Result<MemfsFileSpec> DecodeMemfsFileSpec(std::string_view name, std::string_view json);

// <control>/<name>.json, <control>/<name>.trace, <mount>/<name>.
std::string MemfsSpecPath(const std::string& control_dir, std::string_view name);
std::string MemfsTracePath(const std::string& control_dir, std::string_view name);
std::string MemfsStatsPath(const std::string& control_dir);
std::string MemfsPidPath(const std::string& control_dir);

// Writes <control>/<name>.json atomically (a temporary name, then rename; not fsync'd: the
// control directory describes this boot's VMs only). Validates the spec first.
Status WriteMemfsFile(const std::string& control_dir, const MemfsFileSpec& spec);
// Reads and validates <control>/<name>.json; not_found when it does not exist.
Result<MemfsFileSpec> ReadMemfsFile(const std::string& control_dir, std::string_view name);
// Removes <control>/<name>.json (ok when absent). Files already open keep working; later
// lookups of the name fail with ENOENT. The name's trace stays (RemoveMemfsTrace).
Status RemoveMemfsFile(const std::string& control_dir, std::string_view name);

// The trace: a JSON array of chunk indexes. not_found when memfs has not written one (yet).
Result<std::vector<uint32_t>> ReadMemfsTrace(const std::string& control_dir, std::string_view name);
// memfs's side: writes the trace unless one exists already (a temporary file linked into place:
// atomic, and never replaces a trace). Returns whether it was written.
Result<bool> WriteMemfsTraceIfAbsent(const std::string& control_dir, std::string_view name,
                                     const std::vector<uint32_t>& trace);
Status RemoveMemfsTrace(const std::string& control_dir, std::string_view name);

// <control>/stats.json as written by memfs (its fields: docs/snapshots.md). not_found before
// the first write.
Result<nlohmann::json> ReadMemfsStats(const std::string& control_dir);

// Writes `data` to `path` through a temporary name in the same directory and a rename, without
// fsync (used for the control directory's files, which describe only this boot).
Status ReplaceFile(const std::string& path, std::string_view data, mode_t mode = 0644);

// How the agent starts `moatd memfs`.
struct MemfsProcessOptions {
  std::string moatd_binary;  // path to moatd
  std::string mount_dir;
  std::string control_dir;
  std::string cache_dir;
  uint64_t cache_mib = 10240;
  // The store: an S3 URL (s3://bucket/prefix) with its endpoint, region and credentials file,
  // or a directory (LocalObjectStore). Exactly one.
  std::string snapshot_store;
  std::string s3_endpoint;
  std::string s3_region = "us-east-1";
  std::string s3_credentials_file;
  std::string local_store;
  int trace_window_s = 10;
  // Milliseconds after a file's open before memfs fills the rest of it.
  int fill_delay_ms = 5000;
  // memfs's stdout and stderr are appended here; empty: <control>/memfs.log.
  std::string log_file;
  // How long a start may take until the mount is live.
  std::chrono::milliseconds start_timeout{10000};
};

// The agent's handle on its memfs. memfs runs detached (its own session, no parent-death
// signal): it outlives an agent restart, and the next agent finds it through memfs.pid and a
// live mount. Thread-safe.
//
// When memfs dies, every VM that maps one of its files keeps the pages already resident (its
// page cache pages and its private copies), but its next fault on a page that is not resident
// fails with SIGBUS (the FUSE connection is gone): QEMU dies, the agent sees the VMM exit and
// the sandbox ends as an error. The snapshot in the store is intact. EnsureRunning starts a
// new memfs (which first detaches the dead mount) for later restores.
class MemfsProcess {
 public:
  explicit MemfsProcess(MemfsProcessOptions options);
  // Leaves memfs running (it is meant to outlive this object and this process).
  ~MemfsProcess();
  MemfsProcess(const MemfsProcess&) = delete;
  MemfsProcess& operator=(const MemfsProcess&) = delete;

  // Ok once a memfs serves the mount: the one this object started or adopted, one found
  // through memfs.pid, or a new one (started when none runs, or the one found is dead or does
  // not bring its mount up within start_timeout; it is then killed). Errors name what failed,
  // with the end of memfs's log.
  Status EnsureRunning();
  // <mount>/<name>: what QEMU maps.
  std::string PathOf(std::string_view name) const;
  // The pid of the memfs this object runs or adopted (nullopt when none, or it has exited).
  std::optional<pid_t> pid();
  // SIGTERM, then SIGKILL after `timeout`; ok when none runs. For tests and an orderly host
  // shutdown: it ends the VMs' access to their memory files (see above).
  Status Stop(std::chrono::milliseconds timeout = std::chrono::seconds(10));

  const MemfsProcessOptions& options() const { return options_; }

  // statfs(mount) answers with FUSE's f_type. A dead memfs's mount answers ENOTCONN; a hung
  // memfs makes this hang (the kernel waits for its answer).
  static bool IsMountLive(const std::string& mount_dir);

 private:
  Status StartLocked();
  // A live memfs from memfs.pid (its cmdline names this mount), adopted into child_.
  bool AdoptFromPidFileLocked();
  bool ChildAliveLocked();
  std::string LogPath() const;

  MemfsProcessOptions options_;
  std::mutex mu_;
  ChildProcess child_;
};

}  // namespace moat::memfs
