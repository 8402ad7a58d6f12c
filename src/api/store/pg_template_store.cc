// PgStore's custom templates: templates by alias, their builds (changed by compare-and-set),
// the tags that point at builds, and the builds' logs (schema migration 11); the files of COPY
// steps, in pieces (migration 12). A template's builds, tags and logs are deleted with it by the
// schema's ON DELETE CASCADE. Ids and tags sort byte by byte (COLLATE "C"), as in SQLite.
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "api/store/pg_connection.h"
#include "api/store/pg_store.h"
#include "api/store/template_file_io.h"

namespace moat::api::store {
namespace {

using pg::MakeParams;
using pg::Rows;

// The reason InsertBuild gives the waiting builds a newer build supersedes.
constexpr const char* kSupersededReason =
    R"({"message":"build superseded by a newer one","step":"base"})";

constexpr const char* kTemplateColumns =
    "id, team_id, alias, is_public, created_at_ms, updated_at_ms, spawn_count, "
    "last_spawned_at_ms";

TemplateRecord ReadTemplate(const Rows& r, int i) {
  TemplateRecord t;
  t.id = r.Text(i, 0);
  t.team_id = r.Text(i, 1);
  t.alias = r.Text(i, 2);
  t.is_public = r.Int(i, 3) != 0;
  t.created_at_ms = r.Int(i, 4);
  t.updated_at_ms = r.Int(i, 5);
  t.spawn_count = r.Int(i, 6);
  t.last_spawned_at_ms = r.Int(i, 7);
  return t;
}

// Qualified with `b.` so that queries joining the tags can read builds the same way.
constexpr const char* kBuildColumns =
    "b.id, b.template_id, b.team_id, b.status, b.cpu_count, b.memory_mb, b.min_free_disk_mb, "
    "b.disk_size_mb, b.spec, b.reason, b.result, b.host_id, b.created_at_ms, b.started_at_ms, "
    "b.finished_at_ms";

TemplateBuildRecord ReadBuild(const Rows& r, int i) {
  TemplateBuildRecord b;
  b.id = r.Text(i, 0);
  b.template_id = r.Text(i, 1);
  b.team_id = r.Text(i, 2);
  b.status = r.Text(i, 3);
  b.cpu_count = static_cast<uint32_t>(r.Int(i, 4));
  b.memory_mb = static_cast<uint32_t>(r.Int(i, 5));
  b.min_free_disk_mb = static_cast<uint32_t>(r.Int(i, 6));
  b.disk_size_mb = static_cast<uint32_t>(r.Int(i, 7));
  b.spec = r.Text(i, 8);
  b.reason = r.Text(i, 9);
  b.result = r.Text(i, 10);
  b.host_id = r.Text(i, 11);
  b.created_at_ms = r.Int(i, 12);
  b.started_at_ms = r.Int(i, 13);
  b.finished_at_ms = r.Int(i, 14);
  return b;
}

std::vector<TemplateBuildRecord> ReadBuilds(const Rows& r) {
  std::vector<TemplateBuildRecord> out;
  out.reserve(static_cast<size_t>(r.size()));
  for (int i = 0; i < r.size(); ++i) out.push_back(ReadBuild(r, i));
  return out;
}

std::optional<TemplateBuildRecord> FirstBuild(const Rows& r) {
  if (r.size() == 0) return std::nullopt;
  return ReadBuild(r, 0);
}

// A unique violation (the kit's already_exists) said in the store's words.
Status AlreadyExistsAs(Status s, const std::string& what) {
  if (s.code() != ErrorCode::kAlreadyExists) return s;
  return Status(ErrorCode::kAlreadyExists, what + " already exists");
}

// Points each tag at the build, assigned at `at_ms` (anew where it pointed at it already).
Status PointTags(pg::Connection& c, const std::string& template_id, const std::string& build_id,
                 const std::vector<std::string>& tags, int64_t at_ms) {
  for (const auto& tag : tags) {
    MOAT_RETURN_IF_ERROR(
        c.Run("INSERT INTO template_tags (template_id, tag, build_id, assigned_at_ms) VALUES ($1, "
              "$2, $3, $4) ON CONFLICT (template_id, tag, build_id) DO UPDATE SET assigned_at_ms "
              "= EXCLUDED.assigned_at_ms",
              MakeParams(template_id, tag, build_id, at_ms)));
  }
  return Status::Ok();
}

// Log entries as one JSON array for a single INSERT. PostgreSQL refuses text that is not UTF-8
// and NUL characters: invalid bytes become U+FFFD, NULs are dropped.
std::string LogEntriesJson(const std::vector<BuildLogRecord>& entries) {
  auto clean = [](const std::string& s) {
    std::string out = s;
    std::erase(out, '\0');
    return out;
  };
  nlohmann::json a = nlohmann::json::array();
  for (const auto& e : entries) {
    a.push_back({{"t", e.timestamp_ms},
                 {"l", clean(e.level)},
                 {"s", clean(e.step)},
                 {"m", clean(e.message)}});
  }
  return a.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// Template file pieces travel as hex text (decode($n, 'hex') / encode(data, 'hex')): the kit's
// parameters and results are text, and a piece may hold any byte.
std::string ToHex(std::string_view bytes) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.resize(bytes.size() * 2);
  for (size_t i = 0; i < bytes.size(); ++i) {
    auto b = static_cast<unsigned char>(bytes[i]);
    out[2 * i] = kHex[b >> 4];
    out[2 * i + 1] = kHex[b & 15];
  }
  return out;
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Decodes `hex` into `out` (resized); false if it is not hex.
bool FromHex(std::string_view hex, std::string& out) {
  if (hex.size() % 2 != 0) return false;
  out.resize(hex.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    int hi = HexDigit(hex[2 * i]), lo = HexDigit(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<char>((hi << 4) | lo);
  }
  return true;
}

}  // namespace

Status PgStore::InsertTemplate(const TemplateRecord& t) {
  Status s = Transact([&](pg::Connection& c) {
    return c.Run(std::string("INSERT INTO templates (") + kTemplateColumns +
                     ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                 MakeParams(t.id, t.team_id, t.alias, int64_t{t.is_public ? 1 : 0}, t.created_at_ms,
                            t.updated_at_ms, t.spawn_count, t.last_spawned_at_ms));
  });
  return AlreadyExistsAs(s, "template \"" + t.alias + "\" (or id \"" + t.id + "\") of the team");
}

Result<std::optional<TemplateRecord>> PgStore::GetTemplate(const std::string& id) {
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec(std::string("SELECT ") + kTemplateColumns + " FROM templates WHERE id = $1",
                  {id});
  }));
  if (r.size() == 0) return std::optional<TemplateRecord>();
  return std::optional<TemplateRecord>(ReadTemplate(r, 0));
}

Result<std::optional<TemplateRecord>> PgStore::TemplateByAlias(const std::string& team_id,
                                                               const std::string& alias) {
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec(std::string("SELECT ") + kTemplateColumns +
                      " FROM templates WHERE team_id = $1 AND alias = $2",
                  {team_id, alias});
  }));
  if (r.size() == 0) return std::optional<TemplateRecord>();
  return std::optional<TemplateRecord>(ReadTemplate(r, 0));
}

Result<std::vector<TemplateRecord>> PgStore::ListTemplates(const std::string& team_id) {
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec(std::string("SELECT ") + kTemplateColumns +
                      " FROM templates WHERE team_id = $1 ORDER BY created_at_ms, id COLLATE "
                      "\"C\"",
                  {team_id});
  }));
  std::vector<TemplateRecord> out;
  out.reserve(static_cast<size_t>(r.size()));
  for (int i = 0; i < r.size(); ++i) out.push_back(ReadTemplate(r, i));
  return out;
}

Status PgStore::SetTemplatePublic(const std::string& id, bool is_public) {
  // Setting the same value again is harmless: no transaction needed to retry it.
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec("UPDATE templates SET is_public = $1 WHERE id = $2",
                  MakeParams(int64_t{is_public ? 1 : 0}, id));
  }));
  if (r.affected() == 0) return NotFound("template \"" + id + "\" not found");
  return Status::Ok();
}

Status PgStore::RecordTemplateSpawn(const std::string& id, int64_t at_ms) {
  // A count: Transact, so that a retry after a lost COMMIT does not count twice.
  bool found = false;
  MOAT_RETURN_IF_ERROR(Transact([&](pg::Connection& c) -> Status {
    MOAT_ASSIGN_OR_RETURN(Rows r, c.Exec("UPDATE templates SET spawn_count = spawn_count + 1, "
                                         "last_spawned_at_ms = $1 WHERE id = $2",
                                         MakeParams(at_ms, id)));
    found = r.affected() > 0;
    return Status::Ok();
  }));
  if (!found) return NotFound("template \"" + id + "\" not found");
  return Status::Ok();
}

Status PgStore::DeleteTemplate(const std::string& id) {
  bool deleted = false;
  MOAT_RETURN_IF_ERROR(Transact([&](pg::Connection& c) -> Status {
    // The cascade deletes the builds, their tags and logs in the same transaction.
    MOAT_ASSIGN_OR_RETURN(Rows r, c.Exec("DELETE FROM templates WHERE id = $1", {id}));
    deleted = r.affected() > 0;
    return Status::Ok();
  }));
  if (!deleted) return NotFound("template \"" + id + "\" not found");
  return Status::Ok();
}

Status PgStore::InsertBuild(const TemplateBuildRecord& b, const std::vector<std::string>& tags) {
  return Transact([&](pg::Connection& c) -> Status {
    // The template's row lock queues builds of one template behind each other, so that two
    // inserted at once each see the other's tags (and the later one supersedes the earlier).
    MOAT_ASSIGN_OR_RETURN(
        Rows t, c.Exec("SELECT 1 FROM templates WHERE id = $1 FOR NO KEY UPDATE", {b.template_id}));
    if (t.size() == 0) return NotFound("template \"" + b.template_id + "\" not found");
    MOAT_RETURN_IF_ERROR(AlreadyExistsAs(
        c.Run("INSERT INTO template_builds (id, template_id, team_id, status, cpu_count, "
              "memory_mb, min_free_disk_mb, disk_size_mb, spec, reason, result, host_id, "
              "created_at_ms, started_at_ms, finished_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, "
              "$8, $9, $10, $11, $12, $13, $14, $15)",
              MakeParams(b.id, b.template_id, b.team_id, b.status, b.cpu_count, b.memory_mb,
                         b.min_free_disk_mb, b.disk_size_mb, b.spec, b.reason, b.result, b.host_id,
                         b.created_at_ms, b.started_at_ms, b.finished_at_ms)),
        "build \"" + b.id + "\""));
    if (tags.empty()) return Status::Ok();
    MOAT_RETURN_IF_ERROR(PointTags(c, b.template_id, b.id, tags, b.created_at_ms));
    // The new build's tags are in the table now: the waiting builds that share one lose.
    return c.Run(
        "UPDATE template_builds SET status = $1, reason = $2, finished_at_ms = $3 WHERE "
        "template_id = $4 AND status = $5 AND id <> $6 AND id IN (SELECT o.build_id FROM "
        "template_tags o JOIN template_tags n ON n.template_id = o.template_id AND n.tag = o.tag "
        "WHERE n.template_id = $4 AND n.build_id = $6)",
        MakeParams(kBuildError, kSupersededReason, b.created_at_ms, b.template_id, kBuildWaiting,
                   b.id));
  });
}

Result<std::optional<TemplateBuildRecord>> PgStore::GetBuild(const std::string& build_id) {
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec(
        std::string("SELECT ") + kBuildColumns + " FROM template_builds b WHERE b.id = $1",
        {build_id});
  }));
  return FirstBuild(r);
}

Result<std::vector<TemplateBuildRecord>> PgStore::ListBuilds(const std::string& template_id) {
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec(std::string("SELECT ") + kBuildColumns +
                      " FROM template_builds b WHERE b.template_id = $1 ORDER BY b.created_at_ms "
                      "DESC, b.id COLLATE \"C\" DESC",
                  {template_id});
  }));
  return ReadBuilds(r);
}

Result<std::vector<TemplateBuildRecord>> PgStore::BuildsInStatus(const std::string& status) {
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec(std::string("SELECT ") + kBuildColumns +
                      " FROM template_builds b WHERE b.status = $1 ORDER BY b.created_at_ms, b.id "
                      "COLLATE \"C\"",
                  {status});
  }));
  return ReadBuilds(r);
}

Result<bool> PgStore::TransitionBuild(const std::string& build_id, const std::string& from,
                                      const BuildUpdate& u) {
  if (u.status.empty()) {
    return InvalidArgument("build \"" + build_id + "\": a transition needs a status");
  }
  // An unset field is NULL and keeps the column's value.
  const std::string sql =
      "UPDATE template_builds SET status = $1, spec = COALESCE($2, spec), reason = "
      "COALESCE($3, reason), result = COALESCE($4, result), host_id = COALESCE($5, host_id), "
      "disk_size_mb = COALESCE($6::bigint, disk_size_mb), started_at_ms = COALESCE($7::bigint, "
      "started_at_ms), finished_at_ms = COALESCE($8::bigint, finished_at_ms) WHERE id = $9 AND "
      "status = $10";
  pg::Params params = MakeParams(u.status, u.spec, u.reason, u.result, u.host_id, u.disk_size_mb,
                                 u.started_at_ms, u.finished_at_ms, build_id, from);
  bool changed = false;
  MOAT_RETURN_IF_ERROR(Transact([&](pg::Connection& c) -> Status {
    MOAT_ASSIGN_OR_RETURN(Rows r, c.Exec(sql, params));
    changed = r.affected() > 0;
    return Status::Ok();
  }));
  return changed;
}

Status PgStore::AssignTags(const std::string& template_id, const std::string& build_id,
                           const std::vector<std::string>& tags, int64_t at_ms) {
  return Transact([&](pg::Connection& c) -> Status {
    MOAT_ASSIGN_OR_RETURN(Rows b,
                          c.Exec("SELECT 1 FROM template_builds WHERE id = $1 AND template_id = $2",
                                 {build_id, template_id}));
    if (b.size() == 0) {
      return NotFound("build \"" + build_id + "\" of template \"" + template_id + "\" not found");
    }
    return PointTags(c, template_id, build_id, tags, at_ms);
  });
}

Result<int64_t> PgStore::RemoveTags(const std::string& template_id,
                                    const std::vector<std::string>& tags) {
  int64_t removed = 0;
  MOAT_RETURN_IF_ERROR(Transact([&](pg::Connection& c) -> Status {
    removed = 0;
    for (const auto& tag : tags) {
      MOAT_ASSIGN_OR_RETURN(Rows r,
                            c.Exec("DELETE FROM template_tags WHERE template_id = $1 AND tag = $2",
                                   {template_id, tag}));
      // A tag named twice counts once: its second delete finds nothing.
      if (r.affected() > 0) ++removed;
    }
    return Status::Ok();
  }));
  return removed;
}

Result<std::optional<TemplateBuildRecord>> PgStore::ResolveTag(const std::string& template_id,
                                                               const std::string& tag) {
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec(std::string("SELECT ") + kBuildColumns +
                      " FROM template_tags t JOIN template_builds b ON b.id = t.build_id AND "
                      "b.template_id = t.template_id WHERE t.template_id = $1 AND t.tag = $2 AND "
                      "b.status = $3 ORDER BY t.assigned_at_ms DESC, b.created_at_ms DESC, b.id "
                      "COLLATE \"C\" DESC LIMIT 1",
                  MakeParams(template_id, tag, kBuildReady));
  }));
  return FirstBuild(r);
}

Result<std::vector<TemplateTagRecord>> PgStore::ListTags(const std::string& template_id) {
  // Per tag, ready builds first, then as ResolveTag orders them: the row DISTINCT ON keeps is the
  // build ResolveTag gives the tag, or, without a ready one, the most recently assigned.
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec(
        "SELECT DISTINCT ON (t.tag COLLATE \"C\") t.tag, t.build_id, t.assigned_at_ms FROM "
        "template_tags t JOIN template_builds b ON b.id = t.build_id WHERE t.template_id = $1 "
        "ORDER BY t.tag COLLATE \"C\", b.status = $2 DESC, t.assigned_at_ms DESC, "
        "b.created_at_ms DESC, b.id COLLATE \"C\" DESC",
        MakeParams(template_id, kBuildReady));
  }));
  std::vector<TemplateTagRecord> out;
  out.reserve(static_cast<size_t>(r.size()));
  for (int i = 0; i < r.size(); ++i) out.push_back({r.Text(i, 0), r.Text(i, 1), r.Int(i, 2)});
  return out;
}

Status PgStore::AppendBuildLogs(const std::string& build_id,
                                const std::vector<BuildLogRecord>& entries) {
  if (entries.empty()) return Status::Ok();
  const std::string json = LogEntriesJson(entries);
  return Transact([&](pg::Connection& c) -> Status {
    MOAT_ASSIGN_OR_RETURN(Rows b,
                          c.Exec("SELECT 1 FROM template_builds WHERE id = $1", {build_id}));
    if (b.size() == 0) return NotFound("build \"" + build_id + "\" not found");
    // One statement for the whole batch, numbered on from the build's last entry.
    return c.Run(
        "INSERT INTO template_build_logs (build_id, seq, timestamp_ms, level, step, message) "
        "SELECT $1::text, n.next + e.i - 1, (e.v->>'t')::bigint, e.v->>'l', e.v->>'s', e.v->>'m' "
        "FROM "
        "(SELECT COALESCE(MAX(seq) + 1, 0) AS next FROM template_build_logs WHERE build_id = $1) "
        "n, json_array_elements($2::json) WITH ORDINALITY AS e(v, i)",
        {build_id, json});
  });
}

Result<std::vector<BuildLogRecord>> PgStore::BuildLogs(const std::string& build_id, int64_t offset,
                                                       int64_t limit) {
  std::vector<BuildLogRecord> out;
  if (limit <= 0) return out;
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec(
        "SELECT timestamp_ms, level, step, message FROM template_build_logs WHERE build_id = $1 "
        "AND seq >= $2::bigint ORDER BY seq LIMIT $3::bigint",
        MakeParams(build_id, offset < 0 ? int64_t{0} : offset, limit));
  }));
  out.reserve(static_cast<size_t>(r.size()));
  for (int i = 0; i < r.size(); ++i) {
    out.push_back({r.Int(i, 0), r.Text(i, 1), r.Text(i, 2), r.Text(i, 3)});
  }
  return out;
}

// --- Template files (migration 12): pieces of at most kTemplateFileChunk bytes, seq from 0. ---

Status PgStore::PutTemplateFile(const std::string& team_id, const std::string& hash,
                                const std::string& local_path) {
  // One transaction: readers see the old file or the new one, never a mix. A retry (conflict,
  // lost connection) reads the local file again from the start.
  return Transact([&](pg::Connection& c) -> Status {
    MOAT_ASSIGN_OR_RETURN(TemplateFileReader in, TemplateFileReader::Open(local_path));
    // Two puts of one file queue here: otherwise both could find nothing to delete and the
    // second's INSERT fail on the first's rows. (Two int keys: apart from the migration lock's.)
    MOAT_RETURN_IF_ERROR(
        c.Run("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))", {team_id, hash}));
    MOAT_RETURN_IF_ERROR(
        c.Run("DELETE FROM template_files WHERE team_id = $1 AND hash = $2", {team_id, hash}));
    std::string piece;
    // At least one piece: an empty file is one empty piece.
    for (int64_t seq = 0;; ++seq) {
      MOAT_RETURN_IF_ERROR(in.Next(piece));
      if (piece.empty() && seq > 0) break;
      pg::Params params{team_id, hash, std::to_string(seq), ToHex(piece)};
      MOAT_RETURN_IF_ERROR(
          c.Run("INSERT INTO template_files (team_id, hash, seq, data, "
                "created_at_ms) VALUES ($1, $2, $3, decode($4, 'hex'), "
                "(floor(extract(epoch FROM now()) * 1000))::bigint)",
                params));
      if (piece.size() < kTemplateFileChunk) break;
    }
    return Status::Ok();
  });
}

Result<bool> PgStore::HasTemplateFile(const std::string& team_id, const std::string& hash) {
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec("SELECT 1 FROM template_files WHERE team_id = $1 AND hash = $2 LIMIT 1",
                  {team_id, hash});
  }));
  return r.size() > 0;
}

Status PgStore::ReadTemplateFile(const std::string& team_id, const std::string& hash,
                                 const std::string& dest_path) {
  return pool_->Run([&](pg::Connection& c) -> Status {
    // One snapshot for all the pieces (a put committing meanwhile is not seen), read one at a
    // time. A retry writes the destination's temporary file anew.
    MOAT_ASSIGN_OR_RETURN(auto tx, pg::Transaction::Begin(c, pg::Isolation::kRepeatableRead));
    MOAT_ASSIGN_OR_RETURN(
        Rows seqs,
        c.Exec("SELECT seq FROM template_files WHERE team_id = $1 AND hash = $2 ORDER BY seq",
               {team_id, hash}));
    if (seqs.size() == 0) return NotFound("template file " + hash + " not found");
    MOAT_ASSIGN_OR_RETURN(TemplateFileWriter out, TemplateFileWriter::Create(dest_path));
    std::string piece;
    for (int i = 0; i < seqs.size(); ++i) {
      if (seqs.Int(i, 0) != i) {
        return Internal("template file " + hash + ": piece " + std::to_string(i) + " missing");
      }
      MOAT_ASSIGN_OR_RETURN(Rows r, c.Exec("SELECT encode(data, 'hex') FROM template_files WHERE "
                                           "team_id = $1 AND hash = $2 AND seq = $3",
                                           MakeParams(team_id, hash, int64_t{i})));
      if (r.size() != 1 || !FromHex(r.Text(0, 0), piece)) {
        return Internal("template file " + hash + ": piece " + std::to_string(i) + " unreadable");
      }
      MOAT_RETURN_IF_ERROR(out.Write(piece));
    }
    MOAT_RETURN_IF_ERROR(tx.Commit());
    return out.Commit();
  });
}

}  // namespace moat::api::store
