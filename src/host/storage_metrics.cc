#include "host/storage_metrics.h"

#include <cstdio>

namespace moat::host {
namespace {

using nlohmann::json;

// A number at `path` ("a/b/c") of `j`, or 0.
double At(const json& j, std::initializer_list<const char*> path) {
  const json* p = &j;
  for (const char* k : path) {
    if (!p->is_object()) return 0;
    auto it = p->find(k);
    if (it == p->end()) return 0;
    p = &*it;
  }
  return p->is_number() ? p->get<double>() : 0;
}

std::string Num(double v) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

}  // namespace

std::string RenderStorageMetrics(const std::string& host_id, const json& replicator,
                                 const json& memfs) {
  std::string label = "{host=\"" + host_id + "\"}";
  std::string out;
  auto metric = [&](const char* name, const char* type, const char* help, double value) {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n" +
           name + label + " " + Num(value) + "\n";
  };
  const json& r = replicator;
  metric("moat_snapshot_uploads_total", "counter", "Snapshots this host uploaded to the store.",
         At(r, {"uploads"}));
  metric("moat_snapshot_upload_failures_total", "counter",
         "Upload attempts that failed (each is retried with back-off).", At(r, {"uploadFailures"}));
  metric("moat_snapshot_upload_backlog", "gauge",
         "Snapshots of this host queued or uploading (local-only until done).",
         At(r, {"uploadBacklog"}));
  metric("moat_snapshot_upload_bytes_total", "counter", "Chunk bytes this host put in the store.",
         At(r, {"bytesUploaded"}));
  metric("moat_snapshot_upload_chunks_present_total", "counter",
         "Chunks an upload found in the store already (shared with other snapshots).",
         At(r, {"chunksPresent"}));
  metric("moat_snapshot_restores_total", "counter",
         "Snapshots of other hosts (or templates) laid out here from the store.",
         At(r, {"restores"}));
  metric("moat_snapshot_restore_bytes_total", "counter",
         "Bytes downloaded for them besides memory (state, disks).", At(r, {"restoreBytes"}));
  metric("moat_snapshot_restore_gets_total", "counter", "Store GETs made for them.",
         At(r, {"restoreGets"}));
  metric("moat_snapshot_sweeps_total", "counter", "Mark-and-sweeps of the store's chunks run here.",
         At(r, {"sweeps"}));
  metric("moat_snapshot_chunks_swept_total", "counter", "Unreferenced chunks those sweeps deleted.",
         At(r, {"chunksSwept"}));
  out +=
      "# HELP moat_object_store_requests_total Requests to the object store, by operation.\n"
      "# TYPE moat_object_store_requests_total counter\n";
  for (const char* op : {"gets", "puts", "heads", "deletes", "retries", "failures"}) {
    out += "moat_object_store_requests_total{host=\"" + host_id + "\",op=\"" + op + "\"} " +
           Num(At(r, {"store", op})) + "\n";
  }

  metric("moat_memfs_up", "gauge", "Whether memfs reported in the last seconds.",
         memfs.is_object() ? 1 : 0);
  if (!memfs.is_object()) return out;
  metric("moat_chunk_cache_hits_total", "counter", "Chunk cache reads that found the chunk.",
         At(memfs, {"cache", "hits"}));
  metric("moat_chunk_cache_misses_total", "counter", "Chunk cache reads that did not.",
         At(memfs, {"cache", "misses"}));
  metric("moat_chunk_cache_bytes", "gauge", "Bytes in the chunk cache.",
         At(memfs, {"cache", "bytes"}));
  metric("moat_chunk_cache_evictions_total", "counter", "Chunks evicted (least recently used).",
         At(memfs, {"cache", "evictions"}));
  metric("moat_chunk_cache_pinned", "gauge", "Chunks pinned by memory files in use.",
         At(memfs, {"cache", "pinned"}));
  metric("moat_chunk_fetches_total", "counter", "Chunks memfs fetched from the store.",
         At(memfs, {"fetch", "fetches"}));
  metric("moat_chunk_fetch_bytes_total", "counter", "Bytes of those chunks.",
         At(memfs, {"fetch", "fetch_bytes"}));
  metric("moat_chunk_fetch_failures_total", "counter", "Chunk fetches that failed.",
         At(memfs, {"fetch", "failures"}));
  metric("moat_memfs_zero_chunk_reads_total", "counter",
         "Reads of all-zero chunks (answered without a fetch).", At(memfs, {"zero_chunk_reads"}));
  metric("moat_memfs_read_errors_total", "counter",
         "Reads memfs failed (the VM that faulted gets SIGBUS).", At(memfs, {"read_errors"}));
  // The fetch latency histogram: memfs counts per bucket; Prometheus wants cumulative counts.
  const json& lat = memfs["fetch"].is_object() ? memfs["fetch"]["latency_ms"] : json();
  if (lat.is_object() && lat["bounds"].is_array() && lat["counts"].is_array()) {
    out +=
        "# HELP moat_chunk_fetch_seconds Time to fetch one chunk from the store.\n"
        "# TYPE moat_chunk_fetch_seconds histogram\n";
    double cumulative = 0;
    const json& bounds = lat["bounds"];
    const json& counts = lat["counts"];
    for (size_t i = 0; i < counts.size(); ++i) {
      cumulative += counts[i].is_number() ? counts[i].get<double>() : 0;
      std::string le =
          i < bounds.size() && bounds[i].is_number() ? Num(bounds[i].get<double>() / 1000) : "+Inf";
      out += "moat_chunk_fetch_seconds_bucket{host=\"" + host_id + "\",le=\"" + le + "\"} " +
             Num(cumulative) + "\n";
    }
    out += "moat_chunk_fetch_seconds_sum" + label + " " + Num(At(lat, {"sum"}) / 1000) + "\n";
    out += "moat_chunk_fetch_seconds_count" + label + " " + Num(cumulative) + "\n";
  }
  return out;
}

}  // namespace moat::host
