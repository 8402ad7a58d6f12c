#include "api/store/sqlite_store.h"

#include <sqlite3.h>

#include <nlohmann/json.hpp>

#include "api/store/schema.h"
#include "api/store/sqlite_statement.h"

namespace moat::api::store {
namespace {

using sqlite::QueryBuilder;
using sqlite::Statement;
using sqlite::Transaction;

constexpr const char* kSandboxColumns =
    "id, team_id, template_id, access_token, env_vars, state, started_at_ms, end_at_ms, "
    "auto_pause, cpu_count, memory_mb, disk_size_mb, traffic_access_token, host_id, generation, "
    "options";

SandboxRecord ReadSandbox(Statement& s) {
  SandboxRecord r;
  r.id = s.Text(0);
  r.team_id = s.Text(1);
  r.template_id = s.Text(2);
  r.access_token = s.Text(3);
  auto env = nlohmann::json::parse(s.Text(4), nullptr, false);
  if (env.is_object()) {
    for (auto& [k, v] : env.items()) {
      if (v.is_string()) r.env_vars[k] = v.get<std::string>();
    }
  }
  // A state this moatd does not know (a newer one wrote it) reads as error: killable, no more.
  r.state = ParseSandboxState(s.Text(5)).value_or(SandboxState::kError);
  r.started_at_ms = s.Int(6);
  r.end_at_ms = s.Int(7);
  r.auto_pause = s.Int(8) != 0;
  r.cpu_count = static_cast<uint32_t>(s.Int(9));
  r.memory_mb = static_cast<uint32_t>(s.Int(10));
  r.disk_size_mb = static_cast<uint32_t>(s.Int(11));
  r.traffic_access_token = s.Text(12);
  r.host_id = s.Text(13);
  r.generation = s.Int(14);
  r.options = SandboxOptionsFromJson(s.Text(15));
  return r;
}

constexpr const char* kSnapshotColumns = "id, team_id, sandbox_id, name, created_at_ms, host_id";

SnapshotRecord ReadSnapshot(Statement& s) {
  return SnapshotRecord{s.Text(0), s.Text(1), s.Text(2), s.Text(3), s.Int(4), s.Text(5)};
}

// Page cursors are "<ms>.<id>" of the last item of the previous page.
struct Cursor {
  int64_t ms = 0;
  std::string id;
};

Result<Cursor> ParseCursor(const std::string& token) {
  size_t dot = token.find('.');
  char* end = nullptr;
  long long ms = std::strtoll(token.c_str(), &end, 10);
  if (dot == std::string::npos || dot == 0 || end != token.c_str() + dot) {
    return InvalidArgument("nextToken: malformed cursor \"" + token + "\"");
  }
  return Cursor{ms, token.substr(dot + 1)};
}

std::string MakeCursor(int64_t ms, const std::string& id) {
  return std::to_string(ms) + "." + id;
}

}  // namespace

Result<std::unique_ptr<SqliteStore>> SqliteStore::Open(const std::string& path) {
  sqlite3* db = nullptr;
  int rc =
      sqlite3_open_v2(path.c_str(), &db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    sqlite3_close(db);
    return Unavailable("open " + path + ": " + msg);
  }
  std::unique_ptr<SqliteStore> store(new SqliteStore(db));
  sqlite3_busy_timeout(db, 5000);
  // WAL with synchronous=NORMAL: a commit is durable once in the WAL (a moatd crash loses
  // nothing); only an OS crash or power loss can lose the last commits, and that loses the VMs
  // they describe too. FULL would fsync every commit on the request path — a history record per
  // command made the exec round trip ~5 % slower here, and tens of percent on a busy disk
  // (bench/history_bench).
  MOAT_RETURN_IF_ERROR(
      store->Exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;"));
  Status migrated = store->Migrate();
  if (!migrated.ok()) return migrated.Annotate(path);
  return store;
}

SqliteStore::~SqliteStore() {
  sqlite3_close(db_);
}

Status SqliteStore::Exec(const std::string& sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err != nullptr ? err : "unknown error";
    sqlite3_free(err);
    return Internal("sqlite: " + msg);
  }
  return Status::Ok();
}

int SqliteStore::schema_version() {
  std::lock_guard lock(mu_);
  Statement s(db_, "PRAGMA user_version");
  auto row = s.Step();
  return row.ok() && *row ? static_cast<int>(s.Int(0)) : -1;
}

Status SqliteStore::Migrate() {
  Statement v(db_, "PRAGMA user_version");
  MOAT_ASSIGN_OR_RETURN(bool row, v.Step());
  int version = row ? static_cast<int>(v.Int(0)) : 0;
  int latest = static_cast<int>(kMigrationCount);
  if (version > latest) {
    return FailedPrecondition("database schema version " + std::to_string(version) +
                              " is newer than this moatd (" + std::to_string(latest) + ")");
  }
  for (int i = version; i < latest; ++i) {
    Transaction tx(db_);
    MOAT_RETURN_IF_ERROR(Exec(kMigrations[i].sqlite));
    MOAT_RETURN_IF_ERROR(Exec("PRAGMA user_version = " + std::to_string(i + 1)));
    MOAT_RETURN_IF_ERROR(tx.Commit());
  }
  return Status::Ok();
}

Status SqliteStore::InsertSandbox(const SandboxRecord& r) {
  std::lock_guard lock(mu_);
  Transaction tx(db_);
  {
    Statement s(db_, std::string("INSERT INTO sandboxes (") + kSandboxColumns +
                         ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
    MOAT_RETURN_IF_ERROR(s.status());
    MOAT_RETURN_IF_ERROR(s.Bind(1, r.id)
                             .Bind(2, r.team_id)
                             .Bind(3, r.template_id)
                             .Bind(4, r.access_token)
                             .Bind(5, nlohmann::json(r.env_vars).dump())
                             .Bind(6, std::string(SandboxStateName(r.state)))
                             .Bind(7, r.started_at_ms)
                             .Bind(8, r.end_at_ms)
                             .Bind(9, int64_t{r.auto_pause ? 1 : 0})
                             .Bind(10, int64_t{r.cpu_count})
                             .Bind(11, int64_t{r.memory_mb})
                             .Bind(12, int64_t{r.disk_size_mb})
                             .Bind(13, r.traffic_access_token)
                             .Bind(14, r.host_id)
                             .Bind(15, r.generation)
                             .Bind(16, SandboxOptionsToJson(r.options))
                             .Run());
  }
  for (const auto& [k, v] : r.metadata) {
    Statement s(db_, "INSERT INTO sandbox_metadata (sandbox_id, key, value) VALUES (?, ?, ?)");
    MOAT_RETURN_IF_ERROR(s.status());
    MOAT_RETURN_IF_ERROR(s.Bind(1, r.id).Bind(2, k).Bind(3, v).Run());
  }
  return tx.Commit();
}

Status SqliteStore::LoadMaps(SandboxRecord& r) {
  Statement s(db_, "SELECT key, value FROM sandbox_metadata WHERE sandbox_id = ?");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, r.id);
  for (;;) {
    MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) return Status::Ok();
    r.metadata[s.Text(0)] = s.Text(1);
  }
}

Result<std::optional<SandboxRecord>> SqliteStore::GetSandbox(const std::string& id) {
  std::lock_guard lock(mu_);
  Statement s(db_, std::string("SELECT ") + kSandboxColumns + " FROM sandboxes WHERE id = ?");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, id);
  MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return std::optional<SandboxRecord>();
  SandboxRecord r = ReadSandbox(s);
  MOAT_RETURN_IF_ERROR(LoadMaps(r));
  return std::optional<SandboxRecord>(std::move(r));
}

Result<SandboxPage> SqliteStore::ListSandboxes(const SandboxFilter& f) {
  QueryBuilder q(std::string("SELECT ") + kSandboxColumns + " FROM sandboxes WHERE 1");
  std::string& sql = q.sql();
  sql += " AND team_id = " + q.Text(f.team_id);
  for (const auto& [k, v] : f.metadata) {
    std::string key = q.Text(k);
    std::string value = q.Text(v);
    sql +=
        " AND EXISTS (SELECT 1 FROM sandbox_metadata m WHERE m.sandbox_id = sandboxes.id AND "
        "m.key = " +
        key + " AND m.value = " + value + ")";
  }
  if (!f.states.empty()) {
    sql += " AND state IN (";
    for (size_t i = 0; i < f.states.size(); ++i) {
      sql += (i == 0 ? "" : ", ") + q.Text(std::string(SandboxStateName(f.states[i])));
    }
    sql += ")";
  }
  if (!f.template_id.empty()) sql += " AND template_id = " + q.Text(f.template_id);
  if (f.started_after_ms) sql += " AND started_at_ms > " + q.Int(*f.started_after_ms);
  if (!f.next_token.empty()) {
    MOAT_ASSIGN_OR_RETURN(Cursor c, ParseCursor(f.next_token));
    std::string ms = q.Int(c.ms);
    std::string id = q.Text(c.id);
    sql += std::string(" AND (started_at_ms, id) ") + (f.ascending ? ">" : "<") + " (" + ms + ", " +
           id + ")";
  }
  int limit = f.limit < 1 ? 1 : (f.limit > 100 ? 100 : f.limit);
  sql +=
      f.ascending ? " ORDER BY started_at_ms ASC, id ASC" : " ORDER BY started_at_ms DESC, id DESC";
  sql += " LIMIT " + std::to_string(limit + 1);

  std::lock_guard lock(mu_);
  Statement s(db_, sql);
  MOAT_RETURN_IF_ERROR(s.status());
  q.BindAll(s);
  SandboxPage page;
  for (;;) {
    MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) break;
    page.items.push_back(ReadSandbox(s));
  }
  if (page.items.size() > static_cast<size_t>(limit)) {
    page.items.resize(static_cast<size_t>(limit));
    const auto& last = page.items.back();
    page.next_token = MakeCursor(last.started_at_ms, last.id);
  }
  for (auto& r : page.items) MOAT_RETURN_IF_ERROR(LoadMaps(r));
  return page;
}

Result<std::vector<SandboxRecord>> SqliteStore::AllSandboxes() {
  std::lock_guard lock(mu_);
  Statement s(db_, std::string("SELECT ") + kSandboxColumns + " FROM sandboxes ORDER BY id");
  MOAT_RETURN_IF_ERROR(s.status());
  std::vector<SandboxRecord> out;
  for (;;) {
    MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) break;
    out.push_back(ReadSandbox(s));
  }
  for (auto& r : out) MOAT_RETURN_IF_ERROR(LoadMaps(r));
  return out;
}

Result<std::vector<SandboxRecord>> SqliteStore::SandboxesOnHost(const std::string& host_id) {
  std::lock_guard lock(mu_);
  Statement s(db_, std::string("SELECT ") + kSandboxColumns +
                       " FROM sandboxes WHERE host_id = ? ORDER BY id");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, host_id);
  std::vector<SandboxRecord> out;
  for (;;) {
    MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) break;
    out.push_back(ReadSandbox(s));
  }
  for (auto& r : out) MOAT_RETURN_IF_ERROR(LoadMaps(r));
  return out;
}

Result<std::vector<SandboxRecord>> SqliteStore::StaleCreating(int64_t started_before_ms) {
  std::lock_guard lock(mu_);
  Statement s(db_, std::string("SELECT ") + kSandboxColumns +
                       " FROM sandboxes WHERE state = 'creating' AND started_at_ms < ? ORDER BY "
                       "started_at_ms, id");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, started_before_ms);
  std::vector<SandboxRecord> out;
  for (;;) {
    MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) break;
    out.push_back(ReadSandbox(s));
  }
  for (auto& r : out) MOAT_RETURN_IF_ERROR(LoadMaps(r));
  return out;
}

Status SqliteStore::SetSandboxEndAt(const std::string& id, int64_t end_at_ms) {
  std::lock_guard lock(mu_);
  Statement s(db_, "UPDATE sandboxes SET end_at_ms = ? WHERE id = ?");
  MOAT_RETURN_IF_ERROR(s.status());
  MOAT_RETURN_IF_ERROR(s.Bind(1, end_at_ms).Bind(2, id).Run());
  if (sqlite3_changes(db_) == 0) return NotFound("sandbox \"" + id + "\" not found");
  return Status::Ok();
}

Result<bool> SqliteStore::TransitionSandbox(const std::string& id, const StateExpect& expect,
                                            const StateChange& change) {
  MOAT_RETURN_IF_ERROR(CheckTransition(id, expect.state, change.to));
  QueryBuilder q("UPDATE sandboxes SET state = ");
  std::string& sql = q.sql();
  sql += q.Text(std::string(SandboxStateName(change.to)));
  if (change.host_id) sql += ", host_id = " + q.Text(*change.host_id);
  if (change.bump_generation) sql += ", generation = generation + 1";
  sql += " WHERE id = " + q.Text(id);
  sql += " AND state = " + q.Text(std::string(SandboxStateName(expect.state)));
  if (expect.host_id) sql += " AND host_id = " + q.Text(*expect.host_id);
  if (expect.generation) sql += " AND generation = " + q.Int(*expect.generation);
  std::lock_guard lock(mu_);
  Statement s(db_, sql);
  MOAT_RETURN_IF_ERROR(s.status());
  q.BindAll(s);
  MOAT_RETURN_IF_ERROR(s.Run());
  return sqlite3_changes(db_) > 0;
}

Status SqliteStore::DeleteSandbox(const std::string& id) {
  std::lock_guard lock(mu_);
  Statement s(db_, "DELETE FROM sandboxes WHERE id = ?");
  MOAT_RETURN_IF_ERROR(s.status());
  return s.Bind(1, id).Run();
}

Status SqliteStore::InsertSnapshot(const SnapshotRecord& r) {
  std::lock_guard lock(mu_);
  Statement s(db_, std::string("INSERT INTO snapshots (") + kSnapshotColumns +
                       ") VALUES (?, ?, ?, ?, ?, ?)");
  MOAT_RETURN_IF_ERROR(s.status());
  return s.Bind(1, r.id)
      .Bind(2, r.team_id)
      .Bind(3, r.sandbox_id)
      .Bind(4, r.name)
      .Bind(5, r.created_at_ms)
      .Bind(6, r.host_id)
      .Run();
}

Result<std::optional<SnapshotRecord>> SqliteStore::GetSnapshot(const std::string& id) {
  std::lock_guard lock(mu_);
  Statement s(db_, std::string("SELECT ") + kSnapshotColumns + " FROM snapshots WHERE id = ?");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, id);
  MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return std::optional<SnapshotRecord>();
  return std::optional<SnapshotRecord>(ReadSnapshot(s));
}

Result<std::optional<SnapshotRecord>> SqliteStore::SnapshotByName(const std::string& team_id,
                                                                  const std::string& name) {
  std::lock_guard lock(mu_);
  Statement s(db_, std::string("SELECT ") + kSnapshotColumns +
                       " FROM snapshots WHERE team_id = ? AND name = ? AND name != '' ORDER BY "
                       "created_at_ms DESC, id DESC LIMIT 1");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, team_id).Bind(2, name);
  MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return std::optional<SnapshotRecord>();
  return std::optional<SnapshotRecord>(ReadSnapshot(s));
}

Result<SnapshotPage> SqliteStore::ListSnapshots(const SnapshotFilter& f) {
  QueryBuilder q(std::string("SELECT ") + kSnapshotColumns + " FROM snapshots WHERE 1");
  std::string& sql = q.sql();
  sql += " AND team_id = " + q.Text(f.team_id);
  if (!f.sandbox_id.empty()) sql += " AND sandbox_id = " + q.Text(f.sandbox_id);
  if (!f.name.empty()) {
    std::string name = q.Text(f.name);
    sql += " AND (name = " + name + " OR id = " + name + ")";
  }
  if (!f.next_token.empty()) {
    MOAT_ASSIGN_OR_RETURN(Cursor c, ParseCursor(f.next_token));
    std::string ms = q.Int(c.ms);
    std::string id = q.Text(c.id);
    sql += " AND (created_at_ms, id) < (" + ms + ", " + id + ")";
  }
  int limit = f.limit < 1 ? 1 : (f.limit > 100 ? 100 : f.limit);
  sql += " ORDER BY created_at_ms DESC, id DESC LIMIT " + std::to_string(limit + 1);

  std::lock_guard lock(mu_);
  Statement s(db_, sql);
  MOAT_RETURN_IF_ERROR(s.status());
  q.BindAll(s);
  SnapshotPage page;
  for (;;) {
    MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) break;
    page.items.push_back(ReadSnapshot(s));
  }
  if (page.items.size() > static_cast<size_t>(limit)) {
    page.items.resize(static_cast<size_t>(limit));
    const auto& last = page.items.back();
    page.next_token = MakeCursor(last.created_at_ms, last.id);
  }
  return page;
}

Result<std::vector<SnapshotRecord>> SqliteStore::AllSnapshots() {
  std::lock_guard lock(mu_);
  Statement s(db_, std::string("SELECT ") + kSnapshotColumns + " FROM snapshots ORDER BY id");
  MOAT_RETURN_IF_ERROR(s.status());
  std::vector<SnapshotRecord> out;
  for (;;) {
    MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) return out;
    out.push_back(ReadSnapshot(s));
  }
}

Status SqliteStore::DeleteSnapshot(const std::string& id) {
  std::lock_guard lock(mu_);
  Statement s(db_, "DELETE FROM snapshots WHERE id = ?");
  MOAT_RETURN_IF_ERROR(s.status());
  MOAT_RETURN_IF_ERROR(s.Bind(1, id).Run());
  if (sqlite3_changes(db_) == 0) return NotFound("snapshot \"" + id + "\" not found");
  return Status::Ok();
}

}  // namespace moat::api::store
