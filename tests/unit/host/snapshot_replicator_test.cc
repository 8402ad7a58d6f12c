// SnapshotReplicator (docs/snapshots.md "Across hosts") with real parts and no VM: a
// LocalObjectStore in a temp dir is the object store, a SQLite file the records, and snapshot
// directories are written the way the agent writes them (manifest.json last, `state`,
// `disk.qcow2`, a sparse `mem`, a base disk elsewhere). Two replicators with their own data
// dirs over one store and one database play two hosts. No memfs: a restore downloads the RAM
// whole. Needs no root.
#include "host/snapshot_replicator.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "agent/snapshot.h"
#include "agent/template_store.h"
#include "api/store/sqlite_store.h"
#include "common/fs.h"
#include "common/unique_fd.h"
#include "storage/chunking.h"
#include "storage/local_object_store.h"
#include "storage/remote_manifest.h"
#include "storage/sigv4.h"

namespace moat::host {
namespace {

using namespace std::chrono_literals;
using storage::kChunkSize;

// The real LocalObjectStore, with failures on demand: while `failing_puts`, every Put after the
// next `puts_before_failure`, and while `fail_heads` every Head, answer unavailable, as an
// unreachable S3 server does after its retries.
class FlakyStore : public storage::ObjectStore {
 public:
  explicit FlakyStore(storage::ObjectStore& inner) : inner_(inner) {}

  Status Put(const std::string& key, std::string_view body) override {
    if (failing_puts && puts_before_failure.fetch_sub(1) <= 0) {
      return Unavailable("flaky store: put " + key + " failed on purpose");
    }
    return inner_.Put(key, body);
  }
  Result<std::string> Get(const std::string& key) override { return inner_.Get(key); }
  Result<std::string> GetRange(const std::string& key, uint64_t offset, uint64_t length) override {
    return inner_.GetRange(key, offset, length);
  }
  Result<std::optional<uint64_t>> Head(const std::string& key) override {
    if (fail_heads) return Unavailable("flaky store: head " + key + " failed on purpose");
    return inner_.Head(key);
  }
  Status Delete(const std::string& key) override { return inner_.Delete(key); }
  Result<std::vector<storage::ObjectInfo>> List(const std::string& prefix) override {
    return inner_.List(prefix);
  }
  std::string Describe() const override { return "flaky " + inner_.Describe(); }

  std::atomic<bool> failing_puts{false};
  std::atomic<int> puts_before_failure{0};
  std::atomic<bool> fail_heads{false};

 private:
  storage::ObjectStore& inner_;
};

// Deterministic bytes with no zero byte: a different `seed`, different bytes.
std::string Pattern(uint64_t seed, size_t size) {
  std::mt19937_64 rng(seed);
  std::string out(size, '\0');
  for (size_t i = 0; i < size; i += 8) {
    uint64_t v = rng() | 0x0101010101010101ULL;
    std::memcpy(out.data() + i, &v, std::min<size_t>(8, size - i));
  }
  return out;
}

// A file of `size` bytes that is a hole except for `regions` (offset -> bytes).
void WriteSparse(const std::string& path, uint64_t size,
                 const std::map<uint64_t, std::string>& regions) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  ASSERT_TRUE(fd) << path << ": " << std::strerror(errno);
  ASSERT_EQ(::ftruncate(fd.get(), static_cast<off_t>(size)), 0) << path;
  for (const auto& [offset, bytes] : regions) {
    ASSERT_EQ(::pwrite(fd.get(), bytes.data(), bytes.size(), static_cast<off_t>(offset)),
              static_cast<ssize_t>(bytes.size()))
        << path;
  }
}

std::string Contents(const std::string& path) {
  auto text = ReadFile(path);
  EXPECT_TRUE(text.ok()) << text.status().ToString();
  return text.ok() ? *text : "";
}

// Sizes of a file's 4 MiB chunks that hold a non-zero byte, counted here without the chunker.
uint64_t NonZeroChunkBytes(const std::string& path) {
  std::string data = Contents(path);
  uint64_t nonzero = 0;
  for (size_t at = 0; at < data.size(); at += kChunkSize) {
    std::string_view chunk = std::string_view(data).substr(at, kChunkSize);
    if (chunk.find_first_not_of('\0') != std::string_view::npos) nonzero += chunk.size();
  }
  return nonzero;
}

uint64_t FileSize(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return static_cast<uint64_t>(st.st_size);
}

// What one snapshot directory holds. `mem` is 6 chunks and 1 MiB: chunks 0, 2 and the partial
// last one (6) hold data, chunk 4 is written as explicit zeros, 1, 3 and 5 are holes.
struct SnapshotSpec {
  std::string sandbox_id;
  uint64_t state_seed = 1;
  uint64_t overlay_seed = 2;
  uint64_t mem_seed = 3;  // of chunks 0 and 6
  uint64_t mem_chunk2_seed = 4;
};

constexpr uint64_t kMemSize = 6 * kChunkSize + (1 << 20);

bool WaitFor(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

int64_t UnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::set<std::string> Hashes(const storage::RemoteManifest& m) {
  std::set<std::string> out;
  for (const auto& [name, map] : m.files) {
    for (const auto& h : map.chunks) {
      if (h) out.insert(*h);
    }
  }
  return out;
}

// A restore that failed, saying why. Which code it answers with is the caller's contract, not
// asserted here (a store that let a restore down may be reported as unavailable whatever the
// cause); that it failed, and that it is not mistaken for "already laid out", is.
void ExpectFailed(const Status& s, const std::string& says) {
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.code(), ErrorCode::kAlreadyExists) << s.ToString();
  EXPECT_NE(s.ToString().find(says), std::string::npos)
      << "expected \"" << says << "\" in " << s.ToString();
}

class SnapshotReplicatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto root = MakeTempDir("/tmp", "moat-replicator-test.");
    ASSERT_TRUE(root.ok()) << root.status().ToString();
    root_ = *root;
    auto db = api::store::SqliteStore::Open(root_ + "/moat.db");
    ASSERT_TRUE(db.ok()) << db.status().ToString();
    db_ = std::move(*db);
    auto local = storage::LocalObjectStore::Make(root_ + "/objects");
    ASSERT_TRUE(local.ok()) << local.status().ToString();
    local_ = std::move(*local);
    objects_ = std::make_unique<FlakyStore>(*local_);
    // The base disk the overlays sit on: 3.5 chunks, the second a hole.
    ASSERT_TRUE(MakeDirs(root_ + "/images").ok());
    base_ = root_ + "/images/disk.raw";
    WriteSparse(base_, 3 * kChunkSize + (512 << 10),
                {{0, Pattern(100, kChunkSize)},
                 {2 * kChunkSize, Pattern(101, kChunkSize)},
                 {3 * kChunkSize, Pattern(102, 512 << 10)}});
  }

  void TearDown() override {
    hosts_.clear();  // before the store and database they use
    objects_.reset();
    local_.reset();
    db_.reset();
    if (!root_.empty()) {
      EXPECT_TRUE(RemoveTree(root_).ok());
    }
  }

  std::string DataDir(const std::string& host) { return root_ + "/" + host; }

  ReplicatorOptions Options(const std::string& host) {
    ReplicatorOptions o;
    o.host_id = host;
    o.data_dir = DataDir(host);
    o.retry_base = 20ms;
    o.maintenance_interval = 50ms;
    o.sweep_interval = std::chrono::seconds(0);
    o.delete_grace = 1s;
    return o;
  }

  SnapshotReplicator* StartHost(ReplicatorOptions options) {
    std::string snapshots = options.data_dir + "/snapshots";
    EXPECT_TRUE(MakeDirs(snapshots, 0711).ok());
    auto r = SnapshotReplicator::Start(*objects_, *db_, std::move(options));
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (!r.ok()) return nullptr;
    hosts_.push_back(std::move(*r));
    return hosts_.back().get();
  }
  SnapshotReplicator* StartHost(const std::string& host) { return StartHost(Options(host)); }

  // Writes a paused sandbox's snapshot as the agent does, under `host`'s data dir: its files,
  // then the manifest. Its directory.
  std::string WriteSnapshot(const std::string& host, const SnapshotSpec& spec) {
    std::string dir = DataDir(host) + "/snapshots/" + spec.sandbox_id;
    EXPECT_TRUE(MakeDirs(dir, 0711).ok());
    agent::SnapshotFiles f(dir);
    WriteSparse(f.state, 64 << 10, {{0, Pattern(spec.state_seed, 64 << 10)}});
    WriteSparse(f.overlay, 384 << 10, {{0, Pattern(spec.overlay_seed, 384 << 10)}});
    WriteSparse(f.memory, kMemSize,
                {{0, Pattern(spec.mem_seed, kChunkSize)},
                 {2 * kChunkSize, Pattern(spec.mem_chunk2_seed, kChunkSize)},
                 {4 * kChunkSize, std::string(kChunkSize, '\0')},
                 {6 * kChunkSize, Pattern(spec.mem_seed + 1000, 1 << 20)}});
    agent::SnapshotManifest m;
    m.kind = "paused";
    m.name = spec.sandbox_id;
    m.source = "base";
    m.vcpus = 2;
    m.memory_mib = 512;
    m.accel = "kvm";
    m.base_disk = base_;
    m.created_unix_ms = UnixMs();
    m.sandbox_id = spec.sandbox_id;
    m.memory_file = true;
    m.qemu_version = "10.0.2";
    EXPECT_TRUE(agent::WriteManifest(dir, m).ok());
    return dir;
  }

  // The key of the sandbox's latest pause record ("" if none).
  std::string KeyOf(const std::string& sandbox_id) {
    auto rec = db_->LatestStoredSnapshot("paused", sandbox_id);
    EXPECT_TRUE(rec.ok()) << rec.status().ToString();
    return rec.ok() && rec->has_value() ? (*rec)->key : "";
  }

  std::optional<api::store::StoredSnapshotRecord> Record(const std::string& key) {
    auto rec = db_->GetStoredSnapshot(key);
    EXPECT_TRUE(rec.ok()) << rec.status().ToString();
    return rec.ok() ? *rec : std::nullopt;
  }

  std::string StateOf(const std::string& key) {
    auto rec = Record(key);
    return rec ? rec->state : "";
  }

  // Writes and records a pause on `host`, and waits for its upload. Its key.
  std::string UploadPause(SnapshotReplicator& host, const std::string& host_id,
                          const SnapshotSpec& spec) {
    std::string dir = WriteSnapshot(host_id, spec);
    host.Written("paused", spec.sandbox_id, dir);
    EXPECT_TRUE(host.WaitIdle(30s));
    std::string key = KeyOf(spec.sandbox_id);
    EXPECT_EQ(StateOf(key), "uploaded");
    return key;
  }

  Result<storage::RemoteManifest> StoredManifest(const std::string& key) {
    MOAT_ASSIGN_OR_RETURN(std::string text, local_->Get(storage::ManifestKey(key)));
    return storage::DecodeRemoteManifest(text);
  }

  bool HasObject(const std::string& key) {
    auto size = local_->Head(key);
    EXPECT_TRUE(size.ok()) << size.status().ToString();
    return size.ok() && size->has_value();
  }

  std::set<std::string> ChunkObjects() {
    std::set<std::string> out;
    auto list = local_->List("chunks/");
    EXPECT_TRUE(list.ok()) << list.status().ToString();
    if (!list.ok()) return out;
    for (const auto& o : *list) out.insert(o.key.substr(std::string("chunks/").size()));
    return out;
  }

  // Temporary directories a restore left in a host's DATA_DIR/snapshots.
  std::vector<std::string> FetchLeftovers(const std::string& host) {
    std::vector<std::string> out;
    for (const auto& name : DirNames(DataDir(host) + "/snapshots")) {
      if (name.starts_with(".fetch-")) out.push_back(name);
    }
    return out;
  }

  std::string root_;
  std::string base_;
  std::unique_ptr<api::store::Store> db_;
  std::unique_ptr<storage::LocalObjectStore> local_;
  std::unique_ptr<FlakyStore> objects_;
  std::vector<std::unique_ptr<SnapshotReplicator>> hosts_;
};

TEST_F(SnapshotReplicatorTest, RecordsAPauseLocalOnlyAndUploadsItOnceNoSweepRuns) {
  SnapshotReplicator* a = StartHost("host-a");
  ASSERT_NE(a, nullptr);
  std::string dir = WriteSnapshot("host-a", {.sandbox_id = "sbxa"});
  // A sweep in progress holds the upload back: the record is seen local-only.
  ASSERT_TRUE(*db_->BeginStorageSweep(UnixMs(), 60000));
  a->Written("paused", "sbxa", dir);
  std::string key = KeyOf("sbxa");
  ASSERT_TRUE(key.starts_with("sbxa-")) << key;
  EXPECT_TRUE(storage::IsValidSnapshotKeyId(key));
  auto rec = Record(key);
  ASSERT_TRUE(rec);
  EXPECT_EQ(rec->state, "local-only");
  EXPECT_EQ(rec->kind, "paused");
  EXPECT_EQ(rec->owner_id, "sbxa");
  EXPECT_EQ(rec->host_id, "host-a");
  EXPECT_TRUE(PathExists(DataDir("host-a") + "/uploads/" + key)) << "the queue survives restarts";
  EXPECT_FALSE(a->WaitIdle(200ms)) << "the upload waits for the sweep";
  EXPECT_EQ(StateOf(key), "local-only");

  ASSERT_TRUE(db_->EndStorageSweep().ok());
  ASSERT_TRUE(a->WaitIdle(30s));
  rec = Record(key);
  ASSERT_TRUE(rec);
  EXPECT_EQ(rec->state, "uploaded");
  EXPECT_GT(rec->uploaded_at_ms, 0);
  EXPECT_EQ(rec->attempts, 0);
  EXPECT_FALSE(PathExists(DataDir("host-a") + "/uploads/" + key));

  auto m = StoredManifest(key);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->snapshot_id, key);
  EXPECT_EQ(m->kind, "paused");
  EXPECT_EQ(m->origin_host, "host-a");
  EXPECT_EQ(m->meta.value("baseDisk", "?"), "") << "no path of this host goes to the store";
  EXPECT_EQ(m->meta.value("sandboxId", ""), "sbxa");
  std::set<std::string> names;
  for (const auto& [name, map] : m->files) names.insert(name);
  EXPECT_EQ(names, (std::set<std::string>{"disk.qcow2", "disk.raw", "mem", "state"}));

  agent::SnapshotFiles f(dir);
  std::map<std::string, std::string> paths = {
      {"state", f.state}, {"disk.qcow2", f.overlay}, {"mem", f.memory}, {"disk.raw", base_}};
  int64_t bytes = 0, nonzero = 0;
  for (const auto& [name, path] : paths) {
    const storage::ChunkMap& map = m->files.at(name);
    EXPECT_EQ(map.size, FileSize(path)) << name;
    bytes += static_cast<int64_t>(FileSize(path));
    nonzero += static_cast<int64_t>(NonZeroChunkBytes(path));
  }
  // Holes and the chunk written as zeros are null; every other chunk is in the store, under
  // the hash of its bytes.
  const storage::ChunkMap& mem = m->files.at("mem");
  ASSERT_EQ(mem.chunks.size(), 7u);
  for (size_t i = 0; i < mem.chunks.size(); ++i) {
    bool data = i == 0 || i == 2 || i == 6;
    EXPECT_EQ(mem.chunks[i].has_value(), data) << "mem chunk " << i;
  }
  EXPECT_FALSE(m->files.at("disk.raw").chunks[1]);
  std::string zeros(kChunkSize, '\0');
  EXPECT_FALSE(HasObject(storage::ChunkKey(storage::Sha256Hex(zeros))));
  std::set<std::string> hashes = Hashes(*m);
  for (const auto& h : hashes) {
    auto body = local_->Get(storage::ChunkKey(h));
    ASSERT_TRUE(body.ok()) << "chunk " << h << ": " << body.status().ToString();
    EXPECT_EQ(storage::Sha256Hex(*body), h);
  }
  EXPECT_EQ(ChunkObjects(), hashes) << "nothing else was put";
  EXPECT_EQ(rec->bytes, bytes);
  EXPECT_EQ(rec->nonzero_bytes, nonzero);
  EXPECT_LT(nonzero, bytes);
  ReplicatorStats s = a->stats();
  EXPECT_EQ(s.uploads, 1u);
  EXPECT_EQ(s.chunks_uploaded, hashes.size());
  EXPECT_EQ(s.chunks_present, 0u);
  EXPECT_EQ(s.upload_failures, 0u);
  EXPECT_EQ(s.backlog, 0u);
}

TEST_F(SnapshotReplicatorTest, ASecondSnapshotUploadsOnlyTheChunksThatChanged) {
  SnapshotReplicator* a = StartHost("host-a");
  ASSERT_NE(a, nullptr);
  std::string first = UploadPause(*a, "host-a", {.sandbox_id = "sbxa"});
  auto m1 = StoredManifest(first);
  ASSERT_TRUE(m1.ok()) << m1.status().ToString();
  std::set<std::string> before = ChunkObjects();
  ReplicatorStats s1 = a->stats();

  // Another sandbox of the same template: the same base disk and overlay, other device state,
  // and one chunk of RAM different.
  std::string second =
      UploadPause(*a, "host-a", {.sandbox_id = "sbxb", .state_seed = 11, .mem_chunk2_seed = 44});
  auto m2 = StoredManifest(second);
  ASSERT_TRUE(m2.ok()) << m2.status().ToString();
  std::set<std::string> h1 = Hashes(*m1), h2 = Hashes(*m2);
  std::set<std::string> changed;
  for (const auto& h : h2) {
    if (!h1.count(h)) changed.insert(h);
  }
  EXPECT_EQ(changed.size(), 2u) << "the state and one chunk of RAM";
  std::set<std::string> after = ChunkObjects();
  EXPECT_EQ(after.size(), before.size() + changed.size());
  for (const auto& h : changed) EXPECT_TRUE(after.count(h)) << h;
  ReplicatorStats s2 = a->stats();
  EXPECT_EQ(s2.chunks_uploaded - s1.chunks_uploaded, changed.size());
  EXPECT_EQ(s2.chunks_present - s1.chunks_present, h2.size() - changed.size());
  EXPECT_EQ(s2.bytes_uploaded - s1.bytes_uploaded, (64u << 10) + kChunkSize);
  EXPECT_EQ(StateOf(first), "uploaded") << "another sandbox's pause supersedes nothing";
}

TEST_F(SnapshotReplicatorTest, ARePauseSupersedesTheSandboxsEarlierPause) {
  ReplicatorOptions o = Options("host-a");
  o.delete_grace = std::chrono::hours(1);
  SnapshotReplicator* a = StartHost(o);
  ASSERT_NE(a, nullptr);
  std::string first = UploadPause(*a, "host-a", {.sandbox_id = "sbxa"});
  std::this_thread::sleep_for(5ms);  // keys are the sandbox id and the unix ms
  ASSERT_TRUE(RemoveTree(DataDir("host-a") + "/snapshots/sbxa").ok());
  std::string second = UploadPause(*a, "host-a", {.sandbox_id = "sbxa", .state_seed = 9});
  EXPECT_NE(first, second);
  EXPECT_EQ(StateOf(first), "deleting");
  EXPECT_EQ(StateOf(second), "uploaded");
}

TEST_F(SnapshotReplicatorTest, AFailedUploadStaysLocalOnlyAndIsRetriedUntilItCompletes) {
  ReplicatorOptions o = Options("host-a");
  o.retry_base = 100ms;
  SnapshotReplicator* a = StartHost(o);
  ASSERT_NE(a, nullptr);
  // Two chunks reach the store, then it becomes unreachable.
  objects_->puts_before_failure = 2;
  objects_->failing_puts = true;
  std::string dir = WriteSnapshot("host-a", {.sandbox_id = "sbxa"});
  a->Written("paused", "sbxa", dir);
  std::string key = KeyOf("sbxa");
  ASSERT_FALSE(key.empty());
  ASSERT_TRUE(WaitFor(
      [&] {
        auto rec = Record(key);
        return rec && rec->attempts >= 1 && rec->state == "local-only";
      },
      10s));
  auto rec = Record(key);
  ASSERT_TRUE(rec);
  EXPECT_NE(rec->last_error.find("failed on purpose"), std::string::npos) << rec->last_error;
  EXPECT_FALSE(HasObject(storage::ManifestKey(key)));
  EXPECT_GE(a->stats().upload_failures, 1u);
  EXPECT_GE(a->stats().backlog, 1u);
  EXPECT_TRUE(PathExists(DataDir("host-a") + "/uploads/" + key));

  objects_->failing_puts = false;
  ASSERT_TRUE(a->WaitIdle(30s));
  rec = Record(key);
  ASSERT_TRUE(rec);
  EXPECT_EQ(rec->state, "uploaded");
  EXPECT_GE(rec->attempts, 1);
  auto m = StoredManifest(key);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  for (const auto& h : Hashes(*m)) {
    auto body = local_->Get(storage::ChunkKey(h));
    ASSERT_TRUE(body.ok()) << "chunk " << h << ": " << body.status().ToString();
    EXPECT_EQ(storage::Sha256Hex(*body), h);
  }
  EXPECT_GE(a->stats().chunks_present, 2u) << "the chunks the failed try put are kept";
  EXPECT_FALSE(PathExists(DataDir("host-a") + "/uploads/" + key));
}

TEST_F(SnapshotReplicatorTest, AnUnreachableStoreFailsTheUploadBeforeAnyChunkIsPut) {
  SnapshotReplicator* a = StartHost("host-a");
  ASSERT_NE(a, nullptr);
  objects_->fail_heads = true;
  std::string dir = WriteSnapshot("host-a", {.sandbox_id = "sbxa"});
  a->Written("paused", "sbxa", dir);
  std::string key = KeyOf("sbxa");
  ASSERT_TRUE(WaitFor([&] { return Record(key) && Record(key)->attempts >= 2; }, 10s));
  EXPECT_TRUE(ChunkObjects().empty());
  objects_->fail_heads = false;
  ASSERT_TRUE(a->WaitIdle(30s));
  EXPECT_EQ(StateOf(key), "uploaded");
}

TEST_F(SnapshotReplicatorTest, AnUploadThatWasNotFinishedIsResumedByTheNextProcess) {
  std::string dir = WriteSnapshot("host-a", {.sandbox_id = "sbxa"});
  std::string key;
  {
    // The agent records the pause and stops before the upload could begin (a sweep held it).
    ASSERT_TRUE(*db_->BeginStorageSweep(UnixMs(), 60000));
    SnapshotReplicator* a = StartHost("host-a");
    ASSERT_NE(a, nullptr);
    a->Written("paused", "sbxa", dir);
    key = KeyOf("sbxa");
    hosts_.clear();
    ASSERT_TRUE(db_->EndStorageSweep().ok());
  }
  EXPECT_EQ(StateOf(key), "local-only");
  SnapshotReplicator* again = StartHost("host-a");
  ASSERT_NE(again, nullptr);
  ASSERT_TRUE(again->WaitIdle(30s));
  EXPECT_EQ(StateOf(key), "uploaded");
  EXPECT_TRUE(StoredManifest(key).ok());
}

TEST_F(SnapshotReplicatorTest, AnotherHostLaysOutAPauseFromTheStore) {
  SnapshotReplicator* a = StartHost("host-a");
  ASSERT_NE(a, nullptr);
  std::string key = UploadPause(*a, "host-a", {.sandbox_id = "sbxa"});
  agent::SnapshotFiles original(DataDir("host-a") + "/snapshots/sbxa");
  SnapshotReplicator* b = StartHost("host-b");
  ASSERT_NE(b, nullptr);

  ASSERT_TRUE(b->MaterializePaused(key, "sbxa").ok());
  std::string dir = DataDir("host-b") + "/snapshots/sbxa";
  auto m = agent::ReadManifest(dir);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->kind, "paused");
  EXPECT_EQ(m->sandbox_id, "sbxa");
  EXPECT_TRUE(m->memory_file);
  EXPECT_EQ(m->vcpus, 2u);
  EXPECT_EQ(m->memory_mib, 512u);
  EXPECT_EQ(m->memory_path, "") << "no memfs: the RAM is the directory's own mem";
  ASSERT_FALSE(m->base_disk.empty());
  EXPECT_TRUE(m->base_disk.starts_with(DataDir("host-b") + "/")) << m->base_disk;
  EXPECT_TRUE(Contents(m->base_disk) == Contents(base_)) << "the base disk's bytes";
  agent::SnapshotFiles f(dir);
  EXPECT_TRUE(Contents(f.state) == Contents(original.state));
  EXPECT_TRUE(Contents(f.overlay) == Contents(original.overlay));
  EXPECT_TRUE(Contents(f.memory) == Contents(original.memory));
  struct stat st {};
  ASSERT_EQ(::stat(f.memory.c_str(), &st), 0);
  EXPECT_LT(static_cast<uint64_t>(st.st_blocks) * 512, kMemSize) << "holes stay holes";
  // A pause is its user's data: root's only, as a local pause leaves it (the VMM gets the state
  // as an fd and the overlay as its own copy), and so is what the store cache keeps of it; the
  // RAM is the VMMs' group's to map.
  auto mode = [](const std::string& path) {
    struct stat s {};
    return ::stat(path.c_str(), &s) == 0 ? (s.st_mode & 07777) : 0777777u;
  };
  EXPECT_EQ(mode(f.state), 0600u);
  EXPECT_EQ(mode(f.overlay), 0600u);
  EXPECT_EQ(mode(f.memory), 0640u);
  EXPECT_EQ(st.st_gid, agent::kTemplateGid);
  int cached_files = 0;
  for (const auto& e :
       std::filesystem::recursive_directory_iterator(DataDir("host-b") + "/store-cache")) {
    std::string rel = e.path().string().substr(DataDir("host-b").size());
    if (!e.is_regular_file() || rel.starts_with("/store-cache/bases/") ||
        rel == "/store-cache/stats.json") {
      continue;
    }
    ++cached_files;
    EXPECT_EQ(mode(e.path().string()), 0600u) << rel;
  }
  EXPECT_GE(cached_files, 3) << "the manifest, state and overlay";
  EXPECT_TRUE(FetchLeftovers("host-b").empty());
  EXPECT_EQ(b->stats().restores, 1u);

  // Laid out a second time (the first was resumed and is gone): the manifest, state, overlay
  // and base disk come from DATA_DIR/store-cache; only the RAM is fetched again, as there is
  // no memfs to keep it.
  auto stored = StoredManifest(key);
  ASSERT_TRUE(stored.ok()) << stored.status().ToString();
  size_t mem_chunks = 0;
  for (const auto& h : stored->files.at("mem").chunks) mem_chunks += h ? 1 : 0;
  ASSERT_EQ(mem_chunks, 3u);
  ASSERT_TRUE(RemoveTree(dir).ok());
  uint64_t gets = local_->stats().gets;
  ASSERT_TRUE(b->MaterializePaused(key, "sbxa").ok());
  EXPECT_EQ(local_->stats().gets - gets, mem_chunks) << "the RAM's chunks, nothing else";
  EXPECT_TRUE(Contents(f.memory) == Contents(original.memory));

  Status exists = b->MaterializePaused(key, "sbxa");
  EXPECT_EQ(exists.code(), ErrorCode::kAlreadyExists) << exists.ToString();
  EXPECT_TRUE(FetchLeftovers("host-b").empty());
}

TEST_F(SnapshotReplicatorTest, APauseIsLaidOutOnlyForItsOwnSandbox) {
  SnapshotReplicator* a = StartHost("host-a");
  ASSERT_NE(a, nullptr);
  std::string key = UploadPause(*a, "host-a", {.sandbox_id = "sbxa"});
  SnapshotReplicator* b = StartHost("host-b");
  ASSERT_NE(b, nullptr);
  Status other = b->MaterializePaused(key, "sbxz");
  ExpectFailed(other, "is not sandbox sbxz's pause");
  EXPECT_FALSE(PathExists(DataDir("host-b") + "/snapshots/sbxz"));
  EXPECT_TRUE(FetchLeftovers("host-b").empty());
}

TEST_F(SnapshotReplicatorTest, LayingOutAnUnknownSnapshotFailsAndLeavesNothing) {
  SnapshotReplicator* b = StartHost("host-b");
  ASSERT_NE(b, nullptr);
  Status missing = b->MaterializePaused("sbxnone-1700000000000", "sbxnone");
  ExpectFailed(missing, "sbxnone-1700000000000");
  ExpectFailed(missing, "not found");
  Status bad = b->MaterializePaused("../escape", "sbxnone");
  ExpectFailed(bad, "bad snapshot key");
  EXPECT_FALSE(PathExists(DataDir("host-b") + "/snapshots/sbxnone"));
  EXPECT_TRUE(FetchLeftovers("host-b").empty());
  EXPECT_FALSE(PathExists(DataDir("host-b") + "/store-cache/sbxnone-1700000000000"));
}

TEST_F(SnapshotReplicatorTest, ASnapshotGoneBeforeItsUploadIsMarkedDeletingAndNotUploaded) {
  ReplicatorOptions o = Options("host-a");
  o.delete_grace = std::chrono::hours(1);
  SnapshotReplicator* a = StartHost(o);
  ASSERT_NE(a, nullptr);
  // Resumed (its directory removed) before the upload could read it.
  std::string dir = WriteSnapshot("host-a", {.sandbox_id = "sbxa"});
  ASSERT_TRUE(RemoveTree(dir).ok());
  a->Written("paused", "sbxa", dir);
  ASSERT_TRUE(a->WaitIdle(30s)) << "not retried";
  auto recs = db_->ListStoredSnapshots({.owner_id = "sbxa"});
  ASSERT_TRUE(recs.ok()) << recs.status().ToString();
  ASSERT_EQ(recs->size(), 1u);
  const auto& rec = recs->front();
  EXPECT_EQ(rec.state, "deleting");
  EXPECT_FALSE(HasObject(storage::ManifestKey(rec.key)));
  EXPECT_TRUE(ChunkObjects().empty());
  EXPECT_FALSE(PathExists(DataDir("host-a") + "/uploads/" + rec.key));
  EXPECT_EQ(a->stats().uploads, 0u);
  EXPECT_EQ(a->stats().upload_failures, 0u);
}

TEST_F(SnapshotReplicatorTest, ADeletedSnapshotGoesAfterTheGraceAndTheSweepTakesOnlyItsChunks) {
  SnapshotReplicator* a = StartHost("host-a");
  ASSERT_NE(a, nullptr);
  std::string gone = UploadPause(*a, "host-a", {.sandbox_id = "sbxa"});
  std::string kept =
      UploadPause(*a, "host-a", {.sandbox_id = "sbxb", .state_seed = 11, .mem_chunk2_seed = 44});
  auto mg = StoredManifest(gone);
  auto mk = StoredManifest(kept);
  ASSERT_TRUE(mg.ok() && mk.ok());
  std::set<std::string> only_gone;
  for (const auto& h : Hashes(*mg)) {
    if (!Hashes(*mk).count(h)) only_gone.insert(h);
  }
  ASSERT_EQ(only_gone.size(), 2u);

  ASSERT_EQ(*db_->MarkStoredSnapshotsDeleting("paused", "sbxa"), 1);
  EXPECT_TRUE(HasObject(storage::ManifestKey(gone))) << "kept for the grace period";
  ASSERT_TRUE(WaitFor([&] { return !Record(gone); }, 10s)) << "record still " << StateOf(gone);
  EXPECT_FALSE(HasObject(storage::ManifestKey(gone)));
  EXPECT_TRUE(HasObject(storage::ManifestKey(kept)));
  EXPECT_EQ(a->stats().deleted, 1u);
  for (const auto& h : only_gone) EXPECT_TRUE(HasObject(storage::ChunkKey(h))) << "until a sweep";

  auto swept = a->Sweep();
  ASSERT_TRUE(swept.ok()) << swept.status().ToString();
  EXPECT_EQ(*swept, static_cast<int64_t>(only_gone.size()));
  for (const auto& h : only_gone) EXPECT_FALSE(HasObject(storage::ChunkKey(h)));
  EXPECT_EQ(ChunkObjects(), Hashes(*mk));
  EXPECT_EQ(a->stats().sweeps, 1u);
  EXPECT_EQ(a->stats().chunks_swept, only_gone.size());

  // What was kept still restores elsewhere.
  SnapshotReplicator* b = StartHost("host-b");
  ASSERT_NE(b, nullptr);
  ASSERT_TRUE(b->MaterializePaused(kept, "sbxb").ok());
}

TEST_F(SnapshotReplicatorTest, TheSweepDeletesManifestsNoRecordNames) {
  SnapshotReplicator* a = StartHost("host-a");
  ASSERT_NE(a, nullptr);
  std::string key = UploadPause(*a, "host-a", {.sandbox_id = "sbxa"});
  auto m = StoredManifest(key);
  ASSERT_TRUE(m.ok());
  storage::RemoteManifest orphan = *m;
  orphan.snapshot_id = "orphan-1";
  ASSERT_TRUE(local_->Put(storage::ManifestKey("orphan-1"), EncodeRemoteManifest(orphan)).ok());
  auto swept = a->Sweep();
  ASSERT_TRUE(swept.ok()) << swept.status().ToString();
  EXPECT_EQ(*swept, 0);
  EXPECT_FALSE(HasObject(storage::ManifestKey("orphan-1")));
  EXPECT_TRUE(HasObject(storage::ManifestKey(key)));
}

TEST_F(SnapshotReplicatorTest, TheSweepDoesNothingWhileAnUploadRuns) {
  SnapshotReplicator* a = StartHost("host-a");
  ASSERT_NE(a, nullptr);
  std::string key = UploadPause(*a, "host-a", {.sandbox_id = "sbxa"});
  std::string stray = Pattern(7, 4096);
  std::string stray_hash = storage::Sha256Hex(stray);
  ASSERT_TRUE(local_->Put(storage::ChunkKey(stray_hash), stray).ok());
  // Another host's upload in progress (its chunks are not all in a manifest yet).
  api::store::StoredSnapshotRecord other{.key = "snapother",
                                         .kind = "named",
                                         .owner_id = "snapother",
                                         .host_id = "host-c",
                                         .state = "local-only",
                                         .created_at_ms = UnixMs()};
  ASSERT_TRUE(db_->InsertStoredSnapshot(other).ok());
  ASSERT_TRUE(*db_->BeginSnapshotUpload("snapother", UnixMs(), 60000));
  std::set<std::string> before = ChunkObjects();

  auto refused = a->Sweep();
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), ErrorCode::kFailedPrecondition) << refused.status().ToString();
  EXPECT_EQ(ChunkObjects(), before);
  EXPECT_EQ(a->stats().sweeps, 0u);

  ASSERT_TRUE(db_->FailSnapshotUpload("snapother", "host-c stopped").ok());
  auto swept = a->Sweep();
  ASSERT_TRUE(swept.ok()) << swept.status().ToString();
  EXPECT_EQ(*swept, 1);
  EXPECT_FALSE(HasObject(storage::ChunkKey(stray_hash)));
  EXPECT_EQ(ChunkObjects(), Hashes(*StoredManifest(key)));
}

// A snapshot uploaded by host-a, then laid out by host-b after `tamper` changed the store.
class TamperedStoreTest : public SnapshotReplicatorTest {
 protected:
  void SetUp() override {
    SnapshotReplicatorTest::SetUp();
    if (HasFatalFailure()) return;
    SnapshotReplicator* a = StartHost("host-a");
    ASSERT_NE(a, nullptr);
    key_ = UploadPause(*a, "host-a", {.sandbox_id = "sbxa"});
    auto text = local_->Get(storage::ManifestKey(key_));
    ASSERT_TRUE(text.ok());
    manifest_text_ = *text;
    auto m = storage::DecodeRemoteManifest(manifest_text_);
    ASSERT_TRUE(m.ok());
    manifest_ = *m;
    b_ = StartHost("host-b");
    ASSERT_NE(b_, nullptr);
  }

  // Lays the snapshot out on host-b expecting it to fail saying `says`, and checks that nothing
  // is left behind.
  void ExpectRefused(const std::string& says) {
    ExpectFailed(b_->MaterializePaused(key_, "sbxa"), says);
    EXPECT_FALSE(PathExists(DataDir("host-b") + "/snapshots/sbxa"));
    EXPECT_TRUE(FetchLeftovers("host-b").empty());
  }

  std::string key_;
  std::string manifest_text_;
  storage::RemoteManifest manifest_;
  SnapshotReplicator* b_ = nullptr;
};

TEST_F(TamperedStoreTest, AGarbageManifestIsRefusedAndNotKept) {
  ASSERT_TRUE(local_->Put(storage::ManifestKey(key_), "{not a manifest").ok());
  ExpectRefused("not valid JSON");
  // Once the store has the real one again, it is read (the garbage was not cached).
  ASSERT_TRUE(local_->Put(storage::ManifestKey(key_), manifest_text_).ok());
  Status s = b_->MaterializePaused(key_, "sbxa");
  EXPECT_TRUE(s.ok()) << s.ToString();
}

TEST_F(TamperedStoreTest, AManifestNamingAnotherSnapshotIsRefused) {
  storage::RemoteManifest other = manifest_;
  other.snapshot_id = "sbxq-1";
  ASSERT_TRUE(local_->Put(storage::ManifestKey(key_), EncodeRemoteManifest(other)).ok());
  ExpectRefused("manifest names sbxq-1");
  ASSERT_TRUE(local_->Put(storage::ManifestKey(key_), manifest_text_).ok());
  Status s = b_->MaterializePaused(key_, "sbxa");
  EXPECT_TRUE(s.ok()) << s.ToString();
}

TEST_F(TamperedStoreTest, AChunkWhoseBytesAreNotItsNameIsRefused) {
  // The last chunk of RAM (1 MiB), replaced by other bytes of the same length.
  const auto& last = manifest_.files.at("mem").chunks.back();
  ASSERT_TRUE(last);
  ASSERT_TRUE(local_->Put(storage::ChunkKey(*last), Pattern(999, 1 << 20)).ok());
  ExpectRefused("is not what its name says");
}

TEST_F(TamperedStoreTest, ATamperedStateChunkIsNotCached) {
  const auto& state = manifest_.files.at("state").chunks.front();
  ASSERT_TRUE(state);
  std::string good = *local_->Get(storage::ChunkKey(*state));
  ASSERT_TRUE(local_->Put(storage::ChunkKey(*state), Pattern(998, good.size())).ok());
  ExpectRefused("is not what its name says");
  EXPECT_FALSE(PathExists(DataDir("host-b") + "/store-cache/" + key_ + "/state"));
  // Repaired in the store: the next restore succeeds with the right bytes.
  ASSERT_TRUE(local_->Put(storage::ChunkKey(*state), good).ok());
  ASSERT_TRUE(b_->MaterializePaused(key_, "sbxa").ok());
  EXPECT_TRUE(Contents(DataDir("host-b") + "/snapshots/sbxa/state") ==
              Contents(DataDir("host-a") + "/snapshots/sbxa/state"));
}

TEST(SnapshotReplicatorTemplateKey, IsTheSameOnEveryHostAndAValidKey) {
  std::string key = SnapshotReplicator::TemplateKey("base", "build1");
  EXPECT_EQ(key, SnapshotReplicator::TemplateKey("base", "build1"));
  EXPECT_NE(key, SnapshotReplicator::TemplateKey("base", "build2"));
  EXPECT_NE(key, SnapshotReplicator::TemplateKey("other", "build1"));
  EXPECT_TRUE(key.starts_with("tpl-")) << key;
  EXPECT_EQ(key.size(), 44u);
  EXPECT_TRUE(storage::IsValidSnapshotKeyId(key)) << key;
}

TEST_F(SnapshotReplicatorTest, FetchingATemplateTheStoreDoesNotHaveUploadedAnswersFalse) {
  SnapshotReplicator* b = StartHost("host-b");
  ASSERT_NE(b, nullptr);
  std::string dir = DataDir("host-b") + "/templates/base/.build1-tmp";
  ASSERT_TRUE(MakeDirs(dir).ok());
  auto none = b->FetchTemplate("base", "build1", dir);
  ASSERT_TRUE(none.ok()) << none.status().ToString();
  EXPECT_FALSE(*none);
  // Recorded, but not uploaded yet: bake it.
  api::store::StoredSnapshotRecord rec{.key = SnapshotReplicator::TemplateKey("base", "build1"),
                                       .kind = "template",
                                       .owner_id = "base/build1",
                                       .host_id = "host-a",
                                       .state = "local-only",
                                       .created_at_ms = UnixMs()};
  ASSERT_TRUE(db_->InsertStoredSnapshot(rec).ok());
  auto local_only = b->FetchTemplate("base", "build1", dir);
  ASSERT_TRUE(local_only.ok()) << local_only.status().ToString();
  EXPECT_FALSE(*local_only);
  EXPECT_TRUE(DirNames(dir).empty());
  EXPECT_EQ(local_->stats().gets.load(), 0u);
}

}  // namespace
}  // namespace moat::host
