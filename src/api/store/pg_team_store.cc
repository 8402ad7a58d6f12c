// PgStore's teams, API keys and per-team quotas (the sandbox and snapshot records are in
// pg_store.cc).
#include <chrono>
#include <random>

#include "api/store/pg_connection.h"
#include "api/store/pg_store.h"
#include "api/store/schema.h"

namespace moat::api::store {
namespace {

using pg::MakeParams;
using pg::Rows;

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// `bytes` random bytes in hex (as SqliteStore's ids).
std::string RandomId(size_t bytes) {
  static thread_local std::random_device rd;
  static const char* kHex = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < bytes; ++i) {
    unsigned v = rd() & 0xff;
    s.push_back(kHex[v >> 4]);
    s.push_back(kHex[v & 15]);
  }
  return s;
}

// pg_advisory_xact_lock's key for the admin bootstrap ("moatboot" in ASCII).
constexpr int64_t kBootstrapLock = 0x6d6f6174626f6f74;

constexpr const char* kTeamColumns = "t.id, t.name, t.created_at_ms, t.is_admin";

std::optional<TeamRecord> FirstTeam(const Rows& r) {
  if (r.size() == 0) return std::nullopt;
  return TeamRecord{r.Text(0, 0), r.Text(0, 1), r.Int(0, 2), r.Int(0, 3) != 0};
}

constexpr const char* kKeyColumns = "id, team_id, name, mask, created_at_ms";

ApiKeyRecord ReadKey(const Rows& r, int i) {
  return ApiKeyRecord{r.Text(i, 0), r.Text(i, 1), r.Text(i, 2), r.Text(i, 3), r.Int(i, 4)};
}

// The oldest team whose `column` is `value` (ids are unique; names need not be).
Result<std::optional<TeamRecord>> FindTeam(pg::Pool& pool, const char* column,
                                           const std::string& value) {
  MOAT_ASSIGN_OR_RETURN(Rows r, pool.Run([&](pg::Connection& c) {
    return c.Exec(std::string("SELECT ") + kTeamColumns + " FROM teams t WHERE t." + column +
                      " = $1 ORDER BY t.created_at_ms, t.id COLLATE \"C\" "
                      "LIMIT 1",
                  {value});
  }));
  return FirstTeam(r);
}

}  // namespace

Result<bool> PgStore::HasApiKeys() {
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([](pg::Connection& c) {
    return c.Exec("SELECT EXISTS (SELECT 1 FROM api_keys WHERE revoked_at_ms IS NULL)");
  }));
  return r.Bool(0, 0);
}

Result<std::optional<TeamRecord>> PgStore::BootstrapAdmin(const std::string& key_sha256,
                                                          const std::string& mask) {
  std::optional<TeamRecord> made;
  MOAT_RETURN_IF_ERROR(Transact([&](pg::Connection& c) -> Status {
    made.reset();
    // Replicas bootstrapping at once queue here; the second finds the first one's key.
    MOAT_RETURN_IF_ERROR(c.Run("SELECT pg_advisory_xact_lock($1)", MakeParams(kBootstrapLock)));
    MOAT_ASSIGN_OR_RETURN(
        Rows r, c.Exec("SELECT EXISTS (SELECT 1 FROM api_keys WHERE revoked_at_ms IS NULL)"));
    if (r.Bool(0, 0)) return Status::Ok();
    TeamRecord t{RandomId(8), "admin", NowMs(), true};
    MOAT_RETURN_IF_ERROR(
        c.Run("INSERT INTO teams (id, name, created_at_ms, is_admin) VALUES ($1, $2, $3, 1)",
              MakeParams(t.id, t.name, t.created_at_ms)));
    MOAT_RETURN_IF_ERROR(c.Run(
        "INSERT INTO api_keys (id, team_id, name, key_sha256, mask, created_at_ms) VALUES ($1, "
        "$2, 'admin', $3, $4, $5)",
        MakeParams(RandomId(8), t.id, key_sha256, mask, t.created_at_ms)));
    made = t;
    return Status::Ok();
  }));
  return made;
}

Result<TeamRecord> PgStore::CreateTeam(const std::string& name, bool admin) {
  TeamRecord t{RandomId(8), name, NowMs(), admin};
  MOAT_RETURN_IF_ERROR(Transact([&](pg::Connection& c) {
    return c.Run("INSERT INTO teams (id, name, created_at_ms, is_admin) VALUES ($1, $2, $3, $4)",
                 MakeParams(t.id, t.name, t.created_at_ms, int64_t{admin ? 1 : 0}));
  }));
  return t;
}

Result<std::optional<TeamRecord>> PgStore::GetTeam(const std::string& id) {
  return FindTeam(*pool_, "id", id);
}

Result<std::optional<TeamRecord>> PgStore::TeamByName(const std::string& name) {
  return FindTeam(*pool_, "name", name);
}

Result<ApiKeyRecord> PgStore::AddApiKey(const std::string& team_id, const std::string& name,
                                        const std::string& key_sha256, const std::string& mask) {
  ApiKeyRecord k{RandomId(8), team_id, name, mask, NowMs()};
  MOAT_RETURN_IF_ERROR(Transact([&](pg::Connection& c) {
    return c.Run(
        "INSERT INTO api_keys (id, team_id, name, key_sha256, mask, created_at_ms) VALUES ($1, "
        "$2, $3, $4, $5, $6)",
        MakeParams(k.id, team_id, name, key_sha256, mask, k.created_at_ms));
  }));
  return k;
}

Result<std::optional<TeamRecord>> PgStore::TeamByKeyHash(const std::string& key_sha256) {
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec(std::string("SELECT ") + kTeamColumns +
                      " FROM api_keys k JOIN teams t ON t.id = k.team_id "
                      "WHERE k.key_sha256 = $1 AND k.revoked_at_ms IS NULL",
                  {key_sha256});
  }));
  return FirstTeam(r);
}

Result<std::vector<ApiKeyRecord>> PgStore::ListApiKeys(const std::string& team_id) {
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec(std::string("SELECT ") + kKeyColumns +
                      " FROM api_keys WHERE team_id = $1 AND revoked_at_ms "
                      "IS NULL ORDER BY created_at_ms, id COLLATE \"C\"",
                  {team_id});
  }));
  std::vector<ApiKeyRecord> out;
  out.reserve(static_cast<size_t>(r.size()));
  for (int i = 0; i < r.size(); ++i) out.push_back(ReadKey(r, i));
  return out;
}

Result<std::optional<ApiKeyRecord>> PgStore::GetApiKey(const std::string& key_id) {
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec(std::string("SELECT ") + kKeyColumns +
                      " FROM api_keys WHERE id = $1 AND revoked_at_ms IS "
                      "NULL",
                  {key_id});
  }));
  if (r.size() == 0) return std::optional<ApiKeyRecord>();
  return std::optional<ApiKeyRecord>(ReadKey(r, 0));
}

Status PgStore::RevokeApiKey(const std::string& team_id, const std::string& key_id) {
  return Transact([&](pg::Connection& c) -> Status {
    // The team's row lock queues revocations of its keys one behind the other, so two cannot
    // both pass the last-key check. Taken first: each statement after it (READ COMMITTED) sees
    // what the revocation before it committed. NO KEY UPDATE: inserts that reference the team
    // (its keys, its sandboxes) need not wait for it.
    MOAT_ASSIGN_OR_RETURN(
        Rows team,
        c.Exec("SELECT name, is_admin FROM teams WHERE id = $1 FOR NO KEY UPDATE", {team_id}));
    MOAT_ASSIGN_OR_RETURN(Rows key,
                          c.Exec("SELECT 1 FROM api_keys WHERE id = $1 AND team_id = $2 AND "
                                 "revoked_at_ms IS NULL",
                                 {key_id, team_id}));
    if (team.size() == 0 || key.size() == 0) {
      return NotFound("API key \"" + key_id + "\" not found");
    }
    std::string team_name = team.Text(0, 0);
    bool admin = team.Int(0, 1) != 0;
    // A team without a key is orphaned: nobody could list, kill or pause its sandboxes (nor, for
    // an admin team, manage keys), and only an admin could give it a key again.
    MOAT_ASSIGN_OR_RETURN(
        Rows count,
        c.Exec("SELECT COUNT(*) FROM api_keys WHERE team_id = $1 AND revoked_at_ms IS NULL",
               {team_id}));
    if (count.Int(0, 0) <= 1) {
      std::string what = admin ? "the last admin key of team \"" + team_name + "\""
                               : "the last key of team \"" + team_name + "\"";
      return FailedPrecondition("API key \"" + key_id + "\" is " + what +
                                "; without a key nobody could manage the team's sandboxes" +
                                (admin ? " or any API key" : "") +
                                ": create another key for the team first");
    }
    return c.Run("UPDATE api_keys SET revoked_at_ms = $1 WHERE id = $2",
                 MakeParams(NowMs(), key_id));
  });
}

Result<QuotaSettings> PgStore::GetTeamQuotas(const std::string& team_id) {
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec(
        "SELECT max_sandboxes, max_vcpus, max_memory_mib, "
        "max_creates_per_minute, max_metadata_bytes FROM team_quotas WHERE "
        "team_id = $1",
        {team_id});
  }));
  QuotaSettings q;
  if (r.size() == 0) return q;
  q.max_sandboxes = r.OptionalInt(0, 0);
  q.max_vcpus = r.OptionalInt(0, 1);
  q.max_memory_mib = r.OptionalInt(0, 2);
  q.max_creates_per_minute = r.OptionalInt(0, 3);
  q.max_metadata_bytes = r.OptionalInt(0, 4);
  return q;
}

Status PgStore::SetTeamQuotas(const std::string& team_id, const QuotaSettings& q) {
  // One statement that writes nothing for an unknown team; writing the same settings again is
  // harmless, so a retry needs no transaction.
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec(
        "INSERT INTO team_quotas (team_id, max_sandboxes, max_vcpus, max_memory_mib, "
        "max_creates_per_minute, max_metadata_bytes) SELECT t.id, $2::bigint, $3::bigint, "
        "$4::bigint, $5::bigint, $6::bigint FROM teams t WHERE t.id = $1 ON CONFLICT "
        "(team_id) DO UPDATE SET max_sandboxes = EXCLUDED.max_sandboxes, max_vcpus = "
        "EXCLUDED.max_vcpus, max_memory_mib = EXCLUDED.max_memory_mib, "
        "max_creates_per_minute = EXCLUDED.max_creates_per_minute, max_metadata_bytes = "
        "EXCLUDED.max_metadata_bytes",
        MakeParams(team_id, q.max_sandboxes, q.max_vcpus, q.max_memory_mib,
                   q.max_creates_per_minute, q.max_metadata_bytes));
  }));
  if (r.affected() == 0) return NotFound("team \"" + team_id + "\" not found");
  return Status::Ok();
}

Result<TeamUsage> PgStore::RunningUsage(const std::string& team_id) {
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec(
        "SELECT COUNT(*), COALESCE(SUM(cpu_count), 0), "
        "COALESCE(SUM(memory_mb), 0) FROM sandboxes WHERE team_id = $1 AND "
        "state IN " +
            SqlStateList(HoldsResources),
        {team_id});
  }));
  return TeamUsage{r.Int(0, 0), r.Int(0, 1), r.Int(0, 2)};
}

}  // namespace moat::api::store
