// SqliteStore's snapshots in the object store (schema migration 14): a record per snapshot a host
// wrote, moved through its upload by compare-and-set, and the one row of the chunk sweep that
// keeps uploads and sweeps apart. One connection under the store's mutex makes each method atomic;
// the checks and changes that read the sweep's row run in one transaction all the same, as on
// PostgreSQL (pg_storage_store.cc). Times are the caller's.
#include <sqlite3.h>

#include <string>
#include <vector>

#include "api/store/history_rows.h"
#include "api/store/sqlite_statement.h"
#include "api/store/sqlite_store.h"
#include "api/store/stored_snapshot_validation.h"

namespace moat::api::store {
namespace {

using sqlite::QueryBuilder;
using sqlite::Statement;
using sqlite::Transaction;

constexpr const char* kStoredColumns =
    "key, kind, owner_id, team_id, host_id, state, bytes, nonzero_bytes, created_at_ms, "
    "upload_started_at_ms, uploaded_at_ms, attempts, last_error";

StoredSnapshotRecord ReadStored(Statement& s) {
  StoredSnapshotRecord r;
  r.key = s.Text(0);
  r.kind = s.Text(1);
  r.owner_id = s.Text(2);
  r.team_id = s.Text(3);
  r.host_id = s.Text(4);
  r.state = s.Text(5);
  r.bytes = s.Int(6);
  r.nonzero_bytes = s.Int(7);
  r.created_at_ms = s.Int(8);
  r.upload_started_at_ms = s.Int(9);
  r.uploaded_at_ms = s.Int(10);
  r.attempts = s.Int(11);
  r.last_error = s.Text(12);
  return r;
}

Result<std::optional<StoredSnapshotRecord>> FirstStored(Statement& s) {
  MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return std::optional<StoredSnapshotRecord>();
  return std::optional<StoredSnapshotRecord>(ReadStored(s));
}

// When the sweep that is running began; 0 when none is.
Result<int64_t> SweepingSince(sqlite3* db) {
  Statement s(db, "SELECT sweeping_since_ms FROM storage_sweep WHERE id = 1");
  MOAT_RETURN_IF_ERROR(s.status());
  MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return Internal("storage_sweep: its row is missing");
  return s.Int(0);
}

// A sweep that began at `since` still excludes uploads at `now_ms`: it has not ended, and began
// less than `stale_ms` ago (else its sweeper is taken for dead).
bool SweepLive(int64_t since, int64_t now_ms, int64_t stale_ms) {
  return since != 0 && now_ms - since < stale_ms;
}

}  // namespace

Status SqliteStore::InsertStoredSnapshot(const StoredSnapshotRecord& r) {
  MOAT_RETURN_IF_ERROR(CheckStoredSnapshot(r));
  std::lock_guard lock(mu_);
  Statement s(db_, std::string("INSERT INTO stored_snapshots (") + kStoredColumns +
                       ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
  MOAT_RETURN_IF_ERROR(s.status());
  Status inserted = s.Bind(1, r.key)
                        .Bind(2, r.kind)
                        .Bind(3, r.owner_id)
                        .Bind(4, r.team_id)
                        .Bind(5, r.host_id)
                        .Bind(6, r.state)
                        .Bind(7, r.bytes)
                        .Bind(8, r.nonzero_bytes)
                        .Bind(9, r.created_at_ms)
                        .Bind(10, r.upload_started_at_ms)
                        .Bind(11, r.uploaded_at_ms)
                        .Bind(12, r.attempts)
                        .Bind(13, StoredText(r.last_error))
                        .Run();
  if (inserted.ok()) return inserted;
  // Read right after the failed step, as PostgreSQL's 23505 is read in PgStore.
  if (sqlite3_extended_errcode(db_) == SQLITE_CONSTRAINT_PRIMARYKEY) {
    return {ErrorCode::kAlreadyExists, "stored snapshot \"" + r.key + "\" already exists"};
  }
  return inserted;
}

Result<std::optional<StoredSnapshotRecord>> SqliteStore::GetStoredSnapshot(const std::string& key) {
  std::lock_guard lock(mu_);
  Statement s(db_,
              std::string("SELECT ") + kStoredColumns + " FROM stored_snapshots WHERE key = ?");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, key);
  return FirstStored(s);
}

Result<std::optional<StoredSnapshotRecord>> SqliteStore::LatestStoredSnapshot(
    const std::string& kind, const std::string& owner_id) {
  std::lock_guard lock(mu_);
  Statement s(db_, std::string("SELECT ") + kStoredColumns +
                       " FROM stored_snapshots WHERE kind = ?1 AND owner_id = ?2 AND state != ?3 "
                       "ORDER BY created_at_ms DESC, key DESC LIMIT 1");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, kind).Bind(2, owner_id).Bind(3, std::string(kStoredDeleting));
  return FirstStored(s);
}

Result<std::vector<StoredSnapshotRecord>> SqliteStore::ListStoredSnapshots(
    const StoredSnapshotFilter& f) {
  std::vector<StoredSnapshotRecord> out;
  if (f.limit <= 0) return out;
  QueryBuilder q(std::string("SELECT ") + kStoredColumns + " FROM stored_snapshots WHERE 1");
  std::string& sql = q.sql();
  if (!f.state.empty()) sql += " AND state = " + q.Text(f.state);
  if (!f.kind.empty()) sql += " AND kind = " + q.Text(f.kind);
  if (!f.owner_id.empty()) sql += " AND owner_id = " + q.Text(f.owner_id);
  if (!f.host_id.empty()) sql += " AND host_id = " + q.Text(f.host_id);
  if (!f.team_id.empty()) sql += " AND team_id = " + q.Text(f.team_id);
  sql += " ORDER BY created_at_ms, key LIMIT " + q.Int(f.limit);

  std::lock_guard lock(mu_);
  Statement s(db_, sql);
  MOAT_RETURN_IF_ERROR(s.status());
  q.BindAll(s);
  for (;;) {
    MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) return out;
    out.push_back(ReadStored(s));
  }
}

Result<bool> SqliteStore::BeginSnapshotUpload(const std::string& key, int64_t now_ms,
                                              int64_t sweep_stale_ms) {
  std::lock_guard lock(mu_);
  Transaction tx(db_);
  MOAT_ASSIGN_OR_RETURN(int64_t since, SweepingSince(db_));
  if (SweepLive(since, now_ms, sweep_stale_ms)) return false;  // rolled back: nothing changed
  Statement s(db_,
              "UPDATE stored_snapshots SET state = ?1, upload_started_at_ms = ?2 WHERE key = ?3 "
              "AND state = ?4");
  MOAT_RETURN_IF_ERROR(s.status());
  MOAT_RETURN_IF_ERROR(s.Bind(1, std::string(kStoredUploading))
                           .Bind(2, now_ms)
                           .Bind(3, key)
                           .Bind(4, std::string(kStoredLocalOnly))
                           .Run());
  bool began = sqlite3_changes(db_) > 0;
  MOAT_RETURN_IF_ERROR(tx.Commit());
  return began;
}

Result<bool> SqliteStore::FinishSnapshotUpload(const std::string& key, int64_t uploaded_at_ms,
                                               int64_t bytes, int64_t nonzero_bytes) {
  std::lock_guard lock(mu_);
  Statement s(db_,
              "UPDATE stored_snapshots SET state = ?1, uploaded_at_ms = ?2, bytes = ?3, "
              "nonzero_bytes = ?4 WHERE key = ?5 AND state = ?6");
  MOAT_RETURN_IF_ERROR(s.status());
  MOAT_RETURN_IF_ERROR(s.Bind(1, std::string(kStoredUploaded))
                           .Bind(2, uploaded_at_ms)
                           .Bind(3, bytes)
                           .Bind(4, nonzero_bytes)
                           .Bind(5, key)
                           .Bind(6, std::string(kStoredUploading))
                           .Run());
  return sqlite3_changes(db_) > 0;
}

Status SqliteStore::FailSnapshotUpload(const std::string& key, const std::string& error) {
  std::lock_guard lock(mu_);
  // A record that is no longer uploading (marked deleting meanwhile) is left as it is.
  Statement s(db_,
              "UPDATE stored_snapshots SET state = ?1, attempts = attempts + 1, last_error = ?2 "
              "WHERE key = ?3 AND state = ?4");
  MOAT_RETURN_IF_ERROR(s.status());
  return s.Bind(1, std::string(kStoredLocalOnly))
      .Bind(2, StoredText(error))
      .Bind(3, key)
      .Bind(4, std::string(kStoredUploading))
      .Run();
}

Result<int64_t> SqliteStore::ResetSnapshotUploads(const std::string& host_id) {
  std::lock_guard lock(mu_);
  Statement s(db_, "UPDATE stored_snapshots SET state = ?1 WHERE host_id = ?2 AND state = ?3");
  MOAT_RETURN_IF_ERROR(s.status());
  MOAT_RETURN_IF_ERROR(s.Bind(1, std::string(kStoredLocalOnly))
                           .Bind(2, host_id)
                           .Bind(3, std::string(kStoredUploading))
                           .Run());
  return int64_t{sqlite3_changes(db_)};
}

Result<int64_t> SqliteStore::MarkStoredSnapshotsDeleting(const std::string& kind,
                                                         const std::string& owner_id,
                                                         const std::string& except_key) {
  std::lock_guard lock(mu_);
  // Keys are never empty: an empty except_key spares none.
  Statement s(db_,
              "UPDATE stored_snapshots SET state = ?1 WHERE kind = ?2 AND owner_id = ?3 AND key "
              "!= ?4 AND state != ?1");
  MOAT_RETURN_IF_ERROR(s.status());
  MOAT_RETURN_IF_ERROR(s.Bind(1, std::string(kStoredDeleting))
                           .Bind(2, kind)
                           .Bind(3, owner_id)
                           .Bind(4, except_key)
                           .Run());
  return int64_t{sqlite3_changes(db_)};
}

Status SqliteStore::DeleteStoredSnapshot(const std::string& key) {
  std::lock_guard lock(mu_);
  Statement s(db_, "DELETE FROM stored_snapshots WHERE key = ?");
  MOAT_RETURN_IF_ERROR(s.status());
  return s.Bind(1, key).Run();
}

Result<bool> SqliteStore::BeginStorageSweep(int64_t now_ms, int64_t stale_ms) {
  MOAT_RETURN_IF_ERROR(CheckSweepStart(now_ms));
  std::lock_guard lock(mu_);
  Transaction tx(db_);
  MOAT_ASSIGN_OR_RETURN(int64_t since, SweepingSince(db_));
  if (SweepLive(since, now_ms, stale_ms)) return false;
  {
    // An upload that began less than stale_ms ago may be writing chunks no manifest names yet.
    Statement s(db_,
                "SELECT 1 FROM stored_snapshots WHERE state = ?1 AND ?2 - upload_started_at_ms < "
                "?3 LIMIT 1");
    MOAT_RETURN_IF_ERROR(s.status());
    s.Bind(1, std::string(kStoredUploading)).Bind(2, now_ms).Bind(3, stale_ms);
    MOAT_ASSIGN_OR_RETURN(bool uploading, s.Step());
    if (uploading) return false;
  }
  Statement s(db_, "UPDATE storage_sweep SET sweeping_since_ms = ? WHERE id = 1");
  MOAT_RETURN_IF_ERROR(s.status());
  MOAT_RETURN_IF_ERROR(s.Bind(1, now_ms).Run());
  MOAT_RETURN_IF_ERROR(tx.Commit());
  return true;
}

Status SqliteStore::EndStorageSweep() {
  std::lock_guard lock(mu_);
  Statement s(db_, "UPDATE storage_sweep SET sweeping_since_ms = 0 WHERE id = 1");
  MOAT_RETURN_IF_ERROR(s.status());
  return s.Run();
}

}  // namespace moat::api::store
