#include "moatd/snapshot_store_setup.h"

#include <unistd.h>

#include <climits>

#include "common/fs.h"
#include "common/log.h"
#include "host/storage_metrics.h"
#include "storage/s3_object_store.h"

namespace moat::api {
namespace {

std::string SelfPath() {
  char buf[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "moatd";
}

}  // namespace

std::string HostSnapshotStore::RenderMetrics(const std::string& host_id) {
  nlohmann::json memfs_stats = nullptr;
  if (auto stats = memfs::ReadMemfsStats(memfs_control); stats.ok() && (*stats).is_object()) {
    int64_t at = (*stats).value("time_unix_ms", int64_t{0});
    int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count();
    if (now - at < 10000) memfs_stats = *stats;
  }
  nlohmann::json uploads = replicator ? replicator->StatsJson() : nlohmann::json::object();
  return host::RenderStorageMetrics(host_id, uploads, memfs_stats);
}

Result<std::unique_ptr<HostSnapshotStore>> OpenHostSnapshotStore(const MoatdConfig& config,
                                                                 store::Store& db,
                                                                 const std::string& host_id) {
  if (config.snapshot_store.empty()) return std::unique_ptr<HostSnapshotStore>();
  auto out = std::make_unique<HostSnapshotStore>();
  MOAT_ASSIGN_OR_RETURN(storage::S3Location location, storage::ParseS3Url(config.snapshot_store));
  MOAT_ASSIGN_OR_RETURN(storage::SigV4Credentials credentials,
                        storage::LoadS3Credentials(config.s3_credentials_file));
  storage::S3Config s3{.location = location,
                       .endpoint = config.s3_endpoint,
                       .region = config.s3_region,
                       .credentials = credentials};
  s3.max_send_bytes_per_second = config.upload_bytes_per_second;
  MOAT_ASSIGN_OR_RETURN(auto objects, storage::S3ObjectStore::Make(std::move(s3)));
  out->objects = std::move(objects);

  std::string memfs_dir = config.data_dir + "/memfs";
  memfs::MemfsProcessOptions mo;
  mo.moatd_binary = SelfPath();
  mo.mount_dir = memfs_dir + "/mnt";
  mo.control_dir = memfs_dir + "/control";
  mo.cache_dir = config.data_dir + "/chunk-cache";
  mo.cache_mib = config.chunk_cache_mb;
  mo.snapshot_store = config.snapshot_store;
  mo.s3_endpoint = config.s3_endpoint;
  mo.s3_region = config.s3_region;
  mo.s3_credentials_file = config.s3_credentials_file;
  MOAT_RETURN_IF_ERROR(MakeDirs(mo.mount_dir, 0755));
  MOAT_RETURN_IF_ERROR(MakeDirs(mo.control_dir, 0700));
  MOAT_RETURN_IF_ERROR(MakeDirs(mo.cache_dir, 0700));
  out->memfs = std::make_unique<memfs::MemfsProcess>(mo);
  MOAT_RETURN_IF_ERROR(out->memfs->EnsureRunning().Annotate("starting moatd memfs"));

  host::ReplicatorOptions ro;
  ro.host_id = host_id;
  ro.data_dir = config.data_dir;
  ro.concurrency = static_cast<size_t>(config.upload_concurrency);
  ro.sweep_interval = std::chrono::seconds(config.sweep_interval_s);
  ro.delete_grace = std::chrono::seconds(config.snapshot_delete_grace_s);
  ro.memfs = out->memfs.get();
  ro.memfs_control = mo.control_dir;
  out->memfs_control = mo.control_dir;
  MOAT_ASSIGN_OR_RETURN(out->replicator, host::SnapshotReplicator::Start(*out->objects, db, ro));
  LogInfo("moatd.snapshot_store", {{"store", out->objects->Describe()},
                                   {"memfs", mo.mount_dir},
                                   {"chunk_cache_mb", static_cast<long>(config.chunk_cache_mb)}});
  return out;
}

}  // namespace moat::api
