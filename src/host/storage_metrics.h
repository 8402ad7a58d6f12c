// Prometheus text for one host's side of the snapshot store (docs/snapshots.md "Metrics"): its
// replicator (uploads, backlog, restores, sweeps, object store requests) and its memfs (chunk
// cache hits and misses, fetches, fetch latency), from the JSON each reports
// (SnapshotReplicator::StatsJson, memfs's stats.json). Served by `moatd serve`'s /metrics and by
// `moatd agent`'s /metrics.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace moat::host {

// `memfs` null: memfs has not reported (moat_memfs_up 0).
std::string RenderStorageMetrics(const std::string& host_id, const nlohmann::json& replicator,
                                 const nlohmann::json& memfs);

}  // namespace moat::host
