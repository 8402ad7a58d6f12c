// SqliteStore's history records, lifecycle events, commands, console logs, audit log, network and
// snapshot usage, and dashboard sessions (store/history.h; schema migration 13), and the key
// behind a key hash (who acts, as the audit log and history name it).
#include <sqlite3.h>

#include <memory>
#include <utility>
#include <vector>

#include "api/store/history_rows.h"
#include "api/store/json_text.h"
#include "api/store/sqlite_statement.h"
#include "api/store/sqlite_store.h"

namespace moat::api::store {
namespace {

using sqlite::QueryBuilder;
using sqlite::Statement;
using sqlite::Transaction;

constexpr const char* kHistoryColumns =
    "h.sandbox_id, h.team_id, h.template_id, h.key_id, h.key_name, h.metadata, h.host_id, "
    "h.cpu_count, h.memory_mb, h.parent_kind, h.parent_id, h.created_at_ms, h.ended_at_ms, "
    "h.state, h.end_reason, h.ended_by, h.end_detail, h.egress_bytes, h.ingress_bytes";

HistoryRecord ReadHistory(Statement& s) {
  HistoryRecord h;
  h.sandbox_id = s.Text(0);
  h.team_id = s.Text(1);
  h.template_id = s.Text(2);
  h.key_id = s.Text(3);
  h.key_name = s.Text(4);
  h.metadata = StringMapFromJson(s.Text(5));
  h.host_id = s.Text(6);
  h.cpu_count = static_cast<uint32_t>(s.Int(7));
  h.memory_mb = static_cast<uint32_t>(s.Int(8));
  h.parent_kind = s.Text(9);
  h.parent_id = s.Text(10);
  h.created_at_ms = s.Int(11);
  h.ended_at_ms = s.Int(12);
  h.state = s.Text(13);
  h.end_reason = s.Text(14);
  h.ended_by = s.Text(15);
  h.end_detail = s.Text(16);
  h.egress_bytes = s.Int(17);
  h.ingress_bytes = s.Int(18);
  return h;
}

constexpr const char* kEventColumns =
    "e.seq, e.sandbox_id, e.team_id, e.at_ms, e.kind, e.duration_ms, e.detail";

SandboxEvent ReadEvent(Statement& s) {
  return SandboxEvent{s.Int(0), s.Text(1), s.Text(2), s.Int(3), s.Text(4), s.Int(5), s.Text(6)};
}

constexpr const char* kCommandColumns =
    "id, sandbox_id, team_id, kind, command, usr, cwd, started_at_ms, ended_at_ms, exit_code, "
    "signal, error, stdout_head, stdout_tail, stderr_head, stderr_tail, stdout_bytes, "
    "stderr_bytes";

CommandRecord ReadCommand(Statement& s) {
  CommandRecord c;
  c.id = s.Int(0);
  c.sandbox_id = s.Text(1);
  c.team_id = s.Text(2);
  c.kind = s.Text(3);
  c.command = s.Text(4);
  c.user = s.Text(5);
  c.cwd = s.Text(6);
  c.started_at_ms = s.Int(7);
  c.ended_at_ms = s.Int(8);
  if (auto code = s.OptionalInt(9)) c.exit_code = static_cast<int32_t>(*code);
  c.signal = s.Text(10);
  c.error = s.Text(11);
  c.stdout_head = s.Text(12);
  c.stdout_tail = s.Text(13);
  c.stderr_head = s.Text(14);
  c.stderr_tail = s.Text(15);
  c.stdout_bytes = s.Int(16);
  c.stderr_bytes = s.Int(17);
  return c;
}

constexpr const char* kAuditColumns =
    "seq, at_ms, team_id, key_id, key_name, source, request_id, action, target, outcome, status, "
    "detail";

AuditRecord ReadAudit(Statement& s) {
  AuditRecord a;
  a.seq = s.Int(0);
  a.at_ms = s.Int(1);
  a.team_id = s.Text(2);
  a.key_id = s.Text(3);
  a.key_name = s.Text(4);
  a.source = s.Text(5);
  a.request_id = s.Text(6);
  a.action = s.Text(7);
  a.target = s.Text(8);
  a.outcome = s.Text(9);
  a.status = static_cast<int>(s.Int(10));
  a.detail = s.Text(11);
  return a;
}

constexpr const char* kSessionColumns =
    "s.token_sha256, s.team_id, s.key_id, s.key_name, s.csrf_token, s.created_at_ms, "
    "s.expires_at_ms";

// Every row of a statement, read by `read`.
template <typename Read>
auto ReadAll(Statement& s, Read read) -> Result<std::vector<decltype(read(s))>> {
  std::vector<decltype(read(s))> out;
  for (;;) {
    MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) return out;
    out.push_back(read(s));
  }
}

// The histories LoadUsageInput reads, with ?1 the team ("" for all), ?2 from and ?3 to.
constexpr const char* kUsageHistories =
    "(?1 = '' OR h.team_id = ?1) AND h.created_at_ms < ?3 AND (h.ended_at_ms = 0 OR "
    "h.ended_at_ms > ?2)";

}  // namespace

Result<std::optional<std::pair<TeamRecord, ApiKeyRecord>>> SqliteStore::KeyByHash(
    const std::string& key_sha256) {
  std::lock_guard lock(mu_);
  Statement s(db_,
              "SELECT t.id, t.name, t.created_at_ms, t.is_admin, k.id, k.team_id, k.name, k.mask, "
              "k.created_at_ms FROM api_keys k JOIN teams t ON t.id = k.team_id WHERE "
              "k.key_sha256 = ? AND k.revoked_at_ms IS NULL");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, key_sha256);
  MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
  using Found = std::pair<TeamRecord, ApiKeyRecord>;
  if (!row) return std::optional<Found>();
  return std::optional<Found>(
      Found{TeamRecord{s.Text(0), s.Text(1), s.Int(2), s.Int(3) != 0},
            ApiKeyRecord{s.Text(4), s.Text(5), s.Text(6), s.Text(7), s.Int(8)}});
}

Status SqliteStore::InsertHistory(const HistoryRecord& h) {
  std::lock_guard lock(mu_);
  Statement s(db_,
              "INSERT OR IGNORE INTO sandbox_history (sandbox_id, team_id, template_id, key_id, "
              "key_name, metadata, host_id, cpu_count, memory_mb, parent_kind, parent_id, "
              "created_at_ms, ended_at_ms, state, end_reason, ended_by, end_detail, egress_bytes, "
              "ingress_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
  MOAT_RETURN_IF_ERROR(s.status());
  std::map<std::string, std::string> metadata;
  for (const auto& [k, v] : h.metadata) metadata[StoredText(k)] = StoredText(v);
  return s.Bind(1, StoredText(h.sandbox_id))
      .Bind(2, StoredText(h.team_id))
      .Bind(3, StoredText(h.template_id))
      .Bind(4, StoredText(h.key_id))
      .Bind(5, StoredText(h.key_name))
      .Bind(6, JsonText(metadata))
      .Bind(7, StoredText(h.host_id))
      .Bind(8, int64_t{h.cpu_count})
      .Bind(9, int64_t{h.memory_mb})
      .Bind(10, StoredText(h.parent_kind))
      .Bind(11, StoredText(h.parent_id))
      .Bind(12, h.created_at_ms)
      .Bind(13, h.ended_at_ms)
      .Bind(14, StoredText(h.state))
      .Bind(15, StoredText(h.end_reason))
      .Bind(16, StoredText(h.ended_by))
      .Bind(17, StoredText(h.end_detail))
      .Bind(18, h.egress_bytes)
      .Bind(19, h.ingress_bytes)
      .Run();
}

Status SqliteStore::SetHistoryState(const std::string& sandbox_id, const std::string& state,
                                    const std::string& host_id) {
  std::lock_guard lock(mu_);
  Statement s(db_,
              "UPDATE sandbox_history SET state = ?1, host_id = CASE WHEN ?2 = '' THEN host_id "
              "ELSE ?2 END WHERE sandbox_id = ?3 AND ended_at_ms = 0");
  MOAT_RETURN_IF_ERROR(s.status());
  return s.Bind(1, StoredText(state)).Bind(2, StoredText(host_id)).Bind(3, sandbox_id).Run();
}

Result<bool> SqliteStore::EndHistory(const std::string& sandbox_id, int64_t ended_at_ms,
                                     const std::string& state, const std::string& reason,
                                     const std::string& ended_by, const std::string& detail) {
  std::lock_guard lock(mu_);
  Statement s(db_,
              "UPDATE sandbox_history SET ended_at_ms = ?, state = ?, end_reason = ?, ended_by = "
              "?, end_detail = ? WHERE sandbox_id = ? AND ended_at_ms = 0");
  MOAT_RETURN_IF_ERROR(s.status());
  MOAT_RETURN_IF_ERROR(s.Bind(1, ended_at_ms)
                           .Bind(2, StoredText(state))
                           .Bind(3, StoredText(reason))
                           .Bind(4, StoredText(ended_by))
                           .Bind(5, StoredText(detail))
                           .Bind(6, sandbox_id)
                           .Run());
  return sqlite3_changes(db_) > 0;
}

Result<std::optional<HistoryRecord>> SqliteStore::GetHistory(const std::string& sandbox_id) {
  std::lock_guard lock(mu_);
  Statement s(db_, std::string("SELECT ") + kHistoryColumns +
                       " FROM sandbox_history h WHERE h.sandbox_id = ?");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, sandbox_id);
  MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return std::optional<HistoryRecord>();
  return std::optional<HistoryRecord>(ReadHistory(s));
}

Result<HistoryPage> SqliteStore::ListHistory(const HistoryFilter& f) {
  QueryBuilder q(std::string("SELECT ") + kHistoryColumns + " FROM sandbox_history h WHERE 1");
  std::string& sql = q.sql();
  sql += " AND h.team_id = " + q.Text(f.team_id);
  if (f.state == "live") {
    sql += " AND h.ended_at_ms = 0";
  } else if (f.state == "ended") {
    sql += " AND h.ended_at_ms != 0";
  } else if (!f.state.empty()) {
    sql += " AND h.state = " + q.Text(f.state);
  }
  if (!f.template_id.empty()) sql += " AND h.template_id = " + q.Text(f.template_id);
  for (const auto& [k, v] : f.metadata) {
    std::string key = q.Text(k);
    std::string value = q.Text(v);
    sql += " AND EXISTS (SELECT 1 FROM json_each(h.metadata) m WHERE m.key = " + key +
           " AND m.value = " + value + ")";
  }
  if (f.from_ms) {
    std::string from = q.Int(*f.from_ms);
    sql += " AND (h.created_at_ms >= " + from +
           " OR h.ended_at_ms = 0 OR h.ended_at_ms >= " + from + ")";
  }
  if (f.to_ms) sql += " AND h.created_at_ms < " + q.Int(*f.to_ms);
  if (f.failed_only) {
    sql +=
        " AND (h.end_reason IN ('error', 'host_lost') OR EXISTS (SELECT 1 FROM sandbox_commands "
        "c WHERE c.sandbox_id = h.sandbox_id AND " +
        std::string(kFailedCommand) + "))";
  }
  if (!f.next_token.empty()) {
    MOAT_ASSIGN_OR_RETURN(HistoryCursor c, ParseHistoryToken(f.next_token));
    std::string ms = q.Int(c.created_at_ms);
    std::string id = q.Text(c.sandbox_id);
    sql += " AND (h.created_at_ms, h.sandbox_id) < (" + ms + ", " + id + ")";
  }
  int limit = HistoryPageLimit(f.limit);
  sql += " ORDER BY h.created_at_ms DESC, h.sandbox_id DESC LIMIT " + std::to_string(limit + 1);

  std::lock_guard lock(mu_);
  Statement s(db_, sql);
  MOAT_RETURN_IF_ERROR(s.status());
  q.BindAll(s);
  HistoryPage page;
  MOAT_ASSIGN_OR_RETURN(page.items, ReadAll(s, ReadHistory));
  if (page.items.size() > static_cast<size_t>(limit)) {
    page.items.resize(static_cast<size_t>(limit));
    const auto& last = page.items.back();
    page.next_token = HistoryToken(last.created_at_ms, last.sandbox_id);
  }
  return page;
}

Result<std::vector<HistoryRecord>> SqliteStore::HistoryChildren(const std::string& parent_id) {
  std::lock_guard lock(mu_);
  Statement s(db_, std::string("SELECT ") + kHistoryColumns +
                       " FROM sandbox_history h WHERE h.parent_id = ? ORDER BY h.created_at_ms, "
                       "h.sandbox_id");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, parent_id);
  return ReadAll(s, ReadHistory);
}

Status SqliteStore::AppendSandboxEvent(const SandboxEvent& e) {
  std::lock_guard lock(mu_);
  Statement s(db_,
              "INSERT INTO sandbox_events (sandbox_id, team_id, at_ms, kind, duration_ms, detail) "
              "VALUES (?, ?, ?, ?, ?, ?)");
  MOAT_RETURN_IF_ERROR(s.status());
  return s.Bind(1, StoredText(e.sandbox_id))
      .Bind(2, StoredText(e.team_id))
      .Bind(3, e.at_ms)
      .Bind(4, StoredText(e.kind))
      .Bind(5, e.duration_ms)
      .Bind(6, StoredText(e.detail))
      .Run();
}

Result<std::vector<SandboxEvent>> SqliteStore::SandboxEvents(const std::string& sandbox_id) {
  std::lock_guard lock(mu_);
  Statement s(db_, std::string("SELECT ") + kEventColumns +
                       " FROM sandbox_events e WHERE e.sandbox_id = ? ORDER BY e.seq");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, sandbox_id);
  return ReadAll(s, ReadEvent);
}

Result<int64_t> SqliteStore::StartCommand(const CommandRecord& c) {
  std::lock_guard lock(mu_);
  Statement s(db_,
              "INSERT INTO sandbox_commands (sandbox_id, team_id, kind, command, usr, cwd, "
              "started_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)");
  MOAT_RETURN_IF_ERROR(s.status());
  MOAT_RETURN_IF_ERROR(s.Bind(1, StoredText(c.sandbox_id))
                           .Bind(2, StoredText(c.team_id))
                           .Bind(3, StoredText(c.kind))
                           .Bind(4, StoredCommand(c.command))
                           .Bind(5, StoredText(c.user))
                           .Bind(6, StoredText(c.cwd))
                           .Bind(7, c.started_at_ms)
                           .Run());
  return static_cast<int64_t>(sqlite3_last_insert_rowid(db_));
}

Status SqliteStore::FinishCommand(const CommandRecord& c) {
  std::lock_guard lock(mu_);
  Statement s(db_,
              "UPDATE sandbox_commands SET ended_at_ms = ?, exit_code = ?, signal = ?, error = ?, "
              "stdout_head = ?, stdout_tail = ?, stderr_head = ?, stderr_tail = ?, stdout_bytes = "
              "?, stderr_bytes = ? WHERE id = ?");
  MOAT_RETURN_IF_ERROR(s.status());
  std::optional<int64_t> exit_code;
  if (c.exit_code) exit_code = *c.exit_code;
  MOAT_RETURN_IF_ERROR(s.Bind(1, c.ended_at_ms)
                           .Bind(2, exit_code)
                           .Bind(3, StoredText(c.signal))
                           .Bind(4, StoredText(c.error))
                           .Bind(5, StoredText(c.stdout_head))
                           .Bind(6, StoredText(c.stdout_tail))
                           .Bind(7, StoredText(c.stderr_head))
                           .Bind(8, StoredText(c.stderr_tail))
                           .Bind(9, c.stdout_bytes)
                           .Bind(10, c.stderr_bytes)
                           .Bind(11, c.id)
                           .Run());
  if (sqlite3_changes(db_) == 0) return NotFound("command " + std::to_string(c.id) + " not found");
  return Status::Ok();
}

Result<std::vector<CommandRecord>> SqliteStore::ListCommands(const std::string& sandbox_id,
                                                             int64_t before_id, int limit) {
  std::lock_guard lock(mu_);
  Statement s(db_, std::string("SELECT ") + kCommandColumns +
                       " FROM sandbox_commands WHERE sandbox_id = ?1 AND (?2 <= 0 OR id < ?2) "
                       "ORDER BY id DESC LIMIT ?3");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, sandbox_id).Bind(2, before_id).Bind(3, int64_t{HistoryPageLimit(limit)});
  return ReadAll(s, ReadCommand);
}

Status SqliteStore::SaveConsoleLog(const std::string& sandbox_id, const std::string& text) {
  std::lock_guard lock(mu_);
  Statement s(db_, "INSERT OR REPLACE INTO sandbox_console (sandbox_id, text) VALUES (?, ?)");
  MOAT_RETURN_IF_ERROR(s.status());
  return s.Bind(1, StoredText(sandbox_id)).Bind(2, StoredText(text)).Run();
}

Result<std::optional<std::string>> SqliteStore::ConsoleLog(const std::string& sandbox_id) {
  std::lock_guard lock(mu_);
  Statement s(db_, "SELECT text FROM sandbox_console WHERE sandbox_id = ?");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, sandbox_id);
  MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return std::optional<std::string>();
  return std::optional<std::string>(s.Text(0));
}

Status SqliteStore::AppendAudit(const AuditRecord& a) {
  std::lock_guard lock(mu_);
  Statement s(db_,
              "INSERT INTO audit_log (at_ms, team_id, key_id, key_name, source, request_id, "
              "action, target, outcome, status, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
  MOAT_RETURN_IF_ERROR(s.status());
  return s.Bind(1, a.at_ms)
      .Bind(2, StoredText(a.team_id))
      .Bind(3, StoredText(a.key_id))
      .Bind(4, StoredText(a.key_name))
      .Bind(5, StoredText(a.source))
      .Bind(6, StoredText(a.request_id))
      .Bind(7, StoredText(a.action))
      .Bind(8, StoredText(a.target))
      .Bind(9, StoredText(a.outcome))
      .Bind(10, int64_t{a.status})
      .Bind(11, StoredText(a.detail))
      .Run();
}

Result<AuditPage> SqliteStore::ListAudit(const AuditFilter& f) {
  QueryBuilder q(std::string("SELECT ") + kAuditColumns + " FROM audit_log WHERE 1");
  std::string& sql = q.sql();
  if (!f.team_id.empty()) sql += " AND team_id = " + q.Text(f.team_id);
  if (!f.action.empty() && f.action.back() == '.') {
    std::string prefix = q.Text(f.action);
    sql += " AND substr(action, 1, length(" + prefix + ")) = " + prefix;
  } else if (!f.action.empty()) {
    sql += " AND action = " + q.Text(f.action);
  }
  if (!f.target.empty()) sql += " AND target = " + q.Text(f.target);
  if (f.from_ms) sql += " AND at_ms >= " + q.Int(*f.from_ms);
  if (f.to_ms) sql += " AND at_ms < " + q.Int(*f.to_ms);
  if (!f.next_token.empty()) {
    MOAT_ASSIGN_OR_RETURN(int64_t seq, ParseAuditToken(f.next_token));
    sql += " AND seq < " + q.Int(seq);
  }
  int limit = HistoryPageLimit(f.limit);
  sql += " ORDER BY seq DESC LIMIT " + std::to_string(limit + 1);

  std::lock_guard lock(mu_);
  Statement s(db_, sql);
  MOAT_RETURN_IF_ERROR(s.status());
  q.BindAll(s);
  AuditPage page;
  MOAT_ASSIGN_OR_RETURN(page.items, ReadAll(s, ReadAudit));
  if (page.items.size() > static_cast<size_t>(limit)) {
    page.items.resize(static_cast<size_t>(limit));
    page.next_token = std::to_string(page.items.back().seq);
  }
  return page;
}

Status SqliteStore::RecordNetUsage(const std::string& sandbox_id, int64_t hour_ms,
                                   int64_t egress_total, int64_t ingress_total,
                                   int64_t slot_generation) {
  if (egress_total < 0 || ingress_total < 0) {
    return InvalidArgument("network counters of " + sandbox_id + " are negative");
  }
  std::lock_guard lock(mu_);
  Transaction tx(db_);
  NetReading last;
  {
    Statement s(db_,
                "SELECT net_last_egress, net_last_ingress, net_last_gen FROM sandbox_history "
                "WHERE sandbox_id = ?");
    MOAT_RETURN_IF_ERROR(s.status());
    s.Bind(1, sandbox_id);
    MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) return NotFound("history of sandbox \"" + sandbox_id + "\" not found");
    last = {s.Int(0), s.Int(1), s.Int(2)};
  }
  NetDelta d = NetDeltaOf(last, {egress_total, ingress_total, slot_generation});
  if (!d.changed) return Status::Ok();
  int64_t egress = d.egress, ingress = d.ingress;
  if (egress != 0 || ingress != 0) {
    Statement s(db_,
                "INSERT INTO net_usage (sandbox_id, hour_ms, egress_bytes, ingress_bytes) VALUES "
                "(?1, ?2, ?3, ?4) ON CONFLICT (sandbox_id, hour_ms) DO UPDATE SET egress_bytes = "
                "egress_bytes + ?3, ingress_bytes = ingress_bytes + ?4");
    MOAT_RETURN_IF_ERROR(s.status());
    MOAT_RETURN_IF_ERROR(
        s.Bind(1, sandbox_id).Bind(2, hour_ms).Bind(3, egress).Bind(4, ingress).Run());
  }
  {
    Statement s(db_,
                "UPDATE sandbox_history SET egress_bytes = egress_bytes + ?1, ingress_bytes = "
                "ingress_bytes + ?2, net_last_egress = ?3, net_last_ingress = ?4, net_last_gen = "
                "?6 WHERE sandbox_id = ?5");
    MOAT_RETURN_IF_ERROR(s.status());
    MOAT_RETURN_IF_ERROR(s.Bind(1, egress)
                             .Bind(2, ingress)
                             .Bind(3, d.kept.egress)
                             .Bind(4, d.kept.ingress)
                             .Bind(5, sandbox_id)
                             .Bind(6, d.kept.generation)
                             .Run());
  }
  return tx.Commit();
}

Status SqliteStore::RecordSnapshotStored(const SnapshotStorageRecord& r) {
  std::lock_guard lock(mu_);
  Statement s(db_,
              "INSERT OR IGNORE INTO snapshot_storage (id, team_id, template_id, bytes, "
              "created_at_ms, deleted_at_ms) VALUES (?, ?, ?, ?, ?, ?)");
  MOAT_RETURN_IF_ERROR(s.status());
  return s.Bind(1, StoredText(r.id))
      .Bind(2, StoredText(r.team_id))
      .Bind(3, StoredText(r.template_id))
      .Bind(4, r.bytes)
      .Bind(5, r.created_at_ms)
      .Bind(6, r.deleted_at_ms)
      .Run();
}

Status SqliteStore::RecordSnapshotDeleted(const std::string& id, int64_t at_ms) {
  std::lock_guard lock(mu_);
  Statement s(db_,
              "UPDATE snapshot_storage SET deleted_at_ms = ? WHERE id = ? AND deleted_at_ms = 0");
  MOAT_RETURN_IF_ERROR(s.status());
  return s.Bind(1, at_ms).Bind(2, id).Run();
}

Result<UsageInput> SqliteStore::LoadUsageInput(const std::string& team_id, int64_t from_ms,
                                               int64_t to_ms) {
  std::lock_guard lock(mu_);
  UsageInput in;
  // Every statement is bound ?1 team, ?2 from and ?3 to (kUsageHistories), and ?4 the first
  // network hour; a bind past a statement's last parameter is refused and changes nothing.
  auto prepare = [&](const std::string& sql) {
    auto s = std::make_unique<Statement>(db_, sql);
    if (s->status().ok()) {
      s->Bind(1, team_id).Bind(2, from_ms).Bind(3, to_ms).Bind(4, from_ms - kHourMs);
    }
    return s;
  };
  {
    auto s = prepare(std::string("SELECT ") + kHistoryColumns + " FROM sandbox_history h WHERE " +
                     kUsageHistories + " ORDER BY h.created_at_ms, h.sandbox_id");
    MOAT_RETURN_IF_ERROR(s->status());
    MOAT_ASSIGN_OR_RETURN(in.histories, ReadAll(*s, ReadHistory));
  }
  {
    auto s = prepare(std::string("SELECT ") + kEventColumns +
                     " FROM sandbox_events e JOIN sandbox_history h ON h.sandbox_id = "
                     "e.sandbox_id WHERE " +
                     kUsageHistories + " ORDER BY e.sandbox_id, e.seq");
    MOAT_RETURN_IF_ERROR(s->status());
    MOAT_ASSIGN_OR_RETURN(in.events, ReadAll(*s, ReadEvent));
  }
  {
    auto s = prepare(std::string("SELECT c.id, c.sandbox_id, c.team_id, c.kind, c.started_at_ms, "
                                 "c.ended_at_ms FROM sandbox_commands c JOIN sandbox_history h ON "
                                 "h.sandbox_id = c.sandbox_id WHERE ") +
                     kUsageHistories +
                     " AND c.started_at_ms < ?3 AND (c.ended_at_ms = 0 OR c.ended_at_ms > ?2)"
                     " ORDER BY c.sandbox_id, c.id");
    MOAT_RETURN_IF_ERROR(s->status());
    MOAT_ASSIGN_OR_RETURN(in.commands, ReadAll(*s, [](Statement& r) {
                            CommandRecord c;
                            c.id = r.Int(0);
                            c.sandbox_id = r.Text(1);
                            c.team_id = r.Text(2);
                            c.kind = r.Text(3);
                            c.started_at_ms = r.Int(4);
                            c.ended_at_ms = r.Int(5);
                            return c;
                          }));
  }
  {
    auto s =
        prepare(std::string("SELECT n.sandbox_id, n.hour_ms, n.egress_bytes, n.ingress_bytes FROM "
                            "net_usage n JOIN sandbox_history h ON h.sandbox_id = n.sandbox_id "
                            "WHERE ") +
                kUsageHistories +
                " AND n.hour_ms >= ?4 AND n.hour_ms < ?3 ORDER BY n.sandbox_id, n.hour_ms");
    MOAT_RETURN_IF_ERROR(s->status());
    MOAT_ASSIGN_OR_RETURN(in.net, ReadAll(*s, [](Statement& r) {
                            return NetUsageRecord{r.Text(0), r.Int(1), r.Int(2), r.Int(3)};
                          }));
  }
  {
    auto s = prepare(
        "SELECT id, team_id, template_id, bytes, created_at_ms, deleted_at_ms FROM "
        "snapshot_storage WHERE (?1 = '' OR team_id = ?1) AND created_at_ms < ?3 AND "
        "(deleted_at_ms = 0 OR deleted_at_ms > ?2) ORDER BY created_at_ms, id");
    MOAT_RETURN_IF_ERROR(s->status());
    MOAT_ASSIGN_OR_RETURN(in.snapshots, ReadAll(*s, [](Statement& r) {
                            return SnapshotStorageRecord{r.Text(0), r.Text(1), r.Text(2),
                                                         r.Int(3),  r.Int(4),  r.Int(5)};
                          }));
  }
  return in;
}

Result<PruneCounts> SqliteStore::PruneHistory(int64_t before_ms, int64_t now_ms) {
  std::lock_guard lock(mu_);
  Transaction tx(db_);
  PruneCounts counts;
  // The histories that go: ended before `before_ms` (?1). Their events, commands and console
  // logs go first; so do those of sandboxes that never had a history, once as old.
  constexpr const char* kPruned =
      "sandbox_id IN (SELECT sandbox_id FROM sandbox_history WHERE ended_at_ms > 0 AND "
      "ended_at_ms < ?1)";
  constexpr const char* kOrphan =
      "NOT EXISTS (SELECT 1 FROM sandbox_history h WHERE h.sandbox_id = ";
  struct Step {
    std::string sql;
    int64_t* count;
  };
  const Step steps[] = {
      {std::string("DELETE FROM sandbox_events WHERE ") + kPruned + " OR (at_ms < ?1 AND " +
           kOrphan + "sandbox_events.sandbox_id))",
       &counts.events},
      {std::string("DELETE FROM sandbox_commands WHERE ") + kPruned + " OR (started_at_ms < ?1 " +
           "AND " + kOrphan + "sandbox_commands.sandbox_id))",
       &counts.commands},
      {std::string("DELETE FROM sandbox_console WHERE ") + kPruned, nullptr},
      {"DELETE FROM sandbox_history WHERE ended_at_ms > 0 AND ended_at_ms < ?1", &counts.histories},
      {"DELETE FROM audit_log WHERE at_ms < ?1", &counts.audit},
      {"DELETE FROM net_usage WHERE hour_ms < ?1", &counts.net},
      {"DELETE FROM snapshot_storage WHERE deleted_at_ms > 0 AND deleted_at_ms < ?1",
       &counts.snapshots},
      {"DELETE FROM dashboard_sessions WHERE expires_at_ms < ?2", &counts.sessions},
  };
  for (const auto& step : steps) {
    Statement s(db_, step.sql);
    MOAT_RETURN_IF_ERROR(s.status());
    // A bind past a statement's last parameter is refused (SQLITE_RANGE) and changes nothing.
    MOAT_RETURN_IF_ERROR(s.Bind(1, before_ms).Bind(2, now_ms).Run());
    if (step.count != nullptr) *step.count = sqlite3_changes(db_);
  }
  MOAT_RETURN_IF_ERROR(tx.Commit());
  return counts;
}

Status SqliteStore::InsertSession(const SessionRecord& r) {
  std::lock_guard lock(mu_);
  Statement s(db_,
              "INSERT INTO dashboard_sessions (token_sha256, team_id, key_id, key_name, "
              "csrf_token, created_at_ms, expires_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)");
  MOAT_RETURN_IF_ERROR(s.status());
  Status run = s.Bind(1, r.token_sha256)
                   .Bind(2, r.team_id)
                   .Bind(3, r.key_id)
                   .Bind(4, StoredText(r.key_name))
                   .Bind(5, r.csrf_token)
                   .Bind(6, r.created_at_ms)
                   .Bind(7, r.expires_at_ms)
                   .Run();
  if (!run.ok() && sqlite3_extended_errcode(db_) == SQLITE_CONSTRAINT_PRIMARYKEY) {
    return Status(ErrorCode::kAlreadyExists, "session already exists");
  }
  return run;
}

Result<std::optional<SessionRecord>> SqliteStore::GetSession(const std::string& token_sha256,
                                                             int64_t now_ms) {
  std::lock_guard lock(mu_);
  Statement s(db_, std::string("SELECT ") + kSessionColumns +
                       " FROM dashboard_sessions s JOIN api_keys k ON k.id = s.key_id AND "
                       "k.team_id = s.team_id AND k.revoked_at_ms IS NULL WHERE s.token_sha256 = "
                       "? AND s.expires_at_ms > ?");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, token_sha256).Bind(2, now_ms);
  MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return std::optional<SessionRecord>();
  return std::optional<SessionRecord>(
      SessionRecord{s.Text(0), s.Text(1), s.Text(2), s.Text(3), s.Text(4), s.Int(5), s.Int(6)});
}

Status SqliteStore::DeleteSession(const std::string& token_sha256) {
  std::lock_guard lock(mu_);
  Statement s(db_, "DELETE FROM dashboard_sessions WHERE token_sha256 = ?");
  MOAT_RETURN_IF_ERROR(s.status());
  return s.Bind(1, token_sha256).Run();
}

}  // namespace moat::api::store
