// The store test suite: every test here runs against each Store implementation (SQLite in
// api_store_test, PostgreSQL in api_store_pg_test), through the backend each binary links.
#include "store_suite.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <latch>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/fs.h"

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

// Replicas starting at once on an empty store: one admin team and key, whoever wins.
TEST_F(StoreSuite, ConcurrentBootstrapsMakeOneAdminTeam) {
  std::atomic<int> made{0}, failed{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      auto r = store_->BootstrapAdmin("hash" + std::to_string(i), "mask");
      if (!r.ok()) {
        ++failed;
      } else if (r->has_value()) {
        ++made;
        EXPECT_TRUE((*r)->admin);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(made.load(), 1);
  EXPECT_EQ(failed.load(), 0);
  auto admin = store_->TeamByName("admin");
  ASSERT_TRUE(admin.ok() && admin->has_value());
  EXPECT_EQ(store_->ListApiKeys((*admin)->id)->size(), 1u);
  EXPECT_TRUE(*store_->HasApiKeys());
  // A store with a key is left as it is.
  EXPECT_FALSE(store_->BootstrapAdmin("another", "mask")->has_value());
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

// --- Fleet membership and placement ---

HostRegistration Host(const std::string& id, int64_t vcpus, int64_t mem_mb,
                      const std::string& accel = "kvm") {
  HostRegistration h;
  h.id = id;
  h.endpoint = "10.0.0.1:" + std::to_string(7000 + id.size());
  h.vcpu_total = vcpus;
  h.mem_total_mb = mem_mb;
  h.accel = accel;
  h.cpu_model = "EPYC";
  h.qemu_build = "7.2.0";
  return h;
}

int64_t SystemNowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::vector<std::string> HostIds(const std::vector<HostRecord>& hosts) {
  std::vector<std::string> out;
  for (const auto& h : hosts) out.push_back(h.id);
  return out;
}

void SleepMs(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
}

TEST_F(StoreSuite, RegisteringAHostAgainGivesItANewEpochAndItsNewTotals) {
  auto reg = Host("h1", 8, 16384);
  reg.labels = {{"zone", "a"}};
  auto first = store_->RegisterHost(reg);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(first->epoch, 1);
  EXPECT_EQ(first->state, HostState::kActive);
  EXPECT_EQ(first->endpoint, reg.endpoint);
  EXPECT_EQ(first->vcpu_total, 8);
  EXPECT_EQ(first->mem_total_mb, 16384);
  EXPECT_EQ(first->vcpu_reserved, 0);
  EXPECT_EQ(first->accel, "kvm");
  EXPECT_EQ(first->qemu_build, "7.2.0");
  EXPECT_EQ(first->labels, reg.labels);
  // The database's clock, in ms (the same machine's here: a unit mix-up would be far off).
  EXPECT_LT(std::abs(first->heartbeat_at_ms - SystemNowMs()), 60000) << first->heartbeat_at_ms;
  EXPECT_EQ(first->started_at_ms, first->heartbeat_at_ms);
  auto got = store_->GetHost("h1");
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->epoch, 1);
  EXPECT_EQ((*got)->labels, reg.labels);

  ASSERT_TRUE(store_->ReserveOnHost("h1", 2, 1024, 1.0, 1.0)->has_value());
  SleepMs(5);
  reg.vcpu_total = 16;
  reg.endpoint = "10.0.0.2:7070";
  reg.labels = {{"zone", "b"}};
  auto second = store_->RegisterHost(reg);
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_EQ(second->epoch, 2);
  EXPECT_EQ(second->state, HostState::kActive);
  EXPECT_EQ(second->vcpu_total, 16);
  EXPECT_EQ(second->endpoint, "10.0.0.2:7070");
  EXPECT_EQ(second->labels, reg.labels);
  EXPECT_GT(second->started_at_ms, first->started_at_ms);
  EXPECT_EQ(second->vcpu_reserved, 2) << "the VMs the restarted agent re-adopts still hold it";
  EXPECT_EQ(second->mem_reserved_mb, 1024);
  EXPECT_EQ((*store_->RegisterHost(reg)).epoch, 3) << "every registration is a new epoch";

  ASSERT_TRUE(store_->RegisterHost(Host("h0", 1, 1)).ok());
  EXPECT_EQ(HostIds(*store_->ListHosts()), (std::vector<std::string>{"h0", "h1"}));
  EXPECT_FALSE(store_->GetHost("nobody")->has_value());
  EXPECT_EQ(store_->RegisterHost(Host("", 1, 1)).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(store_->RegisterHost(Host("h2", -1, 1)).status().code(), ErrorCode::kInvalidArgument);
}

TEST_F(StoreSuite, AHeartbeatWithAStaleEpochIsFenced) {
  int64_t old_epoch = store_->RegisterHost(Host("h1", 4, 4096))->epoch;
  auto current = *store_->RegisterHost(Host("h1", 4, 4096));
  EXPECT_FALSE(*store_->Heartbeat("h1", old_epoch)) << "an older process of the host";
  EXPECT_FALSE(*store_->Heartbeat("nobody", 1));
  SleepMs(5);
  auto beat = store_->Heartbeat("h1", current.epoch);
  ASSERT_TRUE(beat.ok()) << beat.status().ToString();
  EXPECT_TRUE(*beat);
  auto after = *store_->GetHost("h1");
  EXPECT_GT(after->heartbeat_at_ms, current.heartbeat_at_ms);
  EXPECT_EQ(after->started_at_ms, current.started_at_ms) << "a heartbeat is not a restart";
  EXPECT_EQ(after->epoch, current.epoch);
}

TEST_F(StoreSuite, SweepDeclaresHostsWithOldHeartbeatsLostAndTheirLiveSandboxesWithThem) {
  // What the sweep does to a host's sandboxes must be a change the lifecycle allows.
  for (SandboxState s : kAllSandboxStates) {
    if (HoldsResources(s)) {
      EXPECT_TRUE(CanTransition(s, SandboxState::kLost)) << SandboxStateName(s);
    }
  }
  auto t = *store_->CreateTeam("t", false);
  ASSERT_TRUE(store_->RegisterHost(Host("old", 8, 8192)).ok());
  ASSERT_TRUE(store_->RegisterHost(Host("old-draining", 8, 8192)).ok());
  ASSERT_TRUE(*store_->SetHostDraining("old-draining", true));
  auto fresh = *store_->RegisterHost(Host("fresh", 8, 8192));
  EXPECT_TRUE(store_->SweepLostHosts(60000)->empty()) << "nobody has missed a heartbeat yet";
  ASSERT_TRUE(store_->ReserveOnHost("old", 3, 3000, 1.0, 1.0)->has_value());
  int n = 0;
  for (SandboxState s : kAllSandboxStates) {
    ++n;
    auto r = Sandbox("old-" + std::to_string(n), t.id, n);
    r.state = s;
    r.host_id = "old";
    ASSERT_TRUE(store_->InsertSandbox(r).ok());
  }
  auto on_fresh = Sandbox("fresh-1", t.id, 100);
  on_fresh.host_id = "fresh";
  ASSERT_TRUE(store_->InsertSandbox(on_fresh).ok());

  SleepMs(400);
  ASSERT_TRUE(*store_->Heartbeat("fresh", fresh.epoch));
  auto lost = store_->SweepLostHosts(300);
  ASSERT_TRUE(lost.ok()) << lost.status().ToString();
  EXPECT_EQ(*lost, (std::vector<std::string>{"old", "old-draining"}));

  auto old = *store_->GetHost("old");
  EXPECT_EQ(old->state, HostState::kLost);
  EXPECT_EQ(old->epoch, 2) << "fenced";
  EXPECT_EQ(old->vcpu_reserved, 0);
  EXPECT_EQ(old->mem_reserved_mb, 0);
  EXPECT_EQ((*store_->GetHost("old-draining"))->state, HostState::kLost);
  EXPECT_FALSE(*store_->Heartbeat("old", 1)) << "its agent's next heartbeat finds it fenced";
  EXPECT_FALSE(*store_->Heartbeat("old", 2)) << "a lost host does not heartbeat; it registers";
  // What held resources there is lost; a paused sandbox keeps its snapshot (on that host's disk,
  // or uploaded) and stays paused; killed and lost stay as they were.
  n = 0;
  for (SandboxState s : kAllSandboxStates) {
    std::string id = "old-" + std::to_string(++n);
    SandboxState want = HoldsResources(s) ? SandboxState::kLost : s;
    EXPECT_EQ((*store_->GetSandbox(id))->state, want)
        << id << " was " << SandboxStateName(s) << ", is "
        << SandboxStateName((*store_->GetSandbox(id))->state);
  }
  EXPECT_EQ((*store_->GetSandbox("old-4"))->state, SandboxState::kPaused);

  auto still = *store_->GetHost("fresh");
  EXPECT_EQ(still->state, HostState::kActive);
  EXPECT_EQ(still->epoch, fresh.epoch);
  EXPECT_EQ((*store_->GetSandbox("fresh-1"))->state, SandboxState::kRunning);
  EXPECT_TRUE(store_->SweepLostHosts(300)->empty()) << "a lost host is declared lost once";

  // Its agent comes back: a new epoch, active, with nothing reserved.
  auto back = store_->RegisterHost(Host("old", 8, 8192));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->epoch, 3);
  EXPECT_EQ(back->state, HostState::kActive);
  EXPECT_EQ(back->vcpu_reserved, 0);
  EXPECT_TRUE(*store_->Heartbeat("old", 3));
  EXPECT_EQ(store_->SweepLostHosts(-1).status().code(), ErrorCode::kInvalidArgument);
}

TEST_F(StoreSuite, DrainingSwitchesActiveAndDrainingHostsButNotLostOnes) {
  ASSERT_TRUE(store_->RegisterHost(Host("h1", 4, 4096)).ok());
  EXPECT_TRUE(*store_->SetHostDraining("h1", true));
  EXPECT_FALSE(*store_->SetHostDraining("h1", true)) << "already draining";
  EXPECT_EQ((*store_->GetHost("h1"))->state, HostState::kDraining);
  EXPECT_FALSE(store_->ReserveOnHost("h1", 1, 1, 1.0, 1.0)->has_value())
      << "a draining host takes nothing new";
  auto again = *store_->RegisterHost(Host("h1", 4, 4096));
  EXPECT_EQ(again.state, HostState::kDraining) << "an agent restart does not undo a drain";
  EXPECT_EQ(again.epoch, 2);
  EXPECT_TRUE(*store_->Heartbeat("h1", 2)) << "a draining host still heartbeats";
  EXPECT_TRUE(*store_->SetHostDraining("h1", false));
  EXPECT_FALSE(*store_->SetHostDraining("h1", false)) << "already active";
  EXPECT_EQ((*store_->GetHost("h1"))->state, HostState::kActive);
  EXPECT_TRUE(store_->ReserveOnHost("h1", 1, 1, 1.0, 1.0)->has_value());
  EXPECT_EQ(store_->SetHostDraining("nobody", true).status().code(), ErrorCode::kNotFound);

  SleepMs(10);
  ASSERT_EQ(*store_->SweepLostHosts(0), std::vector<std::string>{"h1"});
  auto drain_lost = store_->SetHostDraining("h1", true);
  EXPECT_EQ(drain_lost.status().code(), ErrorCode::kFailedPrecondition);
  EXPECT_NE(drain_lost.status().message().find("is lost"), std::string::npos)
      << drain_lost.status().message();
  EXPECT_EQ(store_->SetHostDraining("h1", false).status().code(), ErrorCode::kFailedPrecondition)
      << "only registering brings a lost host back";
  EXPECT_EQ((*store_->GetHost("h1"))->state, HostState::kLost);
}

TEST_F(StoreSuite, ReservationsStayWithinTotalTimesTheOvercommitRatios) {
  auto h = Host("h1", 4, 1000);
  ASSERT_TRUE(store_->RegisterHost(h).ok());
  auto reserve = [&](int64_t v, int64_t m, double cr, double mr) {
    auto r = store_->ReserveOnHost("h1", v, m, cr, mr);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() && r->has_value();
  };
  auto reserved = [&] {
    auto got = *store_->GetHost("h1");
    return std::make_pair(got->vcpu_reserved, got->mem_reserved_mb);
  };
  auto endpoint = store_->ReserveOnHost("h1", 4, 0, 1.0, 1.0);
  ASSERT_TRUE(endpoint.ok() && endpoint->has_value());
  EXPECT_EQ(**endpoint, h.endpoint) << "where to ask for the sandbox next";
  EXPECT_FALSE(reserve(1, 0, 1.0, 1.0)) << "4 of 4 vCPUs";
  EXPECT_TRUE(reserve(4, 0, 2.0, 1.0)) << "8 of 4 × 2";
  EXPECT_FALSE(reserve(1, 0, 2.0, 1.0));
  EXPECT_FALSE(reserve(0, 1, 1.0, 1.0)) << "no vCPU asked, but 8 are already over 4 × 1";
  EXPECT_TRUE(reserve(0, 1000, 2.0, 1.0));
  EXPECT_FALSE(reserve(0, 1, 2.0, 1.0)) << "1000 of 1000 MiB";
  EXPECT_TRUE(reserve(0, 500, 2.0, 1.5)) << "1500 of 1000 × 1.5";
  EXPECT_FALSE(reserve(0, 1, 2.0, 1.5));
  EXPECT_FALSE(reserve(1, 1, 4.0, 1.5)) << "both must fit: the memory does not";
  EXPECT_FALSE(reserve(1, 1, 2.0, 4.0)) << "both must fit: the vCPUs do not";
  EXPECT_EQ(reserved(), std::make_pair(int64_t{8}, int64_t{1500}));

  ASSERT_TRUE(store_->ReleaseOnHost("h1", 3, 700).ok());
  EXPECT_EQ(reserved(), std::make_pair(int64_t{5}, int64_t{800}));
  ASSERT_TRUE(store_->ReleaseOnHost("h1", 100, 100000).ok());
  EXPECT_EQ(reserved(), std::make_pair(int64_t{0}, int64_t{0})) << "never below 0";
  EXPECT_EQ(store_->ReleaseOnHost("nobody", 1, 1).code(), ErrorCode::kNotFound);
  EXPECT_FALSE(store_->ReserveOnHost("nobody", 1, 1, 1.0, 1.0)->has_value());
  EXPECT_EQ(store_->ReserveOnHost("h1", -1, 1, 1.0, 1.0).status().code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(store_->ReserveOnHost("h1", 1, 1, 0.0, 1.0).status().code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(store_->ReserveOnHost("h1", 1, 1, 1.0, std::nan("")).status().code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(store_->ReleaseOnHost("h1", -1, 0).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(reserved(), std::make_pair(int64_t{0}, int64_t{0}));
}

// On PostgreSQL the threads' updates go through the pool's connections at once: the conditional
// update is all that keeps them from overbooking.
TEST_F(StoreSuite, RacingReservationsNeverOverbookAHost) {
  constexpr int kThreads = 16;
  constexpr int kRounds = 20;
  constexpr int64_t kVcpus = 1, kMem = 256;
  constexpr double kCpuRatio = 2.0, kMemRatio = 1.5;
  // Capacity: 32 vCPUs (16 × 2) and 12288 MiB (8192 × 1.5, 48 reservations): vCPUs run out first.
  ASSERT_TRUE(store_->RegisterHost(Host("h1", 16, 8192)).ok());
  constexpr int64_t kFits = 32;
  auto race = [&](auto&& per_thread) {
    std::latch go(kThreads);
    std::vector<std::thread> threads;
    threads.reserve(kThreads);
    for (int i = 0; i < kThreads; ++i) {
      threads.emplace_back([&] {
        go.arrive_and_wait();
        per_thread();
      });
    }
    for (auto& th : threads) th.join();
  };

  // Reservations and releases interleaved: what is held in the end is exactly what was reserved
  // and not released.
  std::atomic<int64_t> reserved{0}, released{0}, errors{0};
  race([&] {
    for (int i = 0; i < kRounds; ++i) {
      auto r = store_->ReserveOnHost("h1", kVcpus, kMem, kCpuRatio, kMemRatio);
      if (!r.ok()) {
        ++errors;
        continue;
      }
      if (!r->has_value()) continue;
      ++reserved;
      if (i % 2 == 0) {
        if (store_->ReleaseOnHost("h1", kVcpus, kMem).ok()) {
          ++released;
        } else {
          ++errors;
        }
      }
    }
  });
  EXPECT_EQ(errors.load(), 0);
  int64_t held = reserved - released;
  auto h = *store_->GetHost("h1");
  EXPECT_EQ(h->vcpu_reserved, held * kVcpus);
  EXPECT_EQ(h->mem_reserved_mb, held * kMem);
  EXPECT_LE(h->vcpu_reserved, kFits);
  EXPECT_GT(reserved.load(), 0);

  // Every thread reserves until the host is full: it ends exactly full, never over.
  std::atomic<int64_t> more{0};
  race([&] {
    for (int i = 0; i < 2 * kFits; ++i) {
      auto r = store_->ReserveOnHost("h1", kVcpus, kMem, kCpuRatio, kMemRatio);
      if (!r.ok()) {
        ++errors;
        continue;
      }
      if (!r->has_value()) return;
      ++more;
    }
  });
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(held + more.load(), kFits);
  h = *store_->GetHost("h1");
  EXPECT_EQ(h->vcpu_reserved, kFits * kVcpus);
  EXPECT_EQ(h->mem_reserved_mb, kFits * kMem);
  EXPECT_LE(static_cast<double>(h->mem_reserved_mb), 8192 * kMemRatio);
}

TEST_F(StoreSuite, PlacementCandidatesAreFreshActiveHostsWithRoomMostFreeMemoryFirst) {
  // Lost: declared so by a sweep before the others registered.
  ASSERT_TRUE(store_->RegisterHost(Host("lost", 16, 65536)).ok());
  SleepMs(10);
  ASSERT_EQ(*store_->SweepLostHosts(0), std::vector<std::string>{"lost"});
  // Stale: active, but its heartbeat is older than the query's freshness.
  ASSERT_TRUE(store_->RegisterHost(Host("stale", 16, 65536)).ok());
  SleepMs(400);
  for (auto reg : {Host("a", 4, 4096), Host("b", 4, 8192), Host("c", 8, 8192), Host("r", 4, 8192),
                   Host("g", 2, 2048, "tcg"), Host("full", 4, 1024), Host("cpu-full", 1, 65536),
                   Host("d", 16, 65536)}) {
    ASSERT_TRUE(store_->RegisterHost(reg).ok()) << reg.id;
  }
  ASSERT_TRUE(*store_->SetHostDraining("d", true));
  ASSERT_TRUE(store_->ReserveOnHost("r", 0, 1024, 1.0, 1.0)->has_value());

  PlacementQuery q;
  q.vcpus = 2;
  q.mem_mb = 2048;
  q.fresh_within_ms = 300;
  auto any = store_->PlacementCandidates(q);
  ASSERT_TRUE(any.ok()) << any.status().ToString();
  // c and b tie on free memory (8192); c has more free vCPUs. r has 7168 free, a 4096, g 2048.
  EXPECT_EQ(HostIds(*any), (std::vector<std::string>{"c", "b", "r", "a", "g"}));
  q.accel = "kvm";
  EXPECT_EQ(HostIds(*store_->PlacementCandidates(q)),
            (std::vector<std::string>{"c", "b", "r", "a"}));
  // Overcommitting memory 4×: full (4096 now) has room, and the order follows total × 4 − reserved.
  q.mem_overcommit = 4.0;
  EXPECT_EQ(HostIds(*store_->PlacementCandidates(q)),
            (std::vector<std::string>{"c", "b", "r", "a", "full"}));
  q.mem_overcommit = 1.0;
  q.qemu_build = "8.0.0";
  EXPECT_TRUE(store_->PlacementCandidates(q)->empty()) << "no host has that QEMU build";
  q.qemu_build = "7.2.0";
  q.cpu_model = "EPYC";
  EXPECT_EQ(store_->PlacementCandidates(q)->size(), 4u);
  q.fresh_within_ms = 60000;
  EXPECT_EQ(HostIds(*store_->PlacementCandidates(q)),
            (std::vector<std::string>{"stale", "c", "b", "r", "a"}))
      << "fresh enough for a longer threshold";
  q.vcpus = -1;
  EXPECT_EQ(store_->PlacementCandidates(q).status().code(), ErrorCode::kInvalidArgument);
}

TEST_F(StoreSuite, HostsWithAWarmBaseCloneComeFirstForABaseCreateAndTheCountIsFenced) {
  for (auto reg : {Host("a", 4, 8192), Host("b", 4, 4096), Host("c", 4, 4096)}) {
    ASSERT_TRUE(store_->RegisterHost(reg).ok()) << reg.id;
  }
  int64_t old_epoch = store_->GetHost("c")->value().epoch;
  int64_t c_epoch = store_->RegisterHost(Host("c", 4, 4096))->epoch;
  EXPECT_FALSE(*store_->SetHostWarm("c", old_epoch, 2)) << "an older process of the host";
  EXPECT_FALSE(*store_->SetHostWarm("nobody", 1, 2));
  auto set = store_->SetHostWarm("c", c_epoch, 2);
  ASSERT_TRUE(set.ok()) << set.status().ToString();
  EXPECT_TRUE(*set);
  EXPECT_EQ(store_->GetHost("c")->value().warm_base, 2);
  EXPECT_EQ(store_->GetHost("a")->value().warm_base, 0) << "nothing reported: none";

  PlacementQuery q;
  q.vcpus = 1;
  q.mem_mb = 512;
  EXPECT_EQ(HostIds(*store_->PlacementCandidates(q)), (std::vector<std::string>{"a", "b", "c"}))
      << "not a base create: free memory alone";
  q.prefer_warm_base = true;
  EXPECT_EQ(HostIds(*store_->PlacementCandidates(q)), (std::vector<std::string>{"c", "a", "b"}))
      << "the host with a warm clone first, the rest by free memory";
  ASSERT_TRUE(*store_->SetHostWarm("c", c_epoch, 0));
  EXPECT_EQ(HostIds(*store_->PlacementCandidates(q)), (std::vector<std::string>{"a", "b", "c"}));
  // Another host that reports a clone comes first instead.
  ASSERT_TRUE(*store_->SetHostWarm("b", store_->GetHost("b")->value().epoch, 1));
  EXPECT_EQ(HostIds(*store_->PlacementCandidates(q)), (std::vector<std::string>{"b", "a", "c"}));
}

TEST_F(StoreSuite, AuditsReservationsAgainstTheRecordsAndTrimsOnlyWhatNoRecordHolds) {
  ASSERT_TRUE(store_->RegisterHost(Host("h1", 8, 16384)).ok());
  ASSERT_TRUE(store_->RegisterHost(Host("h2", 8, 16384)).ok());
  auto team = store_->CreateTeam("acme", false);
  ASSERT_TRUE(team.ok());
  // h1: two sandboxes reserved and recorded (one creating, one running), a paused one that holds
  // nothing, and one reservation whose record never came (1 vCPU, 512 MiB leaked).
  int i = 0;
  for (auto state : {SandboxState::kCreating, SandboxState::kRunning, SandboxState::kPaused}) {
    ++i;
    auto r = Sandbox("s" + std::to_string(i), team->id, 1000 + i);
    r.host_id = "h1";
    r.state = state;
    ASSERT_TRUE(store_->InsertSandbox(r).ok());
    if (state != SandboxState::kPaused) {
      ASSERT_TRUE(store_->ReserveOnHost("h1", 1, 512, 1.0, 1.0)->has_value());
    }
  }
  ASSERT_TRUE(store_->ReserveOnHost("h1", 1, 512, 1.0, 1.0)->has_value());

  auto audit = store_->AuditReservations();
  ASSERT_TRUE(audit.ok()) << audit.status().ToString();
  ASSERT_EQ(audit->size(), 2u);
  const ReservationAudit& h1 = (*audit)[0];
  EXPECT_EQ(h1.host_id, "h1");
  EXPECT_EQ(h1.vcpu_reserved, 3);
  EXPECT_EQ(h1.mem_reserved_mb, 1536);
  EXPECT_EQ(h1.vcpu_held, 2);
  EXPECT_EQ(h1.mem_held_mb, 1024);
  EXPECT_EQ((*audit)[1].host_id, "h2");
  EXPECT_EQ((*audit)[1].vcpu_reserved, 0);
  EXPECT_EQ((*audit)[1].vcpu_held, 0);

  const int64_t seq = h1.seq;
  EXPECT_FALSE(*store_->TrimReservation("h1", 2, 512, seq)) << "below what the records hold";
  EXPECT_FALSE(*store_->TrimReservation("nobody", 1, 1, 0));
  // A reservation or release since the audit (a create in flight) makes the audit's view stale.
  ASSERT_TRUE(store_->ReserveOnHost("h1", 1, 512, 1.0, 1.0)->has_value());
  ASSERT_TRUE(store_->ReleaseOnHost("h1", 1, 512).ok());
  EXPECT_FALSE(*store_->TrimReservation("h1", 1, 512, seq)) << "trimmed on a stale audit";
  const int64_t fresh_seq = store_->AuditReservations()->at(0).seq;
  EXPECT_EQ(fresh_seq, seq + 2) << "a reservation and a release each count";
  auto trimmed = store_->TrimReservation("h1", 1, 512, fresh_seq);
  ASSERT_TRUE(trimmed.ok()) << trimmed.status().ToString();
  EXPECT_TRUE(*trimmed);
  auto after = store_->GetHost("h1")->value();
  EXPECT_EQ(after.vcpu_reserved, 2);
  EXPECT_EQ(after.mem_reserved_mb, 1024);
  EXPECT_FALSE(*store_->TrimReservation("h1", 1, 0, fresh_seq + 1)) << "nothing is leaked any more";
  EXPECT_EQ(store_->TrimReservation("h1", -1, 0, 0).status().code(), ErrorCode::kInvalidArgument);
}

TEST_F(StoreSuite, FindsTheSandboxesOnAHostAndThoseLeftCreating) {
  auto t = *store_->CreateTeam("t", false);
  auto add = [&](const std::string& id, const std::string& host, SandboxState state,
                 int64_t started) {
    auto r = Sandbox(id, t.id, started, {{"k", id}});
    r.host_id = host;
    r.state = state;
    ASSERT_TRUE(store_->InsertSandbox(r).ok()) << id;
  };
  add("s1", "h1", SandboxState::kRunning, 100);
  add("s2", "h1", SandboxState::kCreating, 50);
  add("s3", "h2", SandboxState::kCreating, 10);
  add("s4", "h1", SandboxState::kCreating, 500);
  add("s5", "", SandboxState::kCreating, 20);
  add("s6", "h1", SandboxState::kPaused, 1);

  auto on_h1 = store_->SandboxesOnHost("h1");
  ASSERT_TRUE(on_h1.ok()) << on_h1.status().ToString();
  std::vector<std::string> ids;
  for (const auto& r : *on_h1) ids.push_back(r.id);
  EXPECT_EQ(ids, (std::vector<std::string>{"s1", "s2", "s4", "s6"}));
  EXPECT_EQ((*on_h1)[0].metadata.at("k"), "s1") << "whole records";
  EXPECT_TRUE(store_->SandboxesOnHost("nobody")->empty());

  auto stale = store_->StaleCreating(100);
  ASSERT_TRUE(stale.ok()) << stale.status().ToString();
  ids.clear();
  for (const auto& r : *stale) ids.push_back(r.id);
  EXPECT_EQ(ids, (std::vector<std::string>{"s3", "s5", "s2"})) << "creating, older, oldest first";
  EXPECT_EQ((*stale)[0].host_id, "h2");
}

// --- Custom templates. ---

TemplateRecord Template(const std::string& id, const std::string& team, const std::string& alias,
                        int64_t created) {
  TemplateRecord t;
  t.id = id;
  t.team_id = team;
  t.alias = alias;
  t.created_at_ms = created;
  t.updated_at_ms = created + 1;
  return t;
}

TemplateBuildRecord Build(const std::string& id, const TemplateRecord& t, std::string_view status,
                          int64_t created) {
  TemplateBuildRecord b;
  b.id = id;
  b.template_id = t.id;
  b.team_id = t.team_id;
  b.status = std::string(status);
  b.cpu_count = 2;
  b.memory_mb = 1024;
  b.min_free_disk_mb = 512;
  b.created_at_ms = created;
  return b;
}

std::vector<std::string> BuildIds(const Result<std::vector<TemplateBuildRecord>>& builds) {
  std::vector<std::string> ids;
  if (!builds.ok()) return {"error: " + builds.status().ToString()};
  for (const auto& b : builds.value()) ids.push_back(b.id);
  return ids;
}

// "tag=build@assigned" for each tag ListTags gives.
std::vector<std::string> TagLines(const Result<std::vector<TemplateTagRecord>>& tags) {
  std::vector<std::string> lines;
  if (!tags.ok()) return {"error: " + tags.status().ToString()};
  for (const auto& t : tags.value()) {
    lines.push_back(t.tag + "=" + t.build_id + "@" + std::to_string(t.created_at_ms));
  }
  return lines;
}

std::string ResolvedId(const Result<std::optional<TemplateBuildRecord>>& b) {
  if (!b.ok()) return "error: " + b.status().ToString();
  return b.value().has_value() ? b.value()->id : "none";
}

TEST_F(StoreSuite, KeepsTemplatesByIdAndByAliasWithinTheirTeamOldestFirst) {
  auto a = *store_->CreateTeam("a", false);
  auto b = *store_->CreateTeam("b", false);
  auto newer = Template("tpl0000000000000new1", a.id, "web", 200);
  newer.is_public = true;
  newer.spawn_count = 3;
  newer.last_spawned_at_ms = 250;
  ASSERT_TRUE(store_->InsertTemplate(newer).ok());
  ASSERT_TRUE(store_->InsertTemplate(Template("tpl0000000000000old1", a.id, "db", 100)).ok());
  ASSERT_TRUE(store_->InsertTemplate(Template("tpl00000000000other1", b.id, "ml", 50)).ok());

  auto got = store_->GetTemplate(newer.id);
  ASSERT_TRUE(got.ok() && got->has_value()) << got.status().ToString();
  EXPECT_EQ((*got)->team_id, a.id);
  EXPECT_EQ((*got)->alias, "web");
  EXPECT_TRUE((*got)->is_public);
  EXPECT_EQ((*got)->created_at_ms, 200);
  EXPECT_EQ((*got)->updated_at_ms, 201);
  EXPECT_EQ((*got)->spawn_count, 3);
  EXPECT_EQ((*got)->last_spawned_at_ms, 250);
  EXPECT_FALSE(store_->GetTemplate("nope")->has_value());

  auto by_alias = store_->TemplateByAlias(a.id, "db");
  ASSERT_TRUE(by_alias.ok() && by_alias->has_value());
  EXPECT_EQ((*by_alias)->id, "tpl0000000000000old1");
  EXPECT_FALSE((*by_alias)->is_public);
  EXPECT_FALSE(store_->TemplateByAlias(b.id, "db")->has_value()) << "another team's alias";

  auto listed = store_->ListTemplates(a.id);
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  ASSERT_EQ(listed->size(), 2u);
  EXPECT_EQ((*listed)[0].alias, "db") << "oldest first";
  EXPECT_EQ((*listed)[1].alias, "web");
  EXPECT_EQ(store_->ListTemplates(b.id)->size(), 1u);
  EXPECT_TRUE(store_->ListTemplates("nobody")->empty());
}

TEST_F(StoreSuite, RefusesASecondTemplateOfTheSameAliasOrIdInATeamButNotInAnother) {
  auto a = *store_->CreateTeam("a", false);
  auto b = *store_->CreateTeam("b", false);
  ASSERT_TRUE(store_->InsertTemplate(Template("tpl1", a.id, "web", 100)).ok());
  EXPECT_EQ(store_->InsertTemplate(Template("tpl2", a.id, "web", 200)).code(),
            ErrorCode::kAlreadyExists);
  EXPECT_EQ(store_->InsertTemplate(Template("tpl1", a.id, "other", 200)).code(),
            ErrorCode::kAlreadyExists)
      << "the id is taken";
  EXPECT_TRUE(store_->InsertTemplate(Template("tpl3", b.id, "web", 300)).ok())
      << "aliases are unique within a team only";
  EXPECT_EQ(store_->ListTemplates(a.id)->size(), 1u);
  EXPECT_EQ((*store_->TemplateByAlias(b.id, "web"))->id, "tpl3");
}

TEST_F(StoreSuite, ANewBuildSupersedesOnlyWaitingBuildsThatShareOneOfItsTags) {
  auto team = *store_->CreateTeam("t", false);
  auto t = Template("tpl", team.id, "web", 1);
  auto other = Template("tpl-other", team.id, "db", 2);
  ASSERT_TRUE(store_->InsertTemplate(t).ok());
  ASSERT_TRUE(store_->InsertTemplate(other).ok());
  // Builds that are not waiting are never superseded, whatever is inserted after them.
  ASSERT_TRUE(
      store_->InsertBuild(Build("building-latest", t, kBuildBuilding, 10), {"latest"}).ok());
  ASSERT_TRUE(store_->InsertBuild(Build("ready-latest", t, kBuildReady, 20), {"latest"}).ok());
  ASSERT_TRUE(store_->InsertBuild(Build("waiting-v1", t, kBuildWaiting, 25), {"v1"}).ok());
  ASSERT_TRUE(store_->InsertBuild(Build("waiting-untagged", t, kBuildWaiting, 27), {}).ok());
  ASSERT_TRUE(store_->InsertBuild(Build("waiting-latest", t, kBuildWaiting, 30), {"latest"}).ok());
  ASSERT_TRUE(
      store_->InsertBuild(Build("other-waiting", other, kBuildWaiting, 50), {"latest"}).ok());
  EXPECT_EQ((*store_->GetBuild("building-latest"))->status, kBuildBuilding);
  EXPECT_EQ((*store_->GetBuild("waiting-latest"))->status, kBuildWaiting)
      << "another template's build of the same tag supersedes nothing here";

  auto newest = Build("new", t, kBuildWaiting, 1000);
  auto inserted = store_->InsertBuild(newest, {"v2", "latest"});
  ASSERT_TRUE(inserted.ok()) << inserted.ToString();

  auto superseded = store_->GetBuild("waiting-latest");
  ASSERT_TRUE(superseded.ok() && superseded->has_value());
  EXPECT_EQ((*superseded)->status, kBuildError);
  EXPECT_EQ((*superseded)->reason,
            R"({"message":"build superseded by a newer one","step":"base"})");
  EXPECT_EQ((*superseded)->finished_at_ms, 1000);
  EXPECT_EQ((*store_->GetBuild("waiting-v1"))->status, kBuildWaiting) << "no shared tag";
  EXPECT_EQ((*store_->GetBuild("waiting-untagged"))->status, kBuildWaiting);
  EXPECT_EQ((*store_->GetBuild("building-latest"))->status, kBuildBuilding) << "started already";
  EXPECT_EQ((*store_->GetBuild("ready-latest"))->status, kBuildReady);
  EXPECT_EQ((*store_->GetBuild("other-waiting"))->status, kBuildWaiting) << "another template";
  auto fresh = store_->GetBuild("new");
  ASSERT_TRUE(fresh.ok() && fresh->has_value());
  EXPECT_EQ((*fresh)->status, kBuildWaiting);
  EXPECT_EQ((*fresh)->template_id, t.id);
  EXPECT_EQ((*fresh)->team_id, team.id);
  EXPECT_EQ((*fresh)->cpu_count, 2u);
  EXPECT_EQ((*fresh)->memory_mb, 1024u);
  EXPECT_EQ((*fresh)->min_free_disk_mb, 512u);
  EXPECT_EQ((*fresh)->reason, "");
  EXPECT_EQ((*fresh)->finished_at_ms, 0);

  EXPECT_EQ(BuildIds(store_->ListBuilds(t.id)),
            (std::vector<std::string>{"new", "waiting-latest", "waiting-untagged", "waiting-v1",
                                      "ready-latest", "building-latest"}))
      << "newest first";
  EXPECT_EQ(BuildIds(store_->ListBuilds(other.id)), (std::vector<std::string>{"other-waiting"}));
  // The new build's tags point at it (assigned at its creation).
  EXPECT_EQ(
      TagLines(store_->ListTags(t.id)),
      (std::vector<std::string>{"latest=ready-latest@20", "v1=waiting-v1@25", "v2=new@1000"}));

  EXPECT_EQ(store_->InsertBuild(Build("new", t, kBuildWaiting, 2000), {"v3"}).code(),
            ErrorCode::kAlreadyExists);
  EXPECT_EQ(store_
                ->InsertBuild(
                    Build("orphan", Template("nope", team.id, "x", 1), kBuildWaiting, 2000), {"v3"})
                .code(),
            ErrorCode::kNotFound);
  EXPECT_EQ(TagLines(store_->ListTags(t.id)).size(), 3u) << "a failed insert assigns nothing";
  EXPECT_FALSE(store_->GetBuild("orphan")->has_value());
}

TEST_F(StoreSuite, TransitionsABuildOnlyFromTheStatusItIsIn) {
  auto team = *store_->CreateTeam("t", false);
  auto t = Template("tpl", team.id, "web", 1);
  ASSERT_TRUE(store_->InsertTemplate(t).ok());
  ASSERT_TRUE(store_->InsertBuild(Build("b1", t, kBuildWaiting, 10), {"latest"}).ok());
  ASSERT_TRUE(store_->InsertBuild(Build("b2", t, kBuildWaiting, 20), {"other"}).ok());

  BuildUpdate start;
  start.status = std::string(kBuildBuilding);
  start.spec = R"({"fromImage":"ubuntu"})";
  start.host_id = "h1";
  start.started_at_ms = 100;
  auto started = store_->TransitionBuild("b1", std::string(kBuildWaiting), start);
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  EXPECT_TRUE(*started);
  auto b1 = *store_->GetBuild("b1");
  ASSERT_TRUE(b1.has_value());
  EXPECT_EQ(b1->status, kBuildBuilding);
  EXPECT_EQ(b1->spec, R"({"fromImage":"ubuntu"})");
  EXPECT_EQ(b1->host_id, "h1");
  EXPECT_EQ(b1->started_at_ms, 100);
  EXPECT_EQ(b1->finished_at_ms, 0) << "unset fields keep their values";
  EXPECT_EQ(b1->reason, "");
  EXPECT_EQ(b1->cpu_count, 2u);

  BuildUpdate again = start;
  again.host_id = "h2";
  EXPECT_FALSE(*store_->TransitionBuild("b1", std::string(kBuildWaiting), again))
      << "it is not waiting any more";
  EXPECT_EQ((*store_->GetBuild("b1"))->host_id, "h1") << "a failed compare-and-set changes nothing";
  EXPECT_FALSE(*store_->TransitionBuild("nope", std::string(kBuildWaiting), again));

  BuildUpdate done;
  done.status = std::string(kBuildReady);
  done.result = R"({"user":"user"})";
  done.disk_size_mb = 4096;
  done.finished_at_ms = 200;
  EXPECT_TRUE(*store_->TransitionBuild("b1", std::string(kBuildBuilding), done));
  b1 = *store_->GetBuild("b1");
  EXPECT_EQ(b1->status, kBuildReady);
  EXPECT_EQ(b1->result, R"({"user":"user"})");
  EXPECT_EQ(b1->disk_size_mb, 4096u);
  EXPECT_EQ(b1->finished_at_ms, 200);
  EXPECT_EQ(b1->spec, R"({"fromImage":"ubuntu"})");
  EXPECT_EQ(b1->started_at_ms, 100);

  EXPECT_EQ(BuildIds(store_->BuildsInStatus(std::string(kBuildReady))),
            (std::vector<std::string>{"b1"}));
  EXPECT_EQ(BuildIds(store_->BuildsInStatus(std::string(kBuildWaiting))),
            (std::vector<std::string>{"b2"}));
  EXPECT_TRUE(store_->BuildsInStatus(std::string(kBuildBuilding))->empty());
}

TEST_F(StoreSuite, ATagResolvesToItsMostRecentlyAssignedBuildThatIsReady) {
  auto team = *store_->CreateTeam("t", false);
  auto t = Template("tpl", team.id, "web", 1);
  ASSERT_TRUE(store_->InsertTemplate(t).ok());
  ASSERT_TRUE(store_->InsertBuild(Build("old", t, kBuildReady, 100), {"latest"}).ok());
  ASSERT_TRUE(store_->InsertBuild(Build("mid", t, kBuildReady, 200), {"latest"}).ok());
  ASSERT_TRUE(store_->InsertBuild(Build("new", t, kBuildBuilding, 300), {"latest", "edge"}).ok());
  EXPECT_EQ(ResolvedId(store_->ResolveTag(t.id, "latest")), "mid")
      << "the newer build is still building";
  EXPECT_EQ(ResolvedId(store_->ResolveTag(t.id, "edge")), "none") << "no ready build has it";
  EXPECT_EQ(ResolvedId(store_->ResolveTag(t.id, "unknown")), "none");
  EXPECT_EQ(ResolvedId(store_->ResolveTag("nope", "latest")), "none");

  BuildUpdate ready;
  ready.status = std::string(kBuildReady);
  ASSERT_TRUE(*store_->TransitionBuild("new", std::string(kBuildBuilding), ready));
  auto resolved = store_->ResolveTag(t.id, "latest");
  ASSERT_TRUE(resolved.ok() && resolved->has_value());
  EXPECT_EQ((*resolved)->id, "new");
  EXPECT_EQ((*resolved)->status, kBuildReady) << "a whole build record";
  EXPECT_EQ((*resolved)->memory_mb, 1024u);

  // Assigning the tag to an older build again makes it the most recent assignment.
  ASSERT_TRUE(store_->AssignTags(t.id, "old", {"latest"}, 400).ok());
  EXPECT_EQ(ResolvedId(store_->ResolveTag(t.id, "latest")), "old");
  BuildUpdate fail;
  fail.status = std::string(kBuildError);
  ASSERT_TRUE(*store_->TransitionBuild("old", std::string(kBuildReady), fail));
  EXPECT_EQ(ResolvedId(store_->ResolveTag(t.id, "latest")), "new") << "failed builds are skipped";
}

TEST_F(StoreSuite, AssignsRemovesAndListsTagsOncePerTag) {
  auto team = *store_->CreateTeam("t", false);
  auto t = Template("tpl", team.id, "web", 1);
  auto other = Template("tpl-other", team.id, "db", 2);
  ASSERT_TRUE(store_->InsertTemplate(t).ok());
  ASSERT_TRUE(store_->InsertTemplate(other).ok());
  ASSERT_TRUE(store_->InsertBuild(Build("b1", t, kBuildReady, 100), {}).ok());
  ASSERT_TRUE(store_->InsertBuild(Build("b2", t, kBuildBuilding, 200), {}).ok());
  ASSERT_TRUE(store_->InsertBuild(Build("o1", other, kBuildReady, 300), {"latest"}).ok());
  EXPECT_TRUE(store_->ListTags(t.id)->empty());

  ASSERT_TRUE(store_->AssignTags(t.id, "b1", {"latest", "v1"}, 1000).ok());
  ASSERT_TRUE(store_->AssignTags(t.id, "b2", {"latest", "beta"}, 2000).ok());
  EXPECT_EQ(TagLines(store_->ListTags(t.id)),
            (std::vector<std::string>{"beta=b2@2000", "latest=b1@1000", "v1=b1@1000"}))
      << "by tag; latest is the ready build's, beta has no ready build: its latest assignment";
  EXPECT_EQ(TagLines(store_->ListTags(other.id)), (std::vector<std::string>{"latest=o1@300"}));

  EXPECT_EQ(store_->AssignTags(t.id, "o1", {"x"}, 3000).code(), ErrorCode::kNotFound)
      << "another template's build";
  EXPECT_EQ(store_->AssignTags(t.id, "nope", {"x"}, 3000).code(), ErrorCode::kNotFound);

  auto removed = store_->RemoveTags(t.id, {"latest", "nope", "latest"});
  ASSERT_TRUE(removed.ok()) << removed.status().ToString();
  EXPECT_EQ(*removed, 1) << "tags that had an assignment, each once";
  EXPECT_EQ(TagLines(store_->ListTags(t.id)),
            (std::vector<std::string>{"beta=b2@2000", "v1=b1@1000"}));
  EXPECT_EQ(ResolvedId(store_->ResolveTag(t.id, "latest")), "none");
  EXPECT_EQ(TagLines(store_->ListTags(other.id)), (std::vector<std::string>{"latest=o1@300"}))
      << "another template's tag of the same name stays";
  EXPECT_EQ(*store_->RemoveTags(t.id, {"beta", "v1"}), 2);
  EXPECT_EQ(*store_->RemoveTags(t.id, {}), 0);
  EXPECT_TRUE(store_->ListTags(t.id)->empty());
  EXPECT_TRUE(store_->GetBuild("b1")->has_value()) << "removing tags keeps the builds";
}

TEST_F(StoreSuite, NumbersABuildsLogAcrossAppendsAndPagesIt) {
  auto team = *store_->CreateTeam("t", false);
  auto t = Template("tpl", team.id, "web", 1);
  ASSERT_TRUE(store_->InsertTemplate(t).ok());
  ASSERT_TRUE(store_->InsertBuild(Build("b1", t, kBuildBuilding, 10), {}).ok());
  ASSERT_TRUE(store_->InsertBuild(Build("b2", t, kBuildBuilding, 20), {}).ok());
  auto entry = [](int64_t n) {
    return BuildLogRecord{1000 + n, n % 2 == 0 ? "info" : "error", std::to_string(n),
                          "line " + std::to_string(n)};
  };
  auto appended = store_->AppendBuildLogs("b1", {entry(0), entry(1), entry(2)});
  ASSERT_TRUE(appended.ok()) << appended.ToString();
  ASSERT_TRUE(store_->AppendBuildLogs("b1", {entry(3), entry(4)}).ok());
  ASSERT_TRUE(store_->AppendBuildLogs("b1", {}).ok());
  ASSERT_TRUE(store_->AppendBuildLogs("b2", {entry(7)}).ok());
  EXPECT_EQ(store_->AppendBuildLogs("nope", {entry(0)}).code(), ErrorCode::kNotFound);

  auto messages = [](const Result<std::vector<BuildLogRecord>>& logs) {
    std::vector<std::string> out;
    if (!logs.ok()) return std::vector<std::string>{"error: " + logs.status().ToString()};
    for (const auto& e : logs.value()) out.push_back(e.message);
    return out;
  };
  auto all = store_->BuildLogs("b1", 0, 100);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  ASSERT_EQ(all->size(), 5u);
  for (int64_t n = 0; n < 5; ++n) {
    const BuildLogRecord& e = (*all)[static_cast<size_t>(n)];
    EXPECT_EQ(e.timestamp_ms, 1000 + n);
    EXPECT_EQ(e.level, n % 2 == 0 ? "info" : "error");
    EXPECT_EQ(e.step, std::to_string(n));
    EXPECT_EQ(e.message, "line " + std::to_string(n));
  }
  EXPECT_EQ(messages(store_->BuildLogs("b1", 3, 100)),
            (std::vector<std::string>{"line 3", "line 4"}))
      << "the second append went on from 3";
  EXPECT_EQ(messages(store_->BuildLogs("b1", 1, 2)),
            (std::vector<std::string>{"line 1", "line 2"}));
  EXPECT_TRUE(store_->BuildLogs("b1", 5, 100)->empty()) << "past the end";
  EXPECT_TRUE(store_->BuildLogs("b1", 50, 10)->empty());
  EXPECT_EQ(messages(store_->BuildLogs("b2", 0, 100)), (std::vector<std::string>{"line 7"}))
      << "each build is numbered from 0";
  EXPECT_TRUE(store_->BuildLogs("nope", 0, 100)->empty());
}

TEST_F(StoreSuite, CountsTemplateSpawnsAndMakesTemplatesPublic) {
  auto team = *store_->CreateTeam("t", false);
  ASSERT_TRUE(store_->InsertTemplate(Template("tpl", team.id, "web", 1)).ok());
  ASSERT_TRUE(store_->RecordTemplateSpawn("tpl", 100).ok());
  ASSERT_TRUE(store_->RecordTemplateSpawn("tpl", 300).ok());
  auto t = *store_->GetTemplate("tpl");
  EXPECT_EQ(t->spawn_count, 2);
  EXPECT_EQ(t->last_spawned_at_ms, 300);
  EXPECT_FALSE(t->is_public);
  ASSERT_TRUE(store_->SetTemplatePublic("tpl", true).ok());
  EXPECT_TRUE((*store_->GetTemplate("tpl"))->is_public);
  ASSERT_TRUE(store_->SetTemplatePublic("tpl", true).ok()) << "setting it again is fine";
  ASSERT_TRUE(store_->SetTemplatePublic("tpl", false).ok());
  EXPECT_FALSE((*store_->GetTemplate("tpl"))->is_public);
  EXPECT_EQ((*store_->GetTemplate("tpl"))->spawn_count, 2);
  EXPECT_EQ(store_->RecordTemplateSpawn("nope", 1).code(), ErrorCode::kNotFound);
  EXPECT_EQ(store_->SetTemplatePublic("nope", true).code(), ErrorCode::kNotFound);
}

TEST_F(StoreSuite, DeletingATemplateDeletesItsBuildsTagsAndLogs) {
  auto team = *store_->CreateTeam("t", false);
  auto t = Template("tpl", team.id, "web", 1);
  auto kept = Template("tpl-kept", team.id, "db", 2);
  ASSERT_TRUE(store_->InsertTemplate(t).ok());
  ASSERT_TRUE(store_->InsertTemplate(kept).ok());
  ASSERT_TRUE(store_->InsertBuild(Build("b1", t, kBuildReady, 10), {"latest"}).ok());
  ASSERT_TRUE(store_->InsertBuild(Build("b2", t, kBuildBuilding, 20), {"v2"}).ok());
  ASSERT_TRUE(store_->InsertBuild(Build("k1", kept, kBuildBuilding, 30), {"latest"}).ok());
  BuildLogRecord line{5, "info", "1", "hello"};
  ASSERT_TRUE(store_->AppendBuildLogs("b1", {line, line}).ok());
  ASSERT_TRUE(store_->AppendBuildLogs("k1", {line}).ok());

  auto deleted = store_->DeleteTemplate(t.id);
  ASSERT_TRUE(deleted.ok()) << deleted.ToString();
  EXPECT_FALSE(store_->GetTemplate(t.id)->has_value());
  EXPECT_FALSE(store_->TemplateByAlias(team.id, "web")->has_value());
  EXPECT_FALSE(store_->GetBuild("b1")->has_value());
  EXPECT_FALSE(store_->GetBuild("b2")->has_value());
  EXPECT_TRUE(store_->ListBuilds(t.id)->empty());
  EXPECT_TRUE(store_->ListTags(t.id)->empty());
  EXPECT_TRUE(store_->BuildLogs("b1", 0, 100)->empty());
  EXPECT_EQ(BuildIds(store_->BuildsInStatus(std::string(kBuildBuilding))),
            (std::vector<std::string>{"k1"}));
  EXPECT_EQ(store_->DeleteTemplate(t.id).code(), ErrorCode::kNotFound) << "deleted once";
  EXPECT_EQ(store_->DeleteTemplate("nope").code(), ErrorCode::kNotFound);

  // Nothing of it is left behind: the alias, the ids and a log numbered from 0 are free again.
  ASSERT_TRUE(store_->InsertTemplate(t).ok());
  ASSERT_TRUE(store_->InsertBuild(Build("b1", t, kBuildWaiting, 40), {}).ok());
  EXPECT_TRUE(store_->ListTags(t.id)->empty());
  ASSERT_TRUE(store_->AppendBuildLogs("b1", {BuildLogRecord{6, "info", "", "again"}}).ok());
  auto logs = store_->BuildLogs("b1", 0, 100);
  ASSERT_TRUE(logs.ok());
  ASSERT_EQ(logs->size(), 1u);
  EXPECT_EQ((*logs)[0].message, "again");

  // The other template keeps all of its own.
  EXPECT_TRUE(store_->GetTemplate(kept.id)->has_value());
  EXPECT_EQ(TagLines(store_->ListTags(kept.id)), (std::vector<std::string>{"latest=k1@30"}));
  EXPECT_EQ(store_->BuildLogs("k1", 0, 100)->size(), 1u);
}

// A temporary directory, removed with everything in it at the end of the test.
class ScratchDir {
 public:
  ScratchDir() {
    auto d = MakeTempDir("/tmp", "moat-store-files.");
    EXPECT_TRUE(d.ok()) << d.status().ToString();
    if (d.ok()) path_ = *d;
  }
  ~ScratchDir() {
    if (!path_.empty()) (void)RemoveTree(path_);
  }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// `size` pseudo-random bytes, every value (NUL included) among them.
std::string RandomBytes(size_t size, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string out(size, '\0');
  for (size_t i = 0; i < size; ++i) {
    out[i] = i < 256 ? static_cast<char>(i) : static_cast<char>(rng() & 0xff);
  }
  return out;
}

std::string Contents(const std::string& path) {
  auto r = ReadFile(path);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? *r : std::string("<unreadable>");
}

TEST_F(StoreSuite, KeepsTemplateFilesWholeInPiecesAndReplacesThem) {
  auto team = *store_->CreateTeam("t", false);
  ScratchDir dir;
  ASSERT_FALSE(dir.path().empty());
  const std::string hash(64, 'a');
  EXPECT_FALSE(*store_->HasTemplateFile(team.id, hash));

  // 3.5 MiB: three whole pieces and half of one.
  const std::string big = RandomBytes((size_t{7} << 20) / 2, 1);
  ASSERT_NE(big.find('\0', 300), std::string::npos);
  ASSERT_TRUE(WriteFileAtomic(dir / "big", big).ok());
  auto put = store_->PutTemplateFile(team.id, hash, dir / "big");
  ASSERT_TRUE(put.ok()) << put.ToString();
  EXPECT_TRUE(*store_->HasTemplateFile(team.id, hash));
  auto read = store_->ReadTemplateFile(team.id, hash, dir / "out");
  ASSERT_TRUE(read.ok()) << read.ToString();
  std::string got = Contents(dir / "out");
  EXPECT_EQ(got.size(), big.size());
  EXPECT_TRUE(got == big) << "the bytes read back differ from those put";
  struct stat st {};
  ASSERT_EQ(::stat((dir / "out").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  // A second put replaces the file whole: no piece of the longer first one is left.
  const std::string second = RandomBytes((size_t{5} << 20) / 4, 2);
  ASSERT_TRUE(WriteFileAtomic(dir / "second", second).ok());
  put = store_->PutTemplateFile(team.id, hash, dir / "second");
  ASSERT_TRUE(put.ok()) << put.ToString();
  read = store_->ReadTemplateFile(team.id, hash, dir / "out");  // over the earlier copy
  ASSERT_TRUE(read.ok()) << read.ToString();
  got = Contents(dir / "out");
  EXPECT_EQ(got.size(), second.size());
  EXPECT_TRUE(got == second) << "the replacing file's bytes differ";

  // Exactly two pieces' worth, and an empty file (one empty piece), under other hashes.
  const std::string exact = RandomBytes(size_t{2} << 20, 3);
  ASSERT_TRUE(WriteFileAtomic(dir / "exact", exact).ok());
  ASSERT_TRUE(store_->PutTemplateFile(team.id, std::string(64, 'b'), dir / "exact").ok());
  ASSERT_TRUE(WriteFileAtomic(dir / "empty", "").ok());
  const std::string empty_hash(64, 'e');
  ASSERT_TRUE(store_->PutTemplateFile(team.id, empty_hash, dir / "empty").ok());
  EXPECT_TRUE(*store_->HasTemplateFile(team.id, empty_hash));
  ASSERT_TRUE(store_->ReadTemplateFile(team.id, std::string(64, 'b'), dir / "exact-out").ok());
  EXPECT_TRUE(Contents(dir / "exact-out") == exact);
  ASSERT_TRUE(WriteFileAtomic(dir / "empty-out", "stale").ok());
  read = store_->ReadTemplateFile(team.id, empty_hash, dir / "empty-out");
  ASSERT_TRUE(read.ok()) << read.ToString();
  EXPECT_EQ(Contents(dir / "empty-out"), "") << "read over a file, it is replaced";
  // The first file is unchanged by the others.
  ASSERT_TRUE(store_->ReadTemplateFile(team.id, hash, dir / "out").ok());
  EXPECT_TRUE(Contents(dir / "out") == second);

  // A put of a file that cannot be read changes nothing.
  EXPECT_FALSE(store_->PutTemplateFile(team.id, hash, dir / "missing").ok());
  ASSERT_TRUE(store_->ReadTemplateFile(team.id, hash, dir / "out").ok());
  EXPECT_TRUE(Contents(dir / "out") == second);

  // Nothing but the files asked for is left in the directory: no temporary names.
  EXPECT_EQ(DirNames(dir.path()), (std::vector<std::string>{"big", "empty", "empty-out", "exact",
                                                            "exact-out", "out", "second"}));
}

TEST_F(StoreSuite, TemplateFilesAreATeamsOwnAndAMissingOneWritesNothing) {
  auto team = *store_->CreateTeam("t", false);
  auto other = *store_->CreateTeam("o", false);
  ScratchDir dir;
  ASSERT_FALSE(dir.path().empty());
  const std::string hash(64, 'c');
  ASSERT_TRUE(WriteFileAtomic(dir / "in", RandomBytes(1000, 4)).ok());
  ASSERT_TRUE(store_->PutTemplateFile(team.id, hash, dir / "in").ok());

  EXPECT_TRUE(*store_->HasTemplateFile(team.id, hash));
  EXPECT_FALSE(*store_->HasTemplateFile(other.id, hash)) << "another team's file";
  EXPECT_FALSE(*store_->HasTemplateFile(team.id, std::string(64, 'd')));
  EXPECT_EQ(store_->ReadTemplateFile(other.id, hash, dir / "out").code(), ErrorCode::kNotFound);
  EXPECT_EQ(store_->ReadTemplateFile(team.id, std::string(64, 'd'), dir / "out").code(),
            ErrorCode::kNotFound);
  EXPECT_FALSE(PathExists(dir / "out")) << "a missing file leaves no destination behind";
  EXPECT_EQ(DirNames(dir.path()), (std::vector<std::string>{"in"}));

  // The other team's own file under the same hash is apart from the first's.
  ASSERT_TRUE(WriteFileAtomic(dir / "other-in", "theirs").ok());
  ASSERT_TRUE(store_->PutTemplateFile(other.id, hash, dir / "other-in").ok());
  ASSERT_TRUE(store_->ReadTemplateFile(other.id, hash, dir / "out").ok());
  EXPECT_EQ(Contents(dir / "out"), "theirs");
  ASSERT_TRUE(store_->ReadTemplateFile(team.id, hash, dir / "out").ok());
  EXPECT_TRUE(Contents(dir / "out") == RandomBytes(1000, 4));
}

TEST_F(StoreSuite, PutsOfOneTemplateFileAtOnceBothSucceedAndOneWins) {
  auto team = *store_->CreateTeam("t", false);
  ScratchDir dir;
  ASSERT_FALSE(dir.path().empty());
  const std::string hash(64, 'f');
  const std::string a = RandomBytes((size_t{3} << 20) / 2, 5), b = RandomBytes(5000, 6);
  ASSERT_TRUE(WriteFileAtomic(dir / "a", a).ok());
  ASSERT_TRUE(WriteFileAtomic(dir / "b", b).ok());
  for (int round = 0; round < 3; ++round) {
    Status sa, sb;
    std::latch go(2);
    std::thread ta([&] {
      go.arrive_and_wait();
      sa = store_->PutTemplateFile(team.id, hash + std::to_string(round), dir / "a");
    });
    std::thread tb([&] {
      go.arrive_and_wait();
      sb = store_->PutTemplateFile(team.id, hash + std::to_string(round), dir / "b");
    });
    ta.join();
    tb.join();
    EXPECT_TRUE(sa.ok()) << sa.ToString();
    EXPECT_TRUE(sb.ok()) << sb.ToString();
    ASSERT_TRUE(store_->ReadTemplateFile(team.id, hash + std::to_string(round), dir / "out").ok());
    std::string got = Contents(dir / "out");
    EXPECT_TRUE(got == a || got == b) << "one put's file whole, not a mix";
  }
}

// --- History, audit, usage and dashboard sessions (store/history.h). ---

HistoryRecord History(const std::string& id, const std::string& team, int64_t created,
                      std::map<std::string, std::string> metadata = {},
                      const std::string& template_id = "base") {
  HistoryRecord h;
  h.sandbox_id = id;
  h.team_id = team;
  h.template_id = template_id;
  h.key_id = "key-1";
  h.key_name = "ci";
  h.metadata = std::move(metadata);
  h.cpu_count = 2;
  h.memory_mb = 1024;
  h.created_at_ms = created;
  h.state = "running";
  return h;
}

// Every page of a history listing, the ids in order; the number of pages in `pages`.
std::vector<std::string> AllHistoryIds(Store& store, HistoryFilter f, int* pages = nullptr) {
  std::vector<std::string> ids;
  int n = 0;
  for (; n < 50; ++n) {
    auto page = store.ListHistory(f);
    EXPECT_TRUE(page.ok()) << page.status().ToString();
    if (!page.ok()) break;
    EXPECT_LE(page->items.size(), static_cast<size_t>(f.limit));
    for (const auto& h : page->items) ids.push_back(h.sandbox_id);
    if (page->next_token.empty()) break;
    f.next_token = page->next_token;
  }
  if (pages != nullptr) *pages = n + 1;
  return ids;
}

CommandRecord Command(const std::string& sandbox, int64_t started, const std::string& line) {
  CommandRecord c;
  c.sandbox_id = sandbox;
  c.team_id = "t";
  c.command = line;
  c.user = "user";
  c.cwd = "/home/user";
  c.started_at_ms = started;
  return c;
}

// Starts and finishes a command that ended with `exit_code`, `signal` or `error`.
void RunCommand(Store& store, const std::string& sandbox, std::optional<int32_t> exit_code,
                const std::string& signal = "", const std::string& error = "") {
  auto id = store.StartCommand(Command(sandbox, 10, "true"));
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  CommandRecord c = Command(sandbox, 10, "true");
  c.id = *id;
  c.ended_at_ms = 20;
  c.exit_code = exit_code;
  c.signal = signal;
  c.error = error;
  ASSERT_TRUE(store.FinishCommand(c).ok());
}

AuditRecord Audit(int64_t at, const std::string& team, const std::string& action,
                  const std::string& target) {
  AuditRecord a;
  a.at_ms = at;
  a.team_id = team;
  a.key_id = "k1";
  a.key_name = "ci";
  a.source = "10.0.0.1";
  a.request_id = "req-" + std::to_string(at);
  a.action = action;
  a.target = target;
  a.outcome = "ok";
  a.status = 200;
  return a;
}

std::vector<int64_t> AuditTimes(const Result<AuditPage>& page) {
  std::vector<int64_t> out;
  if (!page.ok()) return out;
  for (const auto& a : page->items) out.push_back(a.at_ms);
  return out;
}

constexpr int64_t kHour = 3600 * 1000;

TEST_F(StoreSuite, KeyByHashNamesTheTeamAndTheKeyUntilItIsRevoked) {
  auto team = *store_->CreateTeam("acme", false);
  auto key = *store_->AddApiKey(team.id, "ci", "hash-ci", "e2b_…");
  (void)*store_->AddApiKey(team.id, "other", "hash-other", "e2b_…");
  auto found = store_->KeyByHash("hash-ci");
  ASSERT_TRUE(found.ok() && found->has_value()) << found.status().ToString();
  EXPECT_EQ((*found)->first.id, team.id);
  EXPECT_EQ((*found)->first.name, "acme");
  EXPECT_EQ((*found)->second.id, key.id);
  EXPECT_EQ((*found)->second.name, "ci");
  EXPECT_EQ((*found)->second.team_id, team.id);
  EXPECT_FALSE(store_->KeyByHash("nope")->has_value());
  ASSERT_TRUE(store_->RevokeApiKey(team.id, key.id).ok());
  EXPECT_FALSE(store_->KeyByHash("hash-ci")->has_value());
}

TEST_F(StoreSuite, AHistoryIsInsertedOnceFollowsItsStateAndEndsOnce) {
  HistoryRecord h = History("s1", "t", 1000, {{"app", "web"}});
  h.parent_kind = "fork";
  h.parent_id = "s0";
  h.host_id = "host-a";
  ASSERT_TRUE(store_->InsertHistory(h).ok());
  HistoryRecord again = History("s1", "t", 5000);
  again.state = "paused";
  ASSERT_TRUE(store_->InsertHistory(again).ok()) << "a second insert is no error";
  auto got = store_->GetHistory("s1");
  ASSERT_TRUE(got.ok() && got->has_value()) << got.status().ToString();
  EXPECT_EQ((*got)->created_at_ms, 1000) << "the second insert changed nothing";
  EXPECT_EQ((*got)->state, "running");
  EXPECT_EQ((*got)->metadata, (std::map<std::string, std::string>{{"app", "web"}}));
  EXPECT_EQ((*got)->parent_kind, "fork");
  EXPECT_EQ((*got)->parent_id, "s0");
  EXPECT_EQ((*got)->key_id, "key-1");
  EXPECT_EQ((*got)->key_name, "ci");
  EXPECT_EQ((*got)->cpu_count, 2u);
  EXPECT_EQ((*got)->memory_mb, 1024u);
  EXPECT_EQ((*got)->ended_at_ms, 0);

  ASSERT_TRUE(store_->SetHistoryState("s1", "paused", "").ok());
  EXPECT_EQ((*store_->GetHistory("s1"))->state, "paused");
  EXPECT_EQ((*store_->GetHistory("s1"))->host_id, "host-a") << "an empty host keeps it";
  ASSERT_TRUE(store_->SetHistoryState("s1", "running", "host-b").ok());
  EXPECT_EQ((*store_->GetHistory("s1"))->host_id, "host-b");
  EXPECT_TRUE(store_->SetHistoryState("nobody", "running", "").ok());

  auto ended = store_->EndHistory("s1", 2000, "killed", kEndKilled, "ci", "");
  ASSERT_TRUE(ended.ok());
  EXPECT_TRUE(*ended);
  auto second = store_->EndHistory("s1", 3000, "error", kEndError, "", "boom");
  ASSERT_TRUE(second.ok());
  EXPECT_FALSE(*second) << "the first end is the one kept";
  EXPECT_FALSE(*store_->EndHistory("nobody", 3000, "killed", kEndKilled, "", ""));
  ASSERT_TRUE(store_->SetHistoryState("s1", "running", "host-c").ok());
  got = store_->GetHistory("s1");
  EXPECT_EQ((*got)->ended_at_ms, 2000);
  EXPECT_EQ((*got)->state, "killed") << "an ended record's state does not change";
  EXPECT_EQ((*got)->host_id, "host-b");
  EXPECT_EQ((*got)->end_reason, kEndKilled);
  EXPECT_EQ((*got)->ended_by, "ci");
  EXPECT_FALSE(store_->GetHistory("nobody")->has_value());
}

TEST_F(StoreSuite, ListsATeamsHistoryNewestFirstThroughEveryFilterAndPage) {
  // created at: a 100, b 200, c 300 (same time as d), d 300, e 400, f 500; x: another team.
  ASSERT_TRUE(
      store_->InsertHistory(History("a", "t", 100, {{"app", "web"}, {"env", "prod"}})).ok());
  ASSERT_TRUE(store_->InsertHistory(History("b", "t", 200, {{"app", "web"}}, "tpl2")).ok());
  ASSERT_TRUE(store_->InsertHistory(History("c", "t", 300, {{"app", "db"}})).ok());
  ASSERT_TRUE(
      store_->InsertHistory(History("d", "t", 300, {{"app", "web"}, {"env", "prod"}})).ok());
  ASSERT_TRUE(store_->InsertHistory(History("e", "t", 400)).ok());
  ASSERT_TRUE(store_->InsertHistory(History("f", "t", 500, {{"env", "prod"}})).ok());
  ASSERT_TRUE(store_->InsertHistory(History("x", "other", 250, {{"app", "web"}})).ok());
  ASSERT_TRUE(*store_->EndHistory("a", 150, "killed", kEndKilled, "ci", ""));
  ASSERT_TRUE(*store_->EndHistory("c", 1000, "killed", kEndKilled, "ci", ""));
  ASSERT_TRUE(store_->SetHistoryState("e", "paused", "").ok());

  HistoryFilter f;
  f.team_id = "t";
  f.limit = 2;
  int pages = 0;
  EXPECT_EQ(AllHistoryIds(*store_, f, &pages),
            (std::vector<std::string>{"f", "e", "d", "c", "b", "a"}))
      << "newest first; equal times by id, descending";
  EXPECT_EQ(pages, 3);

  HistoryFilter live = f;
  live.state = "live";
  EXPECT_EQ(AllHistoryIds(*store_, live), (std::vector<std::string>{"f", "e", "d", "b"}));
  HistoryFilter ended = f;
  ended.state = "ended";
  EXPECT_EQ(AllHistoryIds(*store_, ended), (std::vector<std::string>{"c", "a"}));
  HistoryFilter paused = f;
  paused.state = "paused";
  EXPECT_EQ(AllHistoryIds(*store_, paused), (std::vector<std::string>{"e"}));
  HistoryFilter tpl = f;
  tpl.template_id = "tpl2";
  EXPECT_EQ(AllHistoryIds(*store_, tpl), (std::vector<std::string>{"b"}));

  HistoryFilter meta = f;
  meta.limit = 1;
  meta.metadata = {{"app", "web"}};
  EXPECT_EQ(AllHistoryIds(*store_, meta, &pages), (std::vector<std::string>{"d", "b", "a"}));
  EXPECT_EQ(pages, 3) << "one match per page, whatever lies between the matches";
  meta.metadata = {{"app", "web"}, {"env", "prod"}};
  EXPECT_EQ(AllHistoryIds(*store_, meta), (std::vector<std::string>{"d", "a"}))
      << "every pair must match";
  meta.metadata = {{"app", "nothing"}};
  EXPECT_TRUE(AllHistoryIds(*store_, meta).empty());

  // from: created at or after it, alive, or ended at or after it; to: created before it.
  HistoryFilter window = f;
  window.from_ms = 300;
  EXPECT_EQ(AllHistoryIds(*store_, window), (std::vector<std::string>{"f", "e", "d", "c", "b"}))
      << "a ended at 150; b is alive; c ended at 1000";
  window.to_ms = 400;
  EXPECT_EQ(AllHistoryIds(*store_, window), (std::vector<std::string>{"d", "c", "b"}));
  window.state = "live";
  EXPECT_EQ(AllHistoryIds(*store_, window), (std::vector<std::string>{"d", "b"}));

  HistoryFilter other = f;
  other.team_id = "other";
  EXPECT_EQ(AllHistoryIds(*store_, other), (std::vector<std::string>{"x"}));

  f.next_token = "nodot";
  EXPECT_EQ(store_->ListHistory(f).status().code(), ErrorCode::kInvalidArgument);
  f.next_token = "x.abc";
  EXPECT_EQ(store_->ListHistory(f).status().code(), ErrorCode::kInvalidArgument);
}

TEST_F(StoreSuite, FailedOnlyListsErrorsLostHostsAndSandboxesWithAFailedCommand) {
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(store_->InsertHistory(History("s" + std::to_string(i), "t", 100 + i)).ok());
  }
  ASSERT_TRUE(*store_->EndHistory("s0", 200, "error", kEndError, "", "boot failed"));
  ASSERT_TRUE(*store_->EndHistory("s1", 200, "lost", kEndHostLost, "", ""));
  ASSERT_TRUE(*store_->EndHistory("s2", 200, "killed", kEndKilled, "ci", ""));
  ASSERT_TRUE(*store_->EndHistory("s3", 200, "killed", kEndTimeout, "", ""));
  RunCommand(*store_, "s3", 0);  // succeeded: not failed
  RunCommand(*store_, "s4", 2);  // non-zero exit
  RunCommand(*store_, "s5", std::nullopt, "SIGKILL");
  RunCommand(*store_, "s6", std::nullopt, "", "envd: unavailable");
  ASSERT_TRUE(store_->StartCommand(Command("s7", 10, "sleep 1000")).ok());  // still running
  // A terminal's shell killed as its page closed is no failure; nor is a command whose client
  // left while it ran on (no end).
  ASSERT_TRUE(store_->InsertHistory(History("s8", "t", 90)).ok());
  CommandRecord pty = Command("s8", 10, "/bin/bash -l");
  pty.kind = "pty";
  pty.id = *store_->StartCommand(pty);
  pty.ended_at_ms = 20;
  pty.signal = "signal: killed";
  ASSERT_TRUE(store_->FinishCommand(pty).ok());
  CommandRecord detached = Command("s8", 10, "server");
  detached.id = *store_->StartCommand(detached);
  detached.error = "the client left while it ran; it runs on, detached";
  ASSERT_TRUE(store_->FinishCommand(detached).ok());
  HistoryFilter f;
  f.team_id = "t";
  f.failed_only = true;
  f.limit = 1;
  int pages = 0;
  EXPECT_EQ(AllHistoryIds(*store_, f, &pages),
            (std::vector<std::string>{"s6", "s5", "s4", "s1", "s0"}));
  EXPECT_EQ(pages, 5);
  f.state = "live";
  EXPECT_EQ(AllHistoryIds(*store_, f), (std::vector<std::string>{"s6", "s5", "s4"}));
}

TEST_F(StoreSuite, FindsAHistorysChildrenByParentOldestFirst) {
  ASSERT_TRUE(store_->InsertHistory(History("parent", "t", 100)).ok());
  const std::vector<std::pair<std::string, int64_t>> lives = {
      {"fork2", 300}, {"fork1", 200}, {"unrelated", 250}};
  for (const auto& [id, at] : lives) {
    HistoryRecord h = History(id, "t", at);
    if (id != "unrelated") {
      h.parent_kind = "fork";
      h.parent_id = "parent";
    }
    ASSERT_TRUE(store_->InsertHistory(h).ok());
  }
  auto children = store_->HistoryChildren("parent");
  ASSERT_TRUE(children.ok()) << children.status().ToString();
  ASSERT_EQ(children->size(), 2u);
  EXPECT_EQ((*children)[0].sandbox_id, "fork1");
  EXPECT_EQ((*children)[1].sandbox_id, "fork2");
  EXPECT_TRUE(store_->HistoryChildren("fork1")->empty());
}

TEST_F(StoreSuite, KeepsASandboxsEventsInTheOrderAppendedEvenBeforeItsHistory) {
  const char* kinds[] = {"created", "paused", "resumed", "killed", "ended"};
  int64_t at = 100;
  for (const char* kind : kinds) {
    // Times need not increase: the order appended is the order kept.
    ASSERT_TRUE(store_->AppendSandboxEvent({0, "s1", "t", at, kind, 5, "{\"k\":1}"}).ok());
    ASSERT_TRUE(store_->AppendSandboxEvent({0, "s2", "t", at, kind, 0, ""}).ok());
    at = at == 100 ? 50 : at + 100;
  }
  auto events = store_->SandboxEvents("s1");
  ASSERT_TRUE(events.ok()) << events.status().ToString();
  ASSERT_EQ(events->size(), 5u);
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ((*events)[i].kind, kinds[i]);
    EXPECT_EQ((*events)[i].sandbox_id, "s1");
    EXPECT_EQ((*events)[i].team_id, "t");
    EXPECT_EQ((*events)[i].duration_ms, 5);
    EXPECT_EQ((*events)[i].detail, "{\"k\":1}");
    if (i > 0) {
      EXPECT_GT((*events)[i].seq, (*events)[i - 1].seq);
    }
  }
  EXPECT_EQ((*events)[1].at_ms, 50);
  EXPECT_TRUE(store_->SandboxEvents("nobody")->empty());
}

TEST_F(StoreSuite, RecordsCommandsFromStartToEndAndListsThemNewestFirstInPages) {
  std::vector<int64_t> ids;
  for (int i = 0; i < 5; ++i) {
    auto id = store_->StartCommand(Command("s1", 100 + i, "echo " + std::to_string(i)));
    ASSERT_TRUE(id.ok()) << id.status().ToString();
    if (!ids.empty()) {
      EXPECT_GT(*id, ids.back());
    }
    ids.push_back(*id);
  }
  ASSERT_TRUE(store_->StartCommand(Command("s2", 100, "other")).ok());
  CommandRecord done = Command("s1", 101, "ignored");
  done.id = ids[1];
  done.ended_at_ms = 150;
  done.exit_code = 3;
  done.error = "";
  done.stdout_head = "head";
  done.stdout_tail = "tail";
  done.stderr_head = "err";
  done.stdout_bytes = 9000;
  done.stderr_bytes = 3;
  ASSERT_TRUE(store_->FinishCommand(done).ok());
  CommandRecord unknown = done;
  unknown.id = ids.back() + 1000;
  EXPECT_EQ(store_->FinishCommand(unknown).code(), ErrorCode::kNotFound);

  auto all = store_->ListCommands("s1", 0, 50);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  ASSERT_EQ(all->size(), 5u);
  EXPECT_EQ((*all)[0].id, ids[4]);
  EXPECT_EQ((*all)[4].id, ids[0]);
  const CommandRecord& c = (*all)[3];
  EXPECT_EQ(c.command, "echo 1") << "the command line is the started one";
  EXPECT_EQ(c.user, "user");
  EXPECT_EQ(c.cwd, "/home/user");
  EXPECT_EQ(c.kind, "command");
  EXPECT_EQ(c.started_at_ms, 101);
  EXPECT_EQ(c.ended_at_ms, 150);
  ASSERT_TRUE(c.exit_code.has_value());
  EXPECT_EQ(*c.exit_code, 3);
  EXPECT_EQ(c.stdout_head, "head");
  EXPECT_EQ(c.stdout_tail, "tail");
  EXPECT_EQ(c.stderr_head, "err");
  EXPECT_EQ(c.stdout_bytes, 9000);
  EXPECT_EQ(c.stderr_bytes, 3);
  EXPECT_FALSE((*all)[0].exit_code.has_value()) << "still running";
  EXPECT_EQ((*all)[0].ended_at_ms, 0);

  auto page1 = store_->ListCommands("s1", 0, 2);
  ASSERT_EQ(page1->size(), 2u);
  auto page2 = store_->ListCommands("s1", page1->back().id, 2);
  ASSERT_EQ(page2->size(), 2u);
  EXPECT_EQ((*page2)[0].id, ids[2]);
  EXPECT_EQ((*page2)[1].id, ids[1]);
  auto page3 = store_->ListCommands("s1", page2->back().id, 2);
  ASSERT_EQ(page3->size(), 1u);
  EXPECT_EQ((*page3)[0].id, ids[0]);
  EXPECT_TRUE(store_->ListCommands("s1", ids[0], 2)->empty());

  CommandRecord code = Command("s1", 200, std::string(5000, 'x'));
  code.kind = "code";
  auto long_id = store_->StartCommand(code);
  ASSERT_TRUE(long_id.ok());
  auto newest = store_->ListCommands("s1", 0, 1);
  ASSERT_EQ(newest->size(), 1u);
  EXPECT_EQ((*newest)[0].kind, "code");
  EXPECT_EQ((*newest)[0].command, std::string(4096, 'x')) << "at most 4 KiB kept";
}

TEST_F(StoreSuite, KeepsTheLatestConsoleLogOfASandbox) {
  EXPECT_FALSE(store_->ConsoleLog("s1")->has_value());
  ASSERT_TRUE(store_->SaveConsoleLog("s1", "boot\nfirst").ok());
  ASSERT_TRUE(store_->SaveConsoleLog("s1", "boot\nsecond").ok());
  auto log = store_->ConsoleLog("s1");
  ASSERT_TRUE(log.ok() && log->has_value());
  EXPECT_EQ(**log, "boot\nsecond");
  EXPECT_FALSE(store_->ConsoleLog("s2")->has_value());
}

TEST_F(StoreSuite, ListsTheAuditLogNewestFirstByTeamActionTargetAndTimeInPages) {
  ASSERT_TRUE(store_->AppendAudit(Audit(100, "t", "sandbox.create", "s1")).ok());
  ASSERT_TRUE(store_->AppendAudit(Audit(200, "t", "sandbox.kill", "s1")).ok());
  ASSERT_TRUE(store_->AppendAudit(Audit(300, "other", "sandbox.create", "s9")).ok());
  ASSERT_TRUE(store_->AppendAudit(Audit(400, "t", "key.create", "k2")).ok());
  ASSERT_TRUE(store_->AppendAudit(Audit(500, "t", "sandboxes.odd", "s1")).ok());
  AuditRecord failed = Audit(600, "t", "sandbox.pause", "s2");
  failed.outcome = "error";
  failed.status = 409;
  failed.detail = "{\"message\":\"not running\"}";
  ASSERT_TRUE(store_->AppendAudit(failed).ok());

  AuditFilter f;
  auto all = store_->ListAudit(f);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  EXPECT_EQ(AuditTimes(all), (std::vector<int64_t>{600, 500, 400, 300, 200, 100}))
      << "an empty team: every team's";
  const AuditRecord& newest = all->items[0];
  EXPECT_GT(newest.seq, all->items[1].seq);
  EXPECT_EQ(newest.outcome, "error");
  EXPECT_EQ(newest.status, 409);
  EXPECT_EQ(newest.detail, "{\"message\":\"not running\"}");
  EXPECT_EQ(newest.key_id, "k1");
  EXPECT_EQ(newest.key_name, "ci");
  EXPECT_EQ(newest.source, "10.0.0.1");
  EXPECT_EQ(newest.request_id, "req-600");
  EXPECT_EQ(newest.target, "s2");

  f.team_id = "t";
  EXPECT_EQ(AuditTimes(store_->ListAudit(f)), (std::vector<int64_t>{600, 500, 400, 200, 100}));
  f.action = "sandbox.";
  EXPECT_EQ(AuditTimes(store_->ListAudit(f)), (std::vector<int64_t>{600, 200, 100}))
      << "a prefix ending in a dot: that family, not \"sandboxes.\"";
  f.action = "sandbox.kill";
  EXPECT_EQ(AuditTimes(store_->ListAudit(f)), (std::vector<int64_t>{200}));
  f.action = "sandbox";
  EXPECT_TRUE(AuditTimes(store_->ListAudit(f)).empty()) << "without the dot: that action only";
  f.action = "";
  f.target = "s1";
  EXPECT_EQ(AuditTimes(store_->ListAudit(f)), (std::vector<int64_t>{500, 200, 100}));
  f.target = "";
  f.from_ms = 200;
  f.to_ms = 500;
  EXPECT_EQ(AuditTimes(store_->ListAudit(f)), (std::vector<int64_t>{400, 200}))
      << "from included, to excluded";

  AuditFilter paged;
  paged.limit = 2;
  std::vector<int64_t> seen;
  int pages = 0;
  for (; pages < 10; ++pages) {
    auto page = store_->ListAudit(paged);
    ASSERT_TRUE(page.ok()) << page.status().ToString();
    EXPECT_LE(page->items.size(), 2u);
    for (auto t : AuditTimes(page)) seen.push_back(t);
    if (page->next_token.empty()) break;
    paged.next_token = page->next_token;
  }
  EXPECT_EQ(pages, 2);
  EXPECT_EQ(seen, (std::vector<int64_t>{600, 500, 400, 300, 200, 100}));
  paged.next_token = "seven";
  EXPECT_EQ(store_->ListAudit(paged).status().code(), ErrorCode::kInvalidArgument);
}

TEST_F(StoreSuite, CountsNetworkReadingsOnceIntoHourlyBucketsAcrossRestartsAndSlotResets) {
  EXPECT_EQ(store_->RecordNetUsage("s1", 0, 10, 10, 1).code(), ErrorCode::kNotFound)
      << "no history";
  ASSERT_TRUE(store_->InsertHistory(History("s1", "t", 10)).ok());
  auto totals = [&] {
    auto h = store_->GetHistory("s1");
    return std::pair<int64_t, int64_t>((*h)->egress_bytes, (*h)->ingress_bytes);
  };
  // Hour 0, slot generation 1: a first reading counts all of it, then only what grew.
  ASSERT_TRUE(store_->RecordNetUsage("s1", 0, 100, 1000, 1).ok());
  ASSERT_TRUE(store_->RecordNetUsage("s1", 0, 150, 1000, 1).ok());
  EXPECT_EQ(totals(), std::make_pair(int64_t{150}, int64_t{1000}));
  // A reading already counted (as after a moatd restart reads the same counters) adds nothing.
  ASSERT_TRUE(store_->RecordNetUsage("s1", 0, 150, 1000, 1).ok());
  ASSERT_TRUE(store_->RecordNetUsage("s1", kHour, 150, 1000, 1).ok());
  EXPECT_EQ(totals(), std::make_pair(int64_t{150}, int64_t{1000}));
  // Hour 1: growth goes into the new hour's bucket.
  ASSERT_TRUE(store_->RecordNetUsage("s1", kHour, 250, 1500, 1).ok());
  // A stale reading of the same slot (it lost a race with a newer one) adds nothing.
  ASSERT_TRUE(store_->RecordNetUsage("s1", kHour, 200, 1400, 1).ok());
  EXPECT_EQ(totals(), std::make_pair(int64_t{250}, int64_t{1500}));
  // Hour 2: a new slot (generation 2, after a resume) counts whole, even above the old reading.
  ASSERT_TRUE(store_->RecordNetUsage("s1", 2 * kHour, 40, 2000, 2).ok());
  ASSERT_TRUE(store_->RecordNetUsage("s1", 2 * kHour, 60, 2100, 2).ok());
  EXPECT_EQ(totals(), std::make_pair(int64_t{150 + 100 + 60}, int64_t{1000 + 500 + 2100}));
  // Generation 3 starting at zero is its baseline.
  ASSERT_TRUE(store_->RecordNetUsage("s1", 2 * kHour, 0, 0, 3).ok());
  ASSERT_TRUE(store_->RecordNetUsage("s1", 2 * kHour, 5, 7, 3).ok());
  EXPECT_EQ(totals(), std::make_pair(int64_t{315}, int64_t{3607}));
  EXPECT_EQ(store_->RecordNetUsage("s1", 0, -1, 0, 3).code(), ErrorCode::kInvalidArgument);

  auto in = store_->LoadUsageInput("t", 0, 3 * kHour);
  ASSERT_TRUE(in.ok()) << in.status().ToString();
  ASSERT_EQ(in->net.size(), 3u);
  EXPECT_EQ(in->net[0].hour_ms, 0);
  EXPECT_EQ(in->net[0].egress_bytes, 150);
  EXPECT_EQ(in->net[0].ingress_bytes, 1000);
  EXPECT_EQ(in->net[1].hour_ms, kHour);
  EXPECT_EQ(in->net[1].egress_bytes, 100);
  EXPECT_EQ(in->net[1].ingress_bytes, 500);
  EXPECT_EQ(in->net[2].hour_ms, 2 * kHour);
  EXPECT_EQ(in->net[2].egress_bytes, 65);
  EXPECT_EQ(in->net[2].ingress_bytes, 2107);
}

TEST_F(StoreSuite, RecordsAStoredSnapshotOnceAndItsDeletionOnce) {
  ASSERT_TRUE(store_->RecordSnapshotStored({"snap1", "t", "base", 4096, 100, 0}).ok());
  ASSERT_TRUE(store_->RecordSnapshotStored({"snap1", "t", "other", 1, 999, 0}).ok())
      << "a second record of the id is no error";
  ASSERT_TRUE(store_->RecordSnapshotDeleted("snap1", 500).ok());
  ASSERT_TRUE(store_->RecordSnapshotDeleted("snap1", 800).ok());
  ASSERT_TRUE(store_->RecordSnapshotDeleted("nobody", 800).ok());
  auto in = store_->LoadUsageInput("t", 0, 1000);
  ASSERT_TRUE(in.ok()) << in.status().ToString();
  ASSERT_EQ(in->snapshots.size(), 1u);
  const SnapshotStorageRecord& s = in->snapshots[0];
  EXPECT_EQ(s.template_id, "base");
  EXPECT_EQ(s.bytes, 4096);
  EXPECT_EQ(s.created_at_ms, 100);
  EXPECT_EQ(s.deleted_at_ms, 500) << "the first deletion is the one kept";
}

TEST_F(StoreSuite, UsageInputHoldsWhatOverlapsTheWindowWithItsEventsCommandsAndBuckets) {
  const int64_t from = 10 * kHour, to = 20 * kHour;
  struct Life {
    const char* id;
    const char* team;
    int64_t created, ended;
  };
  const Life lives[] = {
      {"before", "t", from - 5 * kHour, from - kHour},  // ended before: out
      {"at-from", "t", from - 5 * kHour, from},         // ended as it began: out
      {"into", "t", from - 5 * kHour, from + kHour},    // ended within: in
      {"alive", "t", from - 5 * kHour, 0},              // alive across it: in
      {"within", "t", from + kHour, from + 2 * kHour},  // in
      {"at-to", "t", to, 0},                            // created as it ended: out
      {"theirs", "other", from + kHour, 0},             // another team's
  };
  for (const auto& l : lives) {
    ASSERT_TRUE(store_->InsertHistory(History(l.id, l.team, l.created)).ok());
    if (l.ended != 0) {
      ASSERT_TRUE(*store_->EndHistory(l.id, l.ended, "killed", kEndKilled, "", ""));
    }
    ASSERT_TRUE(store_->AppendSandboxEvent({0, l.id, l.team, l.created, "created", 0, ""}).ok());
    auto cmd = store_->StartCommand(Command(l.id, l.created + 1, "ls"));
    ASSERT_TRUE(cmd.ok());
  }
  ASSERT_TRUE(store_->AppendSandboxEvent({0, "into", "t", from + kHour, "killed", 0, ""}).ok());
  ASSERT_TRUE(store_->AppendSandboxEvent({0, "alive", "t", from - kHour, "paused", 0, ""}).ok());
  ASSERT_TRUE(store_->AppendSandboxEvent({0, "alive", "t", from + kHour, "resumed", 0, ""}).ok());
  // Buckets of "alive": the hour before the window counts (its start is in [from - 1h, from)).
  for (int64_t hour : {from - 2 * kHour, from - kHour, from, to - kHour, to}) {
    ASSERT_TRUE(store_->RecordNetUsage("alive", hour, hour / kHour, 0, 1).ok());
  }
  ASSERT_TRUE(store_->RecordNetUsage("before", from - 2 * kHour, 10, 10, 1).ok());
  ASSERT_TRUE(store_->RecordSnapshotStored({"old", "t", "base", 1, 0, from - kHour}).ok());
  ASSERT_TRUE(store_->RecordSnapshotStored({"held", "t", "base", 2, 0, 0}).ok());
  ASSERT_TRUE(store_->RecordSnapshotStored({"late", "t", "base", 3, to, 0}).ok());
  ASSERT_TRUE(store_->RecordSnapshotStored({"ended-in", "t", "base", 4, from, from + 1}).ok());
  ASSERT_TRUE(store_->RecordSnapshotStored({"theirs", "other", "base", 5, from, 0}).ok());

  auto in = store_->LoadUsageInput("t", from, to);
  ASSERT_TRUE(in.ok()) << in.status().ToString();
  std::vector<std::string> ids;
  for (const auto& h : in->histories) ids.push_back(h.sandbox_id);
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(ids, (std::vector<std::string>{"alive", "into", "within"}));

  std::vector<std::string> events;
  for (const auto& e : in->events) events.push_back(e.sandbox_id + ":" + e.kind);
  EXPECT_EQ(events, (std::vector<std::string>{"alive:created", "alive:paused", "alive:resumed",
                                              "into:created", "into:killed", "within:created"}))
      << "by sandbox, then in the order appended";
  std::vector<std::string> commands;
  for (const auto& c : in->commands) {
    commands.push_back(c.sandbox_id);
    EXPECT_EQ(c.kind, "command");
    EXPECT_GT(c.id, 0);
    EXPECT_GT(c.started_at_ms, 0);
  }
  EXPECT_EQ(commands, (std::vector<std::string>{"alive", "into", "within"}));
  std::vector<int64_t> hours;
  for (const auto& n : in->net) {
    EXPECT_EQ(n.sandbox_id, "alive");
    hours.push_back(n.hour_ms);
  }
  EXPECT_EQ(hours, (std::vector<int64_t>{from - kHour, from, to - kHour}));
  std::vector<std::string> snaps;
  for (const auto& s : in->snapshots) snaps.push_back(s.id);
  std::sort(snaps.begin(), snaps.end());
  EXPECT_EQ(snaps, (std::vector<std::string>{"ended-in", "held"}));

  auto everyone = store_->LoadUsageInput("", from, to);
  ASSERT_TRUE(everyone.ok());
  EXPECT_EQ(everyone->histories.size(), 4u) << "an empty team: every team's";
  EXPECT_EQ(everyone->snapshots.size(), 3u);
}

TEST_F(StoreSuite, PruningRemovesWhatEndedBeforeTheCutoffAndKeepsLiveHistories) {
  const int64_t cutoff = 1000, now = 5000;
  ASSERT_TRUE(store_->InsertHistory(History("old", "t", 100)).ok());
  ASSERT_TRUE(*store_->EndHistory("old", 500, "killed", kEndKilled, "", ""));
  ASSERT_TRUE(store_->InsertHistory(History("recent", "t", 100)).ok());
  ASSERT_TRUE(*store_->EndHistory("recent", 1500, "killed", kEndKilled, "", ""));
  ASSERT_TRUE(store_->InsertHistory(History("live", "t", 100)).ok());
  for (const char* id : {"old", "recent", "live"}) {
    ASSERT_TRUE(store_->AppendSandboxEvent({0, id, "t", 100, "created", 0, ""}).ok());
    ASSERT_TRUE(store_->AppendSandboxEvent({0, id, "t", 200, "paused", 0, ""}).ok());
    ASSERT_TRUE(store_->StartCommand(Command(id, 150, "ls")).ok());
    ASSERT_TRUE(store_->SaveConsoleLog(id, "log").ok());
    ASSERT_TRUE(store_->RecordNetUsage(id, 0, 10, 10, 1).ok());
    ASSERT_TRUE(store_->RecordNetUsage(id, 2000, 20, 20, 1).ok());
  }
  // A sandbox that never got a history (its create failed early): its old rows go too.
  ASSERT_TRUE(store_->AppendSandboxEvent({0, "never", "t", 100, "error", 0, ""}).ok());
  ASSERT_TRUE(store_->AppendSandboxEvent({0, "never", "t", 2000, "error", 0, ""}).ok());
  ASSERT_TRUE(store_->StartCommand(Command("never", 150, "ls")).ok());
  ASSERT_TRUE(store_->AppendAudit(Audit(500, "t", "sandbox.kill", "old")).ok());
  ASSERT_TRUE(store_->AppendAudit(Audit(1500, "t", "sandbox.kill", "recent")).ok());
  ASSERT_TRUE(store_->RecordSnapshotStored({"gone", "t", "base", 1, 100, 900}).ok());
  ASSERT_TRUE(store_->RecordSnapshotStored({"held", "t", "base", 1, 100, 0}).ok());
  ASSERT_TRUE(store_->RecordSnapshotStored({"gone-late", "t", "base", 1, 100, 1200}).ok());
  auto team = *store_->CreateTeam("t", false);
  auto key = *store_->AddApiKey(team.id, "k", "h", "m");
  ASSERT_TRUE(store_->InsertSession({"expired", team.id, key.id, "k", "c", 0, now - 1}).ok());
  ASSERT_TRUE(store_->InsertSession({"valid", team.id, key.id, "k", "c", 0, now + 1}).ok());

  auto counts = store_->PruneHistory(cutoff, now);
  ASSERT_TRUE(counts.ok()) << counts.status().ToString();
  EXPECT_EQ(counts->histories, 1);
  EXPECT_EQ(counts->events, 3);
  EXPECT_EQ(counts->commands, 2);
  EXPECT_EQ(counts->audit, 1);
  EXPECT_EQ(counts->net, 3) << "hour 0 of all three";
  EXPECT_EQ(counts->snapshots, 1);
  EXPECT_EQ(counts->sessions, 1);

  EXPECT_FALSE(store_->GetHistory("old")->has_value());
  EXPECT_TRUE(store_->SandboxEvents("old")->empty());
  EXPECT_TRUE(store_->ListCommands("old", 0, 10)->empty());
  EXPECT_FALSE(store_->ConsoleLog("old")->has_value());
  for (const char* id : {"recent", "live"}) {
    EXPECT_TRUE(store_->GetHistory(id)->has_value()) << id;
    EXPECT_EQ(store_->SandboxEvents(id)->size(), 2u) << id;
    EXPECT_EQ(store_->ListCommands(id, 0, 10)->size(), 1u) << id;
    EXPECT_TRUE(store_->ConsoleLog(id)->has_value()) << id;
  }
  EXPECT_EQ(store_->SandboxEvents("never")->size(), 1u) << "the newer one stays";
  EXPECT_EQ(AuditTimes(store_->ListAudit(AuditFilter{})), (std::vector<int64_t>{1500}));
  EXPECT_FALSE(store_->GetSession("expired", 0)->has_value());
  EXPECT_TRUE(store_->GetSession("valid", now)->has_value());
  auto again = store_->PruneHistory(cutoff, now);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->histories + again->events + again->commands + again->audit + again->net +
                again->snapshots + again->sessions,
            0)
      << "nothing left to prune";
}

TEST_F(StoreSuite, ASessionLastsUntilItExpiresItsKeyIsRevokedOrItIsDeleted) {
  auto team = *store_->CreateTeam("acme", false);
  auto key = *store_->AddApiKey(team.id, "ci", "h1", "m1");
  auto spare = *store_->AddApiKey(team.id, "spare", "h2", "m2");
  SessionRecord s{"tok-1", team.id, key.id, "ci", "csrf-1", 1000, 2000};
  ASSERT_TRUE(store_->InsertSession(s).ok());
  EXPECT_EQ(store_->InsertSession(s).code(), ErrorCode::kAlreadyExists);
  auto got = store_->GetSession("tok-1", 1500);
  ASSERT_TRUE(got.ok() && got->has_value()) << got.status().ToString();
  EXPECT_EQ((*got)->team_id, team.id);
  EXPECT_EQ((*got)->key_id, key.id);
  EXPECT_EQ((*got)->key_name, "ci");
  EXPECT_EQ((*got)->csrf_token, "csrf-1");
  EXPECT_EQ((*got)->created_at_ms, 1000);
  EXPECT_EQ((*got)->expires_at_ms, 2000);
  EXPECT_FALSE(store_->GetSession("tok-1", 2000)->has_value()) << "expired at its expiry";
  EXPECT_FALSE(store_->GetSession("nobody", 1500)->has_value());

  // A session naming a key of another team is not one.
  auto other = *store_->CreateTeam("other", false);
  ASSERT_TRUE(store_->InsertSession({"tok-x", other.id, key.id, "ci", "c", 1000, 2000}).ok());
  EXPECT_FALSE(store_->GetSession("tok-x", 1500)->has_value());

  ASSERT_TRUE(store_->InsertSession({"tok-2", team.id, spare.id, "spare", "c", 1000, 2000}).ok());
  ASSERT_TRUE(store_->RevokeApiKey(team.id, key.id).ok());
  EXPECT_FALSE(store_->GetSession("tok-1", 1500)->has_value()) << "its key was revoked";
  EXPECT_TRUE(store_->GetSession("tok-2", 1500)->has_value());
  ASSERT_TRUE(store_->DeleteSession("tok-2").ok());
  EXPECT_FALSE(store_->GetSession("tok-2", 1500)->has_value());
  EXPECT_TRUE(store_->DeleteSession("tok-2").ok()) << "deleting twice is no error";
}

TEST_F(StoreSuite, StoresGuestOutputThatIsNotUtf8OrHoldsNulsAsValidText) {
  const std::string bad =
      std::string("ok \xff\xfe then \xc3(") + std::string("a\0b", 3) + "\xe2\x82";
  const std::string clean =
      "ok \xEF\xBF\xBD\xEF\xBF\xBD then \xEF\xBF\xBD(ab\xEF\xBF\xBD\xEF\xBF\xBD";
  ASSERT_TRUE(store_->InsertHistory(History("s1", "t", 100, {{"k", bad}})).ok());
  auto id = store_->StartCommand(Command("s1", 100, "printf " + bad));
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  CommandRecord c = Command("s1", 100, "");
  c.id = *id;
  c.ended_at_ms = 200;
  c.exit_code = 1;
  c.error = bad;
  c.stdout_head = bad;
  c.stdout_tail = bad;
  c.stderr_head = bad;
  c.stderr_tail = std::string(1, '\0');
  Status finished = store_->FinishCommand(c);
  ASSERT_TRUE(finished.ok()) << finished.ToString();
  auto commands = store_->ListCommands("s1", 0, 10);
  ASSERT_TRUE(commands.ok() && commands->size() == 1u) << commands.status().ToString();
  const CommandRecord& got = (*commands)[0];
  EXPECT_EQ(got.command, "printf " + clean);
  EXPECT_EQ(got.stdout_head, clean);
  EXPECT_EQ(got.stdout_tail, clean);
  EXPECT_EQ(got.stderr_head, clean);
  EXPECT_EQ(got.stderr_tail, "");
  EXPECT_EQ(got.error, clean);

  ASSERT_TRUE(store_->SaveConsoleLog("s1", bad).ok());
  EXPECT_EQ(**store_->ConsoleLog("s1"), clean);
  ASSERT_TRUE(store_->AppendSandboxEvent({0, "s1", "t", 100, "error", 0, bad}).ok());
  EXPECT_EQ((*store_->SandboxEvents("s1"))[0].detail, clean);
  ASSERT_TRUE(*store_->EndHistory("s1", 300, "error", kEndError, "", bad));
  auto h = store_->GetHistory("s1");
  EXPECT_EQ((*h)->end_detail, clean);
  EXPECT_EQ((*h)->metadata.at("k"), clean);
  AuditRecord a = Audit(100, "t", "sandbox.kill", bad);
  a.detail = bad;
  ASSERT_TRUE(store_->AppendAudit(a).ok());
  auto audit = store_->ListAudit(AuditFilter{});
  ASSERT_TRUE(audit.ok() && audit->items.size() == 1u);
  EXPECT_EQ(audit->items[0].target, clean);
  EXPECT_EQ(audit->items[0].detail, clean);
}

}  // namespace
}  // namespace moat::api::store
