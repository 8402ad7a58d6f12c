// Store: moatd's durable state — teams, API keys (only their SHA-256), sandboxes with their
// metadata, end times, lifecycle state and host, which team owns which named snapshot, and the
// fleet's hosts with what placements reserved on them. Two implementations with the same schema
// migrations and the same test suite: SqliteStore (the embedded default of `moatd serve`) and
// PgStore (PostgreSQL: a fleet's one source of truth).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "api/lifecycle.h"
#include "api/store/history.h"
#include "common/status.h"

namespace moat::api::store {

struct TeamRecord {
  std::string id;
  std::string name;
  int64_t created_at_ms = 0;
  // The team the first start created: its keys may create teams and manage any team's keys.
  bool admin = false;
};

struct ApiKeyRecord {
  std::string id;
  std::string team_id;
  std::string name;
  std::string mask;  // "e2b_1a2b3…9f0e": enough to recognise a key, never enough to use it
  int64_t created_at_ms = 0;
};

// What a create asked of a sandbox's lifecycle and port proxy beyond the basics (stored as one
// JSON column; absent keys are the defaults).
struct SandboxOptions {
  // With auto_pause: the pause at timeout keeps memory (a resume continues where it was), or,
  // false, only the filesystem (a resume reboots; E2B's `autoPauseMemory: false`).
  bool auto_pause_memory = true;
  // A paused sandbox resumes when a request for one of its ports arrives (E2B's autoResume).
  bool auto_resume = false;
  // The Host header the port proxy sends upstream ("${PORT}" becomes the port); empty: the
  // client's (E2B's network.maskRequestHost).
  std::string mask_request_host;
  // The user envd calls act as when the request names none: its custom template's last USER
  // (empty: "user").
  std::string default_user;
  bool operator==(const SandboxOptions&) const = default;
};
std::string SandboxOptionsToJson(const SandboxOptions& o);
// Unknown keys are ignored and bad values read as defaults: a newer moatd may have written it.
SandboxOptions SandboxOptionsFromJson(std::string_view text);

struct SandboxRecord {
  std::string id;
  std::string team_id;
  std::string template_id;
  std::string access_token;  // envd's X-Access-Token
  // E2B's trafficAccessToken: set when the sandbox was created with
  // `network.allowPublicTraffic: false`; moatd's port proxy then requires it as the
  // `e2b-traffic-access-token` header. Empty: its ports are public (E2B's default).
  std::string traffic_access_token;
  std::map<std::string, std::string> metadata;
  std::map<std::string, std::string> env_vars;
  SandboxState state = SandboxState::kRunning;  // api/lifecycle.h
  // The host that runs it (or holds its paused snapshot), and how many times it has been placed
  // (a resume or a move bumps it): a host's writes about the sandbox name both, so a stale host
  // cannot change a record that is no longer its own. "" on a single host.
  std::string host_id;
  int64_t generation = 0;
  int64_t started_at_ms = 0;
  int64_t end_at_ms = 0;
  bool auto_pause = false;
  uint32_t cpu_count = 0;
  uint32_t memory_mb = 0;
  uint32_t disk_size_mb = 0;
  SandboxOptions options;
};

// A team's quota settings as stored; an unset one is moatd's default (api/team_quotas.h).
struct QuotaSettings {
  std::optional<int64_t> max_sandboxes;
  std::optional<int64_t> max_vcpus;
  std::optional<int64_t> max_memory_mib;
  std::optional<int64_t> max_creates_per_minute;
  std::optional<int64_t> max_metadata_bytes;
  bool operator==(const QuotaSettings&) const = default;
};

// What a team's sandboxes that hold resources (HoldsResources: running, error, and those being
// created, paused, resumed or killed) take; paused ones hold only disk and are not counted.
struct TeamUsage {
  int64_t sandboxes = 0;
  int64_t vcpus = 0;
  int64_t memory_mib = 0;
};

struct SandboxFilter {
  std::string team_id;                          // required
  std::map<std::string, std::string> metadata;  // every pair must match
  std::vector<SandboxState> states;             // empty: any
  std::optional<int64_t> started_after_ms;
  std::string template_id;  // empty: any
  bool ascending = false;   // by start time; default newest first
  int limit = 100;
  std::string next_token;  // from the previous page
};

struct SandboxPage {
  std::vector<SandboxRecord> items;
  std::string next_token;  // empty: last page
};

// A named snapshot (the agent keeps its files; the store says whose it is).
struct SnapshotRecord {
  std::string id;  // "snap" + 16 characters; usable as a templateID
  std::string team_id;
  std::string sandbox_id;  // the sandbox it was taken from (which may be gone since)
  std::string name;        // empty: unnamed
  int64_t created_at_ms = 0;
  // The host whose disk holds it (a resume, a create from it, its deletion go there); empty in
  // records made before hosts had ids: the only host's.
  std::string host_id;
};

struct SnapshotFilter {
  std::string team_id;     // required
  std::string sandbox_id;  // empty: any
  std::string name;        // empty: any; else the snapshot's name or id
  int limit = 100;
  std::string next_token;  // from the previous page
};

struct SnapshotPage {
  std::vector<SnapshotRecord> items;  // newest first
  std::string next_token;             // empty: last page
};

// --- Custom templates (docs/templates.md; the wire contract is shared/E2B-TEMPLATES.md). ---

// A template: a team's name for a line of builds. Builds carry tags; a sandbox created from
// `alias[:tag]` gets the tag's most recently assigned build that is ready.
struct TemplateRecord {
  std::string id;  // 20 characters [a-z0-9]
  std::string team_id;
  std::string alias;  // [a-z0-9-_]+, unique within its team
  bool is_public = false;
  int64_t created_at_ms = 0;
  int64_t updated_at_ms = 0;
  int64_t spawn_count = 0;         // sandboxes created from it
  int64_t last_spawned_at_ms = 0;  // 0: never
};

// Build states as E2B names them: waiting (registered, not started), building, ready, error.
inline constexpr std::string_view kBuildWaiting = "waiting";
inline constexpr std::string_view kBuildBuilding = "building";
inline constexpr std::string_view kBuildReady = "ready";
inline constexpr std::string_view kBuildError = "error";

struct TemplateBuildRecord {
  std::string id;  // a UUID v4
  std::string template_id;
  std::string team_id;
  std::string status = std::string(kBuildWaiting);
  uint32_t cpu_count = 0;
  uint32_t memory_mb = 0;
  uint32_t min_free_disk_mb = 0;
  uint32_t disk_size_mb = 0;  // the built disk's size, once ready
  // JSON texts; empty when unset. spec: the start request (base, steps, start and ready
  // commands) once the build was started; reason: {"message","step"} of a failed build;
  // result: what the host reported of a ready build (default user and workdir, start and ready
  // commands, the build context) — what a sandbox of it and a template built from it need.
  std::string spec;
  std::string reason;
  std::string result;
  std::string host_id;  // the host that ran it and holds its artifacts; "" on a single host
  int64_t created_at_ms = 0;
  int64_t started_at_ms = 0;   // 0: not started
  int64_t finished_at_ms = 0;  // 0: not finished
};

// A compare-and-set of a build: applied only if the build's status is `from` now. Unset fields
// keep their values.
struct BuildUpdate {
  std::string status;  // required
  std::optional<std::string> spec, reason, result, host_id;
  std::optional<uint32_t> disk_size_mb;
  std::optional<int64_t> started_at_ms, finished_at_ms;
};

struct TemplateTagRecord {
  std::string tag;
  std::string build_id;
  int64_t created_at_ms = 0;  // when that build got the tag
};

// One line of a build's log. A build's entries are numbered from 0 in the order appended.
struct BuildLogRecord {
  int64_t timestamp_ms = 0;
  std::string level;  // debug, info, warn, error
  std::string step;   // "base", "1".."N", "finalize" or ""
  std::string message;
};

// A host's membership in the fleet (shared/FLEET.md §3-§4): active hosts take placements,
// draining ones keep what they run and take nothing new (an operator's decision), lost ones
// stopped heartbeating and were fenced out by the sweep.
enum class HostState : uint8_t { kActive, kDraining, kLost };

inline std::string_view HostStateName(HostState s) {
  switch (s) {
    case HostState::kActive: return "active";
    case HostState::kDraining: return "draining";
    case HostState::kLost: return "lost";
  }
  return "unknown";
}

inline std::optional<HostState> ParseHostState(std::string_view name) {
  for (HostState s : {HostState::kActive, HostState::kDraining, HostState::kLost}) {
    if (HostStateName(s) == name) return s;
  }
  return std::nullopt;
}

// What an agent tells the store about itself when it (re)starts.
struct HostRegistration {
  std::string id;        // stable across restarts: the host's name in the fleet
  std::string endpoint;  // where replicas reach its agent ("10.0.0.7:7070"), a private address
  int64_t vcpu_total = 0;
  int64_t mem_total_mb = 0;
  // What a snapshot taken on it is tied to: a restore is placed only where all three match.
  std::string accel;  // "kvm", "tcg"
  std::string cpu_model;
  std::string qemu_build;
  std::map<std::string, std::string> labels;
};

// A host as stored. Times are the database's clock (ms since the epoch), never a host's or a
// replica's: liveness is judged against one clock, whatever the hosts' skew.
struct HostRecord {
  std::string id;
  std::string endpoint;
  // Bumped by every registration and by being declared lost: an agent's writes carry the epoch it
  // registered with, so a host that was declared lost (or replaced by a newer registration) is
  // fenced out until it registers again.
  int64_t epoch = 0;
  HostState state = HostState::kActive;
  int64_t heartbeat_at_ms = 0;
  int64_t started_at_ms = 0;  // when the current epoch registered
  int64_t vcpu_total = 0;
  int64_t mem_total_mb = 0;
  // What placements have reserved on it (ReserveOnHost), which may exceed the totals by the
  // overcommit ratios the reservations were made with.
  int64_t vcpu_reserved = 0;
  int64_t mem_reserved_mb = 0;
  std::string accel;
  std::string cpu_model;
  std::string qemu_build;
  std::map<std::string, std::string> labels;
  // Warm clones of the base template ready on the host, as it last reported (SetHostWarm).
  int64_t warm_base = 0;
};

// A host's reservations beside what its records hold (the audit of leaked reservations).
struct ReservationAudit {
  std::string host_id;
  int64_t vcpu_reserved = 0, mem_reserved_mb = 0;
  // Summed over the host's records in states that hold resources (HoldsResources).
  int64_t vcpu_held = 0, mem_held_mb = 0;
  // Bumped by every reservation, release and trim on the host.
  int64_t seq = 0;
};

// Which hosts a placement may try, for a sandbox that needs `vcpus` and `mem_mb`.
struct PlacementQuery {
  int64_t vcpus = 0;
  int64_t mem_mb = 0;
  // Capacity is total × ratio (≥ 1 overcommits); the same ratios ReserveOnHost is then given.
  double cpu_overcommit = 1.0;
  double mem_overcommit = 1.0;
  // Only hosts whose last heartbeat is at most this old by the database's clock.
  int64_t fresh_within_ms = 15000;
  // Hosts with a warm clone of the base template ready come first (a create of the base
  // template, which such a clone serves without a restore on the request's path).
  bool prefer_warm_base = false;
  // Empty: any. A restore names its snapshot's three (FLEET.md §3).
  std::string accel;
  std::string cpu_model;
  std::string qemu_build;
};

// The record's state as a compare-and-set expects it.
struct StateExpect {
  SandboxState state;
  std::optional<std::string> host_id;  // nullopt: any host
  std::optional<int64_t> generation;   // nullopt: any generation
};

struct StateChange {
  SandboxState to;
  std::optional<std::string> host_id;  // set the host (placement); nullopt: keep it
  bool bump_generation = false;        // generation + 1 (a new placement)
};

// Changes to sandbox records made by any process sharing the store, as sandbox ids: a fleet's
// route caches drop those routes at once (RouteCache::Watch). Used by one thread.
class SandboxChangeFeed {
 public:
  virtual ~SandboxChangeFeed() = default;
  // The id of the next changed sandbox (its state, host or generation changed, or it was
  // deleted), or nullopt when none changed within `timeout`. Unavailable once the feed broke:
  // changes may have been missed since; open a new feed.
  virtual Result<std::optional<std::string>> Next(std::chrono::milliseconds timeout) = 0;
};

// --- Snapshots in the object store (docs/snapshots.md "Across hosts", shared/FLEET.md §5). ---

// One snapshot a host wrote and uploads (or uploaded) to the object store under
// snapshots/<key>/manifest.json. Its lifecycle:
//   local-only --(BeginSnapshotUpload)--> uploading --(FinishSnapshotUpload)--> uploaded
//   uploading --(FailSnapshotUpload, ResetSnapshotUploads)--> local-only
//   any --(MarkStoredSnapshotsDeleting)--> deleting --(DeleteStoredSnapshot, once its manifest
//   is gone from the store)--> no row
// A local-only snapshot exists only on its host's disk: if that host is lost, so is it.
struct StoredSnapshotRecord {
  std::string key;       // [A-Za-z0-9_-], 1..64: the key under snapshots/
  std::string kind;      // "paused" | "named" | "fork" | "template"
  std::string owner_id;  // the paused sandbox, the named snapshot, the forked parent, the build
  std::string team_id;   // empty for a built-in template's
  std::string host_id;   // the host that wrote it (and keeps a local copy)
  std::string state;     // "local-only" | "uploading" | "uploaded" | "deleting"
  int64_t bytes = 0;     // the snapshot's files, as stored (sum of chunk map sizes)
  int64_t nonzero_bytes = 0;  // of which not in all-zero chunks
  int64_t created_at_ms = 0;
  int64_t upload_started_at_ms = 0;  // of the upload in progress or the last one
  int64_t uploaded_at_ms = 0;        // 0 until uploaded
  int64_t attempts = 0;              // uploads that failed
  std::string last_error;            // the last failed upload's error
};

struct StoredSnapshotFilter {
  std::string state;     // empty: any
  std::string kind;      // empty: any
  std::string owner_id;  // empty: any
  std::string host_id;   // empty: any
  std::string team_id;   // empty: any
  int limit = 1000;
};

class Store {
 public:
  virtual ~Store() = default;

  // A feed of the changes every process makes to sandbox records, listening once this returns;
  // null where one process owns the store (SQLite), so nobody else changes it.
  virtual Result<std::unique_ptr<SandboxChangeFeed>> WatchSandboxChanges() {
    return std::unique_ptr<SandboxChangeFeed>();
  }
  // Whether this process leads `role` now: one process of all that share the store does a
  // leader's work (the reaper's passes). Leadership lasts while this process's session to the
  // store lives, so a leader that dies or loses the database hands it on; false while another
  // process leads or the store is unreachable. Where one process owns the store (SQLite), it
  // always leads.
  virtual Result<bool> Lead(const std::string& role) {
    (void)role;
    return true;
  }

  virtual Result<bool> HasApiKeys() = 0;
  // The first start of a store: if it has no API key, creates the admin team ("admin") and its
  // key "admin" with this hash and mask, and returns the team; nullopt if a key existed. Atomic:
  // replicas starting at the same moment on one database create one admin team, not two.
  virtual Result<std::optional<TeamRecord>> BootstrapAdmin(const std::string& key_sha256,
                                                           const std::string& mask) = 0;
  virtual Result<TeamRecord> CreateTeam(const std::string& name, bool admin) = 0;
  virtual Result<std::optional<TeamRecord>> GetTeam(const std::string& id) = 0;
  virtual Result<std::optional<TeamRecord>> TeamByName(const std::string& name) = 0;
  virtual Result<ApiKeyRecord> AddApiKey(const std::string& team_id, const std::string& name,
                                         const std::string& key_sha256,
                                         const std::string& mask) = 0;
  // The team a (non-revoked) key belongs to; nullopt for an unknown key.
  virtual Result<std::optional<TeamRecord>> TeamByKeyHash(const std::string& key_sha256) = 0;
  // The same, with the key itself (who acts: the audit log and history name it).
  virtual Result<std::optional<std::pair<TeamRecord, ApiKeyRecord>>> KeyByHash(
      const std::string& key_sha256) = 0;
  virtual Result<std::vector<ApiKeyRecord>> ListApiKeys(const std::string& team_id) = 0;
  // A key that is not revoked, by id.
  virtual Result<std::optional<ApiKeyRecord>> GetApiKey(const std::string& key_id) = 0;
  // not_found unless the key exists, is not revoked and belongs to the team; failed_precondition
  // for a team's last key (nobody could manage its sandboxes any more, nor, for an admin team,
  // keys).
  virtual Status RevokeApiKey(const std::string& team_id, const std::string& key_id) = 0;

  // The team's quota settings (all unset for a team that has none).
  virtual Result<QuotaSettings> GetTeamQuotas(const std::string& team_id) = 0;
  // Replaces the team's settings; not_found for an unknown team.
  virtual Status SetTeamQuotas(const std::string& team_id, const QuotaSettings& quotas) = 0;
  // What the team's sandboxes that hold resources take now.
  virtual Result<TeamUsage> RunningUsage(const std::string& team_id) = 0;

  virtual Status InsertSandbox(const SandboxRecord& sandbox) = 0;
  virtual Result<std::optional<SandboxRecord>> GetSandbox(const std::string& id) = 0;
  virtual Result<SandboxPage> ListSandboxes(const SandboxFilter& filter) = 0;
  // Every sandbox of every team (the reaper and start-up reconciliation).
  virtual Result<std::vector<SandboxRecord>> AllSandboxes() = 0;
  virtual Status SetSandboxEndAt(const std::string& id, int64_t end_at_ms) = 0;
  // The only way a record's state changes: compare-and-set. The record moves to `change` only if
  // it is in `expect` now (state, and host and generation where given); false if it is not (or
  // is gone). InvalidArgument, changing nothing, for a change the lifecycle does not allow.
  virtual Result<bool> TransitionSandbox(const std::string& id, const StateExpect& expect,
                                         const StateChange& change) = 0;
  virtual Status DeleteSandbox(const std::string& id) = 0;

  virtual Status InsertSnapshot(const SnapshotRecord& snapshot) = 0;
  virtual Result<std::optional<SnapshotRecord>> GetSnapshot(const std::string& id) = 0;
  // The team's newest snapshot with this name.
  virtual Result<std::optional<SnapshotRecord>> SnapshotByName(const std::string& team_id,
                                                               const std::string& name) = 0;
  virtual Result<SnapshotPage> ListSnapshots(const SnapshotFilter& filter) = 0;
  // Every team's (start-up reconciliation with the agent).
  virtual Result<std::vector<SnapshotRecord>> AllSnapshots() = 0;
  // not_found if there is no such snapshot.
  virtual Status DeleteSnapshot(const std::string& id) = 0;

  // --- Custom templates. ---

  // already_exists when the team has a template of that alias (or the id is taken).
  virtual Status InsertTemplate(const TemplateRecord& t) = 0;
  virtual Result<std::optional<TemplateRecord>> GetTemplate(const std::string& id) = 0;
  virtual Result<std::optional<TemplateRecord>> TemplateByAlias(const std::string& team_id,
                                                                const std::string& alias) = 0;
  // The team's templates, oldest first.
  virtual Result<std::vector<TemplateRecord>> ListTemplates(const std::string& team_id) = 0;
  // not_found for an unknown template.
  virtual Status SetTemplatePublic(const std::string& id, bool is_public) = 0;
  // spawn_count + 1, last_spawned_at_ms = at_ms (a sandbox was created from it).
  virtual Status RecordTemplateSpawn(const std::string& id, int64_t at_ms) = 0;
  // The template with its builds, their tags and logs, in one transaction. not_found if none.
  virtual Status DeleteTemplate(const std::string& id) = 0;

  // In one transaction: inserts the build (its template must exist), points each of `tags` at
  // it (assigned now = build.created_at_ms), and fails every other build of the template still
  // `waiting` that carries one of these tags (status error, reason {"message":"build superseded
  // by a newer one","step":"base"}, finished now). already_exists for a build id in use.
  virtual Status InsertBuild(const TemplateBuildRecord& build,
                             const std::vector<std::string>& tags) = 0;
  virtual Result<std::optional<TemplateBuildRecord>> GetBuild(const std::string& build_id) = 0;
  // The template's builds, newest first.
  virtual Result<std::vector<TemplateBuildRecord>> ListBuilds(const std::string& template_id) = 0;
  // Every build in `status`, of every team (start-up: builds left `building` by a crash).
  virtual Result<std::vector<TemplateBuildRecord>> BuildsInStatus(const std::string& status) = 0;
  // Compare-and-set (BuildUpdate); false, changing nothing, when the status is not `from` (or
  // the build is gone).
  virtual Result<bool> TransitionBuild(const std::string& build_id, const std::string& from,
                                       const BuildUpdate& update) = 0;

  // Points each tag at the build (assigned at `at_ms`; a tag that pointed at it already is
  // assigned anew). not_found when the build is not one of the template's.
  virtual Status AssignTags(const std::string& template_id, const std::string& build_id,
                            const std::vector<std::string>& tags, int64_t at_ms) = 0;
  // Removes every assignment of these tags in the template; the number of tags that had any.
  virtual Result<int64_t> RemoveTags(const std::string& template_id,
                                     const std::vector<std::string>& tags) = 0;
  // The build a sandbox of `template_id:tag` gets: of the builds that were assigned the tag, the
  // most recently assigned one whose status is ready; nullopt if none is.
  virtual Result<std::optional<TemplateBuildRecord>> ResolveTag(const std::string& template_id,
                                                                const std::string& tag) = 0;
  // Each tag of the template once, with the build ResolveTag gives it (tags without a ready
  // build: their most recently assigned build), by tag.
  virtual Result<std::vector<TemplateTagRecord>> ListTags(const std::string& template_id) = 0;

  // Appends entries to a build's log (numbered on from the last). Concurrent appenders to one
  // build are not expected (one builder writes a build's log).
  virtual Status AppendBuildLogs(const std::string& build_id,
                                 const std::vector<BuildLogRecord>& entries) = 0;
  // Up to `limit` entries from number `offset` on, in order.
  virtual Result<std::vector<BuildLogRecord>> BuildLogs(const std::string& build_id, int64_t offset,
                                                        int64_t limit) = 0;

  // The COPY files of template builds (uploaded archives), per team and content hash, kept in
  // the store in chunks of at most 1 MiB so that every replica can hand them to any host.
  // Stores the file at `local_path` (read whole) under (team, hash) in one transaction,
  // replacing one of that key.
  virtual Status PutTemplateFile(const std::string& team_id, const std::string& hash,
                                 const std::string& local_path) = 0;
  virtual Result<bool> HasTemplateFile(const std::string& team_id, const std::string& hash) = 0;
  // Writes it to `dest_path` (created or truncated, mode 0600); not_found if there is none.
  virtual Status ReadTemplateFile(const std::string& team_id, const std::string& hash,
                                  const std::string& dest_path) = 0;

  // --- History, audit, usage and dashboard sessions (store/history.h). ---

  // Records a sandbox's creation; a second insert of the same id changes nothing.
  virtual Status InsertHistory(const HistoryRecord& h) = 0;
  // The state it is in now, and its host when non-empty; nothing for an ended record.
  virtual Status SetHistoryState(const std::string& sandbox_id, const std::string& state,
                                 const std::string& host_id) = 0;
  // Ends the record (ended_at, state, reason, by whom, detail) if it has not ended; false if it
  // had (the first end is the one kept) or is unknown.
  virtual Result<bool> EndHistory(const std::string& sandbox_id, int64_t ended_at_ms,
                                  const std::string& state, const std::string& reason,
                                  const std::string& ended_by, const std::string& detail) = 0;
  virtual Result<std::optional<HistoryRecord>> GetHistory(const std::string& sandbox_id) = 0;
  virtual Result<HistoryPage> ListHistory(const HistoryFilter& filter) = 0;
  // Histories of sandboxes forked from `sandbox_id` or created from a snapshot it was taken
  // from are found by parent_id: the children of a record, oldest first.
  virtual Result<std::vector<HistoryRecord>> HistoryChildren(const std::string& parent_id) = 0;

  // Appends an event (its seq assigned); the sandbox's history need not exist yet.
  virtual Status AppendSandboxEvent(const SandboxEvent& e) = 0;
  // The sandbox's events in order.
  virtual Result<std::vector<SandboxEvent>> SandboxEvents(const std::string& sandbox_id) = 0;

  // Records a command as started; its id.
  virtual Result<int64_t> StartCommand(const CommandRecord& c) = 0;
  // Records how the command `c.id` ended: ended_at, exit code, signal, error and the outputs.
  virtual Status FinishCommand(const CommandRecord& c) = 0;
  // The sandbox's commands, newest first, at most `limit`, with ids below `before_id` (0: any).
  virtual Result<std::vector<CommandRecord>> ListCommands(const std::string& sandbox_id,
                                                          int64_t before_id, int limit) = 0;

  // Keeps (replaces) an ended sandbox's console log (the caller bounds it).
  virtual Status SaveConsoleLog(const std::string& sandbox_id, const std::string& text) = 0;
  virtual Result<std::optional<std::string>> ConsoleLog(const std::string& sandbox_id) = 0;

  // Appends to the audit log (its seq assigned). Nothing updates or deletes a record but
  // PruneHistory past the retention period.
  virtual Status AppendAudit(const AuditRecord& a) = 0;
  virtual Result<AuditPage> ListAudit(const AuditFilter& filter) = 0;

  // The sandbox's network counters read now (totals since its slot `slot_generation` was set
  // up; a resume or a fork gets a new slot, hence a new generation): in one transaction, what
  // grew since the last reading is added to the hour `hour_ms` and the history's totals, and
  // the reading is kept for the next one. A reading of a new generation counts whole; one of
  // the same generation that is lower than the last (a stale reading that lost a race) adds
  // nothing. Exact across restarts: a reading already counted adds nothing.
  virtual Status RecordNetUsage(const std::string& sandbox_id, int64_t hour_ms,
                                int64_t egress_total, int64_t ingress_total,
                                int64_t slot_generation) = 0;
  // A snapshot begins to be stored (a second record of the same id changes nothing)…
  virtual Status RecordSnapshotStored(const SnapshotStorageRecord& s) = 0;
  // …and ends (nothing for an unknown id, or one already ended).
  virtual Status RecordSnapshotDeleted(const std::string& id, int64_t at_ms) = 0;
  // What usage over [from, to) is computed from; `team_id` empty: every team.
  virtual Result<UsageInput> LoadUsageInput(const std::string& team_id, int64_t from_ms,
                                            int64_t to_ms) = 0;

  // Removes ended histories (with their events, commands and console logs) that ended before
  // `before_ms`, audit records, network buckets and ended snapshot records older than it, and
  // expired sessions (expires_at < now_ms).
  virtual Result<PruneCounts> PruneHistory(int64_t before_ms, int64_t now_ms) = 0;

  virtual Status InsertSession(const SessionRecord& s) = 0;
  // The session if it exists, has not expired by `now_ms`, and its key is not revoked.
  virtual Result<std::optional<SessionRecord>> GetSession(const std::string& token_sha256,
                                                          int64_t now_ms) = 0;
  virtual Status DeleteSession(const std::string& token_sha256) = 0;

  // --- Fleet membership (shared/FLEET.md §3-§4). Every time below is the database's clock. ---

  // An agent (re)starting: inserts the host, or re-registers it. Either way a new epoch (1, or
  // the old one + 1: a process still running with the old epoch is fenced out), heartbeat and
  // start time now, endpoint, totals, accelerator and labels as given. A lost host becomes active
  // again; a draining one stays draining (draining is the operator's decision and must survive
  // an agent restart, such as the upgrade it was drained for). Reservations are kept (the VMs the
  // restarted agent re-adopts still hold them; a lost host's were freed by the sweep).
  // InvalidArgument for an empty id or negative totals. (FLEET.md §4 let an active host's agent
  // keep its epoch; a new one every time also fences a second process of the same host, and
  // costs the sandboxes nothing: they belong to (host, generation), which this does not change.)
  virtual Result<HostRecord> RegisterHost(const HostRegistration& host) = 0;
  // Marks the host alive now, if it is still registered with `epoch` and not lost: one conditional
  // update. false: fenced (declared lost, re-registered by a newer process, or unknown) — the
  // agent must register again, then kill every VM whose record is no longer its own.
  virtual Result<bool> Heartbeat(const std::string& host_id, int64_t epoch) = 0;
  // Records how many warm clones of the base template the host has ready; fenced by the epoch
  // as a heartbeat is (false: fenced or lost).
  virtual Result<bool> SetHostWarm(const std::string& host_id, int64_t epoch,
                                   int64_t warm_base) = 0;
  virtual Result<std::vector<HostRecord>> ListHosts() = 0;  // by id
  virtual Result<std::optional<HostRecord>> GetHost(const std::string& host_id) = 0;
  // active → draining (draining = true) or draining → active; true if the state changed, false if
  // it already was so. not_found for an unknown host; failed_precondition for a lost one (only
  // its agent registering again brings it back).
  virtual Result<bool> SetHostDraining(const std::string& host_id, bool draining) = 0;
  // In one transaction: every active or draining host whose heartbeat is more than
  // `lost_after_ms` old becomes lost with epoch + 1 and no reservations, and its sandboxes that
  // hold resources (creating, running, pausing, resuming, killing, error) become lost; paused ones
  // stay paused (their snapshot is on that host's disk, or uploaded). Returns the hosts it declared
  // lost, by id. On PostgreSQL it takes a transaction-scoped advisory lock first and sweeps nothing
  // when another replica holds it (that round is theirs); even without it, two sweeps at once would
  // still declare each host lost once.
  virtual Result<std::vector<std::string>> SweepLostHosts(int64_t lost_after_ms) = 0;

  // --- Placement: capacity is reserved on a host by one conditional update, so replicas placing
  // at once never overbook it. ---

  // Active hosts with a fresh heartbeat (and the accelerator, CPU model and QEMU build asked for)
  // on which the need fits now, most free memory (total × ratio − reserved) first, then most free
  // vCPUs, then by id. Only a hint: the caller tries them in order with ReserveOnHost.
  virtual Result<std::vector<HostRecord>> PlacementCandidates(const PlacementQuery& query) = 0;
  // Reserves `vcpus` and `mem_mb` on the host if it is active and both still fit
  // (reserved + need ≤ total × overcommit): the host's endpoint if it did, nullopt if not (full,
  // draining, lost or unknown). InvalidArgument for a negative need or a ratio that is not a
  // positive number.
  virtual Result<std::optional<std::string>> ReserveOnHost(const std::string& host_id,
                                                           int64_t vcpus, int64_t mem_mb,
                                                           double cpu_overcommit,
                                                           double mem_overcommit) = 0;
  // Gives back what a sandbox reserved (never below 0); not_found for an unknown host. Release
  // only for a record that still holds resources: the sweep frees a lost host's reservations
  // itself, and a release for one of its sandboxes after the host registered again would free
  // capacity its new sandboxes hold.
  virtual Status ReleaseOnHost(const std::string& host_id, int64_t vcpus, int64_t mem_mb) = 0;
  // Every host that is not lost, its reservations and what its records hold, read together.
  virtual Result<std::vector<ReservationAudit>> AuditReservations() = 0;
  // Gives back a leaked part of a host's reservation (a create whose replica died between the
  // reservation and its record), only if nothing reserved or released on the host since the
  // audit that read `seq`, and never below what the host's records hold at that moment: false,
  // changing nothing, otherwise (or when the host is lost or unknown).
  virtual Result<bool> TrimReservation(const std::string& host_id, int64_t vcpus, int64_t mem_mb,
                                       int64_t seq) = 0;

  // --- Snapshots in the object store (StoredSnapshotRecord). Times are the caller's clock. ---

  // already_exists for a key in use; invalid_argument for a bad key, kind or state.
  virtual Status InsertStoredSnapshot(const StoredSnapshotRecord& r) = 0;
  virtual Result<std::optional<StoredSnapshotRecord>> GetStoredSnapshot(const std::string& key) = 0;
  // The newest (created_at_ms, then key) of this kind and owner that is not deleting.
  virtual Result<std::optional<StoredSnapshotRecord>> LatestStoredSnapshot(
      const std::string& kind, const std::string& owner_id) = 0;
  // Oldest first, at most filter.limit.
  virtual Result<std::vector<StoredSnapshotRecord>> ListStoredSnapshots(
      const StoredSnapshotFilter& filter) = 0;
  // local-only -> uploading (upload_started_at_ms = now_ms), unless a storage sweep began less
  // than `sweep_stale_ms` ago and has not ended: false, changing nothing, then (or when the
  // record is not local-only). Uploads and sweeps exclude each other (see BeginStorageSweep).
  virtual Result<bool> BeginSnapshotUpload(const std::string& key, int64_t now_ms,
                                           int64_t sweep_stale_ms) = 0;
  // uploading -> uploaded with its sizes; false if it was not uploading (deleted meanwhile).
  virtual Result<bool> FinishSnapshotUpload(const std::string& key, int64_t uploaded_at_ms,
                                            int64_t bytes, int64_t nonzero_bytes) = 0;
  // uploading -> local-only, attempts + 1, last_error = error (a later try resumes it).
  virtual Status FailSnapshotUpload(const std::string& key, const std::string& error) = 0;
  // Every upload of the host left `uploading` (its agent died mid-upload) back to local-only;
  // how many.
  virtual Result<int64_t> ResetSnapshotUploads(const std::string& host_id) = 0;
  // Every record of this kind and owner but `except_key` (empty: none spared) becomes deleting;
  // how many did.
  virtual Result<int64_t> MarkStoredSnapshotsDeleting(const std::string& kind,
                                                      const std::string& owner_id,
                                                      const std::string& except_key = "") = 0;
  // ok if there is none.
  virtual Status DeleteStoredSnapshot(const std::string& key) = 0;
  // Starts a mark-and-sweep of the store's chunks: true (sweeping_since = now_ms) when no other
  // sweep began less than `stale_ms` ago without ending, and no record has been uploading for
  // less than `stale_ms`; false otherwise, changing nothing. One conditional statement (or one
  // transaction), so two callers never both get true, and no upload begins until EndStorageSweep
  // (or until the sweep is stale: a sweeper that died).
  virtual Result<bool> BeginStorageSweep(int64_t now_ms, int64_t stale_ms) = 0;
  virtual Status EndStorageSweep() = 0;

  // Every sandbox recorded on the host, in any state, by id (an agent reconciling after it
  // registers).
  virtual Result<std::vector<SandboxRecord>> SandboxesOnHost(const std::string& host_id) = 0;
  // Records still `creating` that started before `started_before_ms` (the caller's clock: a
  // janitor's threshold, FLEET.md §4), oldest first.
  virtual Result<std::vector<SandboxRecord>> StaleCreating(int64_t started_before_ms) = 0;
};

}  // namespace moat::api::store
