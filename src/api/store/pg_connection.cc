#include "api/store/pg_connection.h"

#include <libpq-fe.h>
#include <poll.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <random>
#include <thread>

#include "common/log.h"

namespace moat::api::store::pg {
namespace {

using Clock = std::chrono::steady_clock;

// libpq's messages end in a newline and may span lines ("…failed: Connection refused\n\tIs the
// server running…"): one line, trimmed.
std::string OneLine(const char* msg) {
  std::string out;
  if (msg == nullptr) return out;
  bool space = false;
  for (const char* p = msg; *p != '\0'; ++p) {
    if (*p == '\n' || *p == '\t' || *p == '\r' || *p == ' ') {
      space = !out.empty();
    } else {
      if (space) out.push_back(' ');
      space = false;
      out.push_back(*p);
    }
  }
  return out;
}

bool SqlStateIn(std::string_view state, std::initializer_list<std::string_view> states) {
  for (auto s : states) {
    if (state == s) return true;
  }
  return false;
}

// The one place a failed statement becomes a moat error.
Status ErrorFromResult(const PGresult* r, const PGconn* c) {
  const char* state_field = PQresultErrorField(r, PG_DIAG_SQLSTATE);
  std::string_view state = state_field != nullptr ? state_field : "";
  const char* primary = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
  std::string msg = "postgresql: ";
  msg += primary != nullptr ? OneLine(primary) : OneLine(PQresultErrorMessage(r));
  if (!state.empty()) {
    msg += " (SQLSTATE ";
    msg += state;
    msg += ")";
  }
  if (const char* detail = PQresultErrorField(r, PG_DIAG_MESSAGE_DETAIL)) {
    msg += ": ";
    msg += OneLine(detail);
  }
  // Lost connections, and a server that is shutting down, starting or out of connection slots:
  // all "try again later, maybe elsewhere".
  if (PQstatus(c) == CONNECTION_BAD || state.starts_with("08") ||
      SqlStateIn(state, {"57P01", "57P02", "57P03", "53300"})) {
    return Unavailable(std::move(msg));
  }
  if (SqlStateIn(state, {"40001", "40P01"})) return Status(ErrorCode::kAborted, std::move(msg));
  if (state == "57014") return DeadlineExceeded(std::move(msg));
  if (state == "23505") return Status(ErrorCode::kAlreadyExists, std::move(msg));
  return Internal(std::move(msg));
}

// Waits until `fd` is ready for `events` or the deadline passes (false). No deadline: waits as
// long as it takes. Sets *revents.
bool WaitFd(int fd, short events, std::optional<Clock::time_point> deadline,
            short* revents = nullptr) {
  for (;;) {
    int timeout_ms = -1;
    if (deadline) {
      auto left = std::chrono::ceil<std::chrono::milliseconds>(*deadline - Clock::now());
      if (left.count() <= 0) return false;
      timeout_ms = static_cast<int>(left.count());
    }
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, timeout_ms);
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) continue;  // the deadline check above ends the loop
    // An error from poll itself, POLLERR or POLLHUP: libpq's next call finds out what happened.
    if (revents != nullptr) *revents = r > 0 ? p.revents : POLLERR;
    return true;
  }
}

std::string Ms(std::chrono::milliseconds d) {
  return std::to_string(d.count()) + " ms";
}

const char* IsolationSql(Isolation i) {
  switch (i) {
    case Isolation::kDefault: return "BEGIN";
    case Isolation::kReadCommitted: return "BEGIN ISOLATION LEVEL READ COMMITTED";
    case Isolation::kRepeatableRead: return "BEGIN ISOLATION LEVEL REPEATABLE READ";
    case Isolation::kSerializable: return "BEGIN ISOLATION LEVEL SERIALIZABLE";
  }
  return "BEGIN";
}

}  // namespace

// --- Rows ---

void Rows::Clear::operator()(pg_result* r) const {
  PQclear(r);
}

int Rows::size() const {
  return result_ ? PQntuples(result_.get()) : 0;
}

int Rows::columns() const {
  return result_ ? PQnfields(result_.get()) : 0;
}

int Rows::Column(const char* name) const {
  return result_ ? PQfnumber(result_.get(), name) : -1;
}

bool Rows::IsNull(int row, int col) const {
  return !result_ || PQgetisnull(result_.get(), row, col) != 0;
}

std::string Rows::Text(int row, int col) const {
  if (IsNull(row, col)) return {};
  return std::string(PQgetvalue(result_.get(), row, col),
                     static_cast<size_t>(PQgetlength(result_.get(), row, col)));
}

int64_t Rows::Int(int row, int col) const {
  return OptionalInt(row, col).value_or(0);
}

std::optional<int64_t> Rows::OptionalInt(int row, int col) const {
  if (IsNull(row, col)) return std::nullopt;
  const char* v = PQgetvalue(result_.get(), row, col);
  const char* end = v + PQgetlength(result_.get(), row, col);
  int64_t out = 0;
  auto [p, ec] = std::from_chars(v, end, out);
  if (ec != std::errc() || p != end) return 0;
  return out;
}

std::optional<std::string> Rows::OptionalText(int row, int col) const {
  if (IsNull(row, col)) return std::nullopt;
  return Text(row, col);
}

bool Rows::Bool(int row, int col) const {
  return !IsNull(row, col) && PQgetvalue(result_.get(), row, col)[0] == 't';
}

int64_t Rows::affected() const {
  if (!result_) return 0;
  const char* n = PQcmdTuples(result_.get());
  int64_t out = 0;
  std::from_chars(n, n + std::strlen(n), out);
  return out;
}

std::string Rows::command_tag() const {
  return result_ ? PQcmdStatus(result_.get()) : "";
}

// --- Connection ---

void Connection::Finish::operator()(pg_conn* c) const {
  PQfinish(c);
}

Result<Connection> Connection::Open(const ConnectOptions& options) {
  // A conninfo that does not parse is a configuration error, not an outage.
  char* parse_error = nullptr;
  PQconninfoOption* parsed = PQconninfoParse(options.conninfo.c_str(), &parse_error);
  if (parsed == nullptr) {
    std::string why = parse_error != nullptr ? OneLine(parse_error) : "out of memory";
    PQfreemem(parse_error);
    // Some messages quote the whole URI, password and all.
    for (size_t at;
         !options.conninfo.empty() && (at = why.find(options.conninfo)) != std::string::npos;) {
      why.replace(at, options.conninfo.size(), "<conninfo>");
    }
    return InvalidArgument("postgresql: bad conninfo: " + why);
  }
  PQconninfoFree(parsed);

  // Later keywords override earlier ones: TCP keepalives (a peer that vanished is noticed on an
  // idle connection) are defaults the conninfo may override; application_name is ours.
  const char* keys[] = {"keepalives",
                        "keepalives_idle",
                        "keepalives_interval",
                        "keepalives_count",
                        "dbname",
                        "application_name",
                        nullptr};
  const char* values[] = {
      "1",
      "10",
      "5",
      "3",
      options.conninfo.c_str(),
      options.application_name.empty() ? nullptr : options.application_name.c_str(),
      nullptr};
  PGconn* raw = PQconnectStartParams(keys, values, /*expand_dbname=*/1);
  if (raw == nullptr) return ResourceExhausted("postgresql: out of memory");
  Connection conn(raw);
  if (PQstatus(raw) == CONNECTION_BAD) return conn.ConnectionError();

  // libpq's connect_timeout counts whole seconds per host; this loop bounds the whole set-up.
  auto deadline = Clock::now() + options.connect_timeout;
  PostgresPollingStatusType st = PGRES_POLLING_WRITING;
  while (st != PGRES_POLLING_OK) {
    if (st == PGRES_POLLING_FAILED) return conn.ConnectionError();
    int fd = PQsocket(raw);
    if (fd >= 0 && !WaitFd(fd, st == PGRES_POLLING_READING ? POLLIN : POLLOUT, deadline)) {
      const char* host = PQhost(raw);
      return Unavailable("postgresql: no connection to " + std::string(host ? host : "?") + ":" +
                         std::string(PQport(raw) ? PQport(raw) : "?") + " within " +
                         Ms(options.connect_timeout));
    }
    st = PQconnectPoll(raw);
  }
  if (PQsetnonblocking(raw, 1) != 0) return conn.ConnectionError();
  // Server notices ("relation … already exists, skipping", and the farewell of a session the
  // server ends while it is idle) go to the log, not to stderr.
  PQsetNoticeProcessor(
      raw,
      [](void*, const char* message) {
        LogDebug("pg.notice", {{"message", OneLine(message)}});
      },
      nullptr);

  conn.answer_timeout_ = options.connect_timeout;
  MOAT_RETURN_IF_ERROR(conn.Run("SELECT set_config('statement_timeout', $1, false)",
                                {std::to_string(options.statement_timeout.count())}));
  conn.answer_timeout_ = options.statement_timeout.count() > 0
                             ? options.statement_timeout + options.connect_timeout
                             : std::chrono::milliseconds(0);
  return conn;
}

bool Connection::ok() const {
  return conn_ && PQstatus(conn_.get()) == CONNECTION_OK;
}

bool Connection::Probe() {
  // A server that ends an idle session sends an error and then closes: one read takes the
  // error, the next finds the end of the stream. A few rounds, as long as there is input.
  for (int round = 0; round < 4 && ok(); ++round) {
    pollfd p{PQsocket(conn_.get()), POLLIN, 0};
    if (::poll(&p, 1, 0) <= 0) break;
    if (PQconsumeInput(conn_.get()) == 0) return false;
  }
  return ok();
}

bool Connection::InTransaction() const {
  if (!conn_) return false;
  auto t = PQtransactionStatus(conn_.get());
  return t == PQTRANS_INTRANS || t == PQTRANS_INERROR || t == PQTRANS_ACTIVE;
}

Status Connection::ConnectionError() const {
  if (!conn_) return Unavailable("postgresql: connection closed");
  std::string m = OneLine(PQerrorMessage(conn_.get()));
  return Unavailable("postgresql: " + (m.empty() ? std::string("connection lost") : m));
}

Status Connection::Abandon(std::string_view while_doing) {
  conn_.reset();
  return Unavailable("postgresql: no answer from the server within " + Ms(answer_timeout_) +
                     " while " + std::string(while_doing) + "; connection closed");
}

Result<Rows> Connection::Exec(const std::string& sql, const Params& params) {
  if (!ok()) return ConnectionError();
  std::vector<const char*> values;
  values.reserve(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    // Text-format parameters are C strings: a NUL would silently cut the value short.
    if (params[i] && params[i]->find('\0') != std::string::npos) {
      return InvalidArgument("postgresql: parameter $" + std::to_string(i + 1) +
                             " contains a NUL byte");
    }
    values.push_back(params[i] ? params[i]->c_str() : nullptr);
  }
  PGconn* c = conn_.get();
  if (PQsendQueryParams(c, sql.c_str(), static_cast<int>(values.size()), nullptr, values.data(),
                        nullptr, nullptr, /*resultFormat=text*/ 0) == 0) {
    return ok() ? Internal("postgresql: " + OneLine(PQerrorMessage(c))) : ConnectionError();
  }
  return AwaitResults(sql);
}

Status Connection::RunScript(const std::string& sql) {
  if (!ok()) return ConnectionError();
  PGconn* c = conn_.get();
  if (PQsendQuery(c, sql.c_str()) == 0) {
    return ok() ? Internal("postgresql: " + OneLine(PQerrorMessage(c))) : ConnectionError();
  }
  auto r = AwaitResults(sql);
  return r.ok() ? Status::Ok() : r.status();
}

Result<Rows> Connection::AwaitResults(const std::string& sql) {
  PGconn* c = conn_.get();
  std::optional<Clock::time_point> deadline;
  if (answer_timeout_.count() > 0) deadline = Clock::now() + answer_timeout_;

  // Non-blocking mode: send what libpq buffered, reading meanwhile if the server talks.
  for (;;) {
    int f = PQflush(c);
    if (f == 0) break;
    if (f < 0) return ConnectionError();
    short revents = 0;
    if (!WaitFd(PQsocket(c), POLLIN | POLLOUT, deadline, &revents)) {
      return Abandon("sending a query");
    }
    if ((revents & POLLIN) != 0 && PQconsumeInput(c) == 0) return ConnectionError();
  }

  Status error;
  std::optional<Rows> rows;
  for (;;) {
    while (PQisBusy(c) != 0) {
      if (!WaitFd(PQsocket(c), POLLIN, deadline)) return Abandon("waiting for a result");
      if (PQconsumeInput(c) == 0) return ConnectionError();
    }
    PGresult* r = PQgetResult(c);
    if (r == nullptr) break;
    Rows result(r);
    switch (PQresultStatus(r)) {
      case PGRES_TUPLES_OK:
      case PGRES_COMMAND_OK:
      case PGRES_EMPTY_QUERY: rows = std::move(result); break;
      case PGRES_COPY_IN:
      case PGRES_COPY_OUT:
      case PGRES_COPY_BOTH:
        // Nothing here speaks COPY; the session is stuck in it, so it goes.
        conn_.reset();
        return Internal("postgresql: COPY is not supported: " + sql.substr(0, 40));
      default:
        if (error.ok()) error = ErrorFromResult(r, c);
        break;
    }
  }
  if (!error.ok()) return error;
  if (!ok()) return ConnectionError();
  if (!rows) return Internal("postgresql: no result");
  return std::move(*rows);
}

Status Connection::Run(const std::string& sql, const Params& params) {
  auto r = Exec(sql, params);
  return r.ok() ? Status::Ok() : r.status();
}

// --- Transaction ---

Result<Transaction> Transaction::Begin(Connection& conn, Isolation isolation) {
  MOAT_RETURN_IF_ERROR(conn.Run(IsolationSql(isolation)));
  return Transaction(&conn);
}

Transaction::~Transaction() {
  if (conn_ != nullptr && conn_->ok()) (void)conn_->Run("ROLLBACK");
}

Status Transaction::Commit() {
  if (conn_ == nullptr) return FailedPrecondition("postgresql: transaction already finished");
  Connection* conn = std::exchange(conn_, nullptr);
  MOAT_ASSIGN_OR_RETURN(Rows r, conn->Exec("COMMIT"));
  // COMMIT of a transaction with a failed statement succeeds as a ROLLBACK.
  if (r.command_tag() == "ROLLBACK") {
    return Internal("postgresql: COMMIT rolled back: a statement in the transaction had failed");
  }
  return Status::Ok();
}

Status Transaction::Rollback() {
  if (conn_ == nullptr) return FailedPrecondition("postgresql: transaction already finished");
  return std::exchange(conn_, nullptr)->Run("ROLLBACK");
}

// --- Pool ---

Pool::Pool(PoolOptions options) : options_(std::move(options)) {}

Pool::~Pool() = default;

Pool::Lease::~Lease() {
  if (pool_ != nullptr && conn_) pool_->Return(std::move(conn_));
}

Result<Pool::Lease> Pool::Checkout() {
  auto deadline = Clock::now() + options_.checkout_timeout;
  std::unique_lock lock(mu_);
  for (;;) {
    while (!idle_.empty()) {
      std::unique_ptr<Connection> conn = std::move(idle_.back());
      idle_.pop_back();
      lock.unlock();
      if (conn->Probe()) return Lease(this, std::move(conn));
      conn.reset();  // the server dropped it while it sat idle
      lock.lock();
      --open_;
    }
    if (open_ < options_.size) {
      ++open_;
      lock.unlock();
      auto conn = Connection::Open(options_.connect);
      if (!conn.ok()) {
        lock.lock();
        --open_;
        freed_.notify_one();
        return conn.status();
      }
      return Lease(this, std::make_unique<Connection>(std::move(*conn)));
    }
    if (freed_.wait_until(lock, deadline) == std::cv_status::timeout && idle_.empty() &&
        open_ >= options_.size) {
      return Unavailable("postgresql: all " + std::to_string(options_.size) +
                         " pooled connections busy for " + Ms(options_.checkout_timeout));
    }
  }
}

void Pool::Return(std::unique_ptr<Connection> conn) {
  // A transaction left open is a caller's bug; closing the session rolls it back.
  bool keep = conn->ok() && !conn->InTransaction();
  if (!keep) conn.reset();
  std::lock_guard lock(mu_);
  if (keep) {
    idle_.push_back(std::move(conn));
  } else {
    --open_;
  }
  freed_.notify_one();
}

int Pool::open_connections() {
  std::lock_guard lock(mu_);
  return open_;
}

void Pool::Backoff(int attempt) {
  // Full jitter over a window that doubles from 20 ms up to 200 ms.
  thread_local std::mt19937 rng(std::random_device{}());
  int cap_ms = std::min(200, 10 << std::min(attempt, 5));
  std::uniform_int_distribution<int> pick(1, cap_ms);
  std::this_thread::sleep_for(std::chrono::milliseconds(pick(rng)));
}

// --- LISTEN / NOTIFY ---

Result<Listener> Listener::Open(const ConnectOptions& options) {
  MOAT_ASSIGN_OR_RETURN(Connection conn, Connection::Open(options));
  return Listener(std::move(conn));
}

namespace {
Result<std::string> QuoteIdentifier(Connection& conn, const std::string& name) {
  if (!conn.ok()) return Unavailable("postgresql: connection lost");
  char* quoted = PQescapeIdentifier(conn.raw(), name.data(), name.size());
  if (quoted == nullptr) {
    return InvalidArgument("postgresql: bad channel name: " + OneLine(PQerrorMessage(conn.raw())));
  }
  std::string out(quoted);
  PQfreemem(quoted);
  return out;
}
}  // namespace

Status Listener::Listen(const std::string& channel) {
  MOAT_ASSIGN_OR_RETURN(std::string quoted, QuoteIdentifier(conn_, channel));
  return conn_.Run("LISTEN " + quoted);
}

Status Listener::Unlisten(const std::string& channel) {
  MOAT_ASSIGN_OR_RETURN(std::string quoted, QuoteIdentifier(conn_, channel));
  return conn_.Run("UNLISTEN " + quoted);
}

std::optional<Notification> Listener::TakeQueued() {
  PGnotify* n = PQnotifies(conn_.raw());
  if (n == nullptr) return std::nullopt;
  Notification out{n->relname, n->extra != nullptr ? n->extra : ""};
  PQfreemem(n);
  return out;
}

Result<std::optional<Notification>> Listener::WaitNotification(std::chrono::milliseconds timeout) {
  if (!conn_.ok()) return conn_.ConnectionError();
  if (auto n = TakeQueued()) return n;
  auto deadline = Clock::now() + timeout;
  for (;;) {
    if (!WaitFd(PQsocket(conn_.raw()), POLLIN, deadline)) return std::optional<Notification>();
    if (PQconsumeInput(conn_.raw()) == 0) return conn_.ConnectionError();
    if (auto n = TakeQueued()) return n;
    if (!conn_.ok()) return conn_.ConnectionError();
  }
}

Status Notify(Connection& conn, const std::string& channel, const std::string& payload) {
  return conn.Run("SELECT pg_notify($1, $2)", {channel, payload});
}

}  // namespace moat::api::store::pg
