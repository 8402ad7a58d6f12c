// SqliteStore: the embedded Store (DATA_DIR/moat.db). One connection guarded by a mutex; WAL
// journal; the schema is brought up to date by numbered migrations when the store opens.
// Sandboxes and snapshots are in sqlite_store.cc, teams, keys and quotas in sqlite_team_store.cc,
// hosts and placement in sqlite_host_store.cc, custom templates, their builds, tags and logs in
// sqlite_template_store.cc, history, audit, usage and dashboard sessions in
// sqlite_history_store.cc, snapshots in the object store and the chunk sweep in
// sqlite_storage_store.cc.
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include "api/store/store.h"

struct sqlite3;

namespace moat::api::store {

class SqliteStore : public Store {
 public:
  // Opens (creating if needed) the database file and applies pending migrations.
  static Result<std::unique_ptr<SqliteStore>> Open(const std::string& path);
  ~SqliteStore() override;
  SqliteStore(const SqliteStore&) = delete;
  SqliteStore& operator=(const SqliteStore&) = delete;

  // The schema version after migrations (tests).
  int schema_version();

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

 private:
  explicit SqliteStore(sqlite3* db) : db_(db) {}
  Status Migrate();
  Status Exec(const std::string& sql);
  Status LoadMaps(SandboxRecord& r);
  Result<std::optional<TeamRecord>> FindTeam(const char* column, const std::string& value);

  std::mutex mu_;
  sqlite3* db_;  // owned; closed by the destructor
};

}  // namespace moat::api::store
