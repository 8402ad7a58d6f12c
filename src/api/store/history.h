// What the store keeps of sandboxes beyond their lives (docs/dashboard.md, docs/usage.md):
// history records that outlive the sandbox, its lifecycle events, the commands run in it, its
// console log once it ended, the audit log of control actions, the network counters usage is
// metered from, the snapshot storage it is billed for, and the dashboard's sign-in sessions.
// Everything here is append-mostly and pruned after the retention period (PruneHistory).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace moat::api::store {

// How a sandbox ended (HistoryRecord::end_reason).
inline constexpr const char* kEndKilled = "killed";       // ended_by: the key's name
inline constexpr const char* kEndTimeout = "timeout";     // its end time passed (not auto-paused)
inline constexpr const char* kEndError = "error";         // end_detail: the reason
inline constexpr const char* kEndHostLost = "host_lost";  // its host stopped heartbeating

// A sandbox's record, kept from its create until the retention period after it ended.
struct HistoryRecord {
  std::string sandbox_id;
  std::string team_id;
  std::string template_id;
  std::string key_id;    // the API key that created it ("" when moatd did: none so far)
  std::string key_name;  // that key's name when it created it
  std::map<std::string, std::string> metadata;
  std::string host_id;  // where it ran last ("" on a single host)
  uint32_t cpu_count = 0;
  uint32_t memory_mb = 0;
  // Lineage: "fork" (parent_id: the sandbox it was forked from), "snapshot" (parent_id: the named
  // snapshot it was created from), or "" (a template).
  std::string parent_kind;
  std::string parent_id;
  int64_t created_at_ms = 0;
  int64_t ended_at_ms = 0;  // 0: still alive
  // The lifecycle state it was last seen in (api/lifecycle.h names: "running", "paused", …;
  // "killed", "lost" or "error" once it ended).
  std::string state;
  std::string end_reason;  // kEnd*; "" while alive
  std::string ended_by;    // for kEndKilled: the name of the key that killed it
  std::string end_detail;  // for kEndError: why
  // Totals of the network counters metered so far (RecordNetUsage).
  int64_t egress_bytes = 0;
  int64_t ingress_bytes = 0;
};

struct HistoryFilter {
  std::string team_id;  // required
  // "live" (not ended), "ended", or one lifecycle state name; empty: any.
  std::string state;
  std::string template_id;                      // empty: any
  std::map<std::string, std::string> metadata;  // every pair must match
  std::optional<int64_t> from_ms;               // created or alive at or after
  std::optional<int64_t> to_ms;                 // created before
  bool failed_only = false;  // ended with kEndError or kEndHostLost, or a failed command
  int limit = 100;
  std::string next_token;  // from the previous page
};

struct HistoryPage {
  std::vector<HistoryRecord> items;  // newest created first
  std::string next_token;            // empty: last page
};

// One lifecycle event of a sandbox, numbered in the order appended (seq).
struct SandboxEvent {
  int64_t seq = 0;  // assigned by the store
  std::string sandbox_id;
  std::string team_id;
  int64_t at_ms = 0;
  // "created", "paused", "resumed", "forked" (on the parent; detail: the children), "snapshot",
  // "network", "timeout", "killed", "error", "host_lost", "ended". Usage is computed from these:
  // created/resumed start running time, paused starts paused time, an end kind ends both.
  std::string kind;
  int64_t duration_ms = 0;  // how long the action took (0: not timed)
  std::string detail;       // JSON text, "" for none
};

// A command run in a sandbox through envd (kind "command") or the code interpreter ("code").
struct CommandRecord {
  int64_t id = 0;  // assigned by StartCommand
  std::string sandbox_id;
  std::string team_id;
  std::string kind = "command";  // "command", "pty" (an interactive PTY session) or "code"
  std::string command;  // the command line as given (the code, for "code"), at most 4 KiB kept
  std::string user;
  std::string cwd;
  int64_t started_at_ms = 0;
  int64_t ended_at_ms = 0;  // 0: still running (or moatd stopped before it ended)
  std::optional<int32_t> exit_code;
  std::string signal;  // "SIGKILL" when a signal ended it
  std::string error;   // envd's or the interpreter's error, if any
  // The first and last 4 KiB of each stream (tail empty when the head holds it all) and how many
  // bytes it had in all.
  std::string stdout_head, stdout_tail, stderr_head, stderr_tail;
  int64_t stdout_bytes = 0, stderr_bytes = 0;
};

// One control action (append-only).
struct AuditRecord {
  int64_t seq = 0;  // assigned by the store
  int64_t at_ms = 0;
  std::string team_id;
  std::string key_id;
  std::string key_name;
  std::string source;  // the client's address (X-Forwarded-For's first, or the peer)
  std::string request_id;
  // "sandbox.create", "sandbox.kill", "sandbox.pause", "sandbox.resume", "sandbox.fork",
  // "sandbox.snapshot", "sandbox.timeout", "sandbox.network", "snapshot.delete",
  // "template.build", "template.delete", "key.create", "key.revoke", "team.create",
  // "team.quotas", "host.drain", "host.undrain", "session.create", "session.delete".
  std::string action;
  std::string target;   // the sandbox, template, key… it acted on
  std::string outcome;  // "ok" or "error"
  int status = 0;       // the HTTP status answered
  std::string detail;   // JSON text, "" for none (an error's message)
};

struct AuditFilter {
  std::string team_id;  // empty: every team (admin keys only)
  std::string action;   // empty: any; "sandbox." matches every action with that prefix
  std::string target;   // empty: any
  std::optional<int64_t> from_ms, to_ms;  // [from, to)
  int limit = 100;
  std::string next_token;
};

struct AuditPage {
  std::vector<AuditRecord> items;  // newest first
  std::string next_token;
};

// Network bytes of a sandbox within one hour (usage's egress and ingress).
struct NetUsageRecord {
  std::string sandbox_id;
  int64_t hour_ms = 0;  // the hour's start
  int64_t egress_bytes = 0;
  int64_t ingress_bytes = 0;
};

// A stored snapshot as usage bills it: `bytes` held from created to deleted (0: still held).
// Ids: a named snapshot's id, or "<sandbox id>@<n>" for the snapshot of a paused sandbox.
struct SnapshotStorageRecord {
  std::string id;
  std::string team_id;
  std::string template_id;
  int64_t bytes = 0;
  int64_t created_at_ms = 0;
  int64_t deleted_at_ms = 0;
};

// Everything GET /usage is computed from for a team (or every team) and [from, to): the
// histories alive in it with their events, the commands run in them, their network buckets and
// the snapshots stored in it (api/usage.h does the arithmetic).
struct UsageInput {
  std::vector<HistoryRecord> histories;
  std::vector<SandboxEvent> events;     // of those histories, by sandbox then seq
  std::vector<CommandRecord> commands;  // intervals only (no output), of those histories
  std::vector<NetUsageRecord> net;
  std::vector<SnapshotStorageRecord> snapshots;
};

// A dashboard sign-in: the cookie holds a random token, the store its SHA-256.
struct SessionRecord {
  std::string token_sha256;
  std::string team_id;
  std::string key_id;  // the key signed in with: revoking it ends the session
  std::string key_name;
  std::string csrf_token;  // sent back in X-Moat-CSRF by the page
  int64_t created_at_ms = 0;
  int64_t expires_at_ms = 0;
};

// What PruneHistory removed.
struct PruneCounts {
  int64_t histories = 0, events = 0, commands = 0, audit = 0, net = 0, snapshots = 0, sessions = 0;
};

}  // namespace moat::api::store
