// SnapshotReplicator: a host's side of snapshots across hosts (docs/snapshots.md "Across hosts",
// shared/FLEET.md §5-§6). It
//  - uploads every snapshot the agent completes (pause, named snapshot, template bake) in the
//    background: the record is `local-only` first (store::StoredSnapshotRecord), then the chunks
//    the store lacks (4 MiB, content-addressed, all-zero ones never), then the manifest, then the
//    record says `uploaded`. A failed upload (the store unreachable) is retried with back-off
//    until it succeeds; an agent that restarts picks up its uploads again (DATA_DIR/uploads/);
//  - lays out another host's snapshot here for a restore: the manifest, device state and disk
//    overlay downloaded (and kept in DATA_DIR/store-cache/, so a second restore of one snapshot
//    makes no request at all), the base disk found among this host's own (same chunks) or
//    downloaded once, and the RAM presented lazily by `moatd memfs`;
//  - deletes the objects of snapshots marked deleting, uploads prefetch traces memfs recorded,
//    and runs the mark-and-sweep of unreferenced chunks (one host at a time, never during an
//    upload: store::Store::BeginStorageSweep).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "agent/snapshot.h"
#include "agent/snapshot_replication.h"
#include "api/store/store.h"
#include "common/status.h"
#include "storage/chunking.h"
#include "storage/object_store.h"
#include "storage/remote_manifest.h"

namespace moat::memfs {
class MemfsProcess;
}

namespace moat::host {

struct ReplicatorOptions {
  std::string host_id;
  std::string data_dir;
  // Chunk uploads and downloads in flight at once, per snapshot.
  size_t concurrency = 4;
  // A failed upload is tried again after this, doubling up to 5 minutes.
  std::chrono::milliseconds retry_base{2000};
  // Deleting, trace uploads and the sweep run this often.
  std::chrono::milliseconds maintenance_interval{2000};
  // A mark-and-sweep of the store's chunks this often (0: only when asked: Sweep()).
  std::chrono::seconds sweep_interval{600};
  // A released snapshot's manifest (and so its chunks) stays this long after this host first
  // saw it released: hosts paging it in (memfs fills the rest in the background) finish first.
  std::chrono::milliseconds delete_grace{std::chrono::minutes(10)};
  // A sweep or an upload older than this whose process died no longer blocks the other.
  std::chrono::milliseconds sweep_stale{std::chrono::minutes(30)};
  // memfs: where restores of other hosts' snapshots map their RAM from. Null: such restores
  // download the RAM file whole first.
  memfs::MemfsProcess* memfs = nullptr;
  std::string memfs_control;  // its control directory
};

struct ReplicatorStats {
  uint64_t uploads = 0;  // snapshots uploaded
  uint64_t upload_failures = 0;
  uint64_t chunks_uploaded = 0;
  uint64_t bytes_uploaded = 0;
  uint64_t chunks_present = 0;  // skipped: the store had them
  uint64_t restores = 0;        // snapshots laid out from the store
  uint64_t restore_bytes = 0;   // bytes downloaded for them (not RAM: memfs fetches that)
  uint64_t restore_gets = 0;    // store GETs made for them (manifests, traces, chunks)
  uint64_t deleted = 0;         // snapshots whose objects were deleted
  uint64_t sweeps = 0;
  uint64_t chunks_swept = 0;
  size_t backlog = 0;  // uploads queued or running
};

class SnapshotReplicator : public agent::SnapshotReplication {
 public:
  // Starts the upload worker and the maintenance thread, after resetting this host's uploads an
  // earlier process left half-done and queueing them again.
  static Result<std::unique_ptr<SnapshotReplicator>> Start(storage::ObjectStore& objects,
                                                           api::store::Store& db,
                                                           ReplicatorOptions options);
  ~SnapshotReplicator() override;

  void Written(const std::string& kind, const std::string& owner_id,
               const std::string& dir) override;
  Result<bool> FetchTemplate(const std::string& name, const std::string& build,
                             const std::string& dir) override;

  // Lays out the stored paused snapshot `key` as DATA_DIR/snapshots/<sandbox_id>/ (written under
  // a temporary name, renamed last), ready for Agent::Resume. already_exists if that directory
  // exists; not_found if the store has no such snapshot.
  Status MaterializePaused(const std::string& key, const std::string& sandbox_id);
  // The store key of the pause laid out as DATA_DIR/snapshots/<sandbox_id>/ by
  // MaterializePaused; empty for one this host paused itself (or none).
  std::string StoreKeyOfPaused(const std::string& sandbox_id);
  // Lays out stored snapshot `key` (a named snapshot, or a fork's) as DATA_DIR/snapshots/<id>/
  // for creates from it on this host; ok at once when it is already there.
  Status MaterializeNamed(const std::string& key, const std::string& snapshot_id);
  // Uploads the snapshot in `dir` now (a cross-host fork's), recorded under `key` as `kind`,
  // and waits for it: ok once the record says uploaded.
  Status UploadNow(const std::string& kind, const std::string& owner_id, const std::string& key,
                   const std::string& dir);

  // One mark-and-sweep: the chunks no manifest of a live record references are deleted. How
  // many; failed_precondition (nothing done) while an upload or another sweep runs.
  Result<int64_t> Sweep();
  // Waits until no upload is queued or running (tests, benchmarks), at most `timeout`.
  bool WaitIdle(std::chrono::milliseconds timeout);
  ReplicatorStats stats();
  // For /metrics and the admin routes: stats and the object store's counters.
  nlohmann::json StatsJson();

  // The key a template build's snapshot has in the store (the same on every host).
  static std::string TemplateKey(const std::string& name, const std::string& build);

 private:
  struct Job {
    std::string key;
    std::string dir;
    int failures = 0;
    std::chrono::steady_clock::time_point not_before;
  };
  SnapshotReplicator(storage::ObjectStore& objects, api::store::Store& db,
                     ReplicatorOptions options);
  void Queue(Job job);
  void UploadLoop();
  void MaintenanceLoop();
  Status Upload(const std::string& key, const std::string& dir);
  // Chunk maps of a snapshot directory's files (the base disk's cached by path, size and mtime).
  Result<std::map<std::string, storage::ChunkMap>> ChunkSnapshot(
      const std::string& dir, const agent::SnapshotManifest& m,
      std::map<std::string, std::string>* paths);
  // Puts the chunks of `maps` (files at `paths`) the store lacks, `concurrency` at a time.
  Status PutMissingChunks(const std::map<std::string, storage::ChunkMap>& maps,
                          const std::map<std::string, std::string>& paths);
  // The stored manifest of `key` (from the local cache, else the store, then cached).
  Result<storage::RemoteManifest> FetchManifest(const std::string& key);
  // Writes `map`'s file at `dest` (sparse) from the store's chunks, `concurrency` at a time.
  Status Assemble(const storage::ChunkMap& map, const std::string& dest);
  // A cached copy of file `name` of stored snapshot `key` (downloaded once).
  Result<std::string> CachedFile(const std::string& key, const std::string& name,
                                 const storage::ChunkMap& map);
  // A file on this host with exactly these chunks (a template's disk.raw), else downloaded once.
  Result<std::string> LocalBase(const storage::ChunkMap& map);
  // The prefetch trace of `key` (from the cache or the store); empty when none was recorded.
  // `may_fetch` false: only a cached trace (no request to the store).
  std::vector<uint32_t> Trace(const std::string& key, const storage::RemoteManifest& rm,
                              bool may_fetch = true);
  // Lays out `key` into the temporary directory `tmp` for a restore; the manifest it wrote.
  Status MaterializePausedImpl(const std::string& key, const std::string& sandbox_id);
  Status MaterializeNamedImpl(const std::string& key, const std::string& snapshot_id);
  Status LayOut(const std::string& key, const std::string& tmp, bool lazy_memory,
                const std::string& final_dir);
  void DeleteMarked();
  void UploadTraces();

  storage::ObjectStore& objects_;
  api::store::Store& db_;
  ReplicatorOptions options_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  size_t running_ = 0;
  bool stopping_ = false;
  std::set<std::string> traces_uploaded_;  // keys (maintenance thread only)
  std::map<std::string, std::chrono::steady_clock::time_point> deleting_seen_;  // likewise

  std::mutex base_mu_;
  // Chunk maps of local base disks by path: {size, mtime ns} -> map.
  struct BaseEntry {
    uint64_t size = 0;
    int64_t mtime_ns = 0;
    storage::ChunkMap map;
  };
  std::map<std::string, BaseEntry> bases_;

  std::atomic<uint64_t> uploads_{0}, upload_failures_{0}, chunks_uploaded_{0}, bytes_uploaded_{0},
      chunks_present_{0}, restores_{0}, restore_bytes_{0}, restore_gets_{0}, deleted_{0},
      sweeps_{0}, chunks_swept_{0};

  std::atomic<bool> stop_{false};
  std::thread uploader_;
  std::thread maintenance_;
};

}  // namespace moat::host
