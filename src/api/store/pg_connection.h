// The PostgreSQL kit the fleet's Store sits on (docs: FLEET.md §2): a libpq connection opened
// with bounded timeouts, parameterised queries only, a transaction guard, a small thread-safe
// pool whose Run() retries serialization failures, and a dedicated LISTEN connection.
//
// Errors map SQLSTATEs to moat codes in one place (ErrorFromResult in pg_connection.cc):
//   cannot connect, connection lost, server shutting down or starting, no connection slots
//   left (08xxx, 57P01-57P03, 53300)                                         → Unavailable
//   serialization failure 40001, deadlock 40P01                                → Aborted (retry)
//   statement timeout / query cancelled 57014                                 → DeadlineExceeded
//   unique violation 23505                                                    → AlreadyExists
//   anything else                                              → Internal, with the SQLSTATE
// Messages start with "postgresql: " and never contain the conninfo (it may carry a password).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/status.h"

struct pg_conn;
struct pg_result;

namespace moat::api::store::pg {

struct ConnectOptions {
  // A libpq URI ("postgresql://user@host:port/db?sslmode=…") or key=value conninfo. TCP
  // keepalives are on unless it says otherwise; application_name below wins over its own.
  std::string conninfo;
  // The whole connection set-up (every host in a multi-host conninfo together) must finish
  // within this; enforced by moat, not by libpq's whole-second connect_timeout.
  std::chrono::milliseconds connect_timeout{5000};
  // Set as the session's statement_timeout when it opens; 0 means none.
  std::chrono::milliseconds statement_timeout{5000};
  std::string application_name = "moatd";
};

// One query parameter: text, or NULL.
using Param = std::optional<std::string>;
using Params = std::vector<Param>;

// A parameter from a C++ value: integers as decimal, bools as true/false, strings as they are,
// std::nullopt (or an empty std::optional) as NULL.
template <typename T>
Param ToParam(const T& v) {
  using D = std::decay_t<T>;
  if constexpr (std::is_same_v<D, std::nullopt_t>) {
    return std::nullopt;
  } else if constexpr (std::is_same_v<D, bool>) {
    return std::string(v ? "true" : "false");
  } else if constexpr (std::is_integral_v<D>) {
    return std::to_string(v);
  } else if constexpr (requires {
                         v.has_value();
                         *v;
                       }) {
    return v.has_value() ? ToParam(*v) : std::nullopt;
  } else {
    static_assert(std::is_convertible_v<const T&, std::string_view>,
                  "a parameter is an integer, a bool, a string, std::nullopt or an optional");
    return std::string(std::string_view(v));
  }
}

// MakeParams(id, 42, true, std::nullopt) → {"id", "42", "true", NULL}.
template <typename... Args>
Params MakeParams(const Args&... args) {
  return Params{ToParam(args)...};
}

// A query's result; owns the PGresult. Rows and columns count from 0.
class Rows {
 public:
  Rows() = default;

  int size() const;
  int columns() const;
  // The column's index by name, or -1.
  int Column(const char* name) const;
  bool IsNull(int row, int col) const;
  // The value in text form; "" for NULL.
  std::string Text(int row, int col) const;
  // The value as an integer; 0 for NULL or a value that is not one (a bug in the query).
  int64_t Int(int row, int col) const;
  std::optional<int64_t> OptionalInt(int row, int col) const;
  std::optional<std::string> OptionalText(int row, int col) const;
  // PostgreSQL's boolean text form: "t".
  bool Bool(int row, int col) const;
  // Rows an INSERT/UPDATE/DELETE (…RETURNING or not) touched; 0 when the command reports none.
  int64_t affected() const;
  // The command tag: "INSERT 0 1", "COMMIT", "ROLLBACK".
  std::string command_tag() const;

 private:
  friend class Connection;
  struct Clear {
    void operator()(pg_result* r) const;
  };
  explicit Rows(pg_result* r) : result_(r) {}
  std::unique_ptr<pg_result, Clear> result_;
};

// One session. Not thread-safe: one thread at a time (the Pool hands each out to one caller).
class Connection {
 public:
  // Connects, then sets statement_timeout. Unavailable when the server cannot be reached within
  // connect_timeout; InvalidArgument when the conninfo does not parse.
  static Result<Connection> Open(const ConnectOptions& options);

  Connection(Connection&&) noexcept = default;
  Connection& operator=(Connection&&) noexcept = default;
  ~Connection() = default;

  // One statement; the parameters are sent apart from the SQL ($1, $2, … in text format), so
  // nothing in them is ever parsed as SQL. A parameter may not contain a NUL byte. If the server
  // does not answer within statement_timeout + connect_timeout (hung, partitioned away), the
  // connection is closed and the answer is Unavailable.
  Result<Rows> Exec(const std::string& sql, const Params& params = {});
  // Exec for statements whose rows are not needed.
  Status Run(const std::string& sql, const Params& params = {});
  // Several statements in one string, without parameters (the simple query protocol, which
  // Exec's parameterised one does not allow): for schema migrations, constants of this program,
  // never input. The first statement that fails ends it; outside a transaction block the script
  // is one implicit transaction, so nothing of it stays then.
  Status RunScript(const std::string& sql);

  // The session is still usable (libpq's CONNECTION_OK). It turns false once an operation has
  // found the connection lost; a connection the server dropped while idle is only found out by
  // the next operation, or by Probe().
  bool ok() const;
  // Reads whatever the server sent while the connection was idle (no round trip): false when
  // that shows the connection is gone (server restarted, session terminated).
  bool Probe();
  // In a transaction block (BEGIN without COMMIT/ROLLBACK yet), healthy or failed.
  bool InTransaction() const;
  pg_conn* raw() { return conn_.get(); }

 private:
  friend class Listener;
  struct Finish {
    void operator()(pg_conn* c) const;
  };
  explicit Connection(pg_conn* c) : conn_(c) {}
  // The error libpq reports for the connection itself (cannot connect, lost): Unavailable.
  Status ConnectionError() const;
  // Closes a connection that did not answer in time (its state is unknown) and says so.
  Status Abandon(std::string_view while_doing);
  // Sends what libpq buffered for a query just queued and collects its results.
  Result<Rows> AwaitResults(const std::string& sql);
  std::unique_ptr<pg_conn, Finish> conn_;
  // Exec gives up on the server after this long (statement_timeout plus connect_timeout, so
  // that the server's own timeout normally answers first); 0: never.
  std::chrono::milliseconds answer_timeout_{0};
};

enum class Isolation { kDefault, kReadCommitted, kRepeatableRead, kSerializable };

// BEGIN on construction (through Begin), ROLLBACK on destruction unless Commit()/Rollback() ran.
// Statements go through the connection as usual.
class Transaction {
 public:
  static Result<Transaction> Begin(Connection& conn, Isolation isolation = Isolation::kDefault);
  Transaction(Transaction&& other) noexcept : conn_(std::exchange(other.conn_, nullptr)) {}
  Transaction& operator=(Transaction&&) = delete;
  Transaction(const Transaction&) = delete;
  ~Transaction();

  // A commit that fails (a serializable conflict found at commit is Aborted) leaves nothing
  // applied. A transaction that already had a failed statement does not commit: Internal.
  Status Commit();
  Status Rollback();

 private:
  explicit Transaction(Connection* conn) : conn_(conn) {}
  Connection* conn_;  // null once finished
};

struct PoolOptions {
  ConnectOptions connect;
  int size = 8;
  // How long Checkout waits for a connection another caller holds.
  std::chrono::milliseconds checkout_timeout{5000};
  // Run's attempts in all when the function fails with Aborted (serialization failure,
  // deadlock).
  int max_attempts = 5;
};

// Up to `size` connections, opened when first needed. A connection that is broken when it comes
// back (or that Probe() finds broken at checkout) is closed and a new one opened next time.
// Thread-safe; the pool must outlive its leases.
class Pool {
 public:
  explicit Pool(PoolOptions options);
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  // A connection lent to one caller; returned to the pool on destruction.
  class Lease {
   public:
    Lease(Lease&& other) noexcept
        : pool_(std::exchange(other.pool_, nullptr)), conn_(std::move(other.conn_)) {}
    Lease& operator=(Lease&&) = delete;
    Lease(const Lease&) = delete;
    ~Lease();
    Connection& operator*() { return *conn_; }
    Connection* operator->() { return conn_.get(); }

   private:
    friend class Pool;
    Lease(Pool* pool, std::unique_ptr<Connection> conn) : pool_(pool), conn_(std::move(conn)) {}
    Pool* pool_;
    std::unique_ptr<Connection> conn_;
  };

  // Waits up to checkout_timeout for a free slot, then up to connect_timeout if a connection
  // must be opened. Unavailable when either runs out or the server cannot be reached.
  Result<Lease> Checkout();

  // Runs fn(Connection&) → Status or Result<T> on a pooled connection, and runs it again:
  //  - when it fails with Aborted (serialization failure, deadlock), up to max_attempts in all,
  //    after a short jittered backoff;
  //  - once, on a fresh connection, when it fails because its connection was lost.
  // fn must therefore be safe to run again: one transaction (Transaction + Commit) that applies
  // all or nothing. A connection lost during COMMIT leaves the outcome unknown, and the retry
  // runs fn again; write fn so that a second run after a successful first one is harmless
  // (conditional updates, ON CONFLICT), or check the outcome before changing anything.
  template <typename F>
  auto Run(F&& fn) -> std::invoke_result_t<F&, Connection&>;

  // Connections open now (idle and lent).
  int open_connections();

 private:
  void Return(std::unique_ptr<Connection> conn);
  static void Backoff(int attempt);

  const PoolOptions options_;
  std::mutex mu_;
  std::condition_variable freed_;
  std::vector<std::unique_ptr<Connection>> idle_;
  int open_ = 0;  // idle_ plus lent
};

struct Notification {
  std::string channel;
  std::string payload;
};

// A dedicated session for LISTEN (never pooled: a pooled session would hand its subscriptions
// to whoever borrows it next). When the connection is lost WaitNotification returns
// Unavailable; notifications sent meanwhile are gone, so the owner opens a new Listener,
// listens again and treats everything it caches as stale.
class Listener {
 public:
  static Result<Listener> Open(const ConnectOptions& options);

  Status Listen(const std::string& channel);
  Status Unlisten(const std::string& channel);
  // The next notification on a channel this session listens to, or nullopt after `timeout`.
  Result<std::optional<Notification>> WaitNotification(std::chrono::milliseconds timeout);
  Connection& connection() { return conn_; }

 private:
  explicit Listener(Connection conn) : conn_(std::move(conn)) {}
  std::optional<Notification> TakeQueued();
  Connection conn_;
};

// NOTIFY through pg_notify, so the channel and the payload are parameters. Inside a transaction
// it is sent at COMMIT, and only then.
Status Notify(Connection& conn, const std::string& channel, const std::string& payload);

// --- implementation of the template ---

namespace internal {
inline const Status& StatusOf(const Status& s) {
  return s;
}
template <typename T>
const Status& StatusOf(const Result<T>& r) {
  return r.status();
}
}  // namespace internal

template <typename F>
auto Pool::Run(F&& fn) -> std::invoke_result_t<F&, Connection&> {
  using R = std::invoke_result_t<F&, Connection&>;
  bool retried_lost = false;
  for (int attempt = 1;; ++attempt) {
    std::optional<R> result;
    bool lost = false;
    {
      auto lease = Checkout();
      if (!lease.ok()) return R(lease.status());
      result.emplace(fn(**lease));
      lost = !(*lease)->ok();
    }  // the connection goes back (or, lost, is closed) before any wait
    const Status& s = internal::StatusOf(*result);
    if (s.ok()) return std::move(*result);
    if (s.code() == ErrorCode::kAborted && attempt < options_.max_attempts) {
      Backoff(attempt);
      continue;
    }
    if (lost && !retried_lost) {
      retried_lost = true;
      continue;
    }
    return std::move(*result);
  }
}

}  // namespace moat::api::store::pg
