// SqliteStore's fleet membership and placement: the same hosts table, fencing, sweep and
// reservations as PgStore (pg_host_store.cc), for `moatd serve` and the shared test suite. One
// connection under the store's mutex makes each method atomic; times are SQLite's own clock.
#include <sqlite3.h>

#include <algorithm>

#include "api/store/host_validation.h"
#include "api/store/json_text.h"
#include "api/store/schema.h"
#include "api/store/sqlite_statement.h"
#include "api/store/sqlite_store.h"

namespace moat::api::store {
namespace {

using sqlite::Statement;
using sqlite::Transaction;

// SQLite's clock in ms since the epoch. julianday('now') is kept in whole ms, and is the same for
// every use within one statement; ROUND undoes the floating-point conversion exactly.
const std::string kNowMs = "CAST(ROUND((julianday('now') - 2440587.5) * 86400000) AS INTEGER)";

constexpr const char* kHostColumns =
    "id, endpoint, epoch, state, heartbeat_at_ms, started_at_ms, vcpu_total, mem_total_mb, "
    "vcpu_reserved, mem_reserved_mb, accel, cpu_model, qemu_build, labels, warm_base";

HostRecord ReadHost(Statement& s) {
  HostRecord h;
  h.id = s.Text(0);
  h.endpoint = s.Text(1);
  h.epoch = s.Int(2);
  // The CHECK constraint admits only the three; a newer moatd's state reads as lost.
  h.state = ParseHostState(s.Text(3)).value_or(HostState::kLost);
  h.heartbeat_at_ms = s.Int(4);
  h.started_at_ms = s.Int(5);
  h.vcpu_total = s.Int(6);
  h.mem_total_mb = s.Int(7);
  h.vcpu_reserved = s.Int(8);
  h.mem_reserved_mb = s.Int(9);
  h.accel = s.Text(10);
  h.cpu_model = s.Text(11);
  h.qemu_build = s.Text(12);
  h.labels = StringMapFromJson(s.Text(13));
  h.warm_base = s.Int(14);
  return h;
}

Result<std::vector<HostRecord>> ReadHosts(Statement& s) {
  std::vector<HostRecord> out;
  for (;;) {
    MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) return out;
    out.push_back(ReadHost(s));
  }
}

}  // namespace

Result<HostRecord> SqliteStore::RegisterHost(const HostRegistration& h) {
  MOAT_RETURN_IF_ERROR(CheckRegistration(h));
  std::lock_guard lock(mu_);
  Statement s(db_,
              "INSERT INTO hosts (id, endpoint, epoch, state, heartbeat_at_ms, started_at_ms, "
              "vcpu_total, mem_total_mb, accel, cpu_model, qemu_build, labels) VALUES (?1, ?2, 1, "
              "'active', " +
                  kNowMs + ", " + kNowMs +
                  ", ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (id) DO UPDATE SET endpoint = "
                  "excluded.endpoint, epoch = epoch + 1, state = CASE WHEN state = 'draining' "
                  "THEN 'draining' ELSE 'active' END, heartbeat_at_ms = excluded.heartbeat_at_ms, "
                  "started_at_ms = excluded.started_at_ms, vcpu_total = excluded.vcpu_total, "
                  "mem_total_mb = excluded.mem_total_mb, accel = excluded.accel, cpu_model = "
                  "excluded.cpu_model, qemu_build = excluded.qemu_build, labels = "
                  "excluded.labels, warm_base = 0 RETURNING " +
                  kHostColumns);
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, h.id)
      .Bind(2, h.endpoint)
      .Bind(3, h.vcpu_total)
      .Bind(4, h.mem_total_mb)
      .Bind(5, h.accel)
      .Bind(6, h.cpu_model)
      .Bind(7, h.qemu_build)
      .Bind(8, JsonText(h.labels));
  MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return Internal("registering host \"" + h.id + "\": no row returned");
  HostRecord registered = ReadHost(s);
  MOAT_RETURN_IF_ERROR(s.Run());  // to the end, so the statement completes
  return registered;
}

Result<bool> SqliteStore::Heartbeat(const std::string& host_id, int64_t epoch) {
  std::lock_guard lock(mu_);
  Statement s(db_, "UPDATE hosts SET heartbeat_at_ms = " + kNowMs +
                       " WHERE id = ? AND epoch = ? AND state <> 'lost'");
  MOAT_RETURN_IF_ERROR(s.status());
  MOAT_RETURN_IF_ERROR(s.Bind(1, host_id).Bind(2, epoch).Run());
  return sqlite3_changes(db_) > 0;
}

Result<bool> SqliteStore::SetHostWarm(const std::string& host_id, int64_t epoch,
                                      int64_t warm_base) {
  std::lock_guard lock(mu_);
  Statement s(db_, "UPDATE hosts SET warm_base = ? WHERE id = ? AND epoch = ? AND state <> 'lost'");
  MOAT_RETURN_IF_ERROR(s.status());
  MOAT_RETURN_IF_ERROR(
      s.Bind(1, std::max<int64_t>(0, warm_base)).Bind(2, host_id).Bind(3, epoch).Run());
  return sqlite3_changes(db_) > 0;
}

Result<std::vector<HostRecord>> SqliteStore::ListHosts() {
  std::lock_guard lock(mu_);
  Statement s(db_, std::string("SELECT ") + kHostColumns + " FROM hosts ORDER BY id");
  MOAT_RETURN_IF_ERROR(s.status());
  return ReadHosts(s);
}

Result<std::optional<HostRecord>> SqliteStore::GetHost(const std::string& host_id) {
  std::lock_guard lock(mu_);
  Statement s(db_, std::string("SELECT ") + kHostColumns + " FROM hosts WHERE id = ?");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, host_id);
  MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return std::optional<HostRecord>();
  return std::optional<HostRecord>(ReadHost(s));
}

Result<bool> SqliteStore::SetHostDraining(const std::string& host_id, bool draining) {
  const HostState to = draining ? HostState::kDraining : HostState::kActive;
  std::lock_guard lock(mu_);
  Statement get(db_, "SELECT state FROM hosts WHERE id = ?");
  MOAT_RETURN_IF_ERROR(get.status());
  get.Bind(1, host_id);
  MOAT_ASSIGN_OR_RETURN(bool row, get.Step());
  if (!row) return NotFound("host \"" + host_id + "\" not found");
  const std::string state = get.Text(0);
  std::optional<HostState> from = ParseHostState(state);
  if (from != HostState::kActive && from != HostState::kDraining) {
    return FailedPrecondition("host \"" + host_id + "\" is " + state +
                              ": only an active host can drain, and only a draining one be made "
                              "active; a lost host comes back by registering again");
  }
  if (*from == to) return false;
  Statement set(db_, "UPDATE hosts SET state = ? WHERE id = ?");
  MOAT_RETURN_IF_ERROR(set.status());
  MOAT_RETURN_IF_ERROR(set.Bind(1, std::string(HostStateName(to))).Bind(2, host_id).Run());
  return true;
}

Result<std::vector<std::string>> SqliteStore::SweepLostHosts(int64_t lost_after_ms) {
  if (lost_after_ms < 0) {
    return InvalidArgument("lost-host sweep: negative threshold " + std::to_string(lost_after_ms));
  }
  std::lock_guard lock(mu_);
  Transaction tx(db_);
  std::vector<std::string> lost;
  {
    Statement hosts(db_,
                    "UPDATE hosts SET state = 'lost', epoch = epoch + 1, vcpu_reserved = 0, "
                    "mem_reserved_mb = 0 WHERE state IN ('active', 'draining') AND "
                    "heartbeat_at_ms < " +
                        kNowMs + " - ? RETURNING id");
    MOAT_RETURN_IF_ERROR(hosts.status());
    hosts.Bind(1, lost_after_ms);
    for (;;) {
      MOAT_ASSIGN_OR_RETURN(bool row, hosts.Step());
      if (!row) break;
      lost.push_back(hosts.Text(0));
    }
  }
  for (const auto& id : lost) {
    Statement sandboxes(db_, "UPDATE sandboxes SET state = 'lost' WHERE host_id = ? AND state IN " +
                                 SqlStateList(HoldsResources));
    MOAT_RETURN_IF_ERROR(sandboxes.status());
    MOAT_RETURN_IF_ERROR(sandboxes.Bind(1, id).Run());
  }
  MOAT_RETURN_IF_ERROR(tx.Commit());
  std::sort(lost.begin(), lost.end());
  return lost;
}

Result<std::vector<HostRecord>> SqliteStore::PlacementCandidates(const PlacementQuery& q) {
  MOAT_RETURN_IF_ERROR(CheckNeed("(placement)", q.vcpus, q.mem_mb));
  MOAT_RETURN_IF_ERROR(CheckOvercommit(q.cpu_overcommit, q.mem_overcommit));
  std::lock_guard lock(mu_);
  Statement s(db_, std::string("SELECT ") + kHostColumns +
                       " FROM hosts WHERE state = 'active' AND heartbeat_at_ms >= " + kNowMs +
                       " - ?1 AND vcpu_reserved + ?2 <= vcpu_total * ?4 AND mem_reserved_mb + ?3 "
                       "<= mem_total_mb * ?5 AND (?6 = '' OR accel = ?6) AND (?7 = '' OR "
                       "cpu_model = ?7) AND (?8 = '' OR qemu_build = ?8) ORDER BY (?9 AND "
                       "warm_base > 0) DESC, mem_total_mb * "
                       "?5 - mem_reserved_mb DESC, vcpu_total * ?4 - vcpu_reserved DESC, id");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, q.fresh_within_ms)
      .Bind(2, q.vcpus)
      .Bind(3, q.mem_mb)
      .BindDouble(4, q.cpu_overcommit)
      .BindDouble(5, q.mem_overcommit)
      .Bind(6, q.accel)
      .Bind(7, q.cpu_model)
      .Bind(8, q.qemu_build)
      .Bind(9, static_cast<int64_t>(q.prefer_warm_base ? 1 : 0));
  return ReadHosts(s);
}

Result<std::optional<std::string>> SqliteStore::ReserveOnHost(const std::string& host_id,
                                                              int64_t vcpus, int64_t mem_mb,
                                                              double cpu_overcommit,
                                                              double mem_overcommit) {
  MOAT_RETURN_IF_ERROR(CheckNeed(host_id, vcpus, mem_mb));
  MOAT_RETURN_IF_ERROR(CheckOvercommit(cpu_overcommit, mem_overcommit));
  std::lock_guard lock(mu_);
  Statement s(db_,
              "UPDATE hosts SET reservation_seq = reservation_seq + 1, vcpu_reserved = "
              "vcpu_reserved + ?2, mem_reserved_mb = "
              "mem_reserved_mb + ?3 WHERE id = ?1 AND state = 'active' AND vcpu_reserved + ?2 <= "
              "vcpu_total * ?4 AND mem_reserved_mb + ?3 <= mem_total_mb * ?5 RETURNING endpoint");
  MOAT_RETURN_IF_ERROR(s.status());
  s.Bind(1, host_id)
      .Bind(2, vcpus)
      .Bind(3, mem_mb)
      .BindDouble(4, cpu_overcommit)
      .BindDouble(5, mem_overcommit);
  MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return std::optional<std::string>();
  std::string endpoint = s.Text(0);
  MOAT_RETURN_IF_ERROR(s.Run());  // to the end, so the statement completes
  return std::optional<std::string>(std::move(endpoint));
}

Result<std::vector<ReservationAudit>> SqliteStore::AuditReservations() {
  std::lock_guard lock(mu_);
  Statement s(
      db_,
      std::string("SELECT h.id, h.vcpu_reserved, h.mem_reserved_mb, COALESCE(SUM(s.cpu_count), 0), "
                  "COALESCE(SUM(s.memory_mb), 0), h.reservation_seq FROM hosts h LEFT JOIN "
                  "sandboxes s ON s.host_id = "
                  "h.id AND "
                  "s.state IN " +
                  SqlStateList(HoldsResources) +
                  " WHERE h.state <> 'lost' GROUP BY h.id, "
                  "h.vcpu_reserved, h.mem_reserved_mb, h.reservation_seq ORDER BY h.id"));
  MOAT_RETURN_IF_ERROR(s.status());
  std::vector<ReservationAudit> out;
  for (;;) {
    MOAT_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) return out;
    out.push_back({s.Text(0), s.Int(1), s.Int(2), s.Int(3), s.Int(4), s.Int(5)});
  }
}

Result<bool> SqliteStore::TrimReservation(const std::string& host_id, int64_t vcpus, int64_t mem_mb,
                                          int64_t seq) {
  MOAT_RETURN_IF_ERROR(CheckNeed(host_id, vcpus, mem_mb));
  const std::string held =
      "FROM sandboxes WHERE host_id = ?1 AND state IN " + SqlStateList(HoldsResources) + ")";
  std::lock_guard lock(mu_);
  Statement s(db_,
              "UPDATE hosts SET reservation_seq = reservation_seq + 1, vcpu_reserved = "
              "vcpu_reserved - ?2, mem_reserved_mb = "
              "mem_reserved_mb - ?3 WHERE id = ?1 AND state <> 'lost' AND reservation_seq = ?4 AND "
              "vcpu_reserved - ?2 >= "
              "(SELECT COALESCE(SUM(cpu_count), 0) " +
                  held +
                  " AND mem_reserved_mb - ?3 >= "
                  "(SELECT COALESCE(SUM(memory_mb), 0) " +
                  held);
  MOAT_RETURN_IF_ERROR(s.status());
  MOAT_RETURN_IF_ERROR(s.Bind(1, host_id).Bind(2, vcpus).Bind(3, mem_mb).Bind(4, seq).Run());
  return sqlite3_changes(db_) > 0;
}

Status SqliteStore::ReleaseOnHost(const std::string& host_id, int64_t vcpus, int64_t mem_mb) {
  MOAT_RETURN_IF_ERROR(CheckNeed(host_id, vcpus, mem_mb));
  std::lock_guard lock(mu_);
  Statement s(db_,
              "UPDATE hosts SET reservation_seq = reservation_seq + 1, vcpu_reserved = "
              "MAX(vcpu_reserved - ?2, 0), mem_reserved_mb = "
              "MAX(mem_reserved_mb - ?3, 0) WHERE id = ?1");
  MOAT_RETURN_IF_ERROR(s.status());
  MOAT_RETURN_IF_ERROR(s.Bind(1, host_id).Bind(2, vcpus).Bind(3, mem_mb).Run());
  if (sqlite3_changes(db_) == 0) return NotFound("host \"" + host_id + "\" not found");
  return Status::Ok();
}

}  // namespace moat::api::store
