// SqliteStore's custom templates: templates by alias, their builds (changed by compare-and-set),
// the tags that point at builds, and the builds' logs (schema migration 11); the files of COPY
// steps, in pieces (migration 12). A template's builds, tags and logs are deleted with it by the
// schema's ON DELETE CASCADE (Open turns foreign keys on).
#include <sqlite3.h>

#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "api/store/sqlite_statement.h"
#include "api/store/sqlite_store.h"
#include "api/store/template_file_io.h"

namespace moat::api::store {
namespace {

using sqlite::Statement;
using sqlite::Transaction;

// The reason InsertBuild gives the waiting builds a newer build supersedes.
constexpr const char* kSupersededReason =
    R"({"message":"build superseded by a newer one","step":"base"})";

constexpr const char* kTemplateColumns =
    "id, team_id, alias, is_public, created_at_ms, updated_at_ms, spawn_count, "
    "last_spawned_at_ms";

TemplateRecord ReadTemplate(Statement& s) {
  TemplateRecord t;
  t.id = s.Text(0);
  t.team_id = s.Text(1);
  t.alias = s.Text(2);
  t.is_public = s.Int(3) != 0;
  t.created_at_ms = s.Int(4);
  t.updated_at_ms = s.Int(5);
  t.spawn_count = s.Int(6);
  t.last_spawned_at_ms = s.Int(7);
  return t;
}

// Qualified with `b.` so that queries joining the tags can read builds the same way.
constexpr const char* kBuildColumns =
    "b.id, b.template_id, b.team_id, b.status, b.cpu_count, b.memory_mb, b.min_free_disk_mb, "
    "b.disk_size_mb, b.spec, b.reason, b.result, b.host_id, b.created_at_ms, b.started_at_ms, "
    "b.finished_at_ms";

TemplateBuildRecord ReadBuild(Statement& s) {
  TemplateBuildRecord b;
  b.id = s.Text(0);
  b.template_id = s.Text(1);
  b.team_id = s.Text(2);
  b.status = s.Text(3);
  b.cpu_count = static_cast<uint32_t>(s.Int(4));
  b.memory_mb = static_cast<uint32_t>(s.Int(5));
  b.min_free_disk_mb = static_cast<uint32_t>(s.Int(6));
  b.disk_size_mb = static_cast<uint32_t>(s.Int(7));
  b.spec = s.Text(8);
  b.reason = s.Text(9);
  b.result = s.Text(10);
  b.host_id = s.Text(11);
  b.created_at_ms = s.Int(12);
  b.started_at_ms = s.Int(13);
  b.finished_at_ms = s.Int(14);
  return b;
}

Result<std::vector<TemplateBuildRecord>> ReadBuilds(Statement& s) {
  std::vector<TemplateBuildRecord> out;
  for (;;) {
    MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) return out;
    out.push_back(ReadBuild(s));
  }
}

// A statement that failed on a UNIQUE or PRIMARY KEY constraint is already_exists (as
// PostgreSQL's 23505 is in PgStore). Read right after the failed step, before anything else
// runs on the connection.
Status ConstraintError(sqlite3* db, Status failed, const std::string& what) {
  int code = sqlite3_extended_errcode(db);
  if (code == SQLITE_CONSTRAINT_UNIQUE || code == SQLITE_CONSTRAINT_PRIMARYKEY) {
    return Status(ErrorCode::kAlreadyExists, what + " already exists");
  }
  return failed;
}

// Whether the build exists (and, with a template id, is one of that template's).
Result<bool> BuildExists(sqlite3* db, const std::string& build_id,
                         const std::string& template_id = "") {
  Statement s(db, template_id.empty()
                      ? "SELECT 1 FROM template_builds WHERE id = ?1"
                      : "SELECT 1 FROM template_builds WHERE id = ?1 AND template_id = ?2");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, build_id);
  if (!template_id.empty()) s.Bind(2, template_id);
  return s.Step();
}

// Points `tag` at the build, assigned at `at_ms` (anew if it pointed at it already).
Status PointTag(sqlite3* db, const std::string& template_id, const std::string& tag,
                const std::string& build_id, int64_t at_ms) {
  Statement s(db,
              "INSERT INTO template_tags (template_id, tag, build_id, assigned_at_ms) VALUES (?, "
              "?, ?, ?) ON CONFLICT (template_id, tag, build_id) DO UPDATE SET assigned_at_ms = "
              "excluded.assigned_at_ms");
  MOAT_RETURN_IF_ERROR(s.status());
  return s.Bind(1, template_id).Bind(2, tag).Bind(3, build_id).Bind(4, at_ms).Run();
}

}  // namespace

Status SqliteStore::InsertTemplate(const TemplateRecord& t) {
  std::lock_guard lock(mu_);
  Statement s(db_, std::string("INSERT INTO templates (") + kTemplateColumns +
                       ") VALUES (?, ?, ?, ?, ?, ?, ?, ?)");
  MOAT_RETURN_IF_ERROR(s.status());
  Status inserted = s.Bind(1, t.id)
                        .Bind(2, t.team_id)
                        .Bind(3, t.alias)
                        .Bind(4, int64_t{t.is_public ? 1 : 0})
                        .Bind(5, t.created_at_ms)
                        .Bind(6, t.updated_at_ms)
                        .Bind(7, t.spawn_count)
                        .Bind(8, t.last_spawned_at_ms)
                        .Run();
  if (inserted.ok()) return inserted;
  return ConstraintError(db_, inserted,
                         "template \"" + t.alias + "\" (or id \"" + t.id + "\") of the team");
}

Result<std::optional<TemplateRecord>> SqliteStore::GetTemplate(const std::string& id) {
  std::lock_guard lock(mu_);
  Statement s(db_, std::string("SELECT ") + kTemplateColumns + " FROM templates WHERE id = ?");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, id);
  MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return std::optional<TemplateRecord>();
  return std::optional<TemplateRecord>(ReadTemplate(s));
}

Result<std::optional<TemplateRecord>> SqliteStore::TemplateByAlias(const std::string& team_id,
                                                                   const std::string& alias) {
  std::lock_guard lock(mu_);
  Statement s(db_, std::string("SELECT ") + kTemplateColumns +
                       " FROM templates WHERE team_id = ? AND alias = ?");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, team_id).Bind(2, alias);
  MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return std::optional<TemplateRecord>();
  return std::optional<TemplateRecord>(ReadTemplate(s));
}

Result<std::vector<TemplateRecord>> SqliteStore::ListTemplates(const std::string& team_id) {
  std::lock_guard lock(mu_);
  Statement s(db_, std::string("SELECT ") + kTemplateColumns +
                       " FROM templates WHERE team_id = ? ORDER BY created_at_ms, id");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, team_id);
  std::vector<TemplateRecord> out;
  for (;;) {
    MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) return out;
    out.push_back(ReadTemplate(s));
  }
}

Status SqliteStore::SetTemplatePublic(const std::string& id, bool is_public) {
  std::lock_guard lock(mu_);
  Statement s(db_, "UPDATE templates SET is_public = ? WHERE id = ?");
  MOAT_RETURN_IF_ERROR(s.status());
  MOAT_RETURN_IF_ERROR(s.Bind(1, int64_t{is_public ? 1 : 0}).Bind(2, id).Run());
  if (sqlite3_changes(db_) == 0) return NotFound("template \"" + id + "\" not found");
  return Status::Ok();
}

Status SqliteStore::RecordTemplateSpawn(const std::string& id, int64_t at_ms) {
  std::lock_guard lock(mu_);
  Statement s(db_,
              "UPDATE templates SET spawn_count = spawn_count + 1, last_spawned_at_ms = ? WHERE "
              "id = ?");
  MOAT_RETURN_IF_ERROR(s.status());
  MOAT_RETURN_IF_ERROR(s.Bind(1, at_ms).Bind(2, id).Run());
  if (sqlite3_changes(db_) == 0) return NotFound("template \"" + id + "\" not found");
  return Status::Ok();
}

Status SqliteStore::DeleteTemplate(const std::string& id) {
  std::lock_guard lock(mu_);
  // One statement, one transaction: the cascade deletes the builds, their tags and logs with it.
  Statement s(db_, "DELETE FROM templates WHERE id = ?");
  MOAT_RETURN_IF_ERROR(s.status());
  MOAT_RETURN_IF_ERROR(s.Bind(1, id).Run());
  if (sqlite3_changes(db_) == 0) return NotFound("template \"" + id + "\" not found");
  return Status::Ok();
}

Status SqliteStore::InsertBuild(const TemplateBuildRecord& b,
                                const std::vector<std::string>& tags) {
  std::lock_guard lock(mu_);
  Transaction tx(db_);
  {
    Statement s(db_, "SELECT 1 FROM templates WHERE id = ?");
    MOAT_RETURN_IF_ERROR(s.status());
    s.Bind(1, b.template_id);
    MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) return NotFound("template \"" + b.template_id + "\" not found");
  }
  {
    Statement s(db_,
                "INSERT INTO template_builds (id, template_id, team_id, status, cpu_count, "
                "memory_mb, min_free_disk_mb, disk_size_mb, spec, reason, result, host_id, "
                "created_at_ms, started_at_ms, finished_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, "
                "?, ?, ?, ?, ?, ?)");
    MOAT_RETURN_IF_ERROR(s.status());
    Status inserted = s.Bind(1, b.id)
                          .Bind(2, b.template_id)
                          .Bind(3, b.team_id)
                          .Bind(4, b.status)
                          .Bind(5, int64_t{b.cpu_count})
                          .Bind(6, int64_t{b.memory_mb})
                          .Bind(7, int64_t{b.min_free_disk_mb})
                          .Bind(8, int64_t{b.disk_size_mb})
                          .Bind(9, b.spec)
                          .Bind(10, b.reason)
                          .Bind(11, b.result)
                          .Bind(12, b.host_id)
                          .Bind(13, b.created_at_ms)
                          .Bind(14, b.started_at_ms)
                          .Bind(15, b.finished_at_ms)
                          .Run();
    if (!inserted.ok()) return ConstraintError(db_, inserted, "build \"" + b.id + "\"");
  }
  for (const auto& tag : tags) {
    MOAT_RETURN_IF_ERROR(PointTag(db_, b.template_id, tag, b.id, b.created_at_ms));
  }
  if (!tags.empty()) {
    // The new build's tags are in the table now: the waiting builds that share one lose.
    Statement s(db_,
                "UPDATE template_builds SET status = ?1, reason = ?2, finished_at_ms = ?3 WHERE "
                "template_id = ?4 AND status = ?5 AND id != ?6 AND id IN (SELECT o.build_id FROM "
                "template_tags o JOIN template_tags n ON n.template_id = o.template_id AND n.tag "
                "= o.tag WHERE n.template_id = ?4 AND n.build_id = ?6)");
    MOAT_RETURN_IF_ERROR(s.status());
    MOAT_RETURN_IF_ERROR(s.Bind(1, std::string(kBuildError))
                             .Bind(2, std::string(kSupersededReason))
                             .Bind(3, b.created_at_ms)
                             .Bind(4, b.template_id)
                             .Bind(5, std::string(kBuildWaiting))
                             .Bind(6, b.id)
                             .Run());
  }
  return tx.Commit();
}

Result<std::optional<TemplateBuildRecord>> SqliteStore::GetBuild(const std::string& build_id) {
  std::lock_guard lock(mu_);
  Statement s(db_,
              std::string("SELECT ") + kBuildColumns + " FROM template_builds b WHERE b.id = ?");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, build_id);
  MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return std::optional<TemplateBuildRecord>();
  return std::optional<TemplateBuildRecord>(ReadBuild(s));
}

Result<std::vector<TemplateBuildRecord>> SqliteStore::ListBuilds(const std::string& template_id) {
  std::lock_guard lock(mu_);
  Statement s(db_, std::string("SELECT ") + kBuildColumns +
                       " FROM template_builds b WHERE b.template_id = ? ORDER BY b.created_at_ms "
                       "DESC, b.id DESC");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, template_id);
  return ReadBuilds(s);
}

Result<std::vector<TemplateBuildRecord>> SqliteStore::BuildsInStatus(const std::string& status) {
  std::lock_guard lock(mu_);
  Statement s(db_, std::string("SELECT ") + kBuildColumns +
                       " FROM template_builds b WHERE b.status = ? ORDER BY b.created_at_ms, b.id");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, status);
  return ReadBuilds(s);
}

Result<bool> SqliteStore::TransitionBuild(const std::string& build_id, const std::string& from,
                                          const BuildUpdate& u) {
  if (u.status.empty()) {
    return InvalidArgument("build \"" + build_id + "\": a transition needs a status");
  }
  // Only the fields the update sets are written; the values are bound in the order they appear.
  std::string sql = "UPDATE template_builds SET status = ?";
  std::vector<std::variant<std::string, int64_t>> values{u.status};
  auto set = [&](const char* column, const auto& value) {
    if (!value) return;
    sql += std::string(", ") + column + " = ?";
    using V = std::decay_t<decltype(*value)>;
    if constexpr (std::is_same_v<V, std::string>) {
      values.emplace_back(*value);
    } else {
      values.emplace_back(static_cast<int64_t>(*value));
    }
  };
  set("spec", u.spec);
  set("reason", u.reason);
  set("result", u.result);
  set("host_id", u.host_id);
  set("disk_size_mb", u.disk_size_mb);
  set("started_at_ms", u.started_at_ms);
  set("finished_at_ms", u.finished_at_ms);
  sql += " WHERE id = ? AND status = ?";
  values.emplace_back(build_id);
  values.emplace_back(from);

  std::lock_guard lock(mu_);
  Statement s(db_, sql);
  MOAT_RETURN_IF_ERROR(s.status());
  for (size_t i = 0; i < values.size(); ++i) {
    std::visit([&](const auto& v) { s.Bind(static_cast<int>(i + 1), v); }, values[i]);
  }
  MOAT_RETURN_IF_ERROR(s.Run());
  return sqlite3_changes(db_) > 0;
}

Status SqliteStore::AssignTags(const std::string& template_id, const std::string& build_id,
                               const std::vector<std::string>& tags, int64_t at_ms) {
  std::lock_guard lock(mu_);
  Transaction tx(db_);
  MOAT_ASSIGN_OR_RETURN(bool exists, BuildExists(db_, build_id, template_id));
  if (!exists) {
    return NotFound("build \"" + build_id + "\" of template \"" + template_id + "\" not found");
  }
  for (const auto& tag : tags) {
    MOAT_RETURN_IF_ERROR(PointTag(db_, template_id, tag, build_id, at_ms));
  }
  return tx.Commit();
}

Result<int64_t> SqliteStore::RemoveTags(const std::string& template_id,
                                        const std::vector<std::string>& tags) {
  std::lock_guard lock(mu_);
  Transaction tx(db_);
  int64_t removed = 0;
  for (const auto& tag : tags) {
    Statement s(db_, "DELETE FROM template_tags WHERE template_id = ? AND tag = ?");
    MOAT_RETURN_IF_ERROR(s.status());
    MOAT_RETURN_IF_ERROR(s.Bind(1, template_id).Bind(2, tag).Run());
    // A tag named twice counts once: its second delete finds nothing.
    if (sqlite3_changes(db_) > 0) ++removed;
  }
  MOAT_RETURN_IF_ERROR(tx.Commit());
  return removed;
}

Result<std::optional<TemplateBuildRecord>> SqliteStore::ResolveTag(const std::string& template_id,
                                                                   const std::string& tag) {
  std::lock_guard lock(mu_);
  Statement s(db_, std::string("SELECT ") + kBuildColumns +
                       " FROM template_tags t JOIN template_builds b ON b.id = t.build_id AND "
                       "b.template_id = t.template_id WHERE t.template_id = ? AND t.tag = ? AND "
                       "b.status = ? ORDER BY t.assigned_at_ms DESC, b.created_at_ms DESC, b.id "
                       "DESC LIMIT 1");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, template_id).Bind(2, tag).Bind(3, std::string(kBuildReady));
  MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return std::optional<TemplateBuildRecord>();
  return std::optional<TemplateBuildRecord>(ReadBuild(s));
}

Result<std::vector<TemplateTagRecord>> SqliteStore::ListTags(const std::string& template_id) {
  std::lock_guard lock(mu_);
  // Per tag, ready builds first, then as ResolveTag orders them: the first row of each tag is
  // the build ResolveTag gives it, or, without a ready one, the most recently assigned.
  Statement s(db_,
              "SELECT t.tag, t.build_id, t.assigned_at_ms FROM template_tags t JOIN "
              "template_builds b ON b.id = t.build_id WHERE t.template_id = ? ORDER BY t.tag, "
              "b.status = ? DESC, t.assigned_at_ms DESC, b.created_at_ms DESC, b.id DESC");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, template_id).Bind(2, std::string(kBuildReady));
  std::vector<TemplateTagRecord> out;
  for (;;) {
    MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) return out;
    std::string tag = s.Text(0);
    if (!out.empty() && out.back().tag == tag) continue;
    out.push_back({std::move(tag), s.Text(1), s.Int(2)});
  }
}

Status SqliteStore::AppendBuildLogs(const std::string& build_id,
                                    const std::vector<BuildLogRecord>& entries) {
  if (entries.empty()) return Status::Ok();
  std::lock_guard lock(mu_);
  Transaction tx(db_);
  MOAT_ASSIGN_OR_RETURN(bool exists, BuildExists(db_, build_id));
  if (!exists) return NotFound("build \"" + build_id + "\" not found");
  int64_t seq = 0;
  {
    Statement s(db_,
                "SELECT COALESCE(MAX(seq) + 1, 0) FROM template_build_logs WHERE build_id = ?");
    MOAT_RETURN_IF_ERROR(s.status());
    s.Bind(1, build_id);
    MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
    if (row) seq = s.Int(0);
  }
  for (const auto& e : entries) {
    Statement s(db_,
                "INSERT INTO template_build_logs (build_id, seq, timestamp_ms, level, step, "
                "message) VALUES (?, ?, ?, ?, ?, ?)");
    MOAT_RETURN_IF_ERROR(s.status());
    MOAT_RETURN_IF_ERROR(s.Bind(1, build_id)
                             .Bind(2, seq++)
                             .Bind(3, e.timestamp_ms)
                             .Bind(4, e.level)
                             .Bind(5, e.step)
                             .Bind(6, e.message)
                             .Run());
  }
  return tx.Commit();
}

Result<std::vector<BuildLogRecord>> SqliteStore::BuildLogs(const std::string& build_id,
                                                           int64_t offset, int64_t limit) {
  std::vector<BuildLogRecord> out;
  if (limit <= 0) return out;
  std::lock_guard lock(mu_);
  Statement s(db_,
              "SELECT timestamp_ms, level, step, message FROM template_build_logs WHERE build_id "
              "= ? AND seq >= ? ORDER BY seq LIMIT ?");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, build_id).Bind(2, offset < 0 ? int64_t{0} : offset).Bind(3, limit);
  for (;;) {
    MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) return out;
    out.push_back({s.Int(0), s.Text(1), s.Text(2), s.Text(3)});
  }
}

// --- Template files (migration 12): pieces of at most kTemplateFileChunk bytes, seq from 0. ---

Status SqliteStore::PutTemplateFile(const std::string& team_id, const std::string& hash,
                                    const std::string& local_path) {
  MOAT_ASSIGN_OR_RETURN(TemplateFileReader in, TemplateFileReader::Open(local_path));
  std::string piece;
  std::lock_guard lock(mu_);
  Transaction tx(db_);
  {
    Statement del(db_, "DELETE FROM template_files WHERE team_id = ?1 AND hash = ?2");
    MOAT_RETURN_IF_ERROR(del.status());
    MOAT_RETURN_IF_ERROR(del.Bind(1, team_id).Bind(2, hash).Run());
  }
  Statement ins(db_,
                "INSERT INTO template_files (team_id, hash, seq, data, created_at_ms) VALUES (?1, "
                "?2, ?3, ?4, ?5)");
  MOAT_RETURN_IF_ERROR(ins.status());
  const int64_t now = sqlite::NowMs();
  // At least one piece: an empty file is one empty piece.
  for (int64_t seq = 0;; ++seq) {
    MOAT_RETURN_IF_ERROR(in.Next(piece));
    if (piece.empty() && seq > 0) break;
    ins.Reset();
    // `piece` is not touched again before the statement has run.
    MOAT_RETURN_IF_ERROR(ins.Bind(1, team_id)
                             .Bind(2, hash)
                             .Bind(3, seq)
                             .BindBlob(4, piece.data(), piece.size())
                             .Bind(5, now)
                             .Run());
    if (piece.size() < kTemplateFileChunk) break;
  }
  ins.Reset();  // releases the binding to `piece`
  return tx.Commit();
}

Result<bool> SqliteStore::HasTemplateFile(const std::string& team_id, const std::string& hash) {
  std::lock_guard lock(mu_);
  Statement s(db_, "SELECT 1 FROM template_files WHERE team_id = ?1 AND hash = ?2 LIMIT 1");
  MOAT_RETURN_IF_ERROR(s.status());
  return s.Bind(1, team_id).Bind(2, hash).Step();
}

Status SqliteStore::ReadTemplateFile(const std::string& team_id, const std::string& hash,
                                     const std::string& dest_path) {
  std::lock_guard lock(mu_);
  // One statement, its rows read one at a time: one piece in memory, and (under mu_, on the one
  // connection) no write in between.
  Statement s(db_,
              "SELECT seq, data FROM template_files WHERE team_id = ?1 AND hash = ?2 ORDER BY seq");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, team_id).Bind(2, hash);
  MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return NotFound("template file " + hash + " not found");
  MOAT_ASSIGN_OR_RETURN(TemplateFileWriter out, TemplateFileWriter::Create(dest_path));
  for (int64_t expect = 0; row; ++expect) {
    if (s.Int(0) != expect) {
      return Internal("template file " + hash + ": piece " + std::to_string(expect) + " missing");
    }
    MOAT_RETURN_IF_ERROR(out.Write(s.Blob(1)));
    MOAT_ASSIGN_OR_RETURN(row, s.Step());
  }
  return out.Commit();
}

}  // namespace moat::api::store
