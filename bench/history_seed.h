// History records for history_bench's list API figures, written through the store's own API
// (SqliteStore: InsertHistory, AppendSandboxEvent, StartCommand/FinishCommand) as moatd writes
// them, for the admin team moatd made on its first start. SQLite allows one writer process at a
// time, so this runs while no moatd has the data dir open.
//
// The store commits (and fsyncs) every write on its own, about 2 ms each on this machine's disk:
// 50,000 writes would take minutes. So the database is copied to a tmpfs, seeded there, and
// copied back; the rows are the same, only the seeding's fsyncs are free.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "api/store/sqlite_store.h"
#include "bench_util.h"
#include "common/fs.h"
#include "common/sandbox_id.h"
#include "common/status.h"

namespace moat::bench {

// Copies DIR/moat.db and its WAL and shared-memory files (those that exist) from one directory
// to another, removing those the source lacks.
inline Status CopySqliteDb(const std::string& from_dir, const std::string& to_dir) {
  for (const char* suffix : {"", "-wal", "-shm"}) {
    std::string from = from_dir + "/moat.db" + suffix;
    std::string to = to_dir + "/moat.db" + suffix;
    if (!PathExists(from)) {
      if (PathExists(to) && ::unlink(to.c_str()) != 0) return ErrnoError("unlink(" + to + ")");
      continue;
    }
    MOAT_ASSIGN_OR_RETURN(std::string bytes, ReadFile(from));
    MOAT_RETURN_IF_ERROR(WriteFileAtomic(to, bytes, 0600));
  }
  return Status::Ok();
}

struct SeedResult {
  int records = 0;
  int events = 0;
  int commands = 0;
  double ms = 0;
  std::string middle_id;  // a record halfway through (GET /history/{id})
};

// `n` ended sandboxes of the admin team in the store at `db_path`, created over the last
// `days` days (newest last), each with its created and end events and one command with
// output. Templates, end reasons and metadata vary as a team's would: 70 % base, 20 %
// code-interpreter-v1, 10 % a custom template; 1 in 20 ended in an error, 1 in 5 timed out,
// the rest killed by the admin key; one failed command in 10.
inline Result<SeedResult> SeedHistory(const std::string& db_path, int n, int days) {
  using api::store::CommandRecord;
  using api::store::HistoryRecord;
  using api::store::SandboxEvent;
  auto t0 = Clock::now();
  MOAT_ASSIGN_OR_RETURN(auto store, api::store::SqliteStore::Open(db_path));
  MOAT_ASSIGN_OR_RETURN(auto team, store->TeamByName("admin"));
  if (!team)
    return FailedPrecondition(db_path + " has no admin team (moatd's first start makes it)");
  MOAT_ASSIGN_OR_RETURN(auto keys, store->ListApiKeys(team->id));
  if (keys.empty()) return FailedPrecondition(db_path + ": the admin team has no key");
  const auto& key = keys.front();

  const int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count();
  const int64_t span_ms = int64_t{days} * 86400000;
  SeedResult out;
  for (int i = 0; i < n; ++i) {
    HistoryRecord h;
    h.sandbox_id = NewSandboxId();
    h.team_id = team->id;
    h.template_id = i % 10 < 7 ? "base" : i % 10 < 9 ? "code-interpreter-v1" : "tmplseedcustom01";
    h.key_id = key.id;
    h.key_name = key.name;
    h.metadata = {{"user", "user-" + std::to_string(i % 50)}, {"job", "seed-" + std::to_string(i)}};
    h.cpu_count = i % 4 == 0 ? 2 : 1;
    h.memory_mb = i % 4 == 0 ? 1024 : 512;
    h.created_at_ms = now_ms - span_ms + span_ms * i / n;
    h.ended_at_ms = h.created_at_ms + 30000 + (i % 97) * 6000;  // 30 s .. ~10 min
    if (i % 20 == 0) {
      h.state = "error";
      h.end_reason = api::store::kEndError;
      h.end_detail = "the guest stopped answering";
    } else if (i % 5 == 1) {
      h.state = "killed";
      h.end_reason = api::store::kEndTimeout;
    } else {
      h.state = "killed";
      h.end_reason = api::store::kEndKilled;
      h.ended_by = key.name;
    }
    h.egress_bytes = (i % 13) * 4096;
    h.ingress_bytes = (i % 7) * 65536;
    MOAT_RETURN_IF_ERROR(store->InsertHistory(h));
    if (i == n / 2) out.middle_id = h.sandbox_id;
    ++out.records;

    nlohmann::json created = {{"templateID", h.template_id}};
    MOAT_RETURN_IF_ERROR(store->AppendSandboxEvent(SandboxEvent{.sandbox_id = h.sandbox_id,
                                                                .team_id = h.team_id,
                                                                .at_ms = h.created_at_ms,
                                                                .kind = "created",
                                                                .duration_ms = 150 + i % 300,
                                                                .detail = created.dump()}));
    nlohmann::json end = nlohmann::json::object();
    if (!h.ended_by.empty()) end["by"] = h.ended_by;
    if (!h.end_detail.empty()) end["detail"] = h.end_detail;
    MOAT_RETURN_IF_ERROR(
        store->AppendSandboxEvent(SandboxEvent{.sandbox_id = h.sandbox_id,
                                               .team_id = h.team_id,
                                               .at_ms = h.ended_at_ms,
                                               .kind = h.end_reason,
                                               .detail = end.empty() ? "" : end.dump()}));
    out.events += 2;

    CommandRecord c;
    c.sandbox_id = h.sandbox_id;
    c.team_id = h.team_id;
    c.command = "python3 -c 'print(sum(range(" + std::to_string(i) + ")))'";
    c.user = "user";
    c.cwd = "/home/user";
    c.started_at_ms = h.created_at_ms + 2000;
    MOAT_ASSIGN_OR_RETURN(c.id, store->StartCommand(c));
    c.ended_at_ms = c.started_at_ms + 40 + i % 200;
    c.exit_code = i % 10 == 3 ? 1 : 0;
    if (*c.exit_code != 0) c.stderr_head = "Traceback (most recent call last):\n  ...\n";
    c.stdout_head = std::to_string(int64_t{i} * (i - 1) / 2) + "\n";
    c.stdout_bytes = static_cast<int64_t>(c.stdout_head.size());
    c.stderr_bytes = static_cast<int64_t>(c.stderr_head.size());
    MOAT_RETURN_IF_ERROR(store->FinishCommand(c));
    ++out.commands;
  }
  store.reset();  // the last connection's close checkpoints the WAL into the file
  out.ms = Ms(Clock::now() - t0);
  return out;
}

}  // namespace moat::bench
