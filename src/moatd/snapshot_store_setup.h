// A host's snapshot store (docs/snapshots.md "Across hosts"), as `moatd serve` and `moatd agent`
// set it up from their flags: the S3 object store, this host's `moatd memfs`, and the
// replicator that uploads its snapshots and lays out other hosts'. Declared before the agent
// (the agent holds a pointer to the replicator): destroyed after it.
#pragma once

#include <memory>
#include <string>

#include "api/store/store.h"
#include "host/snapshot_replicator.h"
#include "memfs/memfs_control.h"
#include "moatd/moatd_config.h"
#include "storage/object_store.h"

namespace moat::api {

struct HostSnapshotStore {
  std::unique_ptr<storage::ObjectStore> objects;
  std::unique_ptr<memfs::MemfsProcess> memfs;
  std::unique_ptr<host::SnapshotReplicator> replicator;
  std::string memfs_control;

  // Prometheus text of this host's side (host/storage_metrics.h): the replicator's counters and
  // memfs's latest stats (memfs_up 0 when they are older than 10 s).
  std::string RenderMetrics(const std::string& host_id);
};

// Null when --snapshot-store is not set. Starts memfs (or finds the one an earlier agent left
// running) and the replicator.
Result<std::unique_ptr<HostSnapshotStore>> OpenHostSnapshotStore(const MoatdConfig& config,
                                                                 store::Store& db,
                                                                 const std::string& host_id);

}  // namespace moat::api
