// PgStore's snapshots in the object store (schema migration 14): a record per snapshot a host
// wrote, moved through its upload by compare-and-set, and the one row of the chunk sweep that
// keeps uploads and sweeps apart. Keys sort byte by byte (COLLATE "C"), as in SQLite. Times are
// the caller's.
//
// Uploads and sweeps exclude each other through the lock on storage_sweep's row. Under READ
// COMMITTED each statement sees what committed before it began, so a check in one statement and a
// change in another (or a subquery on another table) cannot by themselves keep two transactions
// apart: an upload that begins takes the row FOR SHARE (uploads do not wait for each other) and a
// sweep that begins takes it FOR UPDATE (waiting for those uploads to commit, and making later
// ones wait for it) before either looks at anything else. The next statement then sees every
// upload or sweep that won before it.
#include <string>
#include <vector>

#include "api/store/history_rows.h"
#include "api/store/pg_connection.h"
#include "api/store/pg_store.h"
#include "api/store/stored_snapshot_validation.h"

namespace moat::api::store {
namespace {

using pg::MakeParams;
using pg::Params;
using pg::Rows;

constexpr const char* kStoredColumns =
    "key, kind, owner_id, team_id, host_id, state, bytes, nonzero_bytes, created_at_ms, "
    "upload_started_at_ms, uploaded_at_ms, attempts, last_error";

StoredSnapshotRecord ReadStored(const Rows& r, int i) {
  StoredSnapshotRecord s;
  s.key = r.Text(i, 0);
  s.kind = r.Text(i, 1);
  s.owner_id = r.Text(i, 2);
  s.team_id = r.Text(i, 3);
  s.host_id = r.Text(i, 4);
  s.state = r.Text(i, 5);
  s.bytes = r.Int(i, 6);
  s.nonzero_bytes = r.Int(i, 7);
  s.created_at_ms = r.Int(i, 8);
  s.upload_started_at_ms = r.Int(i, 9);
  s.uploaded_at_ms = r.Int(i, 10);
  s.attempts = r.Int(i, 11);
  s.last_error = r.Text(i, 12);
  return s;
}

std::optional<StoredSnapshotRecord> FirstStored(const Rows& r) {
  if (r.size() == 0) return std::nullopt;
  return ReadStored(r, 0);
}

// Locks storage_sweep's row (`lock`: "FOR SHARE" or "FOR UPDATE") and says when the sweep that
// is running began; 0 when none is.
Result<int64_t> LockSweep(pg::Connection& c, const char* lock) {
  MOAT_ASSIGN_OR_RETURN(
      Rows r,
      c.Exec(std::string("SELECT sweeping_since_ms FROM storage_sweep WHERE id = 1 ") + lock));
  if (r.size() == 0) return Internal("storage_sweep: its row is missing");
  return r.Int(0, 0);
}

// A sweep that began at `since` still excludes uploads at `now_ms`: it has not ended, and began
// less than `stale_ms` ago (else its sweeper is taken for dead).
bool SweepLive(int64_t since, int64_t now_ms, int64_t stale_ms) {
  return since != 0 && now_ms - since < stale_ms;
}

}  // namespace

Status PgStore::InsertStoredSnapshot(const StoredSnapshotRecord& r) {
  MOAT_RETURN_IF_ERROR(CheckStoredSnapshot(r));
  Params params = MakeParams(r.key, r.kind, r.owner_id, r.team_id, r.host_id, r.state, r.bytes,
                             r.nonzero_bytes, r.created_at_ms, r.upload_started_at_ms,
                             r.uploaded_at_ms, r.attempts, StoredText(r.last_error));
  Status s = Transact([&](pg::Connection& c) {
    return c.Run(std::string("INSERT INTO stored_snapshots (") + kStoredColumns +
                     ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                 params);
  });
  if (s.code() != ErrorCode::kAlreadyExists) return s;
  return {ErrorCode::kAlreadyExists, "stored snapshot \"" + r.key + "\" already exists"};
}

Result<std::optional<StoredSnapshotRecord>> PgStore::GetStoredSnapshot(const std::string& key) {
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec(std::string("SELECT ") + kStoredColumns + " FROM stored_snapshots WHERE key = $1",
                  {key});
  }));
  return FirstStored(r);
}

Result<std::optional<StoredSnapshotRecord>> PgStore::LatestStoredSnapshot(
    const std::string& kind, const std::string& owner_id) {
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec(std::string("SELECT ") + kStoredColumns +
                      " FROM stored_snapshots WHERE kind = $1 AND owner_id = $2 AND state <> $3 "
                      "ORDER BY created_at_ms DESC, key COLLATE \"C\" DESC LIMIT 1",
                  MakeParams(kind, owner_id, kStoredDeleting));
  }));
  return FirstStored(r);
}

Result<std::vector<StoredSnapshotRecord>> PgStore::ListStoredSnapshots(
    const StoredSnapshotFilter& f) {
  std::vector<StoredSnapshotRecord> out;
  if (f.limit <= 0) return out;
  std::string sql = std::string("SELECT ") + kStoredColumns + " FROM stored_snapshots WHERE TRUE";
  Params params;
  auto match = [&](const char* column, const std::string& value) {
    if (value.empty()) return;
    params.emplace_back(value);
    sql += std::string(" AND ") + column + " = $" + std::to_string(params.size());
  };
  match("state", f.state);
  match("kind", f.kind);
  match("owner_id", f.owner_id);
  match("host_id", f.host_id);
  match("team_id", f.team_id);
  params.push_back(pg::ToParam(f.limit));
  sql += " ORDER BY created_at_ms, key COLLATE \"C\" LIMIT $" + std::to_string(params.size()) +
         "::bigint";
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) { return c.Exec(sql, params); }));
  out.reserve(static_cast<size_t>(r.size()));
  for (int i = 0; i < r.size(); ++i) out.push_back(ReadStored(r, i));
  return out;
}

Result<bool> PgStore::BeginSnapshotUpload(const std::string& key, int64_t now_ms,
                                          int64_t sweep_stale_ms) {
  bool began = false;
  MOAT_RETURN_IF_ERROR(Transact([&](pg::Connection& c) -> Status {
    began = false;
    MOAT_ASSIGN_OR_RETURN(int64_t since, LockSweep(c, "FOR SHARE"));
    if (SweepLive(since, now_ms, sweep_stale_ms)) return Status::Ok();
    MOAT_ASSIGN_OR_RETURN(
        Rows r, c.Exec("UPDATE stored_snapshots SET state = $1, upload_started_at_ms = $2 WHERE "
                       "key = $3 AND state = $4",
                       MakeParams(kStoredUploading, now_ms, key, kStoredLocalOnly)));
    began = r.affected() > 0;
    return Status::Ok();
  }));
  return began;
}

Result<bool> PgStore::FinishSnapshotUpload(const std::string& key, int64_t uploaded_at_ms,
                                           int64_t bytes, int64_t nonzero_bytes) {
  bool finished = false;
  MOAT_RETURN_IF_ERROR(Transact([&](pg::Connection& c) -> Status {
    MOAT_ASSIGN_OR_RETURN(
        Rows r, c.Exec("UPDATE stored_snapshots SET state = $1, uploaded_at_ms = $2, bytes = $3, "
                       "nonzero_bytes = $4 WHERE key = $5 AND state = $6",
                       MakeParams(kStoredUploaded, uploaded_at_ms, bytes, nonzero_bytes, key,
                                  kStoredUploading)));
    finished = r.affected() > 0;
    return Status::Ok();
  }));
  return finished;
}

Status PgStore::FailSnapshotUpload(const std::string& key, const std::string& error) {
  // A count: Transact, so that a retry after a lost COMMIT does not count twice. A record that is
  // no longer uploading (marked deleting meanwhile) is left as it is.
  Params params = MakeParams(kStoredLocalOnly, StoredText(error), key, kStoredUploading);
  return Transact([&](pg::Connection& c) {
    return c.Run(
        "UPDATE stored_snapshots SET state = $1, attempts = attempts + 1, last_error = $2 WHERE "
        "key = $3 AND state = $4",
        params);
  });
}

Result<int64_t> PgStore::ResetSnapshotUploads(const std::string& host_id) {
  int64_t reset = 0;
  MOAT_RETURN_IF_ERROR(Transact([&](pg::Connection& c) -> Status {
    MOAT_ASSIGN_OR_RETURN(
        Rows r, c.Exec("UPDATE stored_snapshots SET state = $1 WHERE host_id = $2 AND state = $3",
                       MakeParams(kStoredLocalOnly, host_id, kStoredUploading)));
    reset = r.affected();
    return Status::Ok();
  }));
  return reset;
}

Result<int64_t> PgStore::MarkStoredSnapshotsDeleting(const std::string& kind,
                                                     const std::string& owner_id,
                                                     const std::string& except_key) {
  int64_t marked = 0;
  MOAT_RETURN_IF_ERROR(Transact([&](pg::Connection& c) -> Status {
    // Keys are never empty: an empty except_key spares none.
    MOAT_ASSIGN_OR_RETURN(
        Rows r, c.Exec("UPDATE stored_snapshots SET state = $1 WHERE kind = $2 AND owner_id = $3 "
                       "AND key <> $4 AND state <> $1",
                       MakeParams(kStoredDeleting, kind, owner_id, except_key)));
    marked = r.affected();
    return Status::Ok();
  }));
  return marked;
}

Status PgStore::DeleteStoredSnapshot(const std::string& key) {
  // Deleting twice is harmless: no transaction needed to retry it.
  return pool_->Run([&](pg::Connection& c) {
    return c.Run("DELETE FROM stored_snapshots WHERE key = $1", {key});
  });
}

Result<bool> PgStore::BeginStorageSweep(int64_t now_ms, int64_t stale_ms) {
  MOAT_RETURN_IF_ERROR(CheckSweepStart(now_ms));
  bool began = false;
  MOAT_RETURN_IF_ERROR(Transact([&](pg::Connection& c) -> Status {
    began = false;
    MOAT_ASSIGN_OR_RETURN(int64_t since, LockSweep(c, "FOR UPDATE"));
    if (SweepLive(since, now_ms, stale_ms)) return Status::Ok();
    // An upload that began less than stale_ms ago may be writing chunks no manifest names yet.
    MOAT_ASSIGN_OR_RETURN(Rows uploading,
                          c.Exec("SELECT 1 FROM stored_snapshots WHERE state = $1 AND $2::bigint - "
                                 "upload_started_at_ms < $3::bigint LIMIT 1",
                                 MakeParams(kStoredUploading, now_ms, stale_ms)));
    if (uploading.size() > 0) return Status::Ok();
    MOAT_RETURN_IF_ERROR(
        c.Run("UPDATE storage_sweep SET sweeping_since_ms = $1 WHERE id = 1", MakeParams(now_ms)));
    began = true;
    return Status::Ok();
  }));
  return began;
}

Status PgStore::EndStorageSweep() {
  // Ending twice is harmless: no transaction needed to retry it.
  return pool_->Run([](pg::Connection& c) {
    return c.Run("UPDATE storage_sweep SET sweeping_since_ms = 0 WHERE id = 1");
  });
}

}  // namespace moat::api::store
