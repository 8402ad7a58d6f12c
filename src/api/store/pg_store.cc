#include "api/store/pg_store.h"

#include <thread>

#include "api/store/json_text.h"
#include "api/store/pg_connection.h"
#include "api/store/schema.h"

namespace moat::api::store {
namespace {

using pg::MakeParams;
using pg::Params;
using pg::Rows;

// pg_advisory_xact_lock's key for migrations: "moatschm" in ASCII, so that another program
// sharing the database is unlikely to take the same one.
constexpr int64_t kMigrationLock = 0x6d6f61747363686d;

// Ids sort byte by byte, as in SQLite, whatever the database's collation: page order and
// cursors then agree between the stores.
constexpr const char* kSandboxColumns =
    "s.id, s.team_id, s.template_id, s.access_token, s.env_vars, s.state, s.started_at_ms, "
    "s.end_at_ms, s.auto_pause, s.cpu_count, s.memory_mb, s.disk_size_mb, "
    "s.traffic_access_token, s.host_id, s.generation, "
    "(SELECT json_object_agg(m.key, m.value) FROM sandbox_metadata m WHERE m.sandbox_id = s.id), "
    "s.options";

SandboxRecord ReadSandbox(const Rows& rows, int i) {
  SandboxRecord r;
  r.id = rows.Text(i, 0);
  r.team_id = rows.Text(i, 1);
  r.template_id = rows.Text(i, 2);
  r.access_token = rows.Text(i, 3);
  r.env_vars = StringMapFromJson(rows.Text(i, 4));
  // A state this moatd does not know (a newer one wrote it) reads as error: killable, no more.
  r.state = ParseSandboxState(rows.Text(i, 5)).value_or(SandboxState::kError);
  r.started_at_ms = rows.Int(i, 6);
  r.end_at_ms = rows.Int(i, 7);
  r.auto_pause = rows.Int(i, 8) != 0;
  r.cpu_count = static_cast<uint32_t>(rows.Int(i, 9));
  r.memory_mb = static_cast<uint32_t>(rows.Int(i, 10));
  r.disk_size_mb = static_cast<uint32_t>(rows.Int(i, 11));
  r.traffic_access_token = rows.Text(i, 12);
  r.host_id = rows.Text(i, 13);
  r.generation = rows.Int(i, 14);
  if (!rows.IsNull(i, 15)) r.metadata = StringMapFromJson(rows.Text(i, 15));
  r.options = SandboxOptionsFromJson(rows.Text(i, 16));
  return r;
}

std::vector<SandboxRecord> ReadSandboxes(const Rows& rows) {
  std::vector<SandboxRecord> out;
  out.reserve(static_cast<size_t>(rows.size()));
  for (int i = 0; i < rows.size(); ++i) out.push_back(ReadSandbox(rows, i));
  return out;
}

constexpr const char* kSnapshotColumns = "id, team_id, sandbox_id, name, created_at_ms, host_id";

SnapshotRecord ReadSnapshot(const Rows& rows, int i) {
  return SnapshotRecord{rows.Text(i, 0), rows.Text(i, 1), rows.Text(i, 2),
                        rows.Text(i, 3), rows.Int(i, 4),  rows.Text(i, 5)};
}

std::vector<SnapshotRecord> ReadSnapshots(const Rows& rows) {
  std::vector<SnapshotRecord> out;
  out.reserve(static_cast<size_t>(rows.size()));
  for (int i = 0; i < rows.size(); ++i) out.push_back(ReadSnapshot(rows, i));
  return out;
}

// Page cursors are "<ms>.<id>" of the last item of the previous page (as SqliteStore's).
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

int PageLimit(int limit) {
  return limit < 1 ? 1 : (limit > 100 ? 100 : limit);
}

// A query whose parameters are numbered ($1, $2, …) as they are added.
class QueryBuilder {
 public:
  explicit QueryBuilder(std::string sql) : sql_(std::move(sql)) {}
  std::string Text(const std::string& v) {
    params_.push_back(v);
    return "$" + std::to_string(params_.size());
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

// Did the transaction that was committing when its connection was lost commit? It may still be
// finishing on the server (its session has not noticed yet): waits a little for the answer.
Result<bool> Committed(pg::Connection& c, const std::string& xid) {
  for (int round = 0; round < 100; ++round) {
    MOAT_ASSIGN_OR_RETURN(Rows r, c.Exec("SELECT pg_xact_status($1::xid8)", {xid}));
    std::string status = r.Text(0, 0);
    if (status == "committed") return true;
    if (status == "aborted") return false;
    if (status != "in progress") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return Unavailable("postgresql: the connection was lost during COMMIT and whether transaction " +
                     xid + " committed is not known yet");
}

}  // namespace

PgStore::PgStore(std::unique_ptr<pg::Pool> pool, std::unique_ptr<pg::ConnectOptions> connect)
    : pool_(std::move(pool)), connect_(std::move(connect)) {}

PgStore::~PgStore() = default;

Result<std::unique_ptr<PgStore>> PgStore::Open(const std::string& conninfo,
                                               PgStoreOptions options) {
  if (options.pool_size < 1) {
    return InvalidArgument("postgresql store: pool size " + std::to_string(options.pool_size) +
                           " (at least 1)");
  }
  pg::PoolOptions po;
  po.connect.conninfo = conninfo;
  po.connect.connect_timeout = options.connect_timeout;
  po.connect.statement_timeout = options.statement_timeout;
  po.size = options.pool_size;
  auto connect = std::make_unique<pg::ConnectOptions>(po.connect);
  std::unique_ptr<PgStore> store(
      new PgStore(std::make_unique<pg::Pool>(std::move(po)), std::move(connect)));
  // The kit's messages name the host and port (libpq's do) and never the conninfo itself.
  Status migrated = store->Migrate();
  if (!migrated.ok()) return migrated.Annotate("opening the PostgreSQL store");
  return store;
}

Status PgStore::Migrate() {
  const int latest = static_cast<int>(kMigrationCount);
  return pool_->Run([&](pg::Connection& c) -> Status {
    MOAT_ASSIGN_OR_RETURN(auto tx, pg::Transaction::Begin(c, pg::Isolation::kReadCommitted));
    // Replicas starting together queue here; each later one then finds the schema up to date.
    // Taken before the version table is made: two CREATE TABLE IF NOT EXISTS can collide.
    MOAT_RETURN_IF_ERROR(c.Run("SELECT pg_advisory_xact_lock($1)", MakeParams(kMigrationLock)));
    MOAT_RETURN_IF_ERROR(
        c.Run("CREATE TABLE IF NOT EXISTS schema_version (one BOOLEAN PRIMARY KEY DEFAULT TRUE "
              "CHECK (one), version INTEGER NOT NULL)"));
    MOAT_ASSIGN_OR_RETURN(Rows v, c.Exec("SELECT version FROM schema_version"));
    int version = v.size() > 0 ? static_cast<int>(v.Int(0, 0)) : 0;
    if (version > latest) {
      return FailedPrecondition("database schema version " + std::to_string(version) +
                                " is newer than this moatd (" + std::to_string(latest) + ")");
    }
    for (int i = version; i < latest; ++i) {
      Status s = c.RunScript(kMigrations[i].postgres);
      if (!s.ok()) return s.Annotate("schema migration " + std::to_string(i + 1));
    }
    if (version < latest) {
      MOAT_RETURN_IF_ERROR(
          c.Run("INSERT INTO schema_version (one, version) VALUES (TRUE, $1) ON CONFLICT (one) DO "
                "UPDATE SET version = EXCLUDED.version",
                MakeParams(latest)));
    }
    MOAT_RETURN_IF_ERROR(tx.Commit());
    migrations_applied_ = latest - version;
    return Status::Ok();
  });
}

int PgStore::schema_version() {
  auto v = pool_->Run([](pg::Connection& c) -> Result<int> {
    MOAT_ASSIGN_OR_RETURN(Rows r, c.Exec("SELECT version FROM schema_version"));
    return r.size() == 1 ? static_cast<int>(r.Int(0, 0)) : -1;
  });
  return v.ok() ? *v : -1;
}

Status PgStore::Transact(const std::function<Status(pg::Connection&)>& body) {
  std::string committing;  // an attempt's transaction id, while its COMMIT's outcome is unknown
  return pool_->Run([&](pg::Connection& c) -> Status {
    if (!committing.empty()) {
      MOAT_ASSIGN_OR_RETURN(bool committed, Committed(c, committing));
      if (committed) return Status::Ok();  // body's answer is still in its variables
      committing.clear();
    }
    MOAT_ASSIGN_OR_RETURN(auto tx, pg::Transaction::Begin(c, pg::Isolation::kReadCommitted));
    MOAT_ASSIGN_OR_RETURN(Rows xid, c.Exec("SELECT pg_current_xact_id()::text"));
    MOAT_RETURN_IF_ERROR(body(c));
    Status s = tx.Commit();
    // An error on a live connection means not committed (rolled back); on a lost one, unknown.
    if (!s.ok() && !c.ok()) committing = xid.Text(0, 0);
    return s;
  });
}

Status PgStore::InsertSandbox(const SandboxRecord& r) {
  // One statement: the record, then its metadata from a JSON object.
  const std::string sql =
      "WITH s AS (INSERT INTO sandboxes (id, team_id, template_id, access_token, env_vars, state, "
      "started_at_ms, end_at_ms, auto_pause, cpu_count, memory_mb, disk_size_mb, "
      "traffic_access_token, host_id, generation, options) VALUES ($1, $2, $3, $4, $5, $6, $7, "
      "$8, $9, $10, $11, $12, $13, $14, $15, $17) RETURNING id) "
      "INSERT INTO sandbox_metadata (sandbox_id, key, value) "
      "SELECT s.id, m.key, m.value FROM s, json_each_text($16::json) m";
  Params params = MakeParams(r.id, r.team_id, r.template_id, r.access_token, JsonText(r.env_vars),
                             SandboxStateName(r.state), r.started_at_ms, r.end_at_ms,
                             int64_t{r.auto_pause ? 1 : 0}, r.cpu_count, r.memory_mb,
                             r.disk_size_mb, r.traffic_access_token, r.host_id, r.generation,
                             JsonText(r.metadata), SandboxOptionsToJson(r.options));
  return Transact([&](pg::Connection& c) { return c.Run(sql, params); });
}

Result<std::optional<SandboxRecord>> PgStore::GetSandbox(const std::string& id) {
  return pool_->Run([&](pg::Connection& c) -> Result<std::optional<SandboxRecord>> {
    MOAT_ASSIGN_OR_RETURN(Rows r, c.Exec(std::string("SELECT ") + kSandboxColumns +
                                             " FROM sandboxes s WHERE s.id = $1",
                                         {id}));
    if (r.size() == 0) return std::optional<SandboxRecord>();
    return std::optional<SandboxRecord>(ReadSandbox(r, 0));
  });
}

Result<SandboxPage> PgStore::ListSandboxes(const SandboxFilter& f) {
  QueryBuilder q(std::string("SELECT ") + kSandboxColumns + " FROM sandboxes s WHERE TRUE");
  std::string& sql = q.sql();
  sql += " AND s.team_id = " + q.Text(f.team_id);
  for (const auto& [k, v] : f.metadata) {
    sql += " AND EXISTS (SELECT 1 FROM sandbox_metadata m WHERE m.sandbox_id = s.id AND m.key = ";
    sql += q.Text(k);
    sql += " AND m.value = ";
    sql += q.Text(v);
    sql += ")";
  }
  if (!f.states.empty()) {
    sql += " AND s.state IN (";
    for (size_t i = 0; i < f.states.size(); ++i) {
      sql += (i == 0 ? "" : ", ") + q.Text(std::string(SandboxStateName(f.states[i])));
    }
    sql += ")";
  }
  if (!f.template_id.empty()) sql += " AND s.template_id = " + q.Text(f.template_id);
  if (f.started_after_ms) sql += " AND s.started_at_ms > " + q.Int(*f.started_after_ms);
  if (!f.next_token.empty()) {
    MOAT_ASSIGN_OR_RETURN(Cursor c, ParseCursor(f.next_token));
    std::string ms = q.Int(c.ms);
    std::string id = q.Text(c.id);
    sql += std::string(" AND (s.started_at_ms, s.id COLLATE \"C\") ") + (f.ascending ? ">" : "<") +
           " (" + ms + ", " + id + ")";
  }
  int limit = PageLimit(f.limit);
  sql += f.ascending ? " ORDER BY s.started_at_ms ASC, s.id COLLATE \"C\" ASC"
                     : " ORDER BY s.started_at_ms DESC, s.id COLLATE \"C\" DESC";
  sql += " LIMIT " + q.Int(limit + 1);

  MOAT_ASSIGN_OR_RETURN(Rows rows,
                        pool_->Run([&](pg::Connection& c) { return c.Exec(sql, q.params()); }));
  SandboxPage page;
  page.items = ReadSandboxes(rows);
  if (page.items.size() > static_cast<size_t>(limit)) {
    page.items.resize(static_cast<size_t>(limit));
    const auto& last = page.items.back();
    page.next_token = MakeCursor(last.started_at_ms, last.id);
  }
  return page;
}

Result<std::vector<SandboxRecord>> PgStore::AllSandboxes() {
  MOAT_ASSIGN_OR_RETURN(Rows rows, pool_->Run([](pg::Connection& c) {
    return c.Exec(std::string("SELECT ") + kSandboxColumns +
                  " FROM sandboxes s ORDER BY s.id COLLATE \"C\"");
  }));
  return ReadSandboxes(rows);
}

Result<std::vector<SandboxRecord>> PgStore::SandboxesOnHost(const std::string& host_id) {
  MOAT_ASSIGN_OR_RETURN(Rows rows, pool_->Run([&](pg::Connection& c) {
    return c.Exec(std::string("SELECT ") + kSandboxColumns +
                      " FROM sandboxes s WHERE s.host_id = $1 ORDER BY s.id COLLATE \"C\"",
                  {host_id});
  }));
  return ReadSandboxes(rows);
}

Result<std::vector<SandboxRecord>> PgStore::StaleCreating(int64_t started_before_ms) {
  MOAT_ASSIGN_OR_RETURN(Rows rows, pool_->Run([&](pg::Connection& c) {
    return c.Exec(std::string("SELECT ") + kSandboxColumns +
                      " FROM sandboxes s WHERE s.state = 'creating' AND s.started_at_ms < "
                      "$1::bigint ORDER BY s.started_at_ms, s.id COLLATE \"C\"",
                  MakeParams(started_before_ms));
  }));
  return ReadSandboxes(rows);
}

Status PgStore::SetSandboxEndAt(const std::string& id, int64_t end_at_ms) {
  // Setting the same value again is harmless: no transaction needed to retry it.
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec("UPDATE sandboxes SET end_at_ms = $1 WHERE id = $2", MakeParams(end_at_ms, id));
  }));
  if (r.affected() == 0) return NotFound("sandbox \"" + id + "\" not found");
  return Status::Ok();
}

Result<bool> PgStore::TransitionSandbox(const std::string& id, const StateExpect& expect,
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
  bool changed = false;
  MOAT_RETURN_IF_ERROR(Transact([&](pg::Connection& c) -> Status {
    MOAT_ASSIGN_OR_RETURN(Rows r, c.Exec(sql, q.params()));
    changed = r.affected() > 0;
    return Status::Ok();
  }));
  return changed;
}

Status PgStore::DeleteSandbox(const std::string& id) {
  // Its metadata goes with it (ON DELETE CASCADE); deleting twice is harmless.
  return pool_->Run(
      [&](pg::Connection& c) { return c.Run("DELETE FROM sandboxes WHERE id = $1", {id}); });
}

namespace {

constexpr char kSandboxChannel[] = "moat_sandbox";

class PgSandboxChangeFeed : public SandboxChangeFeed {
 public:
  explicit PgSandboxChangeFeed(pg::Listener listener) : listener_(std::move(listener)) {}
  Result<std::optional<std::string>> Next(std::chrono::milliseconds timeout) override {
    MOAT_ASSIGN_OR_RETURN(auto n, listener_.WaitNotification(timeout));
    if (!n) return std::optional<std::string>();
    return std::optional<std::string>(std::move(n->payload));
  }

 private:
  pg::Listener listener_;
};

}  // namespace

Result<std::unique_ptr<SandboxChangeFeed>> PgStore::WatchSandboxChanges() {
  pg::ConnectOptions options = *connect_;
  options.application_name = "moatd-routes";
  MOAT_ASSIGN_OR_RETURN(pg::Listener listener, pg::Listener::Open(options));
  MOAT_RETURN_IF_ERROR(listener.Listen(kSandboxChannel));
  return std::unique_ptr<SandboxChangeFeed>(new PgSandboxChangeFeed(std::move(listener)));
}

Result<bool> PgStore::Lead(const std::string& role) {
  // The lock's key: "moatL" in the high bytes, a hash of the role below (FNV-1a).
  uint32_t h = 2166136261u;
  for (unsigned char ch : role) h = (h ^ ch) * 16777619u;
  const int64_t key = static_cast<int64_t>(0x6d6f61744c000000LL | (h & 0xffffffu));
  std::lock_guard lock(lead_mu_);
  LeadSession& lead = leads_[role];
  auto now = std::chrono::steady_clock::now();
  if (!lead.conn || !lead.conn->ok()) {
    // A lost session released its lock with it. Reconnects are spaced out, so that callers do
    // not queue behind connect timeouts while the database is down.
    lead.conn.reset();
    lead.held = false;
    if (now < lead.retry_after) return Unavailable("postgresql: no session for role " + role);
    lead.retry_after = now + std::chrono::seconds(5);
    pg::ConnectOptions options = *connect_;
    options.application_name = "moatd-lead";
    MOAT_ASSIGN_OR_RETURN(pg::Connection conn, pg::Connection::Open(options));
    // The server drops a leader's session (and its lock) within about 25 s of the leader's host
    // going silent, not after the system's two-hour keepalive default.
    MOAT_RETURN_IF_ERROR(conn.Run("SET tcp_keepalives_idle = 10"));
    MOAT_RETURN_IF_ERROR(conn.Run("SET tcp_keepalives_interval = 5"));
    MOAT_RETURN_IF_ERROR(conn.Run("SET tcp_keepalives_count = 3"));
    lead.conn = std::make_unique<pg::Connection>(std::move(conn));
  }
  if (lead.held) {
    // Still ours while the session lives; a query tells a dead session apart.
    if (lead.conn->Run("SELECT 1").ok()) return true;
    lead.conn.reset();
    lead.held = false;
    return Unavailable("postgresql: the session leading role " + role + " was lost");
  }
  auto r = lead.conn->Exec("SELECT pg_try_advisory_lock($1)", MakeParams(key));
  if (!r.ok()) {
    lead.conn.reset();
    return r.status();
  }
  lead.held = r->Bool(0, 0);
  return lead.held;
}

Status PgStore::InsertSnapshot(const SnapshotRecord& r) {
  const std::string sql = std::string("INSERT INTO snapshots (") + kSnapshotColumns +
                          ") VALUES ($1, $2, $3, $4, $5, $6)";
  Params params = MakeParams(r.id, r.team_id, r.sandbox_id, r.name, r.created_at_ms, r.host_id);
  return Transact([&](pg::Connection& c) { return c.Run(sql, params); });
}

Result<std::optional<SnapshotRecord>> PgStore::GetSnapshot(const std::string& id) {
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec(std::string("SELECT ") + kSnapshotColumns + " FROM snapshots WHERE id = $1",
                  {id});
  }));
  if (r.size() == 0) return std::optional<SnapshotRecord>();
  return std::optional<SnapshotRecord>(ReadSnapshot(r, 0));
}

Result<std::optional<SnapshotRecord>> PgStore::SnapshotByName(const std::string& team_id,
                                                              const std::string& name) {
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec(std::string("SELECT ") + kSnapshotColumns +
                      " FROM snapshots WHERE team_id = $1 AND name = $2 AND name != '' "
                      "ORDER BY created_at_ms DESC, id COLLATE \"C\" DESC LIMIT 1",
                  {team_id, name});
  }));
  if (r.size() == 0) return std::optional<SnapshotRecord>();
  return std::optional<SnapshotRecord>(ReadSnapshot(r, 0));
}

Result<SnapshotPage> PgStore::ListSnapshots(const SnapshotFilter& f) {
  QueryBuilder q(std::string("SELECT ") + kSnapshotColumns + " FROM snapshots WHERE TRUE");
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
    sql += " AND (created_at_ms, id COLLATE \"C\") < (" + ms + ", " + id + ")";
  }
  int limit = PageLimit(f.limit);
  sql += " ORDER BY created_at_ms DESC, id COLLATE \"C\" DESC LIMIT " + q.Int(limit + 1);

  MOAT_ASSIGN_OR_RETURN(Rows rows,
                        pool_->Run([&](pg::Connection& c) { return c.Exec(sql, q.params()); }));
  SnapshotPage page;
  page.items = ReadSnapshots(rows);
  if (page.items.size() > static_cast<size_t>(limit)) {
    page.items.resize(static_cast<size_t>(limit));
    const auto& last = page.items.back();
    page.next_token = MakeCursor(last.created_at_ms, last.id);
  }
  return page;
}

Result<std::vector<SnapshotRecord>> PgStore::AllSnapshots() {
  MOAT_ASSIGN_OR_RETURN(Rows rows, pool_->Run([](pg::Connection& c) {
    return c.Exec(std::string("SELECT ") + kSnapshotColumns +
                  " FROM snapshots ORDER BY id COLLATE \"C\"");
  }));
  return ReadSnapshots(rows);
}

Status PgStore::DeleteSnapshot(const std::string& id) {
  bool deleted = false;
  MOAT_RETURN_IF_ERROR(Transact([&](pg::Connection& c) -> Status {
    MOAT_ASSIGN_OR_RETURN(Rows r, c.Exec("DELETE FROM snapshots WHERE id = $1", {id}));
    deleted = r.affected() > 0;
    return Status::Ok();
  }));
  if (!deleted) return NotFound("snapshot \"" + id + "\" not found");
  return Status::Ok();
}

}  // namespace moat::api::store
