// `moatd memfs`: the process that serves a host's lazily fetched snapshot memory files
// (docs/snapshots.md, "Lazy memory"). Its configuration, and the process's life: the store and
// chunk cache it opens, the mount, a housekeeping thread (stats.json every second, trace
// windows, removed control files), and an orderly end on SIGTERM/SIGINT.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"

namespace moat::memfs {

struct MemfsServerConfig {
  std::string mount_dir;
  std::string control_dir;
  std::string cache_dir;
  uint64_t cache_mib = 10240;
  // The store: an S3 URL with endpoint, region and credentials (file, or AWS_* variables), or
  // a directory (LocalObjectStore). Exactly one.
  std::string snapshot_store;
  std::string s3_endpoint;
  std::string s3_region = "us-east-1";
  std::string s3_credentials_file;
  std::string local_store;
  // Seconds after a file's first open during which its reads are traced.
  int trace_window_s = 10;
  // Threads fetching prefetch and fill chunks, and how many of them may fill at once.
  int prefetch_threads = 8;
  int fill_threads = 2;
  // Milliseconds after a file's open before its fill starts.
  int fill_delay_ms = 5000;
  // FUSE loop threads at most.
  int max_threads = 64;
  // false: detach (fork; the parent exits 0 once the mount is live, 1 if the start failed).
  bool foreground = false;
};

// Every flag checked, naming it: directories given, exactly one store, sizes and counts in range.
Status ValidateMemfsServerConfig(const MemfsServerConfig& config);

// Runs memfs until SIGTERM/SIGINT/SIGHUP; the process's exit code (0: stopped in order).
int RunMemfsServer(const MemfsServerConfig& config);

}  // namespace moat::memfs
