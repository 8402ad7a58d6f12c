#include "api/store/sqlite_store.h"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include "common/fs.h"

namespace moat::api::store {
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
  SandboxRecord Sandbox(const std::string& id, const std::string& team, int64_t started,
                        std::map<std::string, std::string> metadata = {}) {
    SandboxRecord r;
    r.id = id;
    r.team_id = team;
    r.template_id = "base";
    r.access_token = "tok-" + id;
    r.metadata = std::move(metadata);
    r.env_vars = {{"A", "1"}};
    r.started_at_ms = started;
    r.end_at_ms = started + 300000;
    r.cpu_count = 1;
    r.memory_mb = 512;
    return r;
  }
  std::string dir_;
  std::unique_ptr<SqliteStore> store_;
};

TEST_F(SqliteStoreTest, MigratesAFreshFileAndReopensIt) {
  EXPECT_EQ(store_->schema_version(), 4);
  store_.reset();
  auto again = SqliteStore::Open(dir_ + "/moat.db");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->schema_version(), 4);
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
  EXPECT_EQ((*upgraded)->schema_version(), 4);
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

TEST_F(SqliteStoreTest, FindsTeamsByKeyHashUntilRevoked) {
  EXPECT_FALSE(*store_->HasApiKeys());
  auto team = store_->CreateTeam("t", false);
  ASSERT_TRUE(team.ok());
  auto key = store_->AddApiKey(team->id, "k", "hash1", "moat_…");
  ASSERT_TRUE(key.ok());
  EXPECT_TRUE(*store_->HasApiKeys());
  auto found = store_->TeamByKeyHash("hash1");
  ASSERT_TRUE(found.ok() && found->has_value());
  EXPECT_EQ((*found)->id, team->id);
  EXPECT_FALSE(store_->TeamByKeyHash("other")->has_value());
  auto other = store_->CreateTeam("o", false);
  EXPECT_EQ(store_->RevokeApiKey(other->id, key->id).code(), ErrorCode::kNotFound)
      << "another team cannot revoke it";
  ASSERT_TRUE(store_->AddApiKey(team->id, "k2", "hash2", "moat_…").ok()) << "not the last key";
  EXPECT_TRUE(store_->RevokeApiKey(team->id, key->id).ok());
  EXPECT_FALSE(store_->TeamByKeyHash("hash1")->has_value());
  EXPECT_EQ(store_->ListApiKeys(team->id)->size(), 1u);
  EXPECT_FALSE(store_->GetApiKey(key->id)->has_value()) << "a revoked key is gone";
  EXPECT_EQ(store_->RevokeApiKey(team->id, key->id).code(), ErrorCode::kNotFound) << "revoked once";
}

TEST_F(SqliteStoreTest, FindsTeamsByIdAndNameWithTheirAdminFlag) {
  auto admin = *store_->CreateTeam("admin", true);
  auto acme = *store_->CreateTeam("acme", false);
  EXPECT_TRUE((*store_->GetTeam(admin.id))->admin);
  auto by_name = store_->TeamByName("acme");
  ASSERT_TRUE(by_name.ok() && by_name->has_value());
  EXPECT_EQ((*by_name)->id, acme.id);
  EXPECT_FALSE((*by_name)->admin);
  EXPECT_FALSE(store_->TeamByName("nobody")->has_value());
  EXPECT_FALSE(store_->GetTeam("nope")->has_value());
  auto key = *store_->AddApiKey(admin.id, "k", "h-admin", "m");
  EXPECT_TRUE((*store_->TeamByKeyHash("h-admin"))->admin);
  auto got = store_->GetApiKey(key.id);
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->team_id, admin.id);
  EXPECT_EQ((*got)->name, "k");
}

TEST_F(SqliteStoreTest, RefusesToRevokeTheLastAdminKey) {
  auto admin = *store_->CreateTeam("admin", true);
  auto first = *store_->AddApiKey(admin.id, "first", "h1", "m1");
  Status last = store_->RevokeApiKey(admin.id, first.id);
  EXPECT_EQ(last.code(), ErrorCode::kFailedPrecondition);
  EXPECT_NE(last.message().find("last admin key"), std::string::npos) << last.message();
  EXPECT_TRUE(store_->TeamByKeyHash("h1")->has_value()) << "still valid";
  auto second = *store_->AddApiKey(admin.id, "second", "h2", "m2");
  EXPECT_TRUE(store_->RevokeApiKey(admin.id, first.id).ok()) << "another admin key remains";
  EXPECT_EQ(store_->RevokeApiKey(admin.id, second.id).code(), ErrorCode::kFailedPrecondition);
}

TEST_F(SqliteStoreTest, RefusesToRevokeATeamsLastKeyWhichWouldOrphanItsSandboxes) {
  auto team = *store_->CreateTeam("acme", false);
  auto only = *store_->AddApiKey(team.id, "only", "h3", "m3");
  ASSERT_TRUE(store_->InsertSandbox(Sandbox("s1", team.id, 1)).ok());
  Status last = store_->RevokeApiKey(team.id, only.id);
  EXPECT_EQ(last.code(), ErrorCode::kFailedPrecondition);
  EXPECT_NE(last.message().find("last key of team \"acme\""), std::string::npos) << last.message();
  EXPECT_TRUE(store_->TeamByKeyHash("h3")->has_value()) << "still valid";
  auto next = *store_->AddApiKey(team.id, "next", "h4", "m4");
  EXPECT_TRUE(store_->RevokeApiKey(team.id, only.id).ok()) << "the team keeps a key";
  EXPECT_EQ(store_->RevokeApiKey(team.id, next.id).code(), ErrorCode::kFailedPrecondition);
  // Another team's keys do not count: one key left there does not keep this one alive.
  auto other = *store_->CreateTeam("other", false);
  (void)*store_->AddApiKey(other.id, "o", "h5", "m5");
  EXPECT_EQ(store_->RevokeApiKey(team.id, next.id).code(), ErrorCode::kFailedPrecondition);
}

TEST_F(SqliteStoreTest, KeepsSnapshotsPerTeamAndFindsThemByIdNameOrSandbox) {
  auto a = *store_->CreateTeam("a", false);
  auto b = *store_->CreateTeam("b", false);
  ASSERT_TRUE(store_->InsertSnapshot({"snapa1", a.id, "sbx1", "nightly", 10}).ok());
  ASSERT_TRUE(store_->InsertSnapshot({"snapa2", a.id, "sbx2", "", 20}).ok());
  ASSERT_TRUE(store_->InsertSnapshot({"snapa3", a.id, "sbx1", "nightly", 30}).ok());
  ASSERT_TRUE(store_->InsertSnapshot({"snapb1", b.id, "sbx9", "nightly", 40}).ok());

  auto got = store_->GetSnapshot("snapa2");
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->team_id, a.id);
  EXPECT_EQ((*got)->sandbox_id, "sbx2");
  EXPECT_EQ((*got)->created_at_ms, 20);
  EXPECT_FALSE(store_->GetSnapshot("snapzz")->has_value());

  auto newest = store_->SnapshotByName(a.id, "nightly");
  ASSERT_TRUE(newest.ok() && newest->has_value());
  EXPECT_EQ((*newest)->id, "snapa3") << "the newest of that name, of that team";
  EXPECT_FALSE(store_->SnapshotByName(a.id, "")->has_value()) << "unnamed ones have no name";
  EXPECT_EQ((*store_->SnapshotByName(b.id, "nightly"))->id, "snapb1");

  auto ids = [](const SnapshotPage& p) {
    std::vector<std::string> out;
    for (const auto& r : p.items) out.push_back(r.id);
    return out;
  };
  SnapshotFilter f;
  f.team_id = a.id;
  EXPECT_EQ(ids(*store_->ListSnapshots(f)),
            (std::vector<std::string>{"snapa3", "snapa2", "snapa1"}));
  f.sandbox_id = "sbx1";
  EXPECT_EQ(ids(*store_->ListSnapshots(f)), (std::vector<std::string>{"snapa3", "snapa1"}));
  f.sandbox_id = "";
  f.name = "snapa2";
  EXPECT_EQ(ids(*store_->ListSnapshots(f)), std::vector<std::string>{"snapa2"}) << "by id";
  f.name = "nightly";
  EXPECT_EQ(ids(*store_->ListSnapshots(f)), (std::vector<std::string>{"snapa3", "snapa1"}));
  f.team_id = b.id;
  f.name = "snapa1";
  EXPECT_TRUE(store_->ListSnapshots(f)->items.empty()) << "another team's is invisible";

  EXPECT_EQ(store_->DeleteSnapshot("snapzz").code(), ErrorCode::kNotFound);
  ASSERT_TRUE(store_->DeleteSnapshot("snapa3").ok());
  EXPECT_EQ((*store_->SnapshotByName(a.id, "nightly"))->id, "snapa1");
  EXPECT_EQ(store_->AllSnapshots()->size(), 3u);
}

TEST_F(SqliteStoreTest, PagesSnapshotsNewestFirstWithACursor) {
  auto t = *store_->CreateTeam("t", false);
  for (int i = 0; i < 5; ++i) {
    std::string id = "snap" + std::to_string(i);
    ASSERT_TRUE(store_->InsertSnapshot({id, t.id, "sbx", "", 100 + i}).ok());
  }
  SnapshotFilter f;
  f.team_id = t.id;
  f.limit = 2;
  std::vector<std::string> seen;
  int pages = 0;
  for (; pages < 10; ++pages) {
    auto page = store_->ListSnapshots(f);
    ASSERT_TRUE(page.ok()) << page.status().ToString();
    for (auto& r : page->items) seen.push_back(r.id);
    if (page->next_token.empty()) break;
    f.next_token = page->next_token;
  }
  EXPECT_EQ(pages, 2);
  EXPECT_EQ(seen, (std::vector<std::string>{"snap4", "snap3", "snap2", "snap1", "snap0"}));
  f.next_token = "nodot";
  EXPECT_EQ(store_->ListSnapshots(f).status().code(), ErrorCode::kInvalidArgument);
}

TEST_F(SqliteStoreTest, KeepsSandboxesWithMetadataAndEnvVars) {
  auto team = *store_->CreateTeam("t", false);
  ASSERT_TRUE(store_->InsertSandbox(Sandbox("s1", team.id, 1000, {{"k", "v"}})).ok());
  auto got = store_->GetSandbox("s1");
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->metadata, (std::map<std::string, std::string>{{"k", "v"}}));
  EXPECT_EQ((*got)->env_vars.at("A"), "1");
  EXPECT_EQ((*got)->access_token, "tok-s1");
  EXPECT_EQ((*got)->traffic_access_token, "");
  auto with_token = Sandbox("s2", team.id, 1001, {});
  with_token.traffic_access_token = "traffic-s2";
  ASSERT_TRUE(store_->InsertSandbox(with_token).ok());
  EXPECT_EQ((*store_->GetSandbox("s2"))->traffic_access_token, "traffic-s2");
  ASSERT_TRUE(store_->SetSandboxEndAt("s1", 42).ok());
  EXPECT_EQ((*store_->GetSandbox("s1"))->end_at_ms, 42);
  EXPECT_EQ(store_->SetSandboxEndAt("nope", 1).code(), ErrorCode::kNotFound);
  ASSERT_TRUE(store_->DeleteSandbox("s1").ok());
  EXPECT_FALSE(store_->GetSandbox("s1")->has_value());
}

TEST_F(SqliteStoreTest, ListsOnlyTheTeamsSandboxesMatchingEveryMetadataPair) {
  auto a = *store_->CreateTeam("a", false);
  auto b = *store_->CreateTeam("b", false);
  ASSERT_TRUE(store_->InsertSandbox(Sandbox("a1", a.id, 1, {{"env", "prod"}, {"app", "x"}})).ok());
  ASSERT_TRUE(store_->InsertSandbox(Sandbox("a2", a.id, 2, {{"env", "prod"}})).ok());
  ASSERT_TRUE(store_->InsertSandbox(Sandbox("b1", b.id, 3, {{"env", "prod"}, {"app", "x"}})).ok());
  SandboxFilter f;
  f.team_id = a.id;
  f.metadata = {{"env", "prod"}, {"app", "x"}};
  auto page = store_->ListSandboxes(f);
  ASSERT_TRUE(page.ok()) << page.status().ToString();
  ASSERT_EQ(page->items.size(), 1u);
  EXPECT_EQ(page->items[0].id, "a1");
  f.metadata = {};
  f.states = {"paused"};
  EXPECT_TRUE(store_->ListSandboxes(f)->items.empty());
}

TEST_F(SqliteStoreTest, PagesNewestFirstWithACursor) {
  auto t = *store_->CreateTeam("t", false);
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(store_->InsertSandbox(Sandbox("s" + std::to_string(i), t.id, 100 + i)).ok());
  }
  SandboxFilter f;
  f.team_id = t.id;
  f.limit = 2;
  std::vector<std::string> seen;
  for (int pages = 0; pages < 10; ++pages) {
    auto page = store_->ListSandboxes(f);
    ASSERT_TRUE(page.ok()) << page.status().ToString();
    for (auto& r : page->items) seen.push_back(r.id);
    if (page->next_token.empty()) break;
    f.next_token = page->next_token;
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"s4", "s3", "s2", "s1", "s0"}));
  f.next_token = "";
  f.ascending = true;
  f.started_after_ms = 102;
  auto asc = store_->ListSandboxes(f);
  ASSERT_EQ(asc->items.size(), 2u);
  EXPECT_EQ(asc->items[0].id, "s3");
  f.next_token = "garbage";
  EXPECT_EQ(store_->ListSandboxes(f).status().code(), ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace moat::api::store
