// PgStore: the store suite (store_suite.cc) against a private PostgreSQL 15, a new database per
// test, and what only PostgreSQL has to get right: replicas migrating one database together, a
// database newer than this moatd, an unreachable database, an outage under an open store, and
// revocations racing on separate connections.
#include "api/store/pg_store.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <latch>
#include <optional>
#include <thread>
#include <vector>

#include "api/store/pg_connection.h"
#include "api/store/route_cache.h"
#include "api/store/schema.h"
#include "common/cleanup.h"
#include "common/unique_fd.h"
#include "store_suite.h"
#include "support/postgres_server.h"

namespace moat::api::store {
namespace {

using std::chrono::milliseconds;
using test_support::PostgresServer;
using Clock = std::chrono::steady_clock;

PgStoreOptions TestOptions() {
  PgStoreOptions o;
  o.pool_size = 4;
  o.connect_timeout = milliseconds(2000);
  return o;
}

// The suite's backend: one server for the whole binary, started by the first Fresh() (on the
// main thread, as PostgresServer needs: its server dies with the thread that started it), and a
// new database per store. The server's temp dir, every database in it, goes at exit.
class PgBackend : public StoreBackend {
 public:
  Result<std::unique_ptr<Store>> Fresh() override {
    MOAT_ASSIGN_OR_RETURN(std::string conninfo, NewDatabase());
    MOAT_ASSIGN_OR_RETURN(auto store, PgStore::Open(conninfo, TestOptions()));
    return std::unique_ptr<Store>(std::move(store));
  }

  // An empty database, t_<n>; its conninfo.
  Result<std::string> NewDatabase() {
    if (!started_) started_ = server_.Start();
    MOAT_RETURN_IF_ERROR(*started_);
    MOAT_ASSIGN_OR_RETURN(pg::Connection c, pg::Connection::Open({.conninfo = Conninfo("postgres"),
                                                                  .application_name = "test"}));
    std::string name = "t_" + std::to_string(++databases_);
    // A database name cannot be a parameter; this one is made of a number.
    MOAT_RETURN_IF_ERROR(c.Run("CREATE DATABASE " + name));
    return Conninfo(name);
  }

  std::string Conninfo(const std::string& database) const {
    return "postgresql://postgres@127.0.0.1:" + std::to_string(server_.port()) + "/" + database;
  }
  PostgresServer& server() { return server_; }

 private:
  PostgresServer server_;
  std::optional<Status> started_;
  int databases_ = 0;
};

}  // namespace

StoreBackend& TestBackend() {
  static PgBackend backend;
  return backend;
}

namespace {

PgBackend& Backend() {
  return static_cast<PgBackend&>(TestBackend());
}

// `lhs = value of expr`, or the test fails here with the error.
#define ASSERT_OK_AND_ASSIGN(lhs, expr)                         \
  auto MOAT_CONCAT_(assigned_, __LINE__) = (expr);              \
  ASSERT_TRUE(MOAT_CONCAT_(assigned_, __LINE__).ok())           \
      << MOAT_CONCAT_(assigned_, __LINE__).status().ToString(); \
  lhs = std::move(MOAT_CONCAT_(assigned_, __LINE__)).value()

TEST(PgStore, MigratesAFreshDatabaseAndReopeningItChangesNothing) {
  ASSERT_OK_AND_ASSIGN(std::string db, Backend().NewDatabase());
  ASSERT_OK_AND_ASSIGN(auto store, PgStore::Open(db, TestOptions()));
  EXPECT_EQ(store->schema_version(), static_cast<int>(kMigrationCount));
  EXPECT_EQ(store->migrations_applied(), static_cast<int>(kMigrationCount));
  ASSERT_TRUE(store->CreateTeam("kept", false).ok());
  store.reset();
  ASSERT_OK_AND_ASSIGN(auto again, PgStore::Open(db, TestOptions()));
  EXPECT_EQ(again->schema_version(), static_cast<int>(kMigrationCount));
  EXPECT_EQ(again->migrations_applied(), 0);
  EXPECT_TRUE(again->TeamByName("kept")->has_value());
}

TEST(PgStore, ReplicasOpeningAFreshDatabaseTogetherMigrateItOnce) {
  ASSERT_OK_AND_ASSIGN(std::string db, Backend().NewDatabase());
  std::latch go(2);
  std::vector<std::optional<Result<std::unique_ptr<PgStore>>>> opened(2);
  std::vector<std::thread> threads;
  threads.reserve(2);
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back([&, i] {
      go.arrive_and_wait();
      opened[i].emplace(PgStore::Open(db, TestOptions()));
    });
  }
  for (auto& t : threads) t.join();
  int applied = 0;
  for (auto& o : opened) {
    ASSERT_TRUE(o->ok()) << o->status().ToString();
    EXPECT_EQ((**o)->schema_version(), static_cast<int>(kMigrationCount));
    applied += (**o)->migrations_applied();
  }
  EXPECT_EQ(applied, static_cast<int>(kMigrationCount)) << "one of them migrated, the other not";
  EXPECT_TRUE((**opened[0])->HasApiKeys().ok());
}

TEST(PgStore, RefusesADatabaseNewerThanThisMoatd) {
  ASSERT_OK_AND_ASSIGN(std::string db, Backend().NewDatabase());
  ASSERT_TRUE(PgStore::Open(db, TestOptions()).ok());
  {
    ASSERT_OK_AND_ASSIGN(pg::Connection c, pg::Connection::Open({.conninfo = db}));
    ASSERT_TRUE(c.Run("UPDATE schema_version SET version = $1",
                      pg::MakeParams(static_cast<int64_t>(kMigrationCount) + 1))
                    .ok());
  }
  auto refused = PgStore::Open(db, TestOptions());
  EXPECT_EQ(refused.status().code(), ErrorCode::kFailedPrecondition);
  EXPECT_NE(
      refused.status().message().find("schema version " + std::to_string(kMigrationCount + 1) +
                                      " is newer than this moatd"),
      std::string::npos)
      << refused.status().ToString();
}

TEST(PgStore, AnUnreachableDatabaseIsUnavailableNamingHostAndPortButNeverThePassword) {
  // A port bound but not listening: connections to it are refused, and nobody else takes it.
  UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(s);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  // sockaddr_in is the IPv4 form of sockaddr: the cast is how the socket API takes it.
  ASSERT_EQ(::bind(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  socklen_t len = sizeof addr;
  ASSERT_EQ(::getsockname(s.get(), reinterpret_cast<sockaddr*>(&addr), &len), 0);
  std::string port = std::to_string(ntohs(addr.sin_port));

  auto t0 = Clock::now();
  auto r = PgStore::Open("postgresql://moat:s3cret-Pw@127.0.0.1:" + port + "/moat", TestOptions());
  EXPECT_LT(Clock::now() - t0, milliseconds(3000));
  ASSERT_EQ(r.status().code(), ErrorCode::kUnavailable) << r.status().ToString();
  const std::string& m = r.status().message();
  EXPECT_NE(m.find("127.0.0.1"), std::string::npos) << m;
  EXPECT_NE(m.find(port), std::string::npos) << m;
  EXPECT_EQ(m.find("s3cret-Pw"), std::string::npos) << m;
}

TEST(PgStore, RevocationsRacingOnSeparateConnectionsLeaveTheTeamOneKey) {
  ASSERT_OK_AND_ASSIGN(std::string db, Backend().NewDatabase());
  PgStoreOptions o = TestOptions();
  o.pool_size = 6;
  ASSERT_OK_AND_ASSIGN(auto store, PgStore::Open(db, o));
  ASSERT_OK_AND_ASSIGN(TeamRecord team, store->CreateTeam("acme", false));
  std::vector<std::string> keys;
  for (int i = 0; i < 6; ++i) {
    ASSERT_OK_AND_ASSIGN(ApiKeyRecord k,
                         store->AddApiKey(team.id, "k", "h" + std::to_string(i), "m"));
    keys.push_back(k.id);
  }
  for (int round = 0; round < 3; ++round) {
    std::latch go(static_cast<ptrdiff_t>(keys.size()));
    std::atomic<int> revoked{0}, refused{0}, other{0};
    std::vector<std::thread> threads;
    threads.reserve(keys.size());
    for (const auto& id : keys) {
      threads.emplace_back([&, id] {
        go.arrive_and_wait();
        Status s = store->RevokeApiKey(team.id, id);
        if (s.ok()) {
          ++revoked;
        } else if (s.code() == ErrorCode::kFailedPrecondition) {
          ++refused;
        } else {
          ++other;
        }
      });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(revoked.load(), static_cast<int>(keys.size()) - 1);
    EXPECT_EQ(refused.load(), 1);
    EXPECT_EQ(other.load(), 0);
    auto left = store->ListApiKeys(team.id);
    ASSERT_TRUE(left.ok());
    ASSERT_EQ(left->size(), 1u);
    // The next round: the survivor and five new keys.
    keys = {(*left)[0].id};
    for (int i = 0; i < 5; ++i) {
      std::string hash = "r" + std::to_string(round) + "-" + std::to_string(i);
      ASSERT_OK_AND_ASSIGN(ApiKeyRecord k, store->AddApiKey(team.id, "k", hash, "m"));
      keys.push_back(k.id);
    }
  }
}

// A COMMIT cut off before it lands: the session dies in a deferred trigger (once: a sequence is
// not transactional). The store finds that transaction aborted and runs the change again.
TEST(PgStore, AChangeWhoseCommitWasCutOffIsAppliedOnceByTheRetry) {
  ASSERT_OK_AND_ASSIGN(std::string db, Backend().NewDatabase());
  ASSERT_OK_AND_ASSIGN(auto store, PgStore::Open(db, TestOptions()));
  ASSERT_OK_AND_ASSIGN(TeamRecord team, store->CreateTeam("acme", false));
  SandboxRecord sb;
  sb.id = "s1";
  sb.team_id = team.id;
  ASSERT_TRUE(store->InsertSandbox(sb).ok());
  ASSERT_OK_AND_ASSIGN(pg::Connection admin, pg::Connection::Open({.conninfo = db}));
  ASSERT_TRUE(admin.Run("CREATE SEQUENCE cuts").ok());
  ASSERT_TRUE(admin
                  .Run("CREATE FUNCTION cut_once() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF "
                       "nextval('cuts') = 1 THEN PERFORM pg_terminate_backend(pg_backend_pid()); "
                       "PERFORM pg_sleep(5); END IF; RETURN NULL; END $$")
                  .ok());
  ASSERT_TRUE(admin
                  .Run("CREATE CONSTRAINT TRIGGER cut AFTER UPDATE ON sandboxes DEFERRABLE "
                       "INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION cut_once()")
                  .ok());

  auto won = store->TransitionSandbox("s1", {SandboxState::kRunning}, {SandboxState::kPausing});
  ASSERT_TRUE(won.ok()) << won.status().ToString();
  EXPECT_TRUE(*won);
  EXPECT_EQ((*store->GetSandbox("s1"))->state, SandboxState::kPausing);
  auto runs = admin.Exec("SELECT last_value FROM cuts");
  ASSERT_TRUE(runs.ok());
  EXPECT_EQ(runs->Int(0, 0), 2) << "cut once, then run again";
}

// A COMMIT that lands but whose answer is lost: the session waits for a synchronous standby
// that does not exist (the transaction has committed, and is still shown in progress) and is
// terminated there, so the client only sees its connection drop. The retry must find that
// transaction committed and report the win, not run the compare-and-set again and lose to
// itself.
TEST(PgStore, ACompareAndSetWhoseCommitAnswerWasLostReportsItsWin) {
  ASSERT_OK_AND_ASSIGN(std::string db, Backend().NewDatabase());
  {
    ASSERT_OK_AND_ASSIGN(auto setup, PgStore::Open(db, TestOptions()));
    ASSERT_OK_AND_ASSIGN(TeamRecord team, setup->CreateTeam("acme", false));
    SandboxRecord sb;
    sb.id = "s1";
    sb.team_id = team.id;
    ASSERT_TRUE(setup->InsertSandbox(sb).ok());
  }
  ASSERT_OK_AND_ASSIGN(pg::Connection admin,
                       pg::Connection::Open({.conninfo = Backend().Conninfo("postgres")}));
  // Only sessions of this database commit synchronously (the server runs with
  // synchronous_commit=off), so only they wait for the standby.
  ASSERT_TRUE(admin.Run("ALTER SYSTEM SET synchronous_standby_names = 'nobody'").ok());
  Cleanup reset([&] {
    (void)admin.Run("ALTER SYSTEM RESET synchronous_standby_names");
    (void)admin.Run("SELECT pg_reload_conf()");
  });
  ASSERT_TRUE(admin.Run("SELECT pg_reload_conf()").ok());
  std::string name = db.substr(db.rfind('/') + 1);
  ASSERT_TRUE(admin.Run("ALTER DATABASE " + name + " SET synchronous_commit = on").ok());
  ASSERT_OK_AND_ASSIGN(auto store, PgStore::Open(db, TestOptions()));

  std::atomic<bool> terminated{false};
  std::thread cutter([&] {
    ASSERT_OK_AND_ASSIGN(pg::Connection c,
                         pg::Connection::Open({.conninfo = Backend().Conninfo("postgres")}));
    auto deadline = Clock::now() + std::chrono::seconds(4);
    while (Clock::now() < deadline) {
      auto r = c.Exec(
          "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND "
          "wait_event = 'SyncRep'",
          {name});
      if (r.ok() && r->size() > 0) {
        terminated = true;
        return;
      }
      std::this_thread::sleep_for(milliseconds(10));
    }
  });
  auto won = store->TransitionSandbox("s1", {SandboxState::kRunning}, {SandboxState::kPausing});
  cutter.join();
  ASSERT_TRUE(terminated.load()) << "the commit never waited for the standby";
  ASSERT_TRUE(won.ok()) << won.status().ToString();
  EXPECT_TRUE(*won) << "its own committed change is a win";
  auto got = store->GetSandbox("s1");
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->state, SandboxState::kPausing);
}

// Stops and restarts the binary's one server; every other test opens its own store afterwards.
TEST(PgStore, AnOutageIsUnavailablePromptlyAndTheStoreWorksAgainAfterARestart) {
  ASSERT_OK_AND_ASSIGN(std::string db, Backend().NewDatabase());
  ASSERT_OK_AND_ASSIGN(auto store, PgStore::Open(db, TestOptions()));
  ASSERT_OK_AND_ASSIGN(TeamRecord team, store->CreateTeam("acme", false));
  ASSERT_OK_AND_ASSIGN(ApiKeyRecord k1, store->AddApiKey(team.id, "k1", "h1", "m"));
  ASSERT_TRUE(store->AddApiKey(team.id, "k2", "h2", "m").ok());
  SandboxRecord sb;
  sb.id = "s1";
  sb.team_id = team.id;
  sb.metadata = {{"k", "v"}};
  ASSERT_TRUE(store->InsertSandbox(sb).ok());

  PostgresServer& server = Backend().server();
  ASSERT_TRUE(server.Stop().ok());
  Cleanup restart([&] {
    if (!server.running()) (void)server.Start();
  });
  auto expect_unavailable = [](const char* what, const Status& s, Clock::duration took) {
    EXPECT_EQ(s.code(), ErrorCode::kUnavailable) << what << ": " << s.ToString();
    EXPECT_LT(took, milliseconds(3000)) << what;
  };
  auto t = Clock::now();
  expect_unavailable("GetTeam", store->GetTeam(team.id).status(), Clock::now() - t);
  t = Clock::now();
  expect_unavailable("CreateTeam", store->CreateTeam("x", false).status(), Clock::now() - t);
  t = Clock::now();
  expect_unavailable(
      "TransitionSandbox",
      store->TransitionSandbox("s1", {SandboxState::kRunning}, {SandboxState::kPausing}).status(),
      Clock::now() - t);
  t = Clock::now();
  expect_unavailable("ListSandboxes", store->ListSandboxes({.team_id = team.id}).status(),
                     Clock::now() - t);
  t = Clock::now();
  expect_unavailable("RevokeApiKey", store->RevokeApiKey(team.id, k1.id), Clock::now() - t);
  t = Clock::now();
  expect_unavailable("SetTeamQuotas", store->SetTeamQuotas(team.id, {}), Clock::now() - t);

  ASSERT_TRUE(server.Start().ok());
  auto got = store->GetSandbox("s1");
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  ASSERT_TRUE(got->has_value());
  EXPECT_EQ((*got)->metadata.at("k"), "v");
  auto moved = store->TransitionSandbox("s1", {SandboxState::kRunning}, {SandboxState::kPausing});
  ASSERT_TRUE(moved.ok()) << moved.status().ToString();
  EXPECT_TRUE(*moved) << "the change refused during the outage had not been applied";
  EXPECT_TRUE(store->RevokeApiKey(team.id, k1.id).ok());
  EXPECT_FALSE(store->TeamByName("x")->has_value()) << "the create during the outage failed";
}

// Waits up to `limit` for `pred`.
template <typename Pred>
bool Eventually(Pred pred, milliseconds limit = milliseconds(5000)) {
  for (auto until = Clock::now() + limit; Clock::now() < until;) {
    if (pred()) return true;
    std::this_thread::sleep_for(milliseconds(20));
  }
  return pred();
}

// Routes cached by one process (an agent's or a replica's RouteCache) follow changes another
// process makes (replica A's store), through LISTEN/NOTIFY: with freshness set to an hour, only
// the notification can drop them.
TEST(PgStore, RouteCachesDropASandboxAsSoonAsAnotherProcessChangesOrDeletesIt) {
  ASSERT_OK_AND_ASSIGN(std::string db, Backend().NewDatabase());
  ASSERT_OK_AND_ASSIGN(auto writer, PgStore::Open(db, TestOptions()));
  ASSERT_OK_AND_ASSIGN(auto reader, PgStore::Open(db, TestOptions()));
  ASSERT_OK_AND_ASSIGN(TeamRecord team, writer->CreateTeam("acme", false));
  for (const char* id : {"s1", "s2", "s3"}) {
    SandboxRecord sb;
    sb.id = id;
    sb.team_id = team.id;
    sb.host_id = "h1";
    ASSERT_TRUE(writer->InsertSandbox(sb).ok());
  }
  RouteCache routes(*reader, {.fresh = std::chrono::hours(1),
                              .fresh_watched = std::chrono::hours(1),
                              .poll = milliseconds(100)});
  routes.Watch();
  ASSERT_TRUE(Eventually([&] { return routes.watching(); })) << "the feed never came up";
  for (const char* id : {"s1", "s2", "s3"}) {
    auto r = routes.Running(id);
    ASSERT_TRUE(r.ok() && r->has_value()) << id;
  }

  ASSERT_TRUE(*writer->TransitionSandbox("s1", {SandboxState::kRunning}, {SandboxState::kPausing}));
  EXPECT_TRUE(Eventually([&] { return !routes.Running("s1")->has_value(); }))
      << "a state change did not reach the cache";
  ASSERT_TRUE(writer->DeleteSandbox("s2").ok());
  EXPECT_TRUE(Eventually([&] { return !routes.Running("s2")->has_value(); }))
      << "a delete did not reach the cache";
  ASSERT_TRUE(writer->SetSandboxEndAt("s3", 42).ok());  // not a route change: no notification
  EXPECT_TRUE(routes.Running("s3")->has_value());

  // The feed breaks with the server: routes stay usable; it comes back by itself, and a change
  // made after that is seen again.
  PostgresServer& server = Backend().server();
  ASSERT_TRUE(server.Stop().ok());
  Cleanup restart([&] {
    if (!server.running()) (void)server.Start();
  });
  EXPECT_TRUE(Eventually([&] { return !routes.watching(); })) << "a broken feed still counted";
  auto during = routes.Running("s3");
  ASSERT_TRUE(during.ok()) << "the cached route serves through the outage: "
                           << during.status().ToString();
  EXPECT_TRUE(during->has_value());
  ASSERT_TRUE(server.Start().ok());
  ASSERT_TRUE(Eventually([&] { return routes.watching(); }, milliseconds(15000)))
      << "the feed did not come back";
  ASSERT_TRUE(*writer->TransitionSandbox("s3", {SandboxState::kRunning}, {SandboxState::kKilling}));
  EXPECT_TRUE(Eventually([&] { return !routes.Running("s3")->has_value(); }))
      << "a change after the reconnect did not reach the cache";
  routes.Stop();
}

// One reaper fleet-wide: a role is led by one process at a time, for as long as its session
// lives; when that process goes, another takes the role over.
TEST(PgStore, OneProcessLeadsARoleUntilItGoesThenAnotherTakesItOver) {
  ASSERT_OK_AND_ASSIGN(std::string db, Backend().NewDatabase());
  ASSERT_OK_AND_ASSIGN(auto a, PgStore::Open(db, TestOptions()));
  ASSERT_OK_AND_ASSIGN(auto b, PgStore::Open(db, TestOptions()));
  ASSERT_OK_AND_ASSIGN(bool a_leads, a->Lead("reaper"));
  EXPECT_TRUE(a_leads);
  ASSERT_OK_AND_ASSIGN(bool a_again, a->Lead("reaper"));
  EXPECT_TRUE(a_again) << "a leader keeps leading";
  ASSERT_OK_AND_ASSIGN(bool b_leads, b->Lead("reaper"));
  EXPECT_FALSE(b_leads) << "two leaders";
  ASSERT_OK_AND_ASSIGN(bool b_other, b->Lead("another role"));
  EXPECT_TRUE(b_other) << "roles are led apart";
  a.reset();  // the leading replica goes away (its sessions close)
  EXPECT_TRUE(Eventually([&] {
    auto led = b->Lead("reaper");
    return led.ok() && *led;
  })) << "nobody took the role over";
}

}  // namespace
}  // namespace moat::api::store
