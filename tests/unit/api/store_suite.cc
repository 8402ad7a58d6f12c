// The store test suite: every test here runs against each Store implementation (SQLite in
// api_store_test, PostgreSQL in api_store_pg_test), through the backend each binary links.
#include "store_suite.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

namespace moat::api::store {

void StoreSuite::SetUp() {
  auto s = TestBackend().Fresh();
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  store_ = std::move(*s);
}

void StoreSuite::TearDown() {
  store_.reset();
}

SandboxRecord StoreSuite::Sandbox(const std::string& id, const std::string& team, int64_t started,
                                  std::map<std::string, std::string> metadata) {
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

namespace {

TEST_F(StoreSuite, FindsTeamsByKeyHashUntilRevoked) {
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

TEST_F(StoreSuite, FindsTeamsByIdAndNameWithTheirAdminFlag) {
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

TEST_F(StoreSuite, RefusesToRevokeTheLastAdminKey) {
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

TEST_F(StoreSuite, RefusesToRevokeATeamsLastKeyWhichWouldOrphanItsSandboxes) {
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

TEST_F(StoreSuite, KeepsSnapshotsPerTeamAndFindsThemByIdNameOrSandbox) {
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

TEST_F(StoreSuite, PagesSnapshotsNewestFirstWithACursor) {
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

TEST_F(StoreSuite, KeepsSandboxesWithMetadataAndEnvVars) {
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

TEST_F(StoreSuite, ListsOnlyTheTeamsSandboxesMatchingEveryMetadataPair) {
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
  f.states = {SandboxState::kPaused};
  EXPECT_TRUE(store_->ListSandboxes(f)->items.empty());
}

TEST_F(StoreSuite, PagesNewestFirstWithACursor) {
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

TEST_F(StoreSuite, ChangesStateOnlyByCompareAndSetAlongTheLifecycle) {
  auto t = *store_->CreateTeam("t", false);
  auto r = Sandbox("s1", t.id, 1);
  r.state = SandboxState::kCreating;
  r.host_id = "h1";
  ASSERT_TRUE(store_->InsertSandbox(r).ok());
  auto got = *store_->GetSandbox("s1");
  EXPECT_EQ(got->state, SandboxState::kCreating);
  EXPECT_EQ(got->host_id, "h1");
  EXPECT_EQ(got->generation, 0);

  // From the state it is in: changed once.
  EXPECT_TRUE(
      *store_->TransitionSandbox("s1", {SandboxState::kCreating}, {SandboxState::kRunning}));
  EXPECT_FALSE(
      *store_->TransitionSandbox("s1", {SandboxState::kCreating}, {SandboxState::kRunning}))
      << "no longer creating";
  // A change the lifecycle refuses changes nothing, whatever the record's state.
  auto refused =
      store_->TransitionSandbox("s1", {SandboxState::kRunning}, {SandboxState::kResuming});
  EXPECT_EQ(refused.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("running to resuming"), std::string::npos)
      << refused.status().message();
  EXPECT_EQ((*store_->GetSandbox("s1"))->state, SandboxState::kRunning);

  // Host and generation fence a stale writer out.
  EXPECT_FALSE(
      *store_->TransitionSandbox("s1", {SandboxState::kRunning, "h2"}, {SandboxState::kPausing}))
      << "another host's";
  EXPECT_FALSE(
      *store_->TransitionSandbox("s1", {SandboxState::kRunning, "h1", 7}, {SandboxState::kPausing}))
      << "another generation's";
  EXPECT_TRUE(*store_->TransitionSandbox("s1", {SandboxState::kRunning, "h1", 0},
                                         {SandboxState::kPausing}));
  EXPECT_TRUE(*store_->TransitionSandbox("s1", {SandboxState::kPausing}, {SandboxState::kPaused}));
  // A resume may place it elsewhere: new host, next generation.
  EXPECT_TRUE(*store_->TransitionSandbox(
      "s1", {SandboxState::kPaused}, {SandboxState::kResuming, "h2", /*bump_generation=*/true}));
  got = *store_->GetSandbox("s1");
  EXPECT_EQ(got->state, SandboxState::kResuming);
  EXPECT_EQ(got->host_id, "h2");
  EXPECT_EQ(got->generation, 1);
  EXPECT_FALSE(*store_->TransitionSandbox("s1", {SandboxState::kResuming, "h1", 0},
                                          {SandboxState::kRunning}))
      << "the old placement's writes fail";
  EXPECT_TRUE(*store_->TransitionSandbox("s1", {SandboxState::kResuming, "h2", 1},
                                         {SandboxState::kRunning}));
  EXPECT_FALSE(
      *store_->TransitionSandbox("nope", {SandboxState::kRunning}, {SandboxState::kKilling}))
      << "an unknown sandbox";
}

TEST_F(StoreSuite, ExactlyOneOfConcurrentTransitionsWins) {
  auto t = *store_->CreateTeam("t", false);
  ASSERT_TRUE(store_->InsertSandbox(Sandbox("s1", t.id, 1)).ok());
  std::atomic<int> won{0}, failed{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      auto to = i % 2 == 0 ? SandboxState::kPausing : SandboxState::kKilling;
      auto r = store_->TransitionSandbox("s1", {SandboxState::kRunning}, {to});
      if (!r.ok()) {
        ++failed;
      } else if (*r) {
        ++won;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(won.load(), 1);
  EXPECT_EQ(failed.load(), 0);
}

TEST_F(StoreSuite, CountsWhatEveryStateThatHoldsResourcesTakes) {
  auto t = *store_->CreateTeam("t", false);
  int n = 0;
  for (SandboxState s : kAllSandboxStates) {
    ++n;
    auto r = Sandbox("s" + std::to_string(n), t.id, n);
    r.state = s;
    r.cpu_count = 2;
    r.memory_mb = 100;
    ASSERT_TRUE(store_->InsertSandbox(r).ok());
  }
  auto usage = store_->RunningUsage(t.id);
  ASSERT_TRUE(usage.ok()) << usage.status().ToString();
  int64_t holding = 0;
  for (SandboxState s : kAllSandboxStates) holding += HoldsResources(s) ? 1 : 0;
  EXPECT_EQ(holding, 6);
  EXPECT_EQ(usage->sandboxes, holding);
  EXPECT_EQ(usage->vcpus, 2 * holding);
  EXPECT_EQ(usage->memory_mib, 100 * holding);
  // Listing by state, and every state comes back as it was stored.
  SandboxFilter f;
  f.team_id = t.id;
  f.states = {SandboxState::kLost, SandboxState::kCreating};
  auto page = *store_->ListSandboxes(f);
  ASSERT_EQ(page.items.size(), 2u);
  for (const auto& r : page.items) {
    EXPECT_TRUE(r.state == SandboxState::kLost || r.state == SandboxState::kCreating);
  }
  auto all = *store_->AllSandboxes();
  ASSERT_EQ(all.size(), std::size(kAllSandboxStates));
}

}  // namespace
}  // namespace moat::api::store
