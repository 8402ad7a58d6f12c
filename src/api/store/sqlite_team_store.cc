// SqliteStore's teams, API keys and per-team quotas (the sandbox and snapshot records are in
// sqlite_store.cc).
#include <sqlite3.h>

#include "api/store/schema.h"
#include "api/store/sqlite_statement.h"
#include "api/store/sqlite_store.h"

namespace moat::api::store {
namespace {

using sqlite::NowMs;
using sqlite::RandomId;
using sqlite::Statement;
using sqlite::Transaction;

constexpr const char* kTeamColumns = "id, name, created_at_ms, is_admin";

TeamRecord ReadTeam(Statement& s, int first = 0) {
  return TeamRecord{s.Text(first), s.Text(first + 1), s.Int(first + 2), s.Int(first + 3) != 0};
}

}  // namespace

Result<bool> SqliteStore::HasApiKeys() {
  std::lock_guard lock(mu_);
  Statement s(db_, "SELECT 1 FROM api_keys WHERE revoked_at_ms IS NULL LIMIT 1");
  MOAT_RETURN_IF_ERROR(s.status());
  return s.Step();
}

Result<std::optional<TeamRecord>> SqliteStore::BootstrapAdmin(const std::string& key_sha256,
                                                              const std::string& mask) {
  std::lock_guard lock(mu_);
  Transaction tx(db_);
  {
    Statement s(db_, "SELECT 1 FROM api_keys WHERE revoked_at_ms IS NULL LIMIT 1");
    MOAT_RETURN_IF_ERROR(s.status());
    MOAT_ASSIGN_OR_RETURN(bool has_key, s.Step());
    if (has_key) return std::optional<TeamRecord>();
  }
  TeamRecord t{RandomId(8), "admin", NowMs(), true};
  {
    Statement s(db_, "INSERT INTO teams (id, name, created_at_ms, is_admin) VALUES (?, ?, ?, 1)");
    MOAT_RETURN_IF_ERROR(s.status());
    MOAT_RETURN_IF_ERROR(s.Bind(1, t.id).Bind(2, t.name).Bind(3, t.created_at_ms).Run());
  }
  {
    Statement s(db_,
                "INSERT INTO api_keys (id, team_id, name, key_sha256, mask, created_at_ms) "
                "VALUES (?, ?, 'admin', ?, ?, ?)");
    MOAT_RETURN_IF_ERROR(s.status());
    MOAT_RETURN_IF_ERROR(s.Bind(1, RandomId(8))
                             .Bind(2, t.id)
                             .Bind(3, key_sha256)
                             .Bind(4, mask)
                             .Bind(5, t.created_at_ms)
                             .Run());
  }
  MOAT_RETURN_IF_ERROR(tx.Commit());
  return std::optional<TeamRecord>(t);
}

Result<TeamRecord> SqliteStore::CreateTeam(const std::string& name, bool admin) {
  std::lock_guard lock(mu_);
  TeamRecord t{RandomId(8), name, NowMs(), admin};
  Statement s(db_, "INSERT INTO teams (id, name, created_at_ms, is_admin) VALUES (?, ?, ?, ?)");
  MOAT_RETURN_IF_ERROR(s.status());
  MOAT_RETURN_IF_ERROR(s.Bind(1, t.id)
                           .Bind(2, t.name)
                           .Bind(3, t.created_at_ms)
                           .Bind(4, int64_t{admin ? 1 : 0})
                           .Run());
  return t;
}

Result<std::optional<TeamRecord>> SqliteStore::FindTeam(const char* column,
                                                        const std::string& value) {
  std::lock_guard lock(mu_);
  Statement s(db_, std::string("SELECT ") + kTeamColumns + " FROM teams WHERE " + column +
                       " = ? ORDER BY created_at_ms, id LIMIT 1");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, value);
  MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return std::optional<TeamRecord>();
  return std::optional<TeamRecord>(ReadTeam(s));
}

Result<std::optional<TeamRecord>> SqliteStore::GetTeam(const std::string& id) {
  return FindTeam("id", id);
}

Result<std::optional<TeamRecord>> SqliteStore::TeamByName(const std::string& name) {
  return FindTeam("name", name);
}

Result<ApiKeyRecord> SqliteStore::AddApiKey(const std::string& team_id, const std::string& name,
                                            const std::string& key_sha256,
                                            const std::string& mask) {
  std::lock_guard lock(mu_);
  ApiKeyRecord k{RandomId(8), team_id, name, mask, NowMs()};
  Statement s(db_,
              "INSERT INTO api_keys (id, team_id, name, key_sha256, mask, created_at_ms) "
              "VALUES (?, ?, ?, ?, ?, ?)");
  MOAT_RETURN_IF_ERROR(s.status());
  MOAT_RETURN_IF_ERROR(s.Bind(1, k.id)
                           .Bind(2, team_id)
                           .Bind(3, name)
                           .Bind(4, key_sha256)
                           .Bind(5, mask)
                           .Bind(6, k.created_at_ms)
                           .Run());
  return k;
}

Result<std::optional<TeamRecord>> SqliteStore::TeamByKeyHash(const std::string& key_sha256) {
  std::lock_guard lock(mu_);
  Statement s(db_,
              "SELECT t.id, t.name, t.created_at_ms, t.is_admin FROM api_keys k JOIN teams t ON "
              "t.id = k.team_id WHERE k.key_sha256 = ? AND k.revoked_at_ms IS NULL");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, key_sha256);
  MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return std::optional<TeamRecord>();
  return std::optional<TeamRecord>(ReadTeam(s));
}

Result<std::vector<ApiKeyRecord>> SqliteStore::ListApiKeys(const std::string& team_id) {
  std::lock_guard lock(mu_);
  Statement s(db_,
              "SELECT id, team_id, name, mask, created_at_ms FROM api_keys WHERE team_id = ? AND "
              "revoked_at_ms IS NULL ORDER BY created_at_ms, id");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, team_id);
  std::vector<ApiKeyRecord> out;
  for (;;) {
    MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) break;
    out.push_back({s.Text(0), s.Text(1), s.Text(2), s.Text(3), s.Int(4)});
  }
  return out;
}

Result<std::optional<ApiKeyRecord>> SqliteStore::GetApiKey(const std::string& key_id) {
  std::lock_guard lock(mu_);
  Statement s(db_,
              "SELECT id, team_id, name, mask, created_at_ms FROM api_keys WHERE id = ? AND "
              "revoked_at_ms IS NULL");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, key_id);
  MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return std::optional<ApiKeyRecord>();
  return std::optional<ApiKeyRecord>(
      ApiKeyRecord{s.Text(0), s.Text(1), s.Text(2), s.Text(3), s.Int(4)});
}

Status SqliteStore::RevokeApiKey(const std::string& team_id, const std::string& key_id) {
  std::lock_guard lock(mu_);
  // One transaction, so that two revocations cannot both pass the last-key check.
  Transaction tx(db_);
  std::string team_name;
  bool admin = false;
  {
    Statement s(db_,
                "SELECT t.name, t.is_admin FROM api_keys k JOIN teams t ON t.id = k.team_id WHERE "
                "k.id = ? AND k.team_id = ? AND k.revoked_at_ms IS NULL");
    MOAT_RETURN_IF_ERROR(s.status());
    s.Bind(1, key_id).Bind(2, team_id);
    MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) return NotFound("API key \"" + key_id + "\" not found");
    team_name = s.Text(0);
    admin = s.Int(1) != 0;
  }
  {
    // A team without a key is orphaned: nobody could list, kill or pause its sandboxes (nor, for
    // an admin team, manage keys), and only an admin could give it a key again.
    Statement s(db_, "SELECT COUNT(*) FROM api_keys WHERE team_id = ? AND revoked_at_ms IS NULL");
    MOAT_RETURN_IF_ERROR(s.status());
    s.Bind(1, team_id);
    MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
    if (row && s.Int(0) <= 1) {
      std::string what = admin ? "the last admin key of team \"" + team_name + "\""
                               : "the last key of team \"" + team_name + "\"";
      return FailedPrecondition("API key \"" + key_id + "\" is " + what +
                                "; without a key nobody could manage the team's sandboxes" +
                                (admin ? " or any API key" : "") +
                                ": create another key for the team first");
    }
  }
  Statement s(db_, "UPDATE api_keys SET revoked_at_ms = ? WHERE id = ?");
  MOAT_RETURN_IF_ERROR(s.status());
  MOAT_RETURN_IF_ERROR(s.Bind(1, NowMs()).Bind(2, key_id).Run());
  return tx.Commit();
}

Result<QuotaSettings> SqliteStore::GetTeamQuotas(const std::string& team_id) {
  std::lock_guard lock(mu_);
  Statement s(db_,
              "SELECT max_sandboxes, max_vcpus, max_memory_mib, max_creates_per_minute, "
              "max_metadata_bytes FROM team_quotas WHERE team_id = ?");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, team_id);
  MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
  QuotaSettings q;
  if (!row) return q;
  q.max_sandboxes = s.OptionalInt(0);
  q.max_vcpus = s.OptionalInt(1);
  q.max_memory_mib = s.OptionalInt(2);
  q.max_creates_per_minute = s.OptionalInt(3);
  q.max_metadata_bytes = s.OptionalInt(4);
  return q;
}

Status SqliteStore::SetTeamQuotas(const std::string& team_id, const QuotaSettings& q) {
  std::lock_guard lock(mu_);
  Transaction tx(db_);
  {
    Statement s(db_, "SELECT 1 FROM teams WHERE id = ?");
    MOAT_RETURN_IF_ERROR(s.status());
    s.Bind(1, team_id);
    MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) return NotFound("team \"" + team_id + "\" not found");
  }
  Statement s(db_,
              "INSERT OR REPLACE INTO team_quotas (team_id, max_sandboxes, max_vcpus, "
              "max_memory_mib, max_creates_per_minute, max_metadata_bytes) VALUES (?, ?, ?, ?, ?, "
              "?)");
  MOAT_RETURN_IF_ERROR(s.status());
  MOAT_RETURN_IF_ERROR(s.Bind(1, team_id)
                           .Bind(2, q.max_sandboxes)
                           .Bind(3, q.max_vcpus)
                           .Bind(4, q.max_memory_mib)
                           .Bind(5, q.max_creates_per_minute)
                           .Bind(6, q.max_metadata_bytes)
                           .Run());
  return tx.Commit();
}

Result<TeamUsage> SqliteStore::RunningUsage(const std::string& team_id) {
  std::lock_guard lock(mu_);
  Statement s(db_,
              "SELECT COUNT(*), COALESCE(SUM(cpu_count), 0), COALESCE(SUM(memory_mb), 0) FROM "
              "sandboxes WHERE team_id = ? AND state IN " +
                  SqlStateList(HoldsResources));
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, team_id);
  MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
  TeamUsage u;
  if (row) u = TeamUsage{s.Int(0), s.Int(1), s.Int(2)};
  return u;
}

}  // namespace moat::api::store
