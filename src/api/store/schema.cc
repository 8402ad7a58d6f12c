#include "api/store/schema.h"

#include <iterator>

namespace moat::api::store {

const Migration kMigrations[] = {
    // 1: teams, keys, sandboxes and their metadata.
    {R"sql(
CREATE TABLE teams (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  created_at_ms INTEGER NOT NULL
);
CREATE TABLE api_keys (
  id TEXT PRIMARY KEY,
  team_id TEXT NOT NULL REFERENCES teams(id),
  name TEXT NOT NULL,
  key_sha256 TEXT NOT NULL UNIQUE,
  mask TEXT NOT NULL,
  created_at_ms INTEGER NOT NULL,
  revoked_at_ms INTEGER
);
CREATE TABLE sandboxes (
  id TEXT PRIMARY KEY,
  team_id TEXT NOT NULL REFERENCES teams(id),
  template_id TEXT NOT NULL,
  access_token TEXT NOT NULL,
  env_vars TEXT NOT NULL,
  state TEXT NOT NULL,
  started_at_ms INTEGER NOT NULL,
  end_at_ms INTEGER NOT NULL,
  auto_pause INTEGER NOT NULL,
  cpu_count INTEGER NOT NULL,
  memory_mb INTEGER NOT NULL,
  disk_size_mb INTEGER NOT NULL
);
CREATE INDEX sandboxes_by_team ON sandboxes(team_id, started_at_ms, id);
CREATE TABLE sandbox_metadata (
  sandbox_id TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
  key TEXT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY (sandbox_id, key)
);
)sql",
     R"sql(
CREATE TABLE teams (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  created_at_ms BIGINT NOT NULL
);
CREATE TABLE api_keys (
  id TEXT PRIMARY KEY,
  team_id TEXT NOT NULL REFERENCES teams(id),
  name TEXT NOT NULL,
  key_sha256 TEXT NOT NULL UNIQUE,
  mask TEXT NOT NULL,
  created_at_ms BIGINT NOT NULL,
  revoked_at_ms BIGINT
);
CREATE TABLE sandboxes (
  id TEXT PRIMARY KEY,
  team_id TEXT NOT NULL REFERENCES teams(id),
  template_id TEXT NOT NULL,
  access_token TEXT NOT NULL,
  env_vars TEXT NOT NULL,
  state TEXT NOT NULL,
  started_at_ms BIGINT NOT NULL,
  end_at_ms BIGINT NOT NULL,
  auto_pause INTEGER NOT NULL,
  cpu_count INTEGER NOT NULL,
  memory_mb INTEGER NOT NULL,
  disk_size_mb INTEGER NOT NULL
);
CREATE INDEX sandboxes_by_team ON sandboxes(team_id, started_at_ms, id);
CREATE TABLE sandbox_metadata (
  sandbox_id TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
  key TEXT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY (sandbox_id, key)
);
)sql"},
    // 2: the admin flag of teams, and named snapshots' owners.
    {R"sql(
ALTER TABLE teams ADD COLUMN is_admin INTEGER NOT NULL DEFAULT 0;
-- Until now only the first start created teams: every existing team is that admin team.
UPDATE teams SET is_admin = 1;
CREATE TABLE snapshots (
  id TEXT PRIMARY KEY,
  team_id TEXT NOT NULL REFERENCES teams(id),
  sandbox_id TEXT NOT NULL,
  name TEXT NOT NULL,
  created_at_ms INTEGER NOT NULL
);
CREATE INDEX snapshots_by_team ON snapshots(team_id, created_at_ms, id);
)sql",
     R"sql(
ALTER TABLE teams ADD COLUMN is_admin INTEGER NOT NULL DEFAULT 0;
UPDATE teams SET is_admin = 1;
CREATE TABLE snapshots (
  id TEXT PRIMARY KEY,
  team_id TEXT NOT NULL REFERENCES teams(id),
  sandbox_id TEXT NOT NULL,
  name TEXT NOT NULL,
  created_at_ms BIGINT NOT NULL
);
CREATE INDEX snapshots_by_team ON snapshots(team_id, created_at_ms, id);
)sql"},
    // 3: the token that guards a sandbox's ports when they are not public.
    {R"sql(
ALTER TABLE sandboxes ADD COLUMN traffic_access_token TEXT NOT NULL DEFAULT '';
)sql",
     R"sql(
ALTER TABLE sandboxes ADD COLUMN traffic_access_token TEXT NOT NULL DEFAULT '';
)sql"},
    // 4: per-team quotas; a NULL limit is moatd's default (api/team_quotas.h).
    {R"sql(
CREATE TABLE team_quotas (
  team_id TEXT PRIMARY KEY REFERENCES teams(id),
  max_sandboxes INTEGER,
  max_vcpus INTEGER,
  max_memory_mib INTEGER,
  max_creates_per_minute INTEGER,
  max_metadata_bytes INTEGER
);
CREATE INDEX sandboxes_by_team_state ON sandboxes(team_id, state);
)sql",
     R"sql(
CREATE TABLE team_quotas (
  team_id TEXT PRIMARY KEY REFERENCES teams(id),
  max_sandboxes BIGINT,
  max_vcpus BIGINT,
  max_memory_mib BIGINT,
  max_creates_per_minute BIGINT,
  max_metadata_bytes BIGINT
);
CREATE INDEX sandboxes_by_team_state ON sandboxes(team_id, state);
)sql"},
    // 5: the lifecycle's host and generation (api/lifecycle.h; stored states keep their names).
    {R"sql(
ALTER TABLE sandboxes ADD COLUMN host_id TEXT NOT NULL DEFAULT '';
ALTER TABLE sandboxes ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
CREATE INDEX sandboxes_by_state ON sandboxes(state, host_id);
)sql",
     R"sql(
ALTER TABLE sandboxes ADD COLUMN host_id TEXT NOT NULL DEFAULT '';
ALTER TABLE sandboxes ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
CREATE INDEX sandboxes_by_state ON sandboxes(state, host_id);
)sql"},
    // 6: the fleet's hosts (shared/FLEET.md §3). Times are ms since the epoch from the
    // database's own clock. Labels are a JSON object as text. Sandboxes by host: reconciliation
    // and the lost-host sweep.
    {R"sql(
CREATE TABLE hosts (
  id TEXT PRIMARY KEY,
  endpoint TEXT NOT NULL,
  epoch INTEGER NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('active', 'draining', 'lost')),
  heartbeat_at_ms INTEGER NOT NULL,
  started_at_ms INTEGER NOT NULL,
  vcpu_total INTEGER NOT NULL,
  mem_total_mb INTEGER NOT NULL,
  vcpu_reserved INTEGER NOT NULL DEFAULT 0,
  mem_reserved_mb INTEGER NOT NULL DEFAULT 0,
  accel TEXT NOT NULL DEFAULT '',
  cpu_model TEXT NOT NULL DEFAULT '',
  qemu_build TEXT NOT NULL DEFAULT '',
  labels TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX hosts_by_state ON hosts(state, heartbeat_at_ms);
CREATE INDEX sandboxes_by_host ON sandboxes(host_id, state);
)sql",
     R"sql(
CREATE TABLE hosts (
  id TEXT PRIMARY KEY,
  endpoint TEXT NOT NULL,
  epoch BIGINT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('active', 'draining', 'lost')),
  heartbeat_at_ms BIGINT NOT NULL,
  started_at_ms BIGINT NOT NULL,
  vcpu_total BIGINT NOT NULL,
  mem_total_mb BIGINT NOT NULL,
  vcpu_reserved BIGINT NOT NULL DEFAULT 0,
  mem_reserved_mb BIGINT NOT NULL DEFAULT 0,
  accel TEXT NOT NULL DEFAULT '',
  cpu_model TEXT NOT NULL DEFAULT '',
  qemu_build TEXT NOT NULL DEFAULT '',
  labels TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX hosts_by_state ON hosts(state, heartbeat_at_ms);
CREATE INDEX sandboxes_by_host ON sandboxes(host_id, state);
)sql"},
    // 7: the host that holds a named snapshot (a create from it is placed there).
    {R"sql(
ALTER TABLE snapshots ADD COLUMN host_id TEXT NOT NULL DEFAULT '';
)sql",
     R"sql(
ALTER TABLE snapshots ADD COLUMN host_id TEXT NOT NULL DEFAULT '';
)sql"},
    // 8: route-change notifications. On PostgreSQL every change of a running sandbox's state,
    // host or generation, and its delete, sends its id on channel `moat_sandbox` when the
    // transaction commits (whichever statement made it: a transition, a lost-host sweep), so
    // route caches of other processes drop it at once (RouteCache::Watch). Route caches hold
    // running records only, so other changes notify nothing (a NOTIFY serializes commits).
    // SQLite serves one process: nothing.
    {R"sql(
-- nothing: one process owns a SQLite store
)sql",
     R"sql(
CREATE FUNCTION moat_sandbox_changed() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  IF OLD.state <> 'running' THEN
    RETURN NULL;
  END IF;
  IF TG_OP = 'DELETE' THEN
    PERFORM pg_notify('moat_sandbox', OLD.id);
    RETURN NULL;
  END IF;
  IF NEW.state IS DISTINCT FROM OLD.state OR NEW.host_id IS DISTINCT FROM OLD.host_id OR
     NEW.generation IS DISTINCT FROM OLD.generation THEN
    PERFORM pg_notify('moat_sandbox', NEW.id);
  END IF;
  RETURN NULL;
END
$fn$;
CREATE TRIGGER sandboxes_changed AFTER UPDATE OR DELETE ON sandboxes
  FOR EACH ROW EXECUTE FUNCTION moat_sandbox_changed();
)sql"},
    // 9: warm clones of the base template a host has ready, as it last reported them (placement
    // prefers a host that can hand one out); a counter of changes to a host's reservations (the
    // audit trims only an excess that no reservation or release has touched for several rounds).
    {R"sql(
ALTER TABLE hosts ADD COLUMN warm_base INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN reservation_seq INTEGER NOT NULL DEFAULT 0;
)sql",
     R"sql(
ALTER TABLE hosts ADD COLUMN warm_base BIGINT NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN reservation_seq BIGINT NOT NULL DEFAULT 0;
)sql"},
    // 10: a sandbox's lifecycle and proxy options from its create (SandboxOptions, JSON):
    // autoPause keeping memory or the filesystem only, auto-resume on traffic, maskRequestHost.
    {R"sql(
ALTER TABLE sandboxes ADD COLUMN options TEXT NOT NULL DEFAULT '{}';
)sql",
     R"sql(
ALTER TABLE sandboxes ADD COLUMN options TEXT NOT NULL DEFAULT '{}';
)sql"},
    // 11: custom templates (docs/templates.md): a team's templates by alias, their builds (JSON
    // texts for the start request, a failure's reason and a ready build's result; "" when unset),
    // which builds carry which tags (a tag may point at several builds: the newest ready one
    // wins), and each build's log numbered from 0. A template's builds, tags and logs go with it
    // (ON DELETE CASCADE; SqliteStore turns foreign keys on when it opens).
    {R"sql(
CREATE TABLE templates (
  id TEXT PRIMARY KEY,
  team_id TEXT NOT NULL REFERENCES teams(id),
  alias TEXT NOT NULL,
  is_public INTEGER NOT NULL DEFAULT 0,
  created_at_ms INTEGER NOT NULL,
  updated_at_ms INTEGER NOT NULL,
  spawn_count INTEGER NOT NULL DEFAULT 0,
  last_spawned_at_ms INTEGER NOT NULL DEFAULT 0,
  UNIQUE (team_id, alias)
);
CREATE TABLE template_builds (
  id TEXT PRIMARY KEY,
  template_id TEXT NOT NULL REFERENCES templates(id) ON DELETE CASCADE,
  team_id TEXT NOT NULL,
  status TEXT NOT NULL,
  cpu_count INTEGER NOT NULL,
  memory_mb INTEGER NOT NULL,
  min_free_disk_mb INTEGER NOT NULL,
  disk_size_mb INTEGER NOT NULL DEFAULT 0,
  spec TEXT NOT NULL DEFAULT '',
  reason TEXT NOT NULL DEFAULT '',
  result TEXT NOT NULL DEFAULT '',
  host_id TEXT NOT NULL DEFAULT '',
  created_at_ms INTEGER NOT NULL,
  started_at_ms INTEGER NOT NULL DEFAULT 0,
  finished_at_ms INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX template_builds_by_template ON template_builds(template_id, created_at_ms);
CREATE INDEX template_builds_by_status ON template_builds(status);
CREATE TABLE template_tags (
  template_id TEXT NOT NULL REFERENCES templates(id) ON DELETE CASCADE,
  tag TEXT NOT NULL,
  build_id TEXT NOT NULL REFERENCES template_builds(id) ON DELETE CASCADE,
  assigned_at_ms INTEGER NOT NULL,
  PRIMARY KEY (template_id, tag, build_id)
);
CREATE INDEX template_tags_by_build ON template_tags(build_id);
CREATE TABLE template_build_logs (
  build_id TEXT NOT NULL REFERENCES template_builds(id) ON DELETE CASCADE,
  seq INTEGER NOT NULL,
  timestamp_ms INTEGER NOT NULL,
  level TEXT NOT NULL,
  step TEXT NOT NULL,
  message TEXT NOT NULL,
  PRIMARY KEY (build_id, seq)
);
)sql",
     R"sql(
CREATE TABLE templates (
  id TEXT PRIMARY KEY,
  team_id TEXT NOT NULL REFERENCES teams(id),
  alias TEXT NOT NULL,
  is_public INTEGER NOT NULL DEFAULT 0,
  created_at_ms BIGINT NOT NULL,
  updated_at_ms BIGINT NOT NULL,
  spawn_count BIGINT NOT NULL DEFAULT 0,
  last_spawned_at_ms BIGINT NOT NULL DEFAULT 0,
  UNIQUE (team_id, alias)
);
CREATE TABLE template_builds (
  id TEXT PRIMARY KEY,
  template_id TEXT NOT NULL REFERENCES templates(id) ON DELETE CASCADE,
  team_id TEXT NOT NULL,
  status TEXT NOT NULL,
  cpu_count BIGINT NOT NULL,
  memory_mb BIGINT NOT NULL,
  min_free_disk_mb BIGINT NOT NULL,
  disk_size_mb BIGINT NOT NULL DEFAULT 0,
  spec TEXT NOT NULL DEFAULT '',
  reason TEXT NOT NULL DEFAULT '',
  result TEXT NOT NULL DEFAULT '',
  host_id TEXT NOT NULL DEFAULT '',
  created_at_ms BIGINT NOT NULL,
  started_at_ms BIGINT NOT NULL DEFAULT 0,
  finished_at_ms BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX template_builds_by_template ON template_builds(template_id, created_at_ms);
CREATE INDEX template_builds_by_status ON template_builds(status);
CREATE TABLE template_tags (
  template_id TEXT NOT NULL REFERENCES templates(id) ON DELETE CASCADE,
  tag TEXT NOT NULL,
  build_id TEXT NOT NULL REFERENCES template_builds(id) ON DELETE CASCADE,
  assigned_at_ms BIGINT NOT NULL,
  PRIMARY KEY (template_id, tag, build_id)
);
CREATE INDEX template_tags_by_build ON template_tags(build_id);
CREATE TABLE template_build_logs (
  build_id TEXT NOT NULL REFERENCES template_builds(id) ON DELETE CASCADE,
  seq BIGINT NOT NULL,
  timestamp_ms BIGINT NOT NULL,
  level TEXT NOT NULL,
  step TEXT NOT NULL,
  message TEXT NOT NULL,
  PRIMARY KEY (build_id, seq)
);
)sql"},
    // 12: the files of templates' COPY steps (tar archives uploaded for builds), by team and
    // content hash, in pieces of at most 1 MiB numbered from 0 so that every replica can serve
    // them. A file is always at least one piece (an empty file: one empty piece), written in one
    // transaction with the pieces of the file it replaces deleted.
    {R"sql(
CREATE TABLE template_files (
  team_id TEXT NOT NULL REFERENCES teams(id),
  hash TEXT NOT NULL,
  seq INTEGER NOT NULL,
  data BLOB NOT NULL,
  created_at_ms INTEGER NOT NULL,
  PRIMARY KEY (team_id, hash, seq)
);
)sql",
     R"sql(
CREATE TABLE template_files (
  team_id TEXT NOT NULL REFERENCES teams(id),
  hash TEXT NOT NULL,
  seq BIGINT NOT NULL,
  data BYTEA NOT NULL,
  created_at_ms BIGINT NOT NULL,
  PRIMARY KEY (team_id, hash, seq)
);
)sql"},
    // 13: what is kept of sandboxes beyond their lives (api/store/history.h): their history
    // records, lifecycle events, commands and console logs, the audit log, network usage by hour
    // (and the last counter reading, so that a reading is counted once), stored snapshots as usage
    // bills them, and the dashboard's sessions. No foreign keys: a history outlives its sandbox's
    // record (deleted when it is killed), and events may arrive before the history is written.
    // AUTOINCREMENT: a number is never used twice, even after the newest rows were pruned.
    {R"sql(
CREATE TABLE sandbox_history (
  sandbox_id TEXT PRIMARY KEY,
  team_id TEXT NOT NULL,
  template_id TEXT NOT NULL,
  key_id TEXT NOT NULL DEFAULT '',
  key_name TEXT NOT NULL DEFAULT '',
  metadata TEXT NOT NULL DEFAULT '{}',
  host_id TEXT NOT NULL DEFAULT '',
  cpu_count INTEGER NOT NULL DEFAULT 0,
  memory_mb INTEGER NOT NULL DEFAULT 0,
  parent_kind TEXT NOT NULL DEFAULT '',
  parent_id TEXT NOT NULL DEFAULT '',
  created_at_ms INTEGER NOT NULL,
  ended_at_ms INTEGER NOT NULL DEFAULT 0,
  state TEXT NOT NULL,
  end_reason TEXT NOT NULL DEFAULT '',
  ended_by TEXT NOT NULL DEFAULT '',
  end_detail TEXT NOT NULL DEFAULT '',
  egress_bytes INTEGER NOT NULL DEFAULT 0,
  ingress_bytes INTEGER NOT NULL DEFAULT 0,
  net_last_egress INTEGER NOT NULL DEFAULT 0,
  net_last_ingress INTEGER NOT NULL DEFAULT 0,
  net_last_gen INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sandbox_history_by_team ON sandbox_history(team_id, created_at_ms, sandbox_id);
CREATE INDEX sandbox_history_by_parent ON sandbox_history(parent_id);
CREATE INDEX sandbox_history_by_end ON sandbox_history(ended_at_ms);
CREATE TABLE sandbox_events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  sandbox_id TEXT NOT NULL,
  team_id TEXT NOT NULL,
  at_ms INTEGER NOT NULL,
  kind TEXT NOT NULL,
  duration_ms INTEGER NOT NULL DEFAULT 0,
  detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX sandbox_events_by_sandbox ON sandbox_events(sandbox_id, seq);
CREATE TABLE sandbox_commands (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  sandbox_id TEXT NOT NULL,
  team_id TEXT NOT NULL,
  kind TEXT NOT NULL,
  command TEXT NOT NULL,
  usr TEXT NOT NULL,
  cwd TEXT NOT NULL,
  started_at_ms INTEGER NOT NULL,
  ended_at_ms INTEGER NOT NULL DEFAULT 0,
  exit_code INTEGER,
  signal TEXT NOT NULL DEFAULT '',
  error TEXT NOT NULL DEFAULT '',
  stdout_head TEXT NOT NULL DEFAULT '',
  stdout_tail TEXT NOT NULL DEFAULT '',
  stderr_head TEXT NOT NULL DEFAULT '',
  stderr_tail TEXT NOT NULL DEFAULT '',
  stdout_bytes INTEGER NOT NULL DEFAULT 0,
  stderr_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sandbox_commands_by_sandbox ON sandbox_commands(sandbox_id, id);
CREATE TABLE sandbox_console (
  sandbox_id TEXT PRIMARY KEY,
  text TEXT NOT NULL
);
CREATE TABLE audit_log (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  at_ms INTEGER NOT NULL,
  team_id TEXT NOT NULL,
  key_id TEXT NOT NULL,
  key_name TEXT NOT NULL,
  source TEXT NOT NULL,
  request_id TEXT NOT NULL,
  action TEXT NOT NULL,
  target TEXT NOT NULL,
  outcome TEXT NOT NULL,
  status INTEGER NOT NULL,
  detail TEXT NOT NULL
);
CREATE INDEX audit_log_by_team ON audit_log(team_id, seq);
CREATE INDEX audit_log_by_time ON audit_log(at_ms);
CREATE TABLE net_usage (
  sandbox_id TEXT NOT NULL,
  hour_ms INTEGER NOT NULL,
  egress_bytes INTEGER NOT NULL DEFAULT 0,
  ingress_bytes INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (sandbox_id, hour_ms)
);
CREATE INDEX net_usage_by_hour ON net_usage(hour_ms);
CREATE TABLE snapshot_storage (
  id TEXT PRIMARY KEY,
  team_id TEXT NOT NULL,
  template_id TEXT NOT NULL,
  bytes INTEGER NOT NULL,
  created_at_ms INTEGER NOT NULL,
  deleted_at_ms INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX snapshot_storage_by_team ON snapshot_storage(team_id, created_at_ms);
CREATE TABLE dashboard_sessions (
  token_sha256 TEXT PRIMARY KEY,
  team_id TEXT NOT NULL,
  key_id TEXT NOT NULL,
  key_name TEXT NOT NULL,
  csrf_token TEXT NOT NULL,
  created_at_ms INTEGER NOT NULL,
  expires_at_ms INTEGER NOT NULL
);
CREATE INDEX dashboard_sessions_by_expiry ON dashboard_sessions(expires_at_ms);
)sql",
     R"sql(
CREATE TABLE sandbox_history (
  sandbox_id TEXT PRIMARY KEY,
  team_id TEXT NOT NULL,
  template_id TEXT NOT NULL,
  key_id TEXT NOT NULL DEFAULT '',
  key_name TEXT NOT NULL DEFAULT '',
  metadata TEXT NOT NULL DEFAULT '{}',
  host_id TEXT NOT NULL DEFAULT '',
  cpu_count BIGINT NOT NULL DEFAULT 0,
  memory_mb BIGINT NOT NULL DEFAULT 0,
  parent_kind TEXT NOT NULL DEFAULT '',
  parent_id TEXT NOT NULL DEFAULT '',
  created_at_ms BIGINT NOT NULL,
  ended_at_ms BIGINT NOT NULL DEFAULT 0,
  state TEXT NOT NULL,
  end_reason TEXT NOT NULL DEFAULT '',
  ended_by TEXT NOT NULL DEFAULT '',
  end_detail TEXT NOT NULL DEFAULT '',
  egress_bytes BIGINT NOT NULL DEFAULT 0,
  ingress_bytes BIGINT NOT NULL DEFAULT 0,
  net_last_egress BIGINT NOT NULL DEFAULT 0,
  net_last_ingress BIGINT NOT NULL DEFAULT 0,
  net_last_gen BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX sandbox_history_by_team ON sandbox_history(team_id, created_at_ms, sandbox_id COLLATE "C");
CREATE INDEX sandbox_history_by_parent ON sandbox_history(parent_id);
CREATE INDEX sandbox_history_by_end ON sandbox_history(ended_at_ms);
CREATE TABLE sandbox_events (
  seq BIGSERIAL PRIMARY KEY,
  sandbox_id TEXT NOT NULL,
  team_id TEXT NOT NULL,
  at_ms BIGINT NOT NULL,
  kind TEXT NOT NULL,
  duration_ms BIGINT NOT NULL DEFAULT 0,
  detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX sandbox_events_by_sandbox ON sandbox_events(sandbox_id, seq);
CREATE TABLE sandbox_commands (
  id BIGSERIAL PRIMARY KEY,
  sandbox_id TEXT NOT NULL,
  team_id TEXT NOT NULL,
  kind TEXT NOT NULL,
  command TEXT NOT NULL,
  usr TEXT NOT NULL,
  cwd TEXT NOT NULL,
  started_at_ms BIGINT NOT NULL,
  ended_at_ms BIGINT NOT NULL DEFAULT 0,
  exit_code BIGINT,
  signal TEXT NOT NULL DEFAULT '',
  error TEXT NOT NULL DEFAULT '',
  stdout_head TEXT NOT NULL DEFAULT '',
  stdout_tail TEXT NOT NULL DEFAULT '',
  stderr_head TEXT NOT NULL DEFAULT '',
  stderr_tail TEXT NOT NULL DEFAULT '',
  stdout_bytes BIGINT NOT NULL DEFAULT 0,
  stderr_bytes BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX sandbox_commands_by_sandbox ON sandbox_commands(sandbox_id, id);
CREATE TABLE sandbox_console (
  sandbox_id TEXT PRIMARY KEY,
  text TEXT NOT NULL
);
CREATE TABLE audit_log (
  seq BIGSERIAL PRIMARY KEY,
  at_ms BIGINT NOT NULL,
  team_id TEXT NOT NULL,
  key_id TEXT NOT NULL,
  key_name TEXT NOT NULL,
  source TEXT NOT NULL,
  request_id TEXT NOT NULL,
  action TEXT NOT NULL,
  target TEXT NOT NULL,
  outcome TEXT NOT NULL,
  status INTEGER NOT NULL,
  detail TEXT NOT NULL
);
CREATE INDEX audit_log_by_team ON audit_log(team_id, seq);
CREATE INDEX audit_log_by_time ON audit_log(at_ms);
CREATE TABLE net_usage (
  sandbox_id TEXT NOT NULL,
  hour_ms BIGINT NOT NULL,
  egress_bytes BIGINT NOT NULL DEFAULT 0,
  ingress_bytes BIGINT NOT NULL DEFAULT 0,
  PRIMARY KEY (sandbox_id, hour_ms)
);
CREATE INDEX net_usage_by_hour ON net_usage(hour_ms);
CREATE TABLE snapshot_storage (
  id TEXT PRIMARY KEY,
  team_id TEXT NOT NULL,
  template_id TEXT NOT NULL,
  bytes BIGINT NOT NULL,
  created_at_ms BIGINT NOT NULL,
  deleted_at_ms BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX snapshot_storage_by_team ON snapshot_storage(team_id, created_at_ms);
CREATE TABLE dashboard_sessions (
  token_sha256 TEXT PRIMARY KEY,
  team_id TEXT NOT NULL,
  key_id TEXT NOT NULL,
  key_name TEXT NOT NULL,
  csrf_token TEXT NOT NULL,
  created_at_ms BIGINT NOT NULL,
  expires_at_ms BIGINT NOT NULL
);
CREATE INDEX dashboard_sessions_by_expiry ON dashboard_sessions(expires_at_ms);
)sql"},
    // 14: snapshots in the object store (StoredSnapshotRecord; docs/snapshots.md "Across hosts"):
    // one row per snapshot a host wrote, by its key under snapshots/, with its upload's state;
    // and the one row of the store's chunk sweep, whose start time (0: none running) keeps
    // uploads and sweeps apart (BeginSnapshotUpload, BeginStorageSweep).
    {R"sql(
CREATE TABLE stored_snapshots (
  key TEXT PRIMARY KEY,
  kind TEXT NOT NULL,
  owner_id TEXT NOT NULL,
  team_id TEXT NOT NULL DEFAULT '',
  host_id TEXT NOT NULL DEFAULT '',
  state TEXT NOT NULL,
  bytes INTEGER NOT NULL DEFAULT 0,
  nonzero_bytes INTEGER NOT NULL DEFAULT 0,
  created_at_ms INTEGER NOT NULL,
  upload_started_at_ms INTEGER NOT NULL DEFAULT 0,
  uploaded_at_ms INTEGER NOT NULL DEFAULT 0,
  attempts INTEGER NOT NULL DEFAULT 0,
  last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX stored_snapshots_by_owner ON stored_snapshots(owner_id, kind, created_at_ms);
CREATE INDEX stored_snapshots_by_state ON stored_snapshots(state, host_id);
CREATE TABLE storage_sweep (
  id INTEGER PRIMARY KEY,
  sweeping_since_ms INTEGER NOT NULL DEFAULT 0
);
INSERT INTO storage_sweep (id, sweeping_since_ms) VALUES (1, 0);
)sql",
     R"sql(
CREATE TABLE stored_snapshots (
  key TEXT PRIMARY KEY,
  kind TEXT NOT NULL,
  owner_id TEXT NOT NULL,
  team_id TEXT NOT NULL DEFAULT '',
  host_id TEXT NOT NULL DEFAULT '',
  state TEXT NOT NULL,
  bytes BIGINT NOT NULL DEFAULT 0,
  nonzero_bytes BIGINT NOT NULL DEFAULT 0,
  created_at_ms BIGINT NOT NULL,
  upload_started_at_ms BIGINT NOT NULL DEFAULT 0,
  uploaded_at_ms BIGINT NOT NULL DEFAULT 0,
  attempts BIGINT NOT NULL DEFAULT 0,
  last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX stored_snapshots_by_owner ON stored_snapshots(owner_id, kind, created_at_ms);
CREATE INDEX stored_snapshots_by_state ON stored_snapshots(state, host_id);
CREATE TABLE storage_sweep (
  id INTEGER PRIMARY KEY,
  sweeping_since_ms BIGINT NOT NULL DEFAULT 0
);
INSERT INTO storage_sweep (id, sweeping_since_ms) VALUES (1, 0);
)sql"},
};

const size_t kMigrationCount = std::size(kMigrations);

std::string SqlStateList(bool (*pred)(SandboxState)) {
  std::string out = "(";
  for (SandboxState s : kAllSandboxStates) {
    if (!pred(s)) continue;
    if (out.size() > 1) out += ", ";
    out += "'" + std::string(SandboxStateName(s)) + "'";
  }
  if (out.size() == 1) out += "NULL";  // matches nothing
  return out + ")";
}

}  // namespace moat::api::store
