#include "api/store/sqlite_store.h"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include "api/store/schema.h"
#include "common/fs.h"
#include "store_suite.h"

namespace moat::api::store {

// The suite's backend here: a fresh database file per test.
class SqliteBackend : public StoreBackend {
 public:
  ~SqliteBackend() override {
    for (const auto& d : dirs_) (void)RemoveTree(d);
  }
  Result<std::unique_ptr<Store>> Fresh() override {
    MOAT_ASSIGN_OR_RETURN(std::string dir, MakeTempDir("/tmp", "moat-store-suite."));
    dirs_.push_back(dir);
    MOAT_ASSIGN_OR_RETURN(auto store, SqliteStore::Open(dir + "/moat.db"));
    return std::unique_ptr<Store>(std::move(store));
  }

 private:
  std::vector<std::string> dirs_;
};

StoreBackend& TestBackend() {
  static SqliteBackend backend;
  return backend;
}

namespace {

class SqliteStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = MakeTempDir("/tmp", "moat-store-test.");
    ASSERT_TRUE(d.ok());
    dir_ = *d;
    auto s = SqliteStore::Open(dir_ + "/moat.db");
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(*s);
  }
  void TearDown() override {
    store_.reset();
    EXPECT_TRUE(RemoveTree(dir_).ok());
  }
  std::string dir_;
  std::unique_ptr<SqliteStore> store_;
};

TEST_F(SqliteStoreTest, MigratesAFreshFileAndReopensIt) {
  EXPECT_EQ(store_->schema_version(), static_cast<int>(kMigrationCount));
  store_.reset();
  auto again = SqliteStore::Open(dir_ + "/moat.db");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->schema_version(), static_cast<int>(kMigrationCount));
}

TEST_F(SqliteStoreTest, UpgradesAVersion1DatabaseWhoseTeamsWereTheBootstrapAdmin) {
  // Schema 1's tables (teams, sandboxes and their metadata), with the one team the first start
  // created and one of its sandboxes.
  std::string path = dir_ + "/v1.db";
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db,
                         "CREATE TABLE teams (id TEXT PRIMARY KEY, name TEXT NOT NULL, "
                         "created_at_ms INTEGER NOT NULL); INSERT INTO teams VALUES ('t1', "
                         "'admin', 5); CREATE TABLE sandboxes (id TEXT PRIMARY KEY, team_id TEXT "
                         "NOT NULL, template_id TEXT NOT NULL, access_token TEXT NOT NULL, "
                         "env_vars TEXT NOT NULL, state TEXT NOT NULL, started_at_ms INTEGER NOT "
                         "NULL, end_at_ms INTEGER NOT NULL, auto_pause INTEGER NOT NULL, "
                         "cpu_count INTEGER NOT NULL, memory_mb INTEGER NOT NULL, disk_size_mb "
                         "INTEGER NOT NULL); INSERT INTO sandboxes VALUES ('s1', 't1', 'base', "
                         "'tok', '{}', 'running', 1, 2, 0, 1, 256, 2048); CREATE TABLE "
                         "sandbox_metadata (sandbox_id TEXT NOT NULL, key TEXT NOT NULL, value "
                         "TEXT NOT NULL, PRIMARY KEY (sandbox_id, key)); PRAGMA user_version = 1;",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
  auto upgraded = SqliteStore::Open(path);
  ASSERT_TRUE(upgraded.ok()) << upgraded.status().ToString();
  EXPECT_EQ((*upgraded)->schema_version(), static_cast<int>(kMigrationCount));
  auto team = (*upgraded)->GetTeam("t1");
  ASSERT_TRUE(team.ok() && team->has_value());
  EXPECT_TRUE((*team)->admin);
  EXPECT_TRUE((*upgraded)->AllSnapshots()->empty());
  // Sandboxes from before traffic tokens have public ports.
  auto sb = (*upgraded)->GetSandbox("s1");
  ASSERT_TRUE(sb.ok() && sb->has_value()) << sb.status().ToString();
  EXPECT_EQ((*sb)->traffic_access_token, "");
  // Teams from before quotas have the defaults (nothing set), and their running sandboxes count.
  EXPECT_EQ(*(*upgraded)->GetTeamQuotas("t1"), QuotaSettings{});
  auto usage = (*upgraded)->RunningUsage("t1");
  ASSERT_TRUE(usage.ok()) << usage.status().ToString();
  EXPECT_EQ(usage->sandboxes, 1);
  EXPECT_EQ(usage->memory_mib, 256);
}

}  // namespace
}  // namespace moat::api::store
