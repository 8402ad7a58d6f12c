// Store: moatd's durable state — teams, API keys (only their SHA-256), sandboxes with their
// metadata, end times, lifecycle state and host, and which team owns which named snapshot. Two
// implementations with the same schema migrations and the same test suite: SqliteStore (the
// embedded default of `moatd serve`) and PgStore (PostgreSQL: a fleet's one source of truth).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "api/lifecycle.h"
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
  std::string mask;  // "moat_1a2b…9f0e": enough to recognise a key, never enough to use it
  int64_t created_at_ms = 0;
};

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

class Store {
 public:
  virtual ~Store() = default;

  virtual Result<bool> HasApiKeys() = 0;
  virtual Result<TeamRecord> CreateTeam(const std::string& name, bool admin) = 0;
  virtual Result<std::optional<TeamRecord>> GetTeam(const std::string& id) = 0;
  virtual Result<std::optional<TeamRecord>> TeamByName(const std::string& name) = 0;
  virtual Result<ApiKeyRecord> AddApiKey(const std::string& team_id, const std::string& name,
                                         const std::string& key_sha256,
                                         const std::string& mask) = 0;
  // The team a (non-revoked) key belongs to; nullopt for an unknown key.
  virtual Result<std::optional<TeamRecord>> TeamByKeyHash(const std::string& key_sha256) = 0;
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
};

}  // namespace moat::api::store
