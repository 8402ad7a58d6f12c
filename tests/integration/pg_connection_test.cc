// The PostgreSQL kit (api/store/pg_connection.h) against a real, private PostgreSQL 15
// (support/postgres_server.h): parameters, error codes, serialization retries, timeouts, a
// server that stops and comes back, LISTEN/NOTIFY, and a pool under many threads.
#include "api/store/pg_connection.h"

#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <latch>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "common/cleanup.h"
#include "common/fs.h"
#include "common/socket.h"
#include "support/postgres_server.h"
#include "support/test_util.h"

namespace moat::api::store::pg {
namespace {

using std::chrono::milliseconds;
using test_support::PostgresServer;
using Clock = std::chrono::steady_clock;

// `lhs = value of expr`, or the test fails here with the error.
#define ASSERT_OK_AND_ASSIGN(lhs, expr)                         \
  auto MOAT_CONCAT_(assigned_, __LINE__) = (expr);              \
  ASSERT_TRUE(MOAT_CONCAT_(assigned_, __LINE__).ok())           \
      << MOAT_CONCAT_(assigned_, __LINE__).status().ToString(); \
  lhs = std::move(MOAT_CONCAT_(assigned_, __LINE__)).value()

milliseconds Since(Clock::time_point t) {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - t);
}

// One server for the suite (initdb costs a second or two); tests use tables of their own.
class PgTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = std::make_unique<PostgresServer>();
    start_ = server_->Start();
  }
  static void TearDownTestSuite() { server_.reset(); }
  void SetUp() override { ASSERT_TRUE(start_.ok()) << start_.ToString(); }

  static ConnectOptions Options() {
    ConnectOptions o;
    o.conninfo = server_->conninfo();
    o.connect_timeout = milliseconds(2000);
    return o;
  }
  static std::unique_ptr<PostgresServer> server_;
  static Status start_;
};
std::unique_ptr<PostgresServer> PgTest::server_;
Status PgTest::start_;

TEST_F(PgTest, ParametersComeBackByteExactIncludingNullsAndUnicode) {
  ASSERT_OK_AND_ASSIGN(Connection c, Connection::Open(Options()));
  ASSERT_TRUE(c.Run("CREATE TABLE params (id bigint PRIMARY KEY, name text, note text, "
                    "flag boolean)")
                  .ok());
  const std::vector<std::string> names = {
      "plain", "'); DROP TABLE params; --", "$1 $2 \\x00 \" ' ;", "héllo ✓ 日本語 🚀", "",
  };
  for (size_t i = 0; i < names.size(); ++i) {
    std::optional<std::string> note;
    if (i % 2 == 0) note = "note " + std::to_string(i);
    auto r = c.Exec("INSERT INTO params (id, name, note, flag) VALUES ($1, $2, $3, $4)",
                    MakeParams(static_cast<int64_t>(i), names[i], note, i == 3));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->affected(), 1);
  }
  auto rows = c.Exec("SELECT id, name, note, flag FROM params ORDER BY id");
  ASSERT_TRUE(rows.ok()) << rows.status().ToString();
  ASSERT_EQ(rows->size(), static_cast<int>(names.size()));
  EXPECT_EQ(rows->columns(), 4);
  EXPECT_EQ(rows->Column("note"), 2);
  EXPECT_EQ(rows->Column("nope"), -1);
  for (int i = 0; i < rows->size(); ++i) {
    EXPECT_EQ(rows->Int(i, 0), i);
    EXPECT_EQ(rows->Text(i, 1), names[static_cast<size_t>(i)]);
    EXPECT_EQ(rows->IsNull(i, 2), i % 2 != 0);
    EXPECT_EQ(rows->OptionalText(i, 2).has_value(), i % 2 == 0);
    EXPECT_EQ(rows->Bool(i, 3), i == 3);
  }
  // The table survived the name that looks like an injection.
  auto n = c.Exec("SELECT count(*) FROM params WHERE name = $1", {names[1]});
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(n->Int(0, 0), 1);
  // NULL parameters and results, and large integers.
  auto nulls = c.Exec("SELECT $1::text IS NULL, $2::bigint, NULL::bigint",
                      MakeParams(std::nullopt, int64_t{-9007199254740993}));
  ASSERT_TRUE(nulls.ok()) << nulls.status().ToString();
  EXPECT_TRUE(nulls->Bool(0, 0));
  EXPECT_EQ(nulls->Int(0, 1), int64_t{-9007199254740993});
  EXPECT_EQ(nulls->OptionalInt(0, 2), std::nullopt);
  auto updated = c.Exec("UPDATE params SET flag = true WHERE id >= $1", MakeParams(3));
  ASSERT_TRUE(updated.ok());
  EXPECT_EQ(updated->affected(), 2);
  EXPECT_EQ(updated->command_tag(), "UPDATE 2");
}

TEST_F(PgTest, BadInputAndBadSqlAreErrorsThatSaySo) {
  ASSERT_OK_AND_ASSIGN(Connection c, Connection::Open(Options()));
  auto nul = c.Exec("SELECT $1::text", {std::string("a\0b", 3)});
  EXPECT_EQ(nul.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(nul.status().message().find("NUL"), std::string::npos);
  auto syntax = c.Exec("SELEC 1");
  EXPECT_EQ(syntax.status().code(), ErrorCode::kInternal);
  EXPECT_NE(syntax.status().message().find("SQLSTATE 42601"), std::string::npos)
      << syntax.status().ToString();
  // Two statements in one Exec are refused: parameters or not, one statement at a time.
  EXPECT_FALSE(c.Exec("SELECT 1; SELECT 2", MakeParams()).ok());
  EXPECT_TRUE(c.Exec("SELECT 1").ok());  // the session is fine after errors
  auto bad = Connection::Open({.conninfo = "postgresql://moat:s3cret@[nope"});
  EXPECT_EQ(bad.status().code(), ErrorCode::kInvalidArgument) << bad.status().ToString();
  EXPECT_EQ(bad.status().message().find("s3cret"), std::string::npos) << bad.status().ToString();
}

TEST_F(PgTest, RunScriptRunsSeveralStatementsAndStopsAtTheFirstThatFails) {
  ASSERT_OK_AND_ASSIGN(Connection c, Connection::Open(Options()));
  ASSERT_TRUE(c.RunScript("CREATE TABLE script (v int);\n-- a comment; with a semicolon\n"
                          "INSERT INTO script VALUES (1); INSERT INTO script VALUES (2);")
                  .ok());
  Status bad =
      c.RunScript("INSERT INTO script VALUES (3); SELECT 1 / 0; INSERT INTO script VALUES (4)");
  EXPECT_EQ(bad.code(), ErrorCode::kInternal);
  EXPECT_NE(bad.message().find("SQLSTATE 22012"), std::string::npos) << bad.ToString();
  // Outside a transaction block a script is one implicit transaction: the 3 is not kept.
  auto n = c.Exec("SELECT count(*), max(v) FROM script");
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_EQ(n->Int(0, 0), 2);
  EXPECT_EQ(n->Int(0, 1), 2);
}

TEST_F(PgTest, UniqueViolationIsAlreadyExists) {
  ASSERT_OK_AND_ASSIGN(Connection c, Connection::Open(Options()));
  ASSERT_TRUE(c.Run("CREATE TABLE uniq (id text PRIMARY KEY)").ok());
  ASSERT_TRUE(c.Run("INSERT INTO uniq VALUES ($1)", {"a"}).ok());
  Status s = c.Run("INSERT INTO uniq VALUES ($1)", {"a"});
  EXPECT_EQ(s.code(), ErrorCode::kAlreadyExists) << s.ToString();
  EXPECT_NE(s.message().find("23505"), std::string::npos) << s.ToString();
  EXPECT_EQ(s.message().rfind("postgresql: ", 0), 0u) << s.ToString();
}

TEST_F(PgTest, PoolRunRetriesASerializationFailureAndLosesNoUpdate) {
  ASSERT_OK_AND_ASSIGN(Connection setup, Connection::Open(Options()));
  ASSERT_TRUE(setup.Run("CREATE TABLE counter (k int PRIMARY KEY, v int NOT NULL)").ok());
  ASSERT_TRUE(setup.Run("INSERT INTO counter VALUES (1, 0)").ok());
  Pool pool({.connect = Options(), .size = 4});
  // Both first attempts read before either writes: the second writer gets 40001 when the first
  // commits, and Run runs it again on fresh data.
  std::latch both_read(2);
  std::atomic<int> calls{0};
  auto increment = [&](Connection& c) -> Status {
    bool first = calls.fetch_add(1) < 2;
    MOAT_ASSIGN_OR_RETURN(auto tx, Transaction::Begin(c, Isolation::kSerializable));
    MOAT_ASSIGN_OR_RETURN(Rows r, c.Exec("SELECT v FROM counter WHERE k = 1"));
    int64_t v = r.Int(0, 0);
    if (first) both_read.arrive_and_wait();
    MOAT_RETURN_IF_ERROR(c.Run("UPDATE counter SET v = $1 WHERE k = 1", MakeParams(v + 1)));
    return tx.Commit();
  };
  Status a, b;
  std::thread ta([&] { a = pool.Run(increment); });
  std::thread tb([&] { b = pool.Run(increment); });
  ta.join();
  tb.join();
  EXPECT_TRUE(a.ok()) << a.ToString();
  EXPECT_TRUE(b.ok()) << b.ToString();
  EXPECT_EQ(calls.load(), 3);  // one conflict, one retry
  auto v = setup.Exec("SELECT v FROM counter WHERE k = 1");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->Int(0, 0), 2);

  // A conflict that never goes away is Aborted after max_attempts.
  Pool small({.connect = Options(), .size = 1, .max_attempts = 3});
  int tries = 0;
  Status gave_up = small.Run([&](Connection&) -> Status {
    ++tries;
    return Status(ErrorCode::kAborted, "always");
  });
  EXPECT_EQ(gave_up.code(), ErrorCode::kAborted);
  EXPECT_EQ(tries, 3);
  // Result<T> functions work too, and other errors are not retried.
  tries = 0;
  Result<int64_t> r = small.Run([&](Connection& c) -> Result<int64_t> {
    ++tries;
    MOAT_ASSIGN_OR_RETURN(Rows rows, c.Exec("SELECT 41 + $1::int", MakeParams(1)));
    return rows.Int(0, 0);
  });
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, 42);
  Status failed = small.Run([&](Connection& c) { return c.Run("SELECT * FROM no_such_table"); });
  EXPECT_EQ(failed.code(), ErrorCode::kInternal);
}

TEST_F(PgTest, TransactionRollsBackUnlessCommitted) {
  ASSERT_OK_AND_ASSIGN(Connection c, Connection::Open(Options()));
  ASSERT_TRUE(c.Run("CREATE TABLE tx (id int)").ok());
  {
    auto tx = Transaction::Begin(c);
    ASSERT_TRUE(tx.ok());
    ASSERT_TRUE(c.Run("INSERT INTO tx VALUES (1)").ok());
  }  // no Commit
  EXPECT_FALSE(c.InTransaction());
  {
    auto tx = Transaction::Begin(c, Isolation::kRepeatableRead);
    ASSERT_TRUE(tx.ok());
    ASSERT_TRUE(c.Run("INSERT INTO tx VALUES (2)").ok());
    ASSERT_TRUE(tx->Commit().ok());
  }
  {
    // A transaction with a failed statement does not commit.
    auto tx = Transaction::Begin(c);
    ASSERT_TRUE(tx.ok());
    ASSERT_TRUE(c.Run("INSERT INTO tx VALUES (3)").ok());
    EXPECT_FALSE(c.Run("SELECT 1/0").ok());
    Status s = tx->Commit();
    EXPECT_EQ(s.code(), ErrorCode::kInternal) << s.ToString();
  }
  auto rows = c.Exec("SELECT id FROM tx ORDER BY id");
  ASSERT_TRUE(rows.ok());
  ASSERT_EQ(rows->size(), 1);
  EXPECT_EQ(rows->Int(0, 0), 2);
}

TEST_F(PgTest, StatementTimeoutFiresPromptlyAndTheSessionGoesOn) {
  ConnectOptions o = Options();
  o.statement_timeout = milliseconds(200);
  ASSERT_OK_AND_ASSIGN(Connection c, Connection::Open(o));
  auto t0 = Clock::now();
  auto r = c.Exec("SELECT pg_sleep(10)");
  EXPECT_EQ(r.status().code(), ErrorCode::kDeadlineExceeded) << r.status().ToString();
  EXPECT_LT(Since(t0), milliseconds(2000));
  EXPECT_GE(Since(t0), milliseconds(150));
  EXPECT_TRUE(c.Exec("SELECT 1").ok());
}

TEST_F(PgTest, ExecGivesUpOnAServerThatDoesNotAnswer) {
  ConnectOptions o = Options();
  o.statement_timeout = milliseconds(200);
  o.connect_timeout = milliseconds(300);
  ASSERT_OK_AND_ASSIGN(Connection c, Connection::Open(o));
  auto pid = c.Exec("SELECT pg_backend_pid()");
  ASSERT_TRUE(pid.ok());
  pid_t backend = static_cast<pid_t>(pid->Int(0, 0));
  // A stopped backend answers nothing, not even its own statement timeout: moat's deadline
  // (statement_timeout + connect_timeout) ends the wait and closes the session.
  ASSERT_EQ(::kill(backend, SIGSTOP), 0);
  auto t0 = Clock::now();
  auto r = c.Exec("SELECT 1");
  milliseconds took = Since(t0);
  ::kill(backend, SIGCONT);  // it finds its client gone and exits
  EXPECT_EQ(r.status().code(), ErrorCode::kUnavailable) << r.status().ToString();
  EXPECT_GE(took, milliseconds(450));
  EXPECT_LT(took, milliseconds(2000));
  EXPECT_FALSE(c.ok());
  EXPECT_EQ(c.Exec("SELECT 1").status().code(), ErrorCode::kUnavailable);
}

TEST_F(PgTest, ConnectingIsBoundedByConnectTimeout) {
  // Nothing listening: refused at once.
  auto t0 = Clock::now();
  auto refused = Connection::Open({.conninfo = "postgresql://postgres@127.0.0.1:1/x"});
  EXPECT_EQ(refused.status().code(), ErrorCode::kUnavailable) << refused.status().ToString();
  EXPECT_LT(Since(t0), milliseconds(1000));
  // A listener that never answers the startup packet (the kernel completes the handshake):
  // connect_timeout ends it. libpq looks for <host dir>/.s.PGSQL.<port>.
  ASSERT_OK_AND_ASSIGN(std::string dir, MakeTempDir("/tmp", "moat-pg-silent-"));
  Cleanup remove([&] { (void)RemoveTree(dir); });
  ASSERT_OK_AND_ASSIGN(UniqueFd silent, ListenUnix(dir + "/.s.PGSQL.2"));
  t0 = Clock::now();
  auto hung = Connection::Open(
      {.conninfo = "host=" + dir + " port=2 dbname=x", .connect_timeout = milliseconds(300)});
  milliseconds took = Since(t0);
  EXPECT_EQ(hung.status().code(), ErrorCode::kUnavailable) << hung.status().ToString();
  EXPECT_NE(hung.status().message().find("within 300 ms"), std::string::npos)
      << hung.status().ToString();
  EXPECT_GE(took, milliseconds(250));
  EXPECT_LT(took, milliseconds(1500));
}

TEST_F(PgTest, ListenNotifyRoundTripWithPayload) {
  auto listener = Listener::Open(Options());
  ASSERT_TRUE(listener.ok()) << listener.status().ToString();
  ASSERT_TRUE(listener->Listen("sandbox_route").ok());
  ASSERT_TRUE(listener->Listen("Other Channel").ok());

  // Nothing yet: nullopt after the timeout, not before.
  auto t0 = Clock::now();
  auto none = listener->WaitNotification(milliseconds(150));
  ASSERT_TRUE(none.ok()) << none.status().ToString();
  EXPECT_FALSE(none->has_value());
  EXPECT_GE(Since(t0), milliseconds(140));

  ASSERT_OK_AND_ASSIGN(Connection sender, Connection::Open(Options()));
  const std::string payload = "sbx-123 'quoted' ✓";
  ASSERT_TRUE(Notify(sender, "sandbox_route", payload).ok());
  auto got = listener->WaitNotification(milliseconds(5000));
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  ASSERT_TRUE(got->has_value());
  EXPECT_EQ((*got)->channel, "sandbox_route");
  EXPECT_EQ((*got)->payload, payload);

  // Inside a transaction the notification goes out at COMMIT, and not before.
  {
    auto tx = Transaction::Begin(sender);
    ASSERT_TRUE(tx.ok());
    ASSERT_TRUE(Notify(sender, "Other Channel", "after commit").ok());
    auto early = listener->WaitNotification(milliseconds(200));
    ASSERT_TRUE(early.ok());
    EXPECT_FALSE(early->has_value());
    ASSERT_TRUE(tx->Commit().ok());
  }
  got = listener->WaitNotification(milliseconds(5000));
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->channel, "Other Channel");
  EXPECT_EQ((*got)->payload, "after commit");

  // Unlistened channels are not delivered.
  ASSERT_TRUE(listener->Unlisten("sandbox_route").ok());
  ASSERT_TRUE(Notify(sender, "sandbox_route", "gone").ok());
  auto after = listener->WaitNotification(milliseconds(200));
  ASSERT_TRUE(after.ok());
  EXPECT_FALSE(after->has_value());
}

TEST_F(PgTest, PoolServesEightThreadsWithoutMixingAnswers) {
  Pool pool({.connect = Options(), .size = 4});
  std::atomic<int> good{0};
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        int64_t n = t * 1000 + i;
        auto r = pool.Run([&](Connection& c) -> Result<int64_t> {
          MOAT_ASSIGN_OR_RETURN(Rows rows, c.Exec("SELECT $1::bigint * 2", MakeParams(n)));
          return rows.Int(0, 0);
        });
        (r.ok() && *r == 2 * n ? good : bad).fetch_add(1);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(good.load(), 1600);
  EXPECT_EQ(bad.load(), 0);
  EXPECT_LE(pool.open_connections(), 4);
  EXPECT_GE(pool.open_connections(), 1);
}

// Last in the suite: it stops and restarts the shared server.
TEST_F(PgTest, ServerStoppedIsUnavailableQuicklyAndThePoolRecoversAfterRestart) {
  Pool pool({.connect = Options(), .size = 3, .checkout_timeout = milliseconds(2000)});
  {
    // Three connections open and idle in the pool.
    auto l1 = pool.Checkout();
    auto l2 = pool.Checkout();
    auto l3 = pool.Checkout();
    ASSERT_TRUE(l1.ok() && l2.ok() && l3.ok());
  }
  ASSERT_EQ(pool.open_connections(), 3);
  ASSERT_TRUE(pool.Run([](Connection& c) {
                    MOAT_RETURN_IF_ERROR(c.Run("CREATE TABLE kept (v int)"));
                    return c.Run("INSERT INTO kept VALUES (7)");
                  })
                  .ok());
  auto listener = Listener::Open(Options());
  ASSERT_TRUE(listener.ok());
  ASSERT_TRUE(listener->Listen("sandbox_route").ok());

  ASSERT_TRUE(server_->Stop().ok());
  auto t0 = Clock::now();
  Status down = pool.Run([](Connection& c) { return c.Run("SELECT 1"); });
  EXPECT_EQ(down.code(), ErrorCode::kUnavailable) << down.ToString();
  EXPECT_LT(Since(t0), milliseconds(3000));
  auto lease = pool.Checkout();
  EXPECT_EQ(lease.status().code(), ErrorCode::kUnavailable);
  EXPECT_EQ(pool.open_connections(), 0);  // the dead ones were closed
  auto lost = listener->WaitNotification(milliseconds(2000));
  EXPECT_EQ(lost.status().code(), ErrorCode::kUnavailable) << lost.status().ToString();

  ASSERT_TRUE(server_->Start().ok());
  for (int i = 0; i < 5; ++i) {
    Status up = pool.Run([](Connection& c) { return c.Run("SELECT 1"); });
    EXPECT_TRUE(up.ok()) << up.ToString();
  }
  EXPECT_EQ(pool.open_connections(), 1);
  auto data = pool.Run([](Connection& c) -> Result<int64_t> {
    MOAT_ASSIGN_OR_RETURN(Rows r, c.Exec("SELECT v FROM kept"));
    return r.Int(0, 0);
  });
  ASSERT_TRUE(data.ok()) << data.status().ToString();
  EXPECT_EQ(*data, 7);  // kept across the restart
}

// Under load: four threads querying through the pool while the server is killed (immediate
// shutdown) and started again. While it is down every failure is Unavailable; afterwards every
// thread succeeds again, through connections the pool replaced.
TEST_F(PgTest, RestartUnderLoadFailsOnlyUnavailableAndRecovers) {
  Pool pool({.connect = Options(), .size = 4, .checkout_timeout = milliseconds(2000)});
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0};
  std::atomic<int> unavailable{0};
  std::atomic<int> other{0};
  std::atomic<int> ok_after_restart{0};
  std::atomic<bool> restarted{false};
  std::set<std::string> others;
  std::mutex others_mu;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      while (!stop.load()) {
        Status s = pool.Run([](Connection& c) { return c.Run("SELECT count(*) FROM pg_class"); });
        if (s.ok()) {
          ok.fetch_add(1);
          if (restarted.load()) ok_after_restart.fetch_add(1);
        } else if (s.code() == ErrorCode::kUnavailable) {
          unavailable.fetch_add(1);
          std::this_thread::sleep_for(milliseconds(20));
        } else {
          other.fetch_add(1);
          std::lock_guard lock(others_mu);
          others.insert(s.ToString());
        }
      }
    });
  }
  std::this_thread::sleep_for(milliseconds(300));
  Status killed = server_->Kill();
  std::this_thread::sleep_for(milliseconds(300));
  Status started = server_->Start();
  restarted = true;
  auto deadline = Clock::now() + std::chrono::seconds(10);
  while (ok_after_restart.load() < 40 && Clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(20));
  }
  stop = true;
  for (auto& th : threads) th.join();
  ASSERT_TRUE(killed.ok()) << killed.ToString();
  ASSERT_TRUE(started.ok()) << started.ToString();
  EXPECT_GT(unavailable.load(), 0);
  EXPECT_GE(ok_after_restart.load(), 40);
  EXPECT_EQ(other.load(), 0) << (others.empty() ? "" : *others.begin());
  EXPECT_LE(pool.open_connections(), 4);
}

TEST(PostgresServer, StartSaysSoWhenPostgresqlIsNotInstalled) {
  ::setenv("MOAT_PG_BIN", "/nonexistent/postgresql/15/bin", 1);
  PostgresServer server;
  Status s = server.Start();
  ::unsetenv("MOAT_PG_BIN");
  EXPECT_EQ(s.code(), ErrorCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("not installed"), std::string::npos) << s.ToString();
}

TEST(PostgresServer, LeavesNoProcessOrDirectoryBehind) {
  std::string dir;
  pid_t backend = 0;
  {
    PostgresServer server("leftovers");
    Status s = server.Start();
    ASSERT_TRUE(s.ok()) << s.ToString();
    dir = server.dir();
    EXPECT_GT(test_support::CountProcessesMentioning(dir), 0);  // the postmaster's -D
    ASSERT_OK_AND_ASSIGN(Connection c, Connection::Open({.conninfo = server.conninfo()}));
    ASSERT_OK_AND_ASSIGN(Rows pid, c.Exec("SELECT pg_backend_pid()"));
    backend = static_cast<pid_t>(pid.Int(0, 0));
  }  // the connection closes first, then the server goes
  EXPECT_FALSE(PathExists(dir));
  EXPECT_EQ(test_support::CountProcessesMentioning(dir), 0);
  EXPECT_NE(::kill(backend, 0), 0);
}

}  // namespace
}  // namespace moat::api::store::pg
