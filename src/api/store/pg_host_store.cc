// PgStore's fleet membership and placement (shared/FLEET.md §2-§4): the hosts table, heartbeats
// and fencing by epoch, the lost-host sweep, and capacity reserved by one conditional update.
// Times are PostgreSQL's now(): one clock for every host and replica.
#include <algorithm>
#include <cstdio>

#include "api/store/host_validation.h"
#include "api/store/json_text.h"
#include "api/store/pg_connection.h"
#include "api/store/pg_store.h"
#include "api/store/schema.h"

namespace moat::api::store {
namespace {

using pg::MakeParams;
using pg::Params;
using pg::Rows;

// The database's clock in ms since the epoch; now() is the transaction's start, so every use in
// one transaction agrees.
// pg_try_advisory_xact_lock's key for the lost-host sweep ("moatswep" in ASCII): one replica
// sweeps at a time, the others skip that round.
constexpr int64_t kSweepLock = 0x6d6f617473776570;

const std::string kNowMs = "(floor(extract(epoch FROM now()) * 1000))::bigint";

constexpr const char* kHostColumns =
    "id, endpoint, epoch, state, heartbeat_at_ms, started_at_ms, vcpu_total, mem_total_mb, "
    "vcpu_reserved, mem_reserved_mb, accel, cpu_model, qemu_build, labels, warm_base";

HostRecord ReadHost(const Rows& r, int i) {
  HostRecord h;
  h.id = r.Text(i, 0);
  h.endpoint = r.Text(i, 1);
  h.epoch = r.Int(i, 2);
  // The CHECK constraint admits only the three; a newer moatd's state reads as lost (placed on
  // by nobody).
  h.state = ParseHostState(r.Text(i, 3)).value_or(HostState::kLost);
  h.heartbeat_at_ms = r.Int(i, 4);
  h.started_at_ms = r.Int(i, 5);
  h.vcpu_total = r.Int(i, 6);
  h.mem_total_mb = r.Int(i, 7);
  h.vcpu_reserved = r.Int(i, 8);
  h.mem_reserved_mb = r.Int(i, 9);
  h.accel = r.Text(i, 10);
  h.cpu_model = r.Text(i, 11);
  h.qemu_build = r.Text(i, 12);
  h.labels = StringMapFromJson(r.Text(i, 13));
  h.warm_base = r.Int(i, 14);
  return h;
}

std::vector<HostRecord> ReadHosts(const Rows& r) {
  std::vector<HostRecord> out;
  out.reserve(static_cast<size_t>(r.size()));
  for (int i = 0; i < r.size(); ++i) out.push_back(ReadHost(r, i));
  return out;
}

// A ratio as a float8 parameter, exactly (17 significant digits round-trip a double).
std::string Float(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

}  // namespace

Result<HostRecord> PgStore::RegisterHost(const HostRegistration& h) {
  MOAT_RETURN_IF_ERROR(CheckRegistration(h));
  // One statement, new host or not; the epoch bump is why it runs in Transact (a retry after a
  // lost COMMIT must not bump it twice).
  const std::string sql =
      "INSERT INTO hosts (id, endpoint, epoch, state, heartbeat_at_ms, started_at_ms, "
      "vcpu_total, mem_total_mb, accel, cpu_model, qemu_build, labels) VALUES ($1, $2, 1, "
      "'active', " +
      kNowMs + ", " + kNowMs +
      ", $3::bigint, $4::bigint, $5, $6, $7, $8) "
      "ON CONFLICT (id) DO UPDATE SET endpoint = EXCLUDED.endpoint, epoch = hosts.epoch + 1, "
      "state = CASE WHEN hosts.state = 'draining' THEN 'draining' ELSE 'active' END, "
      "heartbeat_at_ms = EXCLUDED.heartbeat_at_ms, started_at_ms = EXCLUDED.started_at_ms, "
      "vcpu_total = EXCLUDED.vcpu_total, mem_total_mb = EXCLUDED.mem_total_mb, "
      "accel = EXCLUDED.accel, cpu_model = EXCLUDED.cpu_model, "
      "qemu_build = EXCLUDED.qemu_build, labels = EXCLUDED.labels, warm_base = 0 RETURNING " +
      kHostColumns;
  Params params = MakeParams(h.id, h.endpoint, h.vcpu_total, h.mem_total_mb, h.accel, h.cpu_model,
                             h.qemu_build, JsonText(h.labels));
  HostRecord registered;
  MOAT_RETURN_IF_ERROR(Transact([&](pg::Connection& c) -> Status {
    MOAT_ASSIGN_OR_RETURN(Rows r, c.Exec(sql, params));
    if (r.size() != 1) return Internal("registering host \"" + h.id + "\": no row returned");
    registered = ReadHost(r, 0);
    return Status::Ok();
  }));
  return registered;
}

Result<bool> PgStore::Heartbeat(const std::string& host_id, int64_t epoch) {
  // Setting the time again is harmless: a retry needs no transaction, and answers the same
  // (unless the host was fenced in between, which it then reports).
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec("UPDATE hosts SET heartbeat_at_ms = " + kNowMs +
                      " WHERE id = $1 AND epoch = $2::bigint AND state <> 'lost'",
                  MakeParams(host_id, epoch));
  }));
  return r.affected() > 0;
}

Result<bool> PgStore::SetHostWarm(const std::string& host_id, int64_t epoch, int64_t warm_base) {
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec(
        "UPDATE hosts SET warm_base = $3::bigint WHERE id = $1 AND epoch = $2::bigint "
        "AND state <> 'lost'",
        MakeParams(host_id, epoch, std::max<int64_t>(0, warm_base)));
  }));
  return r.affected() > 0;
}

Result<std::vector<HostRecord>> PgStore::ListHosts() {
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([](pg::Connection& c) {
    return c.Exec(std::string("SELECT ") + kHostColumns + " FROM hosts ORDER BY id COLLATE \"C\"");
  }));
  return ReadHosts(r);
}

Result<std::optional<HostRecord>> PgStore::GetHost(const std::string& host_id) {
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) {
    return c.Exec(std::string("SELECT ") + kHostColumns + " FROM hosts WHERE id = $1", {host_id});
  }));
  if (r.size() == 0) return std::optional<HostRecord>();
  return std::optional<HostRecord>(ReadHost(r, 0));
}

Result<bool> PgStore::SetHostDraining(const std::string& host_id, bool draining) {
  const HostState to = draining ? HostState::kDraining : HostState::kActive;
  bool changed = false;
  MOAT_RETURN_IF_ERROR(Transact([&](pg::Connection& c) -> Status {
    // The row lock orders this against a sweep or a registration of the same host.
    MOAT_ASSIGN_OR_RETURN(Rows r,
                          c.Exec("SELECT state FROM hosts WHERE id = $1 FOR UPDATE", {host_id}));
    if (r.size() == 0) return NotFound("host \"" + host_id + "\" not found");
    std::optional<HostState> from = ParseHostState(r.Text(0, 0));
    if (from != HostState::kActive && from != HostState::kDraining) {
      return FailedPrecondition("host \"" + host_id + "\" is " + r.Text(0, 0) +
                                ": only an active host can drain, and only a draining one be "
                                "made active; a lost host comes back by registering again");
    }
    changed = *from != to;
    if (!changed) return Status::Ok();
    return c.Run("UPDATE hosts SET state = $2 WHERE id = $1",
                 MakeParams(host_id, HostStateName(to)));
  }));
  return changed;
}

Result<std::vector<std::string>> PgStore::SweepLostHosts(int64_t lost_after_ms) {
  if (lost_after_ms < 0) {
    return InvalidArgument("lost-host sweep: negative threshold " + std::to_string(lost_after_ms));
  }
  // One statement: the hosts, then their sandboxes from the hosts' RETURNING. A heartbeat that
  // commits while this waits for a host's row lock is seen (READ COMMITTED re-checks the row),
  // so a host that just proved alive is not declared lost; a sandbox that changed state
  // meanwhile is judged by its new state (a pause that completed stays paused).
  const std::string sql =
      "WITH lost AS (UPDATE hosts SET state = 'lost', epoch = epoch + 1, vcpu_reserved = 0, "
      "mem_reserved_mb = 0 WHERE state IN ('active', 'draining') AND heartbeat_at_ms < " +
      kNowMs +
      " - $1::bigint RETURNING id), "
      "moved AS (UPDATE sandboxes SET state = 'lost' WHERE host_id IN (SELECT id FROM lost) AND "
      "state IN " +
      SqlStateList(HoldsResources) + " RETURNING 1) SELECT id FROM lost ORDER BY id COLLATE \"C\"";
  std::vector<std::string> lost;
  MOAT_RETURN_IF_ERROR(Transact([&](pg::Connection& c) -> Status {
    lost.clear();
    MOAT_ASSIGN_OR_RETURN(Rows leader,
                          c.Exec("SELECT pg_try_advisory_xact_lock($1)", MakeParams(kSweepLock)));
    if (!leader.Bool(0, 0)) return Status::Ok();  // another replica is sweeping right now
    MOAT_ASSIGN_OR_RETURN(Rows r, c.Exec(sql, MakeParams(lost_after_ms)));
    for (int i = 0; i < r.size(); ++i) lost.push_back(r.Text(i, 0));
    return Status::Ok();
  }));
  return lost;
}

Result<std::vector<HostRecord>> PgStore::PlacementCandidates(const PlacementQuery& q) {
  MOAT_RETURN_IF_ERROR(CheckNeed("(placement)", q.vcpus, q.mem_mb));
  MOAT_RETURN_IF_ERROR(CheckOvercommit(q.cpu_overcommit, q.mem_overcommit));
  const std::string sql =
      std::string("SELECT ") + kHostColumns +
      " FROM hosts WHERE state = 'active' AND heartbeat_at_ms >= " + kNowMs +
      " - $1::bigint AND vcpu_reserved + $2::bigint <= vcpu_total * $4::float8 AND "
      "mem_reserved_mb + $3::bigint <= mem_total_mb * $5::float8 AND ($6 = '' OR accel = $6) "
      "AND ($7 = '' OR cpu_model = $7) AND ($8 = '' OR qemu_build = $8) "
      "ORDER BY ($9::boolean AND warm_base > 0) DESC, mem_total_mb * $5::float8 - mem_reserved_mb "
      "DESC, "
      "vcpu_total * $4::float8 - vcpu_reserved DESC, id COLLATE \"C\"";
  Params params =
      MakeParams(q.fresh_within_ms, q.vcpus, q.mem_mb, Float(q.cpu_overcommit),
                 Float(q.mem_overcommit), q.accel, q.cpu_model, q.qemu_build, q.prefer_warm_base);
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) { return c.Exec(sql, params); }));
  return ReadHosts(r);
}

Result<std::optional<std::string>> PgStore::ReserveOnHost(const std::string& host_id, int64_t vcpus,
                                                          int64_t mem_mb, double cpu_overcommit,
                                                          double mem_overcommit) {
  MOAT_RETURN_IF_ERROR(CheckNeed(host_id, vcpus, mem_mb));
  MOAT_RETURN_IF_ERROR(CheckOvercommit(cpu_overcommit, mem_overcommit));
  // One conditional update: a second replica's update of the same row waits for this one's
  // commit and then checks the capacity against what this one reserved.
  const std::string sql =
      "UPDATE hosts SET reservation_seq = reservation_seq + 1, vcpu_reserved = vcpu_reserved + "
      "$2::bigint, mem_reserved_mb = "
      "mem_reserved_mb + $3::bigint WHERE id = $1 AND state = 'active' AND vcpu_reserved + "
      "$2::bigint <= vcpu_total * $4::float8 AND mem_reserved_mb + $3::bigint <= mem_total_mb * "
      "$5::float8 RETURNING endpoint";
  Params params = MakeParams(host_id, vcpus, mem_mb, Float(cpu_overcommit), Float(mem_overcommit));
  std::optional<std::string> endpoint;
  MOAT_RETURN_IF_ERROR(Transact([&](pg::Connection& c) -> Status {
    MOAT_ASSIGN_OR_RETURN(Rows r, c.Exec(sql, params));
    endpoint.reset();
    if (r.size() > 0) endpoint = r.Text(0, 0);
    return Status::Ok();
  }));
  return endpoint;
}

Result<std::vector<ReservationAudit>> PgStore::AuditReservations() {
  // One statement: one snapshot of hosts and sandboxes together.
  const std::string sql = std::string(
      "SELECT h.id, h.vcpu_reserved, h.mem_reserved_mb, COALESCE(SUM(s.cpu_count), 0), "
      "COALESCE(SUM(s.memory_mb), 0), h.reservation_seq FROM hosts h LEFT JOIN sandboxes s ON "
      "s.host_id = h.id AND "
      "s.state IN " +
      SqlStateList(HoldsResources) +
      " WHERE h.state <> 'lost' GROUP BY h.id, "
      "h.vcpu_reserved, h.mem_reserved_mb, h.reservation_seq ORDER BY h.id COLLATE \"C\"");
  MOAT_ASSIGN_OR_RETURN(Rows r, pool_->Run([&](pg::Connection& c) { return c.Exec(sql); }));
  std::vector<ReservationAudit> out;
  for (int i = 0; i < r.size(); ++i) {
    out.push_back({r.Text(i, 0), r.Int(i, 1), r.Int(i, 2), r.Int(i, 3), r.Int(i, 4), r.Int(i, 5)});
  }
  return out;
}

Result<bool> PgStore::TrimReservation(const std::string& host_id, int64_t vcpus, int64_t mem_mb,
                                      int64_t seq) {
  MOAT_RETURN_IF_ERROR(CheckNeed(host_id, vcpus, mem_mb));
  const std::string held =
      "FROM sandboxes WHERE host_id = $1 AND state IN " + SqlStateList(HoldsResources) + ")";
  // The row lock of the UPDATE orders it after any reservation in flight on this host.
  const std::string sql =
      "UPDATE hosts SET reservation_seq = reservation_seq + 1, vcpu_reserved = vcpu_reserved - "
      "$2::bigint, mem_reserved_mb = "
      "mem_reserved_mb - $3::bigint WHERE id = $1 AND state <> 'lost' AND reservation_seq = "
      "$4::bigint AND vcpu_reserved - "
      "$2::bigint >= (SELECT COALESCE(SUM(cpu_count), 0) " +
      held +
      " AND mem_reserved_mb - "
      "$3::bigint >= (SELECT COALESCE(SUM(memory_mb), 0) " +
      held;
  bool trimmed = false;
  MOAT_RETURN_IF_ERROR(Transact([&](pg::Connection& c) -> Status {
    MOAT_ASSIGN_OR_RETURN(Rows r, c.Exec(sql, MakeParams(host_id, vcpus, mem_mb, seq)));
    trimmed = r.affected() > 0;
    return Status::Ok();
  }));
  return trimmed;
}

Status PgStore::ReleaseOnHost(const std::string& host_id, int64_t vcpus, int64_t mem_mb) {
  MOAT_RETURN_IF_ERROR(CheckNeed(host_id, vcpus, mem_mb));
  bool found = false;
  MOAT_RETURN_IF_ERROR(Transact([&](pg::Connection& c) -> Status {
    MOAT_ASSIGN_OR_RETURN(
        Rows r, c.Exec("UPDATE hosts SET reservation_seq = reservation_seq + 1, vcpu_reserved = "
                       "GREATEST(vcpu_reserved - $2::bigint, 0), "
                       "mem_reserved_mb = GREATEST(mem_reserved_mb - $3::bigint, 0) WHERE id = $1",
                       MakeParams(host_id, vcpus, mem_mb)));
    found = r.affected() > 0;
    return Status::Ok();
  }));
  if (!found) return NotFound("host \"" + host_id + "\" not found");
  return Status::Ok();
}

}  // namespace moat::api::store
