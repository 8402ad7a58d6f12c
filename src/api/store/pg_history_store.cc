// PgStore's history records, lifecycle events, commands, console logs, audit log, network and
// snapshot usage, and dashboard sessions (store/history.h; schema migration 13), and the key
// behind a key hash (who acts, as the audit log and history name it).
#include <utility>
#include <vector>

#include "api/store/history_rows.h"
#include "api/store/json_text.h"
#include "api/store/pg_connection.h"
#include "api/store/pg_store.h"

namespace moat::api::store {
namespace {

using pg::MakeParams;
using pg::Params;
using pg::Rows;

constexpr const char* kHistoryColumns =
    "h.sandbox_id, h.team_id, h.template_id, h.key_id, h.key_name, h.metadata, h.host_id, "
    "h.cpu_count, h.memory_mb, h.parent_kind, h.parent_id, h.created_at_ms, h.ended_at_ms, "
    "h.state, h.end_reason, h.ended_by, h.end_detail, h.egress_bytes, h.ingress_bytes";

HistoryRecord ReadHistory(const Rows& r, int i) {
  HistoryRecord h;
  h.sandbox_id = r.Text(i, 0);
  h.team_id = r.Text(i, 1);
  h.template_id = r.Text(i, 2);
  h.key_id = r.Text(i, 3);
  h.key_name = r.Text(i, 4);
  h.metadata = StringMapFromJson(r.Text(i, 5));
  h.host_id = r.Text(i, 6);
  h.cpu_count = static_cast<uint32_t>(r.Int(i, 7));
  h.memory_mb = static_cast<uint32_t>(r.Int(i, 8));
  h.parent_kind = r.Text(i, 9);
  h.parent_id = r.Text(i, 10);
  h.created_at_ms = r.Int(i, 11);
  h.ended_at_ms = r.Int(i, 12);
  h.state = r.Text(i, 13);
  h.end_reason = r.Text(i, 14);
  h.ended_by = r.Text(i, 15);
  h.end_detail = r.Text(i, 16);
  h.egress_bytes = r.Int(i, 17);
  h.ingress_bytes = r.Int(i, 18);
  return h;
}

constexpr const char* kEventColumns =
    "e.seq, e.sandbox_id, e.team_id, e.at_ms, e.kind, e.duration_ms, e.detail";

SandboxEvent ReadEvent(const Rows& r, int i) {
  return SandboxEvent{r.Int(i, 0),  r.Text(i, 1), r.Text(i, 2), r.Int(i, 3),
                      r.Text(i, 4), r.Int(i, 5),  r.Text(i, 6)};
}

constexpr const char* kCommandColumns =
    "id, sandbox_id, team_id, kind, command, usr, cwd, started_at_ms, ended_at_ms, exit_code, "
    "signal, error, stdout_head, stdout_tail, stderr_head, stderr_tail, stdout_bytes, "
    "stderr_bytes";

CommandRecord ReadCommand(const Rows& r, int i) {
  CommandRecord c;
  c.id = r.Int(i, 0);
  c.sandbox_id = r.Text(i, 1);
  c.team_id = r.Text(i, 2);
  c.kind = r.Text(i, 3);
  c.command = r.Text(i, 4);
  c.user = r.Text(i, 5);
  c.cwd = r.Text(i, 6);
  c.started_at_ms = r.Int(i, 7);
  c.ended_at_ms = r.Int(i, 8);
  if (auto code = r.OptionalInt(i, 9)) c.exit_code = static_cast<int32_t>(*code);
  c.signal = r.Text(i, 10);
  c.error = r.Text(i, 11);
  c.stdout_head = r.Text(i, 12);
  c.stdout_tail = r.Text(i, 13);
  c.stderr_head = r.Text(i, 14);
  c.stderr_tail = r.Text(i, 15);
  c.stdout_bytes = r.Int(i, 16);
  c.stderr_bytes = r.Int(i, 17);
  return c;
}

constexpr const char* kAuditColumns =
    "seq, at_ms, team_id, key_id, key_name, source, request_id, action, target, outcome, status, "
    "detail";

AuditRecord ReadAudit(const Rows& r, int i) {
  AuditRecord a;
  a.seq = r.Int(i, 0);
  a.at_ms = r.Int(i, 1);
  a.team_id = r.Text(i, 2);
  a.key_id = r.Text(i, 3);
  a.key_name = r.Text(i, 4);
  a.source = r.Text(i, 5);
  a.request_id = r.Text(i, 6);
  a.action = r.Text(i, 7);
  a.target = r.Text(i, 8);
  a.outcome = r.Text(i, 9);
  a.status = static_cast<int>(r.Int(i, 10));
  a.detail = r.Text(i, 11);
  return a;
}

constexpr const char* kSessionColumns =
    "s.token_sha256, s.team_id, s.key_id, s.key_name, s.csrf_token, s.created_at_ms, "
    "s.expires_at_ms";

// Every row, read by `read(rows, i)`.
template <typename Read>
auto ReadAll(const Rows& rows, Read read) -> std::vector<decltype(read(rows, 0))> {
  std::vector<decltype(read(rows, 0))> out;
  out.reserve(static_cast<size_t>(rows.size()));
  for (int i = 0; i < rows.size(); ++i) out.push_back(read(rows, i));
  return out;
}

// A query whose parameters are numbered ($1, $2, …) as they are added (as pg_store.cc's).
class QueryBuilder {
 public:
  explicit QueryBuilder(std::string sql) : sql_(std::move(sql)) {}
  std::string Text(const std::string& v) {
    params_.push_back(v);
    return "$" + std::to_string(params_.size()) + "::text";
  }
  std::string Int(int64_t v) {
    params_.push_back(std::to_string(v));
    return "$" + std::to_string(params_.size()) + "::bigint";
  }
  std::string& sql() { return sql_; }
  const Params& params() const { return params_; }

 private:
  std::string sql_;
  Params params_;
};

// The histories LoadUsageInput reads, with $1 the team ("" for all), $2 from and $3 to.
constexpr const char* kUsageHistories =
    "($1::text = '' OR h.team_id = $1::text) AND h.created_at_ms < $3::bigint AND "
    "(h.ended_at_ms = 0 OR h.ended_at_ms > $2::bigint)";

}  // namespace

Result<std::optional<std::pair<TeamRecord, ApiKeyRecord>>> PgStore::KeyByHash(
    const std::string& key_sha256) {
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec(
        "SELECT t.id, t.name, t.created_at_ms, t.is_admin, k.id, k.team_id, k.name, k.mask, "
        "k.created_at_ms FROM api_keys k JOIN teams t ON t.id = k.team_id WHERE k.key_sha256 = $1 "
        "AND k.revoked_at_ms IS NULL",
        {key_sha256});
  }));
  using Found = std::pair<TeamRecord, ApiKeyRecord>;
  if (r.size() == 0) return std::optional<Found>();
  return std::optional<Found>(
      Found{TeamRecord{r.Text(0, 0), r.Text(0, 1), r.Int(0, 2), r.Int(0, 3) != 0},
            ApiKeyRecord{r.Text(0, 4), r.Text(0, 5), r.Text(0, 6), r.Text(0, 7), r.Int(0, 8)}});
}

Status PgStore::InsertHistory(const HistoryRecord& h) {
  std::map<std::string, std::string> metadata;
  for (const auto& [k, v] : h.metadata) metadata[StoredText(k)] = StoredText(v);
  Params params =
      MakeParams(StoredText(h.sandbox_id), StoredText(h.team_id), StoredText(h.template_id),
                 StoredText(h.key_id), StoredText(h.key_name), JsonText(metadata),
                 StoredText(h.host_id), int64_t{h.cpu_count}, int64_t{h.memory_mb},
                 StoredText(h.parent_kind), StoredText(h.parent_id), h.created_at_ms, h.ended_at_ms,
                 StoredText(h.state), StoredText(h.end_reason), StoredText(h.ended_by),
                 StoredText(h.end_detail), h.egress_bytes, h.ingress_bytes);
  // Inserting the same record again changes nothing: safe to retry without a transaction.
  return pool_->Run([&](pg::Connection& c) {
    return c.Run(
        "INSERT INTO sandbox_history (sandbox_id, team_id, template_id, key_id, key_name, "
        "metadata, host_id, cpu_count, memory_mb, parent_kind, parent_id, created_at_ms, "
        "ended_at_ms, state, end_reason, ended_by, end_detail, egress_bytes, ingress_bytes) VALUES "
        "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19) "
        "ON CONFLICT (sandbox_id) DO NOTHING",
        params);
  });
}

Status PgStore::SetHistoryState(const std::string& sandbox_id, const std::string& state,
                                const std::string& host_id) {
  Params params = MakeParams(StoredText(state), StoredText(host_id), sandbox_id);
  return pool_->Run([&](pg::Connection& c) {
    return c.Run(
        "UPDATE sandbox_history SET state = $1, host_id = CASE WHEN $2::text = '' THEN host_id "
        "ELSE $2::text END WHERE sandbox_id = $3 AND ended_at_ms = 0",
        params);
  });
}

Result<bool> PgStore::EndHistory(const std::string& sandbox_id, int64_t ended_at_ms,
                                 const std::string& state, const std::string& reason,
                                 const std::string& ended_by, const std::string& detail) {
  Params params = MakeParams(ended_at_ms, StoredText(state), StoredText(reason),
                             StoredText(ended_by), StoredText(detail), sandbox_id);
  bool ended = false;
  MOAT_RETURN_IF_ERROR(Transact([&](pg::Connection& c) -> Status {
    MOAT_ASSIGN_OR_RETURN(
        Rows r, c.Exec("UPDATE sandbox_history SET ended_at_ms = $1, state = $2, end_reason = $3, "
                       "ended_by = $4, end_detail = $5 WHERE sandbox_id = $6 AND ended_at_ms = 0",
                       params));
    ended = r.affected() > 0;
    return Status::Ok();
  }));
  return ended;
}

Result<std::optional<HistoryRecord>> PgStore::GetHistory(const std::string& sandbox_id) {
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec(std::string("SELECT ") + kHistoryColumns +
                      " FROM sandbox_history h WHERE h.sandbox_id = $1",
                  {sandbox_id});
  }));
  if (r.size() == 0) return std::optional<HistoryRecord>();
  return std::optional<HistoryRecord>(ReadHistory(r, 0));
}

Result<HistoryPage> PgStore::ListHistory(const HistoryFilter& f) {
  QueryBuilder q(std::string("SELECT ") + kHistoryColumns + " FROM sandbox_history h WHERE TRUE");
  std::string& sql = q.sql();
  sql += " AND h.team_id = " + q.Text(f.team_id);
  if (f.state == "live") {
    sql += " AND h.ended_at_ms = 0";
  } else if (f.state == "ended") {
    sql += " AND h.ended_at_ms <> 0";
  } else if (!f.state.empty()) {
    sql += " AND h.state = " + q.Text(f.state);
  }
  if (!f.template_id.empty()) sql += " AND h.template_id = " + q.Text(f.template_id);
  if (!f.metadata.empty()) {
    // Every pair: the record's metadata object contains the filter's. Cleaned as the stored
    // values were (a NUL could not be cast to jsonb).
    std::map<std::string, std::string> wanted;
    for (const auto& [k, v] : f.metadata) wanted[StoredText(k)] = StoredText(v);
    sql += " AND h.metadata::jsonb @> " + q.Text(JsonText(wanted)) + "::jsonb";
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
    sql += " AND (h.created_at_ms, h.sandbox_id COLLATE \"C\") < (" + ms + ", " + id + ")";
  }
  int limit = HistoryPageLimit(f.limit);
  sql +=
      " ORDER BY h.created_at_ms DESC, h.sandbox_id COLLATE \"C\" DESC LIMIT " + q.Int(limit + 1);

  MOAT_ASSIGN_OR_RETURN(Rows rows,
                        pool_->Run([&](pg::Connection& c) { return c.Exec(sql, q.params()); }));
  HistoryPage page;
  page.items = ReadAll(rows, ReadHistory);
  if (page.items.size() > static_cast<size_t>(limit)) {
    page.items.resize(static_cast<size_t>(limit));
    const auto& last = page.items.back();
    page.next_token = HistoryToken(last.created_at_ms, last.sandbox_id);
  }
  return page;
}

Result<std::vector<HistoryRecord>> PgStore::HistoryChildren(const std::string& parent_id) {
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec(std::string("SELECT ") + kHistoryColumns +
                      " FROM sandbox_history h WHERE h.parent_id = $1 ORDER BY h.created_at_ms, "
                      "h.sandbox_id COLLATE \"C\"",
                  {parent_id});
  }));
  return ReadAll(r, ReadHistory);
}

Status PgStore::AppendSandboxEvent(const SandboxEvent& e) {
  Params params = MakeParams(StoredText(e.sandbox_id), StoredText(e.team_id), e.at_ms,
                             StoredText(e.kind), e.duration_ms, StoredText(e.detail));
  return Transact([&](pg::Connection& c) {
    return c.Run(
        "INSERT INTO sandbox_events (sandbox_id, team_id, at_ms, kind, duration_ms, detail) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        params);
  });
}

Result<std::vector<SandboxEvent>> PgStore::SandboxEvents(const std::string& sandbox_id) {
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec(std::string("SELECT ") + kEventColumns +
                      " FROM sandbox_events e WHERE e.sandbox_id = $1 ORDER BY e.seq",
                  {sandbox_id});
  }));
  return ReadAll(r, ReadEvent);
}

Result<int64_t> PgStore::StartCommand(const CommandRecord& cmd) {
  Params params = MakeParams(StoredText(cmd.sandbox_id), StoredText(cmd.team_id),
                             StoredText(cmd.kind), StoredCommand(cmd.command), StoredText(cmd.user),
                             StoredText(cmd.cwd), cmd.started_at_ms);
  int64_t id = 0;
  MOAT_RETURN_IF_ERROR(Transact([&](pg::Connection& c) -> Status {
    MOAT_ASSIGN_OR_RETURN(
        Rows r, c.Exec("INSERT INTO sandbox_commands (sandbox_id, team_id, kind, command, usr, "
                       "cwd, started_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                       params));
    id = r.Int(0, 0);
    return Status::Ok();
  }));
  return id;
}

Status PgStore::FinishCommand(const CommandRecord& cmd) {
  Params params = MakeParams(
      cmd.ended_at_ms, cmd.exit_code, StoredText(cmd.signal), StoredText(cmd.error),
      StoredText(cmd.stdout_head), StoredText(cmd.stdout_tail), StoredText(cmd.stderr_head),
      StoredText(cmd.stderr_tail), cmd.stdout_bytes, cmd.stderr_bytes, cmd.id);
  // Writing the same end again is harmless: safe to retry without a transaction.
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec(
        "UPDATE sandbox_commands SET ended_at_ms = $1, exit_code = $2, signal = $3, error = $4, "
        "stdout_head = $5, stdout_tail = $6, stderr_head = $7, stderr_tail = $8, stdout_bytes = "
        "$9, stderr_bytes = $10 WHERE id = $11",
        params);
  }));
  if (r.affected() == 0) return NotFound("command " + std::to_string(cmd.id) + " not found");
  return Status::Ok();
}

Result<std::vector<CommandRecord>> PgStore::ListCommands(const std::string& sandbox_id,
                                                         int64_t before_id, int limit) {
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec(std::string("SELECT ") + kCommandColumns +
                      " FROM sandbox_commands WHERE sandbox_id = $1 AND ($2::bigint <= 0 OR id < "
                      "$2::bigint) ORDER BY id DESC LIMIT $3::bigint",
                  MakeParams(sandbox_id, before_id, HistoryPageLimit(limit)));
  }));
  return ReadAll(r, ReadCommand);
}

Status PgStore::SaveConsoleLog(const std::string& sandbox_id, const std::string& text) {
  Params params = MakeParams(StoredText(sandbox_id), StoredText(text));
  return pool_->Run([&](pg::Connection& c) {
    return c.Run(
        "INSERT INTO sandbox_console (sandbox_id, text) VALUES ($1, $2) ON CONFLICT (sandbox_id) "
        "DO UPDATE SET text = EXCLUDED.text",
        params);
  });
}

Result<std::optional<std::string>> PgStore::ConsoleLog(const std::string& sandbox_id) {
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec("SELECT text FROM sandbox_console WHERE sandbox_id = $1", {sandbox_id});
  }));
  if (r.size() == 0) return std::optional<std::string>();
  return std::optional<std::string>(r.Text(0, 0));
}

Status PgStore::AppendAudit(const AuditRecord& a) {
  Params params =
      MakeParams(a.at_ms, StoredText(a.team_id), StoredText(a.key_id), StoredText(a.key_name),
                 StoredText(a.source), StoredText(a.request_id), StoredText(a.action),
                 StoredText(a.target), StoredText(a.outcome), a.status, StoredText(a.detail));
  return Transact([&](pg::Connection& c) {
    return c.Run(
        "INSERT INTO audit_log (at_ms, team_id, key_id, key_name, source, request_id, action, "
        "target, outcome, status, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        params);
  });
}

Result<AuditPage> PgStore::ListAudit(const AuditFilter& f) {
  QueryBuilder q(std::string("SELECT ") + kAuditColumns + " FROM audit_log WHERE TRUE");
  std::string& sql = q.sql();
  if (!f.team_id.empty()) sql += " AND team_id = " + q.Text(f.team_id);
  if (!f.action.empty() && f.action.back() == '.') {
    std::string prefix = q.Text(f.action);
    sql += " AND left(action, length(" + prefix + ")) = " + prefix;
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
  sql += " ORDER BY seq DESC LIMIT " + q.Int(limit + 1);

  MOAT_ASSIGN_OR_RETURN(Rows rows,
                        pool_->Run([&](pg::Connection& c) { return c.Exec(sql, q.params()); }));
  AuditPage page;
  page.items = ReadAll(rows, ReadAudit);
  if (page.items.size() > static_cast<size_t>(limit)) {
    page.items.resize(static_cast<size_t>(limit));
    page.next_token = std::to_string(page.items.back().seq);
  }
  return page;
}

Status PgStore::RecordNetUsage(const std::string& sandbox_id, int64_t hour_ms, int64_t egress_total,
                               int64_t ingress_total, int64_t slot_generation) {
  if (egress_total < 0 || ingress_total < 0) {
    return InvalidArgument("network counters of " + sandbox_id + " are negative");
  }
  return Transact([&](pg::Connection& c) -> Status {
    // The row lock orders readings of one sandbox: each sees what the one before it kept.
    MOAT_ASSIGN_OR_RETURN(Rows last,
                          c.Exec("SELECT net_last_egress, net_last_ingress, net_last_gen FROM "
                                 "sandbox_history WHERE sandbox_id = $1 FOR UPDATE",
                                 {sandbox_id}));
    if (last.size() == 0) return NotFound("history of sandbox \"" + sandbox_id + "\" not found");
    NetDelta d = NetDeltaOf({last.Int(0, 0), last.Int(0, 1), last.Int(0, 2)},
                            {egress_total, ingress_total, slot_generation});
    if (!d.changed) return Status::Ok();
    int64_t egress = d.egress, ingress = d.ingress;
    if (egress != 0 || ingress != 0) {
      MOAT_RETURN_IF_ERROR(c.Run(
          "INSERT INTO net_usage (sandbox_id, hour_ms, egress_bytes, ingress_bytes) VALUES ($1, "
          "$2, $3, $4) ON CONFLICT (sandbox_id, hour_ms) DO UPDATE SET egress_bytes = "
          "net_usage.egress_bytes + EXCLUDED.egress_bytes, ingress_bytes = "
          "net_usage.ingress_bytes + EXCLUDED.ingress_bytes",
          MakeParams(sandbox_id, hour_ms, egress, ingress)));
    }
    return c.Run(
        "UPDATE sandbox_history SET egress_bytes = egress_bytes + $1, ingress_bytes = "
        "ingress_bytes + $2, net_last_egress = $3, net_last_ingress = $4, net_last_gen = $6 "
        "WHERE sandbox_id = $5",
        MakeParams(egress, ingress, d.kept.egress, d.kept.ingress, sandbox_id, d.kept.generation));
  });
}

Status PgStore::RecordSnapshotStored(const SnapshotStorageRecord& s) {
  Params params = MakeParams(StoredText(s.id), StoredText(s.team_id), StoredText(s.template_id),
                             s.bytes, s.created_at_ms, s.deleted_at_ms);
  return pool_->Run([&](pg::Connection& c) {
    return c.Run(
        "INSERT INTO snapshot_storage (id, team_id, template_id, bytes, created_at_ms, "
        "deleted_at_ms) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
        params);
  });
}

Status PgStore::RecordSnapshotDeleted(const std::string& id, int64_t at_ms) {
  return pool_->Run([&](pg::Connection& c) {
    return c.Run(
        "UPDATE snapshot_storage SET deleted_at_ms = $1 WHERE id = $2 AND deleted_at_ms = 0",
        MakeParams(at_ms, id));
  });
}

Result<UsageInput> PgStore::LoadUsageInput(const std::string& team_id, int64_t from_ms,
                                           int64_t to_ms) {
  const Params window = MakeParams(team_id, from_ms, to_ms);
  const Params net_window = MakeParams(team_id, from_ms, to_ms, from_ms - kHourMs);
  return pool_->Run([&](pg::Connection& c) -> Result<UsageInput> {
    // One snapshot of the database for all five reads: the events, commands and buckets belong
    // to the histories read.
    MOAT_ASSIGN_OR_RETURN(auto tx, pg::Transaction::Begin(c, pg::Isolation::kRepeatableRead));
    UsageInput in;
    MOAT_ASSIGN_OR_RETURN(Rows h, c.Exec(std::string("SELECT ") + kHistoryColumns +
                                             " FROM sandbox_history h WHERE " + kUsageHistories +
                                             " ORDER BY h.created_at_ms, h.sandbox_id COLLATE "
                                             "\"C\"",
                                         window));
    in.histories = ReadAll(h, ReadHistory);
    MOAT_ASSIGN_OR_RETURN(
        Rows e, c.Exec(std::string("SELECT ") + kEventColumns +
                           " FROM sandbox_events e JOIN sandbox_history h ON h.sandbox_id = "
                           "e.sandbox_id WHERE " +
                           kUsageHistories + " ORDER BY e.sandbox_id COLLATE \"C\", e.seq",
                       window));
    in.events = ReadAll(e, ReadEvent);
    MOAT_ASSIGN_OR_RETURN(
        Rows cmd,
        c.Exec(std::string("SELECT c.id, c.sandbox_id, c.team_id, c.kind, "
                           "c.started_at_ms, c.ended_at_ms FROM sandbox_commands c "
                           "JOIN sandbox_history h ON h.sandbox_id = c.sandbox_id "
                           "WHERE ") +
                   kUsageHistories +
                   " AND c.started_at_ms < $3::bigint AND (c.ended_at_ms = 0 OR "
                   "c.ended_at_ms > $2::bigint) ORDER BY c.sandbox_id COLLATE \"C\", c.id",
               window));
    in.commands = ReadAll(cmd, [](const Rows& r, int i) {
      CommandRecord rec;
      rec.id = r.Int(i, 0);
      rec.sandbox_id = r.Text(i, 1);
      rec.team_id = r.Text(i, 2);
      rec.kind = r.Text(i, 3);
      rec.started_at_ms = r.Int(i, 4);
      rec.ended_at_ms = r.Int(i, 5);
      return rec;
    });
    MOAT_ASSIGN_OR_RETURN(
        Rows n, c.Exec(std::string("SELECT n.sandbox_id, n.hour_ms, n.egress_bytes, "
                                   "n.ingress_bytes FROM net_usage n JOIN sandbox_history h ON "
                                   "h.sandbox_id = n.sandbox_id WHERE ") +
                           kUsageHistories +
                           " AND n.hour_ms >= $4::bigint AND n.hour_ms < $3::bigint ORDER BY "
                           "n.sandbox_id COLLATE \"C\", n.hour_ms",
                       net_window));
    in.net = ReadAll(n, [](const Rows& r, int i) {
      return NetUsageRecord{r.Text(i, 0), r.Int(i, 1), r.Int(i, 2), r.Int(i, 3)};
    });
    MOAT_ASSIGN_OR_RETURN(
        Rows s, c.Exec("SELECT id, team_id, template_id, bytes, created_at_ms, deleted_at_ms FROM "
                       "snapshot_storage WHERE ($1::text = '' OR team_id = $1::text) AND "
                       "created_at_ms < $3::bigint AND (deleted_at_ms = 0 OR deleted_at_ms > "
                       "$2::bigint) ORDER BY created_at_ms, id COLLATE \"C\"",
                       window));
    in.snapshots = ReadAll(s, [](const Rows& r, int i) {
      return SnapshotStorageRecord{r.Text(i, 0), r.Text(i, 1), r.Text(i, 2),
                                   r.Int(i, 3),  r.Int(i, 4),  r.Int(i, 5)};
    });
    MOAT_RETURN_IF_ERROR(tx.Commit());
    return in;
  });
}

Result<PruneCounts> PgStore::PruneHistory(int64_t before_ms, int64_t now_ms) {
  // The histories that go: ended before `before_ms` ($1). Their events, commands and console
  // logs go first; so do those of sandboxes that never had a history, once as old.
  constexpr const char* kPruned =
      "sandbox_id IN (SELECT sandbox_id FROM sandbox_history WHERE ended_at_ms > 0 AND "
      "ended_at_ms < $1::bigint)";
  constexpr const char* kOrphan =
      "NOT EXISTS (SELECT 1 FROM sandbox_history h WHERE h.sandbox_id = ";
  PruneCounts counts;
  struct Step {
    std::string sql;
    int64_t PruneCounts::*count;  // null: not counted
    int64_t at;
  };
  const Step steps[] = {
      {std::string("DELETE FROM sandbox_events WHERE ") + kPruned + " OR (at_ms < $1::bigint AND " +
           kOrphan + "sandbox_events.sandbox_id))",
       &PruneCounts::events, before_ms},
      {std::string("DELETE FROM sandbox_commands WHERE ") + kPruned +
           " OR (started_at_ms < $1::bigint AND " + kOrphan + "sandbox_commands.sandbox_id))",
       &PruneCounts::commands, before_ms},
      {std::string("DELETE FROM sandbox_console WHERE ") + kPruned, nullptr, before_ms},
      {"DELETE FROM sandbox_history WHERE ended_at_ms > 0 AND ended_at_ms < $1::bigint",
       &PruneCounts::histories, before_ms},
      {"DELETE FROM audit_log WHERE at_ms < $1::bigint", &PruneCounts::audit, before_ms},
      {"DELETE FROM net_usage WHERE hour_ms < $1::bigint", &PruneCounts::net, before_ms},
      {"DELETE FROM snapshot_storage WHERE deleted_at_ms > 0 AND deleted_at_ms < $1::bigint",
       &PruneCounts::snapshots, before_ms},
      {"DELETE FROM dashboard_sessions WHERE expires_at_ms < $1::bigint", &PruneCounts::sessions,
       now_ms},
  };
  MOAT_RETURN_IF_ERROR(Transact([&](pg::Connection& c) -> Status {
    counts = PruneCounts{};
    for (const auto& step : steps) {
      MOAT_ASSIGN_OR_RETURN(Rows r, c.Exec(step.sql, MakeParams(step.at)));
      if (step.count != nullptr) counts.*step.count = r.affected();
    }
    return Status::Ok();
  }));
  return counts;
}

Status PgStore::InsertSession(const SessionRecord& s) {
  Params params = MakeParams(s.token_sha256, s.team_id, s.key_id, StoredText(s.key_name),
                             s.csrf_token, s.created_at_ms, s.expires_at_ms);
  Status inserted = Transact([&](pg::Connection& c) {
    return c.Run(
        "INSERT INTO dashboard_sessions (token_sha256, team_id, key_id, key_name, csrf_token, "
        "created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        params);
  });
  if (inserted.code() == ErrorCode::kAlreadyExists) {
    return Status(ErrorCode::kAlreadyExists, "session already exists");
  }
  return inserted;
}

Result<std::optional<SessionRecord>> PgStore::GetSession(const std::string& token_sha256,
                                                         int64_t now_ms) {
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec(std::string("SELECT ") + kSessionColumns +
                      " FROM dashboard_sessions s JOIN api_keys k ON k.id = s.key_id AND "
                      "k.team_id = s.team_id AND k.revoked_at_ms IS NULL WHERE s.token_sha256 = "
                      "$1 AND s.expires_at_ms > $2::bigint",
                  MakeParams(token_sha256, now_ms));
  }));
  if (r.size() == 0) return std::optional<SessionRecord>();
  return std::optional<SessionRecord>(SessionRecord{r.Text(0, 0), r.Text(0, 1), r.Text(0, 2),
                                                    r.Text(0, 3), r.Text(0, 4), r.Int(0, 5),
                                                    r.Int(0, 6)});
}

Status PgStore::DeleteSession(const std::string& token_sha256) {
  return pool_->Run([&](pg::Connection& c) {
    return c.Run("DELETE FROM dashboard_sessions WHERE token_sha256 = $1", {token_sha256});
  });
}

}  // namespace moat::api::store
