#include "host/snapshot_replicator.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <random>

#include "agent/template_store.h"
#include "common/cleanup.h"
#include "common/fs.h"
#include "common/guarded.h"
#include "common/json_depth.h"
#include "common/log.h"
#include "common/unique_fd.h"
#include "memfs/memfs_control.h"
#include "storage/sigv4.h"

namespace moat::host {
namespace {

using Clock = std::chrono::steady_clock;

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The files of a snapshot directory that go to the store, by their name there. The base disk
// is the manifest's (a template's own disk.raw, or the one a sandbox's overlay sits on).
std::map<std::string, std::string> SnapshotPaths(const std::string& dir,
                                                 const agent::SnapshotManifest& m) {
  agent::SnapshotFiles f(dir);
  std::map<std::string, std::string> paths;
  if (PathExists(f.state)) paths["state"] = f.state;
  // A template always has its RAM in `mem` (its manifest does not say so); others when
  // memoryFile says so.
  if ((m.memory_file || m.kind == "template") && PathExists(f.memory)) paths["mem"] = f.memory;
  paths["disk.qcow2"] = f.overlay;
  if (!m.base_disk.empty()) paths["disk.raw"] = m.base_disk;
  return paths;
}

// The manifest as another host reads it: nothing that names a path of this one.
nlohmann::json PortableMeta(agent::SnapshotManifest m) {
  m.base_disk.clear();
  m.memory_path.clear();
  return agent::ManifestToJson(m);
}

std::string TraceKey(const std::string& key) {
  return "snapshots/" + key + "/trace.json";
}

// Runs fn(i) for i in [0, n) on up to `threads` threads; the first error wins (the rest still
// finish the item they hold, and take no more).
Status ParallelFor(size_t n, size_t threads, const std::function<Status(size_t)>& fn) {
  std::atomic<size_t> next{0};
  std::mutex mu;
  Status first;
  std::atomic<bool> failed{false};
  auto work = [&] {
    for (size_t i; !failed && (i = next++) < n;) {
      Status s = fn(i);
      if (!s.ok()) {
        std::lock_guard lock(mu);
        if (first.ok()) first = s;
        failed = true;
      }
    }
  };
  std::vector<std::thread> pool;
  size_t count = std::min(threads == 0 ? size_t{1} : threads, n);
  for (size_t t = 1; t < count; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  return first;
}

}  // namespace

std::string SnapshotReplicator::TemplateKey(const std::string& name, const std::string& build) {
  return "tpl-" + storage::Sha256Hex(name + "/" + build).substr(0, 40);
}

SnapshotReplicator::SnapshotReplicator(storage::ObjectStore& objects, api::store::Store& db,
                                       ReplicatorOptions options)
    : objects_(objects), db_(db), options_(std::move(options)) {}

Result<std::unique_ptr<SnapshotReplicator>> SnapshotReplicator::Start(storage::ObjectStore& objects,
                                                                      api::store::Store& db,
                                                                      ReplicatorOptions options) {
  std::unique_ptr<SnapshotReplicator> r(new SnapshotReplicator(objects, db, std::move(options)));
  const std::string& data = r->options_.data_dir;
  MOAT_RETURN_IF_ERROR(MakeDirs(data + "/uploads", 0700));
  MOAT_RETURN_IF_ERROR(MakeDirs(data + "/store-cache", 0711));
  // Uploads an earlier process of this host left half-done start over (chunks it put are
  // found present).
  MOAT_ASSIGN_OR_RETURN(int64_t reset, db.ResetSnapshotUploads(r->options_.host_id));
  if (reset > 0) LogInfo("replicator.uploads_reset", {{"count", reset}});
  for (const auto& key : DirNames(data + "/uploads")) {
    auto dir = ReadFile(data + "/uploads/" + key);
    if (!dir.ok() || !storage::IsValidSnapshotKeyId(key)) {
      (void)::unlink((data + "/uploads/" + key).c_str());
      continue;
    }
    r->Queue({.key = key, .dir = *dir});
  }
  r->uploader_ = GuardedThread("snapshot uploader", [p = r.get()] { p->UploadLoop(); });
  r->maintenance_ = GuardedThread("snapshot maintenance", [p = r.get()] { p->MaintenanceLoop(); });
  return r;
}

SnapshotReplicator::~SnapshotReplicator() {
  stop_ = true;  // an upload or sweep in progress gives up at its next chunk
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (uploader_.joinable()) uploader_.join();
  if (maintenance_.joinable()) maintenance_.join();
}

void SnapshotReplicator::Queue(Job job) {
  {
    std::lock_guard lock(mu_);
    queue_.push_back(std::move(job));
  }
  cv_.notify_all();
}

void SnapshotReplicator::Written(const std::string& kind, const std::string& owner_id,
                                 const std::string& dir) {
  std::string key = kind == "template" ? TemplateKey(owner_id.substr(0, owner_id.find('/')),
                                                     owner_id.substr(owner_id.find('/') + 1))
                    : kind == "paused" ? owner_id + "-" + std::to_string(NowMs())
                                       : owner_id;
  api::store::StoredSnapshotRecord rec{.key = key,
                                       .kind = kind,
                                       .owner_id = owner_id,
                                       .host_id = options_.host_id,
                                       .state = "local-only",
                                       .created_at_ms = NowMs()};
  Status recorded = db_.InsertStoredSnapshot(rec);
  if (!recorded.ok()) {
    // A template another host baked too (same build): that one's upload serves the fleet.
    if (recorded.code() != ErrorCode::kAlreadyExists) {
      LogWarn("replicator.record_failed", {{"key", key}, {"error", recorded.ToString()}});
    }
    return;
  }
  if (kind == "paused") {
    // An earlier pause of this sandbox is superseded.
    (void)db_.MarkStoredSnapshotsDeleting("paused", owner_id, key);
  }
  // The queue survives a restart of this process through DATA_DIR/uploads/<key>.
  Status noted = WriteFileAtomic(options_.data_dir + "/uploads/" + key, dir, 0600);
  if (!noted.ok()) LogWarn("replicator.queue_file", {{"key", key}, {"error", noted.ToString()}});
  Queue({.key = key, .dir = dir});
}

void SnapshotReplicator::UploadLoop() {
  std::unique_lock lock(mu_);
  while (!stopping_) {
    auto now = Clock::now();
    auto ready = std::find_if(queue_.begin(), queue_.end(),
                              [&](const Job& j) { return j.not_before <= now; });
    if (ready == queue_.end()) {
      auto wake = now + std::chrono::seconds(1);
      for (const auto& j : queue_) wake = std::min(wake, j.not_before);
      cv_.wait_until(lock, wake);
      continue;
    }
    Job job = *ready;
    queue_.erase(ready);
    ++running_;
    lock.unlock();
    Status s = Upload(job.key, job.dir);
    lock.lock();
    --running_;
    if (s.code() == ErrorCode::kAborted) {
      // A sweep runs: a moment later.
      job.not_before = Clock::now() + std::chrono::seconds(1);
      queue_.push_back(job);
    } else if (!s.ok() && s.code() != ErrorCode::kNotFound) {
      ++upload_failures_;
      job.failures++;
      auto delay = options_.retry_base * (1 << std::min(job.failures - 1, 8));
      delay = std::min<std::chrono::milliseconds>(delay, std::chrono::minutes(5));
      job.not_before = Clock::now() + delay;
      LogWarn("replicator.upload_failed", {{"key", job.key},
                                           {"attempt", job.failures},
                                           {"retry_ms", static_cast<long>(delay.count())},
                                           {"error", s.ToString()}});
      queue_.push_back(job);
    } else {
      (void)::unlink((options_.data_dir + "/uploads/" + job.key).c_str());
    }
    cv_.notify_all();
  }
}

Result<std::map<std::string, storage::ChunkMap>> SnapshotReplicator::ChunkSnapshot(
    const std::string& dir, const agent::SnapshotManifest& m,
    std::map<std::string, std::string>* paths) {
  *paths = SnapshotPaths(dir, m);
  std::map<std::string, storage::ChunkMap> maps;
  for (const auto& [name, path] : *paths) {
    if (name == "disk.raw") {
      // Immutable once a template is baked: hashed once per file.
      struct stat st {};
      if (::stat(path.c_str(), &st) < 0) return ErrnoError("stat(" + path + ")");
      int64_t mtime = st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
      {
        std::lock_guard lock(base_mu_);
        auto it = bases_.find(path);
        if (it != bases_.end() && it->second.size == static_cast<uint64_t>(st.st_size) &&
            it->second.mtime_ns == mtime) {
          maps[name] = it->second.map;
          continue;
        }
      }
      MOAT_ASSIGN_OR_RETURN(storage::ChunkMap map, storage::ChunkFile(path));
      std::lock_guard lock(base_mu_);
      bases_[path] = {static_cast<uint64_t>(st.st_size), mtime, map};
      maps[name] = std::move(map);
      continue;
    }
    MOAT_ASSIGN_OR_RETURN(maps[name], storage::ChunkFile(path));
  }
  return maps;
}

Status SnapshotReplicator::PutMissingChunks(const std::map<std::string, storage::ChunkMap>& maps,
                                            const std::map<std::string, std::string>& paths) {
  struct Item {
    std::string hash;
    const std::string* path;
    const storage::ChunkMap* map;
    size_t index;
  };
  std::vector<Item> items;
  std::set<std::string> seen;
  for (const auto& [name, map] : maps) {
    for (size_t i = 0; i < map.chunks.size(); ++i) {
      const auto& h = map.chunks[i];
      if (h && seen.insert(*h).second) items.push_back({*h, &paths.at(name), &map, i});
    }
  }
  return ParallelFor(items.size(), options_.concurrency, [&](size_t i) -> Status {
    if (stop_) return Status(ErrorCode::kCancelled, "the replicator is stopping");
    const Item& it = items[i];
    std::string key = storage::ChunkKey(it.hash);
    MOAT_ASSIGN_OR_RETURN(auto present, objects_.Head(key));
    if (present) {
      ++chunks_present_;
      return Status::Ok();
    }
    MOAT_ASSIGN_OR_RETURN(std::string data, storage::ReadChunk(*it.path, *it.map, it.index));
    if (storage::Sha256Hex(data) != it.hash) {
      return Internal("chunk " + std::to_string(it.index) + " of " + *it.path +
                      " changed while it was uploaded");
    }
    MOAT_RETURN_IF_ERROR(objects_.Put(key, data));
    ++chunks_uploaded_;
    bytes_uploaded_ += data.size();
    return Status::Ok();
  });
}

Status SnapshotReplicator::Upload(const std::string& key, const std::string& dir) {
  auto t0 = Clock::now();
  MOAT_ASSIGN_OR_RETURN(bool begun,
                        db_.BeginSnapshotUpload(key, NowMs(), options_.sweep_stale.count()));
  if (!begun) {
    MOAT_ASSIGN_OR_RETURN(auto rec, db_.GetStoredSnapshot(key));
    if (!rec || rec->state == "deleting" || rec->state == "uploaded") {
      return NotFound("snapshot " + key + " needs no upload");
    }
    return Status(ErrorCode::kAborted, "a storage sweep runs");
  }
  // From here on the record is `uploading`: every way out but success puts it back to
  // local-only (a later try resumes it), also when a call to the store fails on the way.
  bool settled = false;
  auto fail = [&](const Status& s) {
    Status noted = db_.FailSnapshotUpload(key, s.ToString());
    if (!noted.ok())
      LogWarn("replicator.record_failed", {{"key", key}, {"error", noted.ToString()}});
    settled = true;
    return s;
  };
  Cleanup unclaim([&] {
    if (!settled) (void)db_.FailSnapshotUpload(key, "the upload was interrupted");
  });
  auto m = agent::ReadManifest(dir);
  if (!m.ok()) {
    // Gone (resumed, deleted) before it was uploaded: nothing to upload any more.
    auto rec = db_.GetStoredSnapshot(key);
    (void)fail(m.status());
    if (rec.ok() && *rec) (void)db_.MarkStoredSnapshotsDeleting((*rec)->kind, (*rec)->owner_id);
    return NotFound("snapshot " + key + ": " + m.status().ToString());
  }
  std::map<std::string, std::string> paths;
  auto maps = ChunkSnapshot(dir, *m, &paths);
  if (!maps.ok()) return fail(maps.status());
  if (Status put = PutMissingChunks(*maps, paths); !put.ok()) return fail(put);
  auto rec = db_.GetStoredSnapshot(key);
  if (!rec.ok()) return fail(rec.status());
  storage::RemoteManifest rm;
  rm.snapshot_id = key;
  rm.kind = *rec ? (*rec)->kind : m->kind;
  rm.origin_host = options_.host_id;
  rm.created_unix_ms = NowMs();
  rm.meta = PortableMeta(*m);
  rm.files = *maps;
  if (Status put = objects_.Put(storage::ManifestKey(key), storage::EncodeRemoteManifest(rm));
      !put.ok()) {
    return fail(put);
  }
  int64_t bytes = 0, nonzero = 0;
  for (const auto& [name, map] : rm.files) {
    bytes += static_cast<int64_t>(map.size);
    nonzero += static_cast<int64_t>(map.NonZeroBytes());
  }
  auto finish = db_.FinishSnapshotUpload(key, NowMs(), bytes, nonzero);
  if (!finish.ok()) return fail(finish.status());
  settled = true;
  if (!*finish) {
    // Deleted while it uploaded: its manifest goes too (the sweep takes the chunks).
    (void)objects_.Delete(storage::ManifestKey(key));
    return NotFound("snapshot " + key + " was deleted while it was uploaded");
  }
  ++uploads_;
  LogInfo(
      "replicator.uploaded",
      {{"key", key},
       {"bytes", bytes},
       {"nonzero_bytes", nonzero},
       {"ms",
        static_cast<long>(
            std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count())}});
  return Status::Ok();
}

Status SnapshotReplicator::UploadNow(const std::string& kind, const std::string& owner_id,
                                     const std::string& key, const std::string& dir) {
  api::store::StoredSnapshotRecord rec{.key = key,
                                       .kind = kind,
                                       .owner_id = owner_id,
                                       .host_id = options_.host_id,
                                       .state = "local-only",
                                       .created_at_ms = NowMs()};
  // Written() may have recorded and queued it already (a named snapshot): then this upload
  // and the queued one race for BeginSnapshotUpload, and whichever loses sees it uploaded.
  if (Status s = db_.InsertStoredSnapshot(rec); !s.ok() && s.code() != ErrorCode::kAlreadyExists) {
    return s;
  }
  // Within the control plane's patience for a call to a host (120 s): a fork it gave up on
  // must not go on uploading.
  auto deadline = Clock::now() + std::chrono::seconds(90);
  for (int attempt = 0;; ++attempt) {
    Status s = Upload(key, dir);
    if (s.ok()) return s;
    MOAT_ASSIGN_OR_RETURN(auto now, db_.GetStoredSnapshot(key));
    if (now && now->state == "uploaded") return Status::Ok();
    bool busy = s.code() == ErrorCode::kAborted || (now && now->state == "uploading");
    if (Clock::now() > deadline || (!busy && attempt >= 2)) return s;
    std::this_thread::sleep_for(std::chrono::milliseconds(busy ? 200 : 500));
  }
}

Result<storage::RemoteManifest> SnapshotReplicator::FetchManifest(const std::string& key) {
  if (!storage::IsValidSnapshotKeyId(key)) return InvalidArgument("bad snapshot key " + key);
  std::string cached = options_.data_dir + "/store-cache/" + key + "/manifest.json";
  auto text = ReadFile(cached);
  bool from_store = !text.ok();
  if (from_store) {
    text = objects_.Get(storage::ManifestKey(key));
    ++restore_gets_;
    if (!text.ok()) {
      return text.status().Annotate("snapshot " + key + " in " + objects_.Describe());
    }
  }
  auto rm = storage::DecodeRemoteManifest(*text);
  if (!rm.ok()) return rm.status().Annotate("snapshot " + key + "'s manifest");
  if (rm->snapshot_id != key) {
    return InvalidArgument("snapshot " + key + "'s manifest names " + rm->snapshot_id);
  }
  // Cached only once valid: a bad one cached would be served to every later restore here, even
  // after the store has a good one again.
  if (from_store) {
    MOAT_RETURN_IF_ERROR(MakeDirs(options_.data_dir + "/store-cache/" + key, 0711));
    MOAT_RETURN_IF_ERROR(WriteFileAtomic(cached, *text, 0600));  // names env vars
  }
  return rm;
}

Status SnapshotReplicator::Assemble(const storage::ChunkMap& map, const std::string& dest) {
  // A temporary name of this download's own: two restores of one snapshot (or of two snapshots
  // on one base disk) may download the same file at once; the first rename wins and the other
  // finds the file there.
  std::string tmp = dest + ".part-XXXXXX";
  UniqueFd fd(::mkostemp(tmp.data(), O_CLOEXEC));
  if (!fd) return ErrnoError("mkostemp(" + tmp + ")");
  // Root's only: a sandbox's disk overlay and device state are its user's data. What others must
  // read is opened up by the caller (a base disk; a memory file, to the sandboxes' group).
  if (::fchmod(fd.get(), 0600) < 0) return ErrnoError("fchmod(" + tmp + ")");
  Cleanup remove([&] { (void)::unlink(tmp.c_str()); });
  if (::ftruncate(fd.get(), static_cast<off_t>(map.size)) < 0) {
    return ErrnoError("ftruncate(" + tmp + ")");
  }
  MOAT_RETURN_IF_ERROR(
      ParallelFor(map.chunks.size(), options_.concurrency, [&](size_t i) -> Status {
        if (!map.chunks[i]) return Status::Ok();  // a hole
        const std::string& hash = *map.chunks[i];
        ++restore_gets_;
        MOAT_ASSIGN_OR_RETURN(std::string data, objects_.Get(storage::ChunkKey(hash)));
        if (data.size() != map.ChunkLength(i) || storage::Sha256Hex(data) != hash) {
          return Internal("chunk " + hash + " in " + objects_.Describe() +
                          " is not what its name says");
        }
        restore_bytes_ += data.size();
        off_t at = static_cast<off_t>(i * storage::kChunkSize);
        for (size_t done = 0; done < data.size();) {
          ssize_t n = ::pwrite(fd.get(), data.data() + done, data.size() - done,
                               at + static_cast<off_t>(done));
          if (n < 0) return ErrnoError("pwrite(" + tmp + ")");
          done += static_cast<size_t>(n);
        }
        return Status::Ok();
      }));
  if (::fsync(fd.get()) < 0) return ErrnoError("fsync(" + tmp + ")");
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, dest.c_str(), RENAME_NOREPLACE) < 0) {
    if (errno == EEXIST) return Status::Ok();  // another download of the same bytes won
    return ErrnoError("rename(" + tmp + ")");
  }
  remove.Cancel();
  return Status::Ok();
}

Result<std::string> SnapshotReplicator::CachedFile(const std::string& key, const std::string& name,
                                                   const storage::ChunkMap& map) {
  std::string path = options_.data_dir + "/store-cache/" + key + "/" + name;
  if (PathExists(path)) return path;
  MOAT_RETURN_IF_ERROR(MakeDirs(options_.data_dir + "/store-cache/" + key, 0711));
  MOAT_RETURN_IF_ERROR(Assemble(map, path));
  return path;
}

Result<std::string> SnapshotReplicator::LocalBase(const storage::ChunkMap& map) {
  std::string described = std::to_string(map.size);
  for (const auto& h : map.chunks) described += "/" + h.value_or("0");
  std::string digest = storage::Sha256Hex(described);
  std::string cached = options_.data_dir + "/store-cache/bases/" + digest + "/disk.raw";
  if (PathExists(cached)) return cached;
  // This host's own templates: a base disk with the very same chunks serves (the same guest
  // image gives every host the same bytes).
  {
    std::lock_guard lock(base_mu_);
    for (const auto& [path, entry] : bases_) {
      if (entry.map == map && PathExists(path)) return path;
    }
  }
  std::string tmpls = options_.data_dir + "/templates";
  for (const auto& name : DirNames(tmpls)) {
    for (const auto& build : DirNames(tmpls + "/" + name)) {
      std::string path = tmpls + "/" + name + "/" + build + "/disk.raw";
      if (build[0] == '.' || !PathExists(path)) continue;
      struct stat st {};
      if (::stat(path.c_str(), &st) < 0 || static_cast<uint64_t>(st.st_size) != map.size) continue;
      bool known;
      {
        std::lock_guard lock(base_mu_);
        known = bases_.count(path) > 0;
      }
      if (known) continue;
      auto own = storage::ChunkFile(path);
      if (!own.ok()) continue;
      int64_t mtime = st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
      {
        std::lock_guard lock(base_mu_);
        bases_[path] = {static_cast<uint64_t>(st.st_size), mtime, *own};
      }
      if (*own == map) return path;
    }
  }
  MOAT_RETURN_IF_ERROR(MakeDirs(options_.data_dir + "/store-cache/bases/" + digest, 0755));
  MOAT_RETURN_IF_ERROR(Assemble(map, cached));
  ::chmod(cached.c_str(), 0644);
  return cached;
}

std::vector<uint32_t> SnapshotReplicator::Trace(const std::string& key,
                                                const storage::RemoteManifest& rm, bool may_fetch) {
  if (!rm.prefetch.empty()) return rm.prefetch;
  std::string cached = options_.data_dir + "/store-cache/" + key + "/trace.json";
  auto text = ReadFile(cached);
  if (!text.ok()) {
    if (!may_fetch) return {};
    auto got = objects_.Get(TraceKey(key));
    ++restore_gets_;
    if (!got.ok()) return {};  // none recorded yet (or unreachable: no prefetch this time)
    text = *got;
    (void)WriteFileAtomic(cached, *text, 0644);
  }
  std::vector<uint32_t> out;
  // Another host's upload: bounded before it is parsed (at most one entry per chunk).
  if (text->size() > (uint64_t{1} << 20) || JsonDepth(*text, 2) < 0) return {};
  try {
    auto j = nlohmann::json::parse(*text);
    size_t chunks = rm.files.count("mem") ? rm.files.at("mem").chunks.size() : 0;
    std::set<uint32_t> seen;
    for (const auto& v : j) {
      if (!v.is_number_unsigned() || v.get<uint64_t>() > UINT32_MAX) return {};
      uint32_t i = v.get<uint32_t>();
      if (i >= chunks || !seen.insert(i).second) return {};
      out.push_back(i);
    }
  } catch (const nlohmann::json::exception&) {
    return {};
  }
  return out;
}

Status SnapshotReplicator::LayOut(const std::string& key, const std::string& tmp, bool lazy_memory,
                                  const std::string& final_dir) {
  MOAT_ASSIGN_OR_RETURN(storage::RemoteManifest rm, FetchManifest(key));
  MOAT_ASSIGN_OR_RETURN(agent::SnapshotManifest m, agent::ManifestFromJson(rm.meta));
  // Whatever names a path of the host that wrote it means nothing here, and a manifest from the
  // store (anyone who can write the bucket) must never point this host's VMs at its files.
  m.memory_path.clear();
  m.base_disk.clear();
  // Sizes the restore will write to this host's disk: bounded by what the snapshot is.
  uint64_t ram = m.memory_mib << 20;
  for (const auto& [name, map] : rm.files) {
    uint64_t limit = name == "mem"     ? ram
                     : name == "state" ? ram + (uint64_t{256} << 20)
                                       : storage::kMaxRemoteFileBytes;
    if (map.size > limit) {
      return InvalidArgument("snapshot " + key + ": its " + name + " is " +
                             std::to_string(map.size) + " bytes, more than the " +
                             std::to_string(limit) + " it can be");
    }
  }
  agent::SnapshotFiles f(tmp);
  for (const char* name : {"state", "disk.qcow2"}) {
    auto it = rm.files.find(name);
    if (it == rm.files.end()) {
      if (std::string(name) == "disk.qcow2") {
        return InvalidArgument("snapshot " + key + " has no disk overlay");
      }
      continue;
    }
    MOAT_ASSIGN_OR_RETURN(std::string cached, CachedFile(key, name, it->second));
    MOAT_RETURN_IF_ERROR(agent::CopyFile(cached, tmp + "/" + name));
    // As a local bake or pause leaves them: a template's readable, a sandbox's root's only (the
    // VMM gets the state as an fd and the overlay as its own copy).
    ::chmod((tmp + "/" + name).c_str(), m.kind == "template" ? 0644 : 0600);
  }
  if (auto it = rm.files.find("disk.raw"); it != rm.files.end()) {
    if (m.kind == "template") {
      // A template owns its base disk (its own copy, as a bake makes).
      MOAT_ASSIGN_OR_RETURN(std::string base, LocalBase(it->second));
      if (::link(base.c_str(), (tmp + "/disk.raw").c_str()) < 0) {
        MOAT_RETURN_IF_ERROR(agent::CopyFile(base, tmp + "/disk.raw"));
      }
      ::chmod((tmp + "/disk.raw").c_str(), 0644);
      m.base_disk = final_dir + "/disk.raw";
    } else {
      MOAT_ASSIGN_OR_RETURN(m.base_disk, LocalBase(it->second));
    }
  } else {
    return InvalidArgument("snapshot " + key + " has no base disk");
  }
  bool has_memory = m.memory_file || m.kind == "template";
  if (auto it = rm.files.find("mem"); it != rm.files.end() && has_memory) {
    if (lazy_memory && options_.memfs != nullptr) {
      memfs::MemfsFileSpec spec{
          .name = key, .chunks = it->second, .prefetch = Trace(key, rm), .fill = true};
      MOAT_RETURN_IF_ERROR(memfs::WriteMemfsFile(options_.memfs_control, spec));
      MOAT_RETURN_IF_ERROR(options_.memfs->EnsureRunning());
      m.memory_path = options_.memfs->PathOf(key);
    } else {
      // Whole (a template, used by every clone for as long as it exists; or no memfs).
      MOAT_RETURN_IF_ERROR(Assemble(it->second, f.memory));
      // The VMMs (unprivileged, in the sandboxes' group) map it; nobody else reads it.
      MOAT_RETURN_IF_ERROR(agent::GiveMemoryFileToSandboxes(f.memory));
    }
  } else if (has_memory) {
    return InvalidArgument("snapshot " + key + " has no memory file");
  }
  ++restores_;
  return agent::WriteManifest(tmp, m);
}

namespace {

// A restore from the store that failed says so as unavailable (the store, or what it holds, let
// it down): never not_found or invalid_argument, which callers would read as "no such sandbox"
// or "a bad request" about something the client did not send.
Status AsStoreFailure(const Status& s) {
  if (s.ok() || s.code() == ErrorCode::kAlreadyExists) return s;
  if (s.code() == ErrorCode::kNotFound || s.code() == ErrorCode::kInvalidArgument ||
      s.code() == ErrorCode::kInternal || s.code() == ErrorCode::kPermissionDenied) {
    return Unavailable("restoring from the snapshot store failed: " + s.message());
  }
  return s;
}

}  // namespace

Status SnapshotReplicator::MaterializePaused(const std::string& key,
                                             const std::string& sandbox_id) {
  return AsStoreFailure(MaterializePausedImpl(key, sandbox_id));
}

std::string SnapshotReplicator::StoreKeyOfPaused(const std::string& sandbox_id) {
  auto key = ReadFile(options_.data_dir + "/snapshots/" + sandbox_id + "/store-key");
  return key.ok() ? *key : "";
}

Status SnapshotReplicator::MaterializeNamed(const std::string& key,
                                            const std::string& snapshot_id) {
  return AsStoreFailure(MaterializeNamedImpl(key, snapshot_id));
}

Status SnapshotReplicator::MaterializePausedImpl(const std::string& key,
                                                 const std::string& sandbox_id) {
  auto t0 = Clock::now();
  std::string snapshots = options_.data_dir + "/snapshots";
  std::string dir = snapshots + "/" + sandbox_id;
  if (PathExists(dir)) return Status(ErrorCode::kAlreadyExists, dir + " exists");
  MOAT_ASSIGN_OR_RETURN(std::string tmp, MakeTempDir(snapshots, ".fetch-"));
  Cleanup remove([&] { (void)RemoveTree(tmp); });
  ::chmod(tmp.c_str(), 0711);
  MOAT_RETURN_IF_ERROR(LayOut(key, tmp, /*lazy_memory=*/true, dir));
  MOAT_ASSIGN_OR_RETURN(agent::SnapshotManifest m, agent::ReadManifest(tmp));
  if (m.kind != "paused" || m.sandbox_id != sandbox_id) {
    return InvalidArgument("snapshot " + key + " is not sandbox " + sandbox_id + "'s pause");
  }
  // Which pause this layout is: a resume naming another one discards it (StoreKeyOfPaused).
  MOAT_RETURN_IF_ERROR(WriteFileAtomic(tmp + "/store-key", key, 0600));
  if (::rename(tmp.c_str(), dir.c_str()) < 0) return ErrnoError("rename(" + tmp + ")");
  remove.Cancel();
  LogInfo(
      "replicator.materialized",
      {{"key", key},
       {"sandbox", sandbox_id},
       {"ms",
        static_cast<long>(
            std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count())}});
  return Status::Ok();
}

Status SnapshotReplicator::MaterializeNamedImpl(const std::string& key,
                                                const std::string& snapshot_id) {
  std::string snapshots = options_.data_dir + "/snapshots";
  std::string dir = snapshots + "/" + snapshot_id;
  if (PathExists(dir + "/manifest.json")) {
    // Laid out before: its memory file must be served now too (memfs restarted or the host
    // rebooted since: the control directory describes one boot only).
    auto m = agent::ReadManifest(dir);
    if (m.ok() && !m->memory_path.empty() && options_.memfs != nullptr) {
      // Without a request to the store: the control file is rewritten only when it is gone, from
      // the cached manifest (and a trace only if one is cached).
      if (!memfs::ReadMemfsFile(options_.memfs_control, key).ok()) {
        MOAT_ASSIGN_OR_RETURN(storage::RemoteManifest rm, FetchManifest(key));
        auto it = rm.files.find("mem");
        if (it == rm.files.end()) {
          return InvalidArgument("snapshot " + key + " has no memory file");
        }
        memfs::MemfsFileSpec spec{.name = key,
                                  .chunks = it->second,
                                  .prefetch = Trace(key, rm, /*may_fetch=*/false),
                                  .fill = true};
        MOAT_RETURN_IF_ERROR(memfs::WriteMemfsFile(options_.memfs_control, spec));
      }
      MOAT_RETURN_IF_ERROR(options_.memfs->EnsureRunning());
    }
    return Status::Ok();
  }
  MOAT_ASSIGN_OR_RETURN(std::string tmp, MakeTempDir(snapshots, ".fetch-"));
  Cleanup remove([&] { (void)RemoveTree(tmp); });
  ::chmod(tmp.c_str(), 0711);
  MOAT_RETURN_IF_ERROR(LayOut(key, tmp, /*lazy_memory=*/true, dir));
  MOAT_ASSIGN_OR_RETURN(agent::SnapshotManifest m, agent::ReadManifest(tmp));
  if (m.kind != "named") return InvalidArgument("snapshot " + key + " is not a named snapshot");
  if (::rename(tmp.c_str(), dir.c_str()) < 0) {
    if (PathExists(dir + "/manifest.json")) return Status::Ok();  // another create laid it out
    return ErrnoError("rename(" + tmp + ")");
  }
  remove.Cancel();
  return Status::Ok();
}

Result<bool> SnapshotReplicator::FetchTemplate(const std::string& name, const std::string& build,
                                               const std::string& dir) {
  std::string key = TemplateKey(name, build);
  MOAT_ASSIGN_OR_RETURN(auto rec, db_.GetStoredSnapshot(key));
  if (!rec || rec->state != "uploaded") return false;
  auto t0 = Clock::now();
  std::string final_dir = dir.substr(0, dir.rfind('/')) + "/" + build;
  MOAT_RETURN_IF_ERROR(LayOut(key, dir, /*lazy_memory=*/false, final_dir));
  LogInfo(
      "replicator.template_fetched",
      {{"template", name},
       {"key", key},
       {"ms",
        static_cast<long>(
            std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count())}});
  return true;
}

void SnapshotReplicator::DeleteMarked() {
  auto marked = db_.ListStoredSnapshots({.state = "deleting", .limit = 1000});
  if (!marked.ok()) return;
  auto now = Clock::now();
  std::map<std::string, Clock::time_point> seen;
  for (const auto& rec : *marked) {
    // A released snapshot's objects stay for delete_grace after this process first saw it
    // released: a host that restored it moments ago may still be paging it in.
    auto it = deleting_seen_.find(rec.key);
    Clock::time_point since = it == deleting_seen_.end() ? now : it->second;
    seen[rec.key] = since;
    if (now - since < options_.delete_grace) continue;
    Status a = objects_.Delete(storage::ManifestKey(rec.key));
    Status b = objects_.Delete(TraceKey(rec.key));
    if (!a.ok() || !b.ok()) continue;  // next round (the store is unreachable, or refuses)
    if (db_.DeleteStoredSnapshot(rec.key).ok()) ++deleted_;
    (void)RemoveTree(options_.data_dir + "/store-cache/" + rec.key);
    // A memory file memfs presents for it: VMs that map it keep it (their chunks are local by
    // now); no new restore finds it.
    if (!options_.memfs_control.empty()) {
      (void)memfs::RemoveMemfsFile(options_.memfs_control, rec.key);
    }
    if (rec.host_id == options_.host_id) {
      (void)::unlink((options_.data_dir + "/uploads/" + rec.key).c_str());
    }
    seen.erase(rec.key);
  }
  deleting_seen_ = std::move(seen);
}

void SnapshotReplicator::UploadTraces() {
  if (options_.memfs == nullptr || options_.memfs_control.empty()) return;
  for (const auto& entry : DirNames(options_.memfs_control)) {
    const std::string suffix = ".trace";
    if (entry.size() <= suffix.size() ||
        entry.compare(entry.size() - suffix.size(), suffix.size(), suffix) != 0) {
      continue;
    }
    std::string key = entry.substr(0, entry.size() - suffix.size());
    if (traces_uploaded_.count(key) || !storage::IsValidSnapshotKeyId(key)) continue;
    auto trace = memfs::ReadMemfsTrace(options_.memfs_control, key);
    if (!trace.ok()) continue;
    // The first trace of a snapshot stays: later restores are warmed by it, so theirs would
    // only record what prefetch already brought.
    auto present = objects_.Head(TraceKey(key));
    if (!present.ok()) continue;
    if (!*present && !objects_.Put(TraceKey(key), nlohmann::json(*trace).dump()).ok()) continue;
    traces_uploaded_.insert(key);
    // Later restores here read it locally (no request to the store).
    if (PathExists(options_.data_dir + "/store-cache/" + key)) {
      (void)WriteFileAtomic(options_.data_dir + "/store-cache/" + key + "/trace.json",
                            nlohmann::json(*trace).dump(), 0644);
    }
  }
}

Result<int64_t> SnapshotReplicator::Sweep() {
  MOAT_ASSIGN_OR_RETURN(bool mine, db_.BeginStorageSweep(NowMs(), options_.sweep_stale.count()));
  if (!mine) return FailedPrecondition("an upload or another sweep is in progress");
  Cleanup end([&] { (void)db_.EndStorageSweep(); });
  // Mark: every chunk a manifest of a live record references. A record without its manifest
  // in the store is local-only (its chunks are not all there, and not all of those there are
  // its): the chunks it will need are put again by its upload, which cannot begin until the
  // sweep ends.
  std::set<std::string> live;
  // Deleting ones count until their manifest is gone: that waits out delete_grace, so a host
  // still paging in a snapshot that was just released (a resumed sandbox's) finds its chunks.
  for (const char* state : {"uploaded", "local-only", "uploading", "deleting"}) {
    MOAT_ASSIGN_OR_RETURN(auto recs, db_.ListStoredSnapshots({.state = state, .limit = 1000000}));
    for (const auto& rec : recs) {
      auto text = objects_.Get(storage::ManifestKey(rec.key));
      if (!text.ok()) {
        if (text.status().code() == ErrorCode::kNotFound && rec.state != "uploaded") continue;
        if (text.status().code() == ErrorCode::kNotFound) {
          // Uploaded but its manifest is not there: sweeping now could take chunks it needs.
          return FailedPrecondition("sweep: snapshot " + rec.key +
                                    " is recorded uploaded but its manifest is missing");
        }
        return text.status().Annotate("sweep: manifest of " + rec.key);
      }
      MOAT_ASSIGN_OR_RETURN(auto rm, storage::DecodeRemoteManifest(*text));
      for (const auto& [name, map] : rm.files) {
        for (const auto& h : map.chunks) {
          if (h) live.insert(*h);
        }
      }
    }
  }
  MOAT_ASSIGN_OR_RETURN(auto objects, objects_.List("chunks/"));
  int64_t swept = 0;
  for (const auto& o : objects) {
    if (stop_) return Status(ErrorCode::kCancelled, "the replicator is stopping");
    std::string hash = o.key.substr(std::string("chunks/").size());
    if (live.count(hash)) continue;
    MOAT_RETURN_IF_ERROR(objects_.Delete(o.key));
    ++swept;
  }
  // Manifests of snapshots no record names (a record deleted before its objects were).
  MOAT_ASSIGN_OR_RETURN(auto manifests, objects_.List("snapshots/"));
  for (const auto& o : manifests) {
    std::string rest = o.key.substr(std::string("snapshots/").size());
    std::string key = rest.substr(0, rest.find('/'));
    MOAT_ASSIGN_OR_RETURN(auto rec, db_.GetStoredSnapshot(key));
    if (!rec) (void)objects_.Delete(o.key);
  }
  ++sweeps_;
  chunks_swept_ += static_cast<uint64_t>(swept);
  LogInfo("replicator.swept", {{"chunks_live", static_cast<long>(live.size())},
                               {"chunks_deleted", static_cast<long>(swept)}});
  return swept;
}

void SnapshotReplicator::MaintenanceLoop() {
  auto next_sweep = Clock::now() + options_.sweep_interval;
  std::unique_lock lock(mu_);
  while (!stopping_) {
    cv_.wait_for(lock, options_.maintenance_interval);
    if (stopping_) break;
    lock.unlock();
    DeleteMarked();
    UploadTraces();
    // For operators and tests on this host: DATA_DIR/store-cache/stats.json.
    (void)WriteFileAtomic(options_.data_dir + "/store-cache/stats.json", StatsJson().dump(), 0644);
    if (options_.sweep_interval.count() > 0 && Clock::now() >= next_sweep) {
      auto swept = Sweep();
      if (!swept.ok() && swept.status().code() != ErrorCode::kFailedPrecondition) {
        LogWarn("replicator.sweep_failed", {{"error", swept.status().ToString()}});
      }
      next_sweep = Clock::now() + options_.sweep_interval;
    }
    lock.lock();
  }
}

bool SnapshotReplicator::WaitIdle(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, timeout, [&] { return queue_.empty() && running_ == 0; });
}

ReplicatorStats SnapshotReplicator::stats() {
  ReplicatorStats s;
  s.uploads = uploads_;
  s.upload_failures = upload_failures_;
  s.chunks_uploaded = chunks_uploaded_;
  s.bytes_uploaded = bytes_uploaded_;
  s.chunks_present = chunks_present_;
  s.restores = restores_;
  s.restore_bytes = restore_bytes_;
  s.restore_gets = restore_gets_;
  s.deleted = deleted_;
  s.sweeps = sweeps_;
  s.chunks_swept = chunks_swept_;
  std::lock_guard lock(mu_);
  s.backlog = queue_.size() + running_;
  return s;
}

nlohmann::json SnapshotReplicator::StatsJson() {
  ReplicatorStats s = stats();
  auto& o = objects_.stats();
  return {{"uploads", s.uploads},
          {"uploadFailures", s.upload_failures},
          {"uploadBacklog", s.backlog},
          {"chunksUploaded", s.chunks_uploaded},
          {"bytesUploaded", s.bytes_uploaded},
          {"chunksPresent", s.chunks_present},
          {"restores", s.restores},
          {"restoreBytes", s.restore_bytes},
          {"restoreGets", s.restore_gets},
          {"deleted", s.deleted},
          {"sweeps", s.sweeps},
          {"chunksSwept", s.chunks_swept},
          {"store",
           {{"gets", o.gets.load()},
            {"getBytes", o.get_bytes.load()},
            {"puts", o.puts.load()},
            {"putBytes", o.put_bytes.load()},
            {"heads", o.heads.load()},
            {"deletes", o.deletes.load()},
            {"retries", o.retries.load()},
            {"failures", o.failures.load()}}}};
}

}  // namespace moat::host
