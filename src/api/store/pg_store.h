// PgStore: the Store on PostgreSQL, a fleet's one source of truth (shared/FLEET.md §2-§3). Same
// schema migrations, behaviour and test suite as SqliteStore; statements through moat_pg's pool
// (pg_connection.h), parameters always bound.
//
// Every method is one Pool::Run. A write runs in one transaction that learns its transaction id
// first, so that when the connection is lost while COMMIT is under way, the retry on a fresh
// connection asks PostgreSQL whether that transaction committed and, if it did, answers what it
// answered instead of applying the change again (a compare-and-set that won stays won).
//
// Sandboxes and snapshots are in pg_store.cc, teams, keys and quotas in pg_team_store.cc, hosts
// and placement in pg_host_store.cc, custom templates, their builds, tags and logs in
// pg_template_store.cc, history, audit, usage and dashboard sessions in pg_history_store.cc,
// snapshots in the object store and the chunk sweep in pg_storage_store.cc.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "api/store/store.h"

namespace moat::api::store {

namespace pg {
class Connection;
class Pool;
struct ConnectOptions;
}  // namespace pg

struct PgStoreOptions {
  int pool_size = 8;
  // Each statement's limit on the server (the session's statement_timeout); the client gives up
  // on a server that does not answer at all after statement_timeout + connect_timeout.
  std::chrono::milliseconds statement_timeout{5000};
  // Opening one connection, all hosts of a multi-host conninfo together.
  std::chrono::milliseconds connect_timeout{5000};
};

class PgStore : public Store {
 public:
  // Connects (Unavailable, naming host and port but never a password, if the database cannot be
  // reached), then applies pending migrations in one transaction under an advisory lock, so that
  // replicas starting together migrate once. FailedPrecondition for a database whose schema is
  // newer than this moatd. `conninfo`: a libpq URI or key=value string.
  static Result<std::unique_ptr<PgStore>> Open(const std::string& conninfo,
                                               PgStoreOptions options = {});
  ~PgStore() override;
  PgStore(const PgStore&) = delete;
  PgStore& operator=(const PgStore&) = delete;

  // The schema version (migrations applied), or -1 if it cannot be read (tests).
  int schema_version();
  // How many migrations this store's Open applied: 0 when another replica had already (tests).
  int migrations_applied() const { return migrations_applied_; }

  Result<bool> HasApiKeys() override;
  Result<std::optional<TeamRecord>> BootstrapAdmin(const std::string& key_sha256,
                                                   const std::string& mask) override;
  Result<TeamRecord> CreateTeam(const std::string& name, bool admin) override;
  Result<std::optional<TeamRecord>> GetTeam(const std::string& id) override;
  Result<std::optional<TeamRecord>> TeamByName(const std::string& name) override;
  Result<ApiKeyRecord> AddApiKey(const std::string& team_id, const std::string& name,
                                 const std::string& key_sha256, const std::string& mask) override;
  Result<std::optional<TeamRecord>> TeamByKeyHash(const std::string& key_sha256) override;
  Result<std::optional<std::pair<TeamRecord, ApiKeyRecord>>> KeyByHash(
      const std::string& key_sha256) override;
  Result<std::vector<ApiKeyRecord>> ListApiKeys(const std::string& team_id) override;
  Result<std::optional<ApiKeyRecord>> GetApiKey(const std::string& key_id) override;
  Status RevokeApiKey(const std::string& team_id, const std::string& key_id) override;
  Result<QuotaSettings> GetTeamQuotas(const std::string& team_id) override;
  Status SetTeamQuotas(const std::string& team_id, const QuotaSettings& quotas) override;
  Result<TeamUsage> RunningUsage(const std::string& team_id) override;

  Status InsertSandbox(const SandboxRecord& sandbox) override;
  Result<std::optional<SandboxRecord>> GetSandbox(const std::string& id) override;
  Result<SandboxPage> ListSandboxes(const SandboxFilter& filter) override;
  Result<std::vector<SandboxRecord>> AllSandboxes() override;
  Status SetSandboxEndAt(const std::string& id, int64_t end_at_ms) override;
  Result<bool> TransitionSandbox(const std::string& id, const StateExpect& expect,
                                 const StateChange& change) override;
  Status DeleteSandbox(const std::string& id) override;

  Status InsertSnapshot(const SnapshotRecord& snapshot) override;
  Result<std::optional<SnapshotRecord>> GetSnapshot(const std::string& id) override;
  Result<std::optional<SnapshotRecord>> SnapshotByName(const std::string& team_id,
                                                       const std::string& name) override;
  Result<SnapshotPage> ListSnapshots(const SnapshotFilter& filter) override;
  Result<std::vector<SnapshotRecord>> AllSnapshots() override;
  Status DeleteSnapshot(const std::string& id) override;

  Status InsertTemplate(const TemplateRecord& t) override;
  Result<std::optional<TemplateRecord>> GetTemplate(const std::string& id) override;
  Result<std::optional<TemplateRecord>> TemplateByAlias(const std::string& team_id,
                                                        const std::string& alias) override;
  Result<std::vector<TemplateRecord>> ListTemplates(const std::string& team_id) override;
  Status SetTemplatePublic(const std::string& id, bool is_public) override;
  Status RecordTemplateSpawn(const std::string& id, int64_t at_ms) override;
  Status DeleteTemplate(const std::string& id) override;
  Status InsertBuild(const TemplateBuildRecord& build,
                     const std::vector<std::string>& tags) override;
  Result<std::optional<TemplateBuildRecord>> GetBuild(const std::string& build_id) override;
  Result<std::vector<TemplateBuildRecord>> ListBuilds(const std::string& template_id) override;
  Result<std::vector<TemplateBuildRecord>> BuildsInStatus(const std::string& status) override;
  Result<bool> TransitionBuild(const std::string& build_id, const std::string& from,
                               const BuildUpdate& update) override;
  Status AssignTags(const std::string& template_id, const std::string& build_id,
                    const std::vector<std::string>& tags, int64_t at_ms) override;
  Result<int64_t> RemoveTags(const std::string& template_id,
                             const std::vector<std::string>& tags) override;
  Result<std::optional<TemplateBuildRecord>> ResolveTag(const std::string& template_id,
                                                        const std::string& tag) override;
  Result<std::vector<TemplateTagRecord>> ListTags(const std::string& template_id) override;
  Status AppendBuildLogs(const std::string& build_id,
                         const std::vector<BuildLogRecord>& entries) override;
  Result<std::vector<BuildLogRecord>> BuildLogs(const std::string& build_id, int64_t offset,
                                                int64_t limit) override;
  Status PutTemplateFile(const std::string& team_id, const std::string& hash,
                         const std::string& local_path) override;
  Result<bool> HasTemplateFile(const std::string& team_id, const std::string& hash) override;
  Status ReadTemplateFile(const std::string& team_id, const std::string& hash,
                          const std::string& dest_path) override;

  Status InsertHistory(const HistoryRecord& h) override;
  Status SetHistoryState(const std::string& sandbox_id, const std::string& state,
                         const std::string& host_id) override;
  Result<bool> EndHistory(const std::string& sandbox_id, int64_t ended_at_ms,
                          const std::string& state, const std::string& reason,
                          const std::string& ended_by, const std::string& detail) override;
  Result<std::optional<HistoryRecord>> GetHistory(const std::string& sandbox_id) override;
  Result<HistoryPage> ListHistory(const HistoryFilter& filter) override;
  Result<std::vector<HistoryRecord>> HistoryChildren(const std::string& parent_id) override;
  Status AppendSandboxEvent(const SandboxEvent& e) override;
  Result<std::vector<SandboxEvent>> SandboxEvents(const std::string& sandbox_id) override;
  Result<int64_t> StartCommand(const CommandRecord& c) override;
  Status FinishCommand(const CommandRecord& c) override;
  Result<std::vector<CommandRecord>> ListCommands(const std::string& sandbox_id, int64_t before_id,
                                                  int limit) override;
  Status SaveConsoleLog(const std::string& sandbox_id, const std::string& text) override;
  Result<std::optional<std::string>> ConsoleLog(const std::string& sandbox_id) override;
  Status AppendAudit(const AuditRecord& a) override;
  Result<AuditPage> ListAudit(const AuditFilter& filter) override;
  Status RecordNetUsage(const std::string& sandbox_id, int64_t hour_ms, int64_t egress_total,
                        int64_t ingress_total, int64_t slot_generation) override;
  Status RecordSnapshotStored(const SnapshotStorageRecord& s) override;
  Status RecordSnapshotDeleted(const std::string& id, int64_t at_ms) override;
  Result<UsageInput> LoadUsageInput(const std::string& team_id, int64_t from_ms,
                                    int64_t to_ms) override;
  Result<PruneCounts> PruneHistory(int64_t before_ms, int64_t now_ms) override;
  Status InsertSession(const SessionRecord& s) override;
  Result<std::optional<SessionRecord>> GetSession(const std::string& token_sha256,
                                                  int64_t now_ms) override;
  Status DeleteSession(const std::string& token_sha256) override;

  Status InsertStoredSnapshot(const StoredSnapshotRecord& r) override;
  Result<std::optional<StoredSnapshotRecord>> GetStoredSnapshot(const std::string& key) override;
  Result<std::optional<StoredSnapshotRecord>> LatestStoredSnapshot(
      const std::string& kind, const std::string& owner_id) override;
  Result<std::vector<StoredSnapshotRecord>> ListStoredSnapshots(
      const StoredSnapshotFilter& filter) override;
  Result<bool> BeginSnapshotUpload(const std::string& key, int64_t now_ms,
                                   int64_t sweep_stale_ms) override;
  Result<bool> FinishSnapshotUpload(const std::string& key, int64_t uploaded_at_ms, int64_t bytes,
                                    int64_t nonzero_bytes) override;
  Status FailSnapshotUpload(const std::string& key, const std::string& error) override;
  Result<int64_t> ResetSnapshotUploads(const std::string& host_id) override;
  Result<int64_t> MarkStoredSnapshotsDeleting(const std::string& kind, const std::string& owner_id,
                                              const std::string& except_key) override;
  Status DeleteStoredSnapshot(const std::string& key) override;
  Result<bool> BeginStorageSweep(int64_t now_ms, int64_t stale_ms) override;
  Status EndStorageSweep() override;

  Result<HostRecord> RegisterHost(const HostRegistration& host) override;
  Result<bool> Heartbeat(const std::string& host_id, int64_t epoch) override;
  Result<bool> SetHostWarm(const std::string& host_id, int64_t epoch, int64_t warm_base) override;
  Result<std::vector<HostRecord>> ListHosts() override;
  Result<std::optional<HostRecord>> GetHost(const std::string& host_id) override;
  Result<bool> SetHostDraining(const std::string& host_id, bool draining) override;
  Result<std::vector<std::string>> SweepLostHosts(int64_t lost_after_ms) override;
  Result<std::vector<HostRecord>> PlacementCandidates(const PlacementQuery& query) override;
  Result<std::optional<std::string>> ReserveOnHost(const std::string& host_id, int64_t vcpus,
                                                   int64_t mem_mb, double cpu_overcommit,
                                                   double mem_overcommit) override;
  Status ReleaseOnHost(const std::string& host_id, int64_t vcpus, int64_t mem_mb) override;
  Result<std::vector<ReservationAudit>> AuditReservations() override;
  Result<bool> TrimReservation(const std::string& host_id, int64_t vcpus, int64_t mem_mb,
                               int64_t seq) override;
  Result<std::vector<SandboxRecord>> SandboxesOnHost(const std::string& host_id) override;
  Result<std::vector<SandboxRecord>> StaleCreating(int64_t started_before_ms) override;
  // LISTEN on `moat_sandbox` (schema migration 8's trigger NOTIFYs it) on a session of its own.
  Result<std::unique_ptr<SandboxChangeFeed>> WatchSandboxChanges() override;
  // A session-level advisory lock per role, held on a session of its own for as long as it lives.
  Result<bool> Lead(const std::string& role) override;

 private:
  PgStore(std::unique_ptr<pg::Pool> pool, std::unique_ptr<pg::ConnectOptions> connect);
  Status Migrate();
  // Runs `body` once, in one READ COMMITTED transaction, through pool_->Run (see the top of this
  // file for why it is safe to retry). `body` returns the method's error (its changes are rolled
  // back) or Ok, leaving its answer in variables it captured: a retry that finds the first
  // attempt committed does not run it again, and those variables still hold that answer.
  Status Transact(const std::function<Status(pg::Connection&)>& body);

  std::unique_ptr<pg::Pool> pool_;
  std::unique_ptr<const pg::ConnectOptions> connect_;  // for sessions outside the pool (LISTEN)
  struct LeadSession {
    std::unique_ptr<pg::Connection> conn;  // kept whether or not it holds the lock
    bool held = false;
    std::chrono::steady_clock::time_point retry_after{};  // after a failed connect
  };
  std::mutex lead_mu_;
  std::map<std::string, LeadSession> leads_;  // by role
  int migrations_applied_ = 0;
};

}  // namespace moat::api::store
