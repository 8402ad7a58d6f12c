#include "api/store/sqlite_store.h"

#include <gtest/gtest.h>

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
  EXPECT_EQ(store_->schema_version(), 1);
  store_.reset();
  auto again = SqliteStore::Open(dir_ + "/moat.db");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->schema_version(), 1);
}

TEST_F(SqliteStoreTest, FindsTeamsByKeyHashUntilRevoked) {
  EXPECT_FALSE(*store_->HasApiKeys());
  auto team = store_->CreateTeam("t");
  ASSERT_TRUE(team.ok());
  auto key = store_->AddApiKey(team->id, "k", "hash1", "moat_…");
  ASSERT_TRUE(key.ok());
  EXPECT_TRUE(*store_->HasApiKeys());
  auto found = store_->TeamByKeyHash("hash1");
  ASSERT_TRUE(found.ok() && found->has_value());
  EXPECT_EQ((*found)->id, team->id);
  EXPECT_FALSE(store_->TeamByKeyHash("other")->has_value());
  auto other = store_->CreateTeam("o");
  EXPECT_EQ(store_->RevokeApiKey(other->id, key->id).code(), ErrorCode::kNotFound)
      << "another team cannot revoke it";
  EXPECT_TRUE(store_->RevokeApiKey(team->id, key->id).ok());
  EXPECT_FALSE(store_->TeamByKeyHash("hash1")->has_value());
  EXPECT_TRUE(store_->ListApiKeys(team->id)->empty());
}

TEST_F(SqliteStoreTest, KeepsSandboxesWithMetadataAndEnvVars) {
  auto team = *store_->CreateTeam("t");
  ASSERT_TRUE(store_->InsertSandbox(Sandbox("s1", team.id, 1000, {{"k", "v"}})).ok());
  auto got = store_->GetSandbox("s1");
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->metadata, (std::map<std::string, std::string>{{"k", "v"}}));
  EXPECT_EQ((*got)->env_vars.at("A"), "1");
  EXPECT_EQ((*got)->access_token, "tok-s1");
  ASSERT_TRUE(store_->SetSandboxEndAt("s1", 42).ok());
  EXPECT_EQ((*store_->GetSandbox("s1"))->end_at_ms, 42);
  EXPECT_EQ(store_->SetSandboxEndAt("nope", 1).code(), ErrorCode::kNotFound);
  ASSERT_TRUE(store_->DeleteSandbox("s1").ok());
  EXPECT_FALSE(store_->GetSandbox("s1")->has_value());
}

TEST_F(SqliteStoreTest, ListsOnlyTheTeamsSandboxesMatchingEveryMetadataPair) {
  auto a = *store_->CreateTeam("a");
  auto b = *store_->CreateTeam("b");
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
  auto t = *store_->CreateTeam("t");
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
