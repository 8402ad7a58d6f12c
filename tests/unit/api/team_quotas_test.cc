// Per-team quotas: the gate's arithmetic over a real SQLite store (no controller), and the
// /teams/{teamID}/quotas body. The routes that enforce them are in quota_routes_test.cc.
#include "api/team_quotas.h"

#include <gtest/gtest.h>

#include <atomic>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "api/store/sqlite_store.h"
#include "common/fs.h"

namespace moat::api {
namespace {

using std::chrono::seconds;
using std::chrono::steady_clock;

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

class QuotaGateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = MakeTempDir("/tmp", "moat-quota-test.");
    ASSERT_TRUE(d.ok());
    dir_ = *d;
    auto s = store::SqliteStore::Open(dir_ + "/moat.db");
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(*s);
    team_ = *store_->CreateTeam("acme", false);
    gate_ = std::make_unique<QuotaGate>(*store_, [this] { return now_; });
  }
  void TearDown() override {
    gate_.reset();
    store_.reset();
    EXPECT_TRUE(RemoveTree(dir_).ok());
  }
  void SetQuotas(store::QuotaSettings q) { ASSERT_TRUE(store_->SetTeamQuotas(team_.id, q).ok()); }
  // A recorded sandbox of the team: 2 vCPUs, 1 GiB.
  void Record(const std::string& id, SandboxState state = SandboxState::kRunning) {
    store::SandboxRecord r;
    r.id = id;
    r.team_id = team_.id;
    r.template_id = "base";
    r.state = state;
    r.cpu_count = 2;
    r.memory_mb = 1024;
    ASSERT_TRUE(store_->InsertSandbox(r).ok());
  }
  static QuotaGate::Ask OneSandbox() {
    return {.sandboxes = 1, .vcpus = 2, .memory_mib = 1024, .creates = 1};
  }

  std::string dir_;
  std::unique_ptr<store::SqliteStore> store_;
  store::TeamRecord team_;
  steady_clock::time_point now_ = steady_clock::now();
  std::unique_ptr<QuotaGate> gate_;
};

TEST(TeamQuotas, DefaultsAreGenerousButFiniteAndSettingsOverrideThem) {
  TeamQuotas d = EffectiveQuotas({});
  EXPECT_EQ(d.max_sandboxes, 100);
  EXPECT_EQ(d.max_vcpus, 200);
  EXPECT_EQ(d.max_memory_mib, 400 * 1024);
  EXPECT_EQ(d.max_creates_per_minute, 300);
  EXPECT_EQ(d.max_metadata_bytes, 64 * 1024);
  store::QuotaSettings s;
  s.max_vcpus = 8;
  TeamQuotas q = EffectiveQuotas(s);
  EXPECT_EQ(q.max_vcpus, 8);
  EXPECT_EQ(q.max_sandboxes, 100);
}

TEST(TeamQuotas, AnUpdateSetsResetsOrKeepsEachLimitAndNamesWhatIsWrong) {
  store::QuotaSettings current;
  current.max_sandboxes = 5;
  current.max_vcpus = 6;
  auto r = ParseQuotaUpdate(R"({"maxSandboxes": null, "maxMemoryMiB": 2048})", current);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_FALSE(r->max_sandboxes.has_value()) << "null: back to the default";
  EXPECT_EQ(r->max_vcpus, 6) << "absent: kept";
  EXPECT_EQ(r->max_memory_mib, 2048);
  for (const char* bad :
       {R"({"maxDisks": 1})", R"({"maxSandboxes": -1})", R"({"maxSandboxes": "5"})",
        R"({"maxSandboxes": 1.5})", R"({"maxVcpus": 1000000000001})", "[1]", "{"}) {
    auto b = ParseQuotaUpdate(bad, current);
    ASSERT_FALSE(b.ok()) << bad;
    EXPECT_EQ(b.status().code(), ErrorCode::kInvalidArgument) << bad;
  }
  EXPECT_TRUE(
      Contains(ParseQuotaUpdate(R"({"maxDisks": 1})", current).status().message(), "maxDisks"));
}

TEST_F(QuotaGateTest, StoresATeamsSettingsAndCountsOnlyItsRunningSandboxes) {
  EXPECT_EQ(*store_->GetTeamQuotas(team_.id), store::QuotaSettings{});
  store::QuotaSettings q;
  q.max_sandboxes = 3;
  q.max_metadata_bytes = 10;
  SetQuotas(q);
  EXPECT_EQ(*store_->GetTeamQuotas(team_.id), q);
  EXPECT_EQ(store_->SetTeamQuotas("nope", q).code(), ErrorCode::kNotFound);
  Record("a");
  Record("b", SandboxState::kPaused);
  Record("e", SandboxState::kError);  // its guest misbehaved, but its VM still runs
  auto other = *store_->CreateTeam("other", false);
  store::SandboxRecord theirs;
  theirs.id = "c";
  theirs.team_id = other.id;
  theirs.cpu_count = 4;
  theirs.memory_mb = 4096;
  ASSERT_TRUE(store_->InsertSandbox(theirs).ok());
  auto used = store_->RunningUsage(team_.id);
  ASSERT_TRUE(used.ok());
  EXPECT_EQ(used->sandboxes, 2);
  EXPECT_EQ(used->vcpus, 4);
  EXPECT_EQ(used->memory_mib, 2048);
}

TEST_F(QuotaGateTest, RefusesTheSandboxPastMaxSandboxesNamingTheLimitAndTheCount) {
  store::QuotaSettings q;
  q.max_sandboxes = 2;
  SetQuotas(q);
  Record("a");
  Record("p", SandboxState::kPaused);  // paused ones hold no CPU or memory: they do not count
  auto first = gate_->Admit(team_.id, OneSandbox());
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  auto second = gate_->Admit(team_.id, OneSandbox());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), ErrorCode::kResourceExhausted);
  const std::string& m = second.status().message();
  EXPECT_TRUE(Contains(m, "maxSandboxes")) << m;
  EXPECT_TRUE(Contains(m, "limit is 2")) << m;
  EXPECT_TRUE(Contains(m, "has 2 running or starting")) << m;
  *first = QuotaGate::Hold();  // the start failed: what it held is free again
  EXPECT_TRUE(gate_->Admit(team_.id, OneSandbox()).ok());
}

TEST_F(QuotaGateTest, RefusesPastTheVcpuAndMemoryLimitsOfRunningSandboxes) {
  store::QuotaSettings q;
  q.max_vcpus = 5;
  SetQuotas(q);
  Record("a");
  auto held = gate_->Admit(team_.id, OneSandbox());
  ASSERT_TRUE(held.ok());
  auto over = gate_->Admit(team_.id, OneSandbox());
  ASSERT_FALSE(over.ok());
  EXPECT_TRUE(Contains(over.status().message(), "maxVcpus")) << over.status().message();
  EXPECT_TRUE(Contains(over.status().message(), "have 4 vCPUs")) << over.status().message();

  q = {};
  q.max_memory_mib = 2048;
  SetQuotas(q);
  auto mem = gate_->Admit(team_.id, OneSandbox());
  ASSERT_FALSE(mem.ok());
  EXPECT_TRUE(Contains(mem.status().message(), "maxMemoryMiB is") ||
              Contains(mem.status().message(), "maxMemoryMiB exceeded"))
      << mem.status().message();
  EXPECT_TRUE(Contains(mem.status().message(), "2048 MiB")) << mem.status().message();
}

TEST_F(QuotaGateTest, CountsCreatesOverASlidingMinuteButNotResumes) {
  store::QuotaSettings q;
  q.max_creates_per_minute = 3;
  SetQuotas(q);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(gate_->Admit(team_.id, OneSandbox()).ok()) << i;
    now_ += seconds(10);
  }
  EXPECT_EQ(gate_->CreatesInLastMinute(team_.id), 3);
  auto fourth = gate_->Admit(team_.id, OneSandbox());
  ASSERT_FALSE(fourth.ok());
  const std::string& m = fourth.status().message();
  EXPECT_TRUE(Contains(m, "maxCreatesPerMinute")) << m;
  EXPECT_TRUE(Contains(m, "created 3 sandboxes in the last 60 s")) << m;
  EXPECT_TRUE(Contains(m, "try again in 30 s")) << m;
  QuotaGate::Ask resume{.sandboxes = 1, .vcpus = 2, .memory_mib = 1024};
  EXPECT_TRUE(gate_->Admit(team_.id, resume).ok()) << "a resume is not a create";
  EXPECT_FALSE(gate_->Admit(team_.id, {.creates = 2}).ok()) << "refused: not counted";
  now_ += seconds(31);  // the first create left the window
  EXPECT_TRUE(gate_->Admit(team_.id, OneSandbox()).ok());
  EXPECT_FALSE(gate_->Admit(team_.id, OneSandbox()).ok());
}

TEST_F(QuotaGateTest, LimitsACreatesMetadataAndEnvVarsAsJson) {
  store::QuotaSettings q;
  q.max_metadata_bytes = 32;
  SetQuotas(q);
  CreateSandboxAction a;
  a.metadata = {{"k", "v"}};
  a.env_vars = {{"A", "1"}};
  EXPECT_TRUE(gate_->Admit(team_.id, QuotaGate::CreateAsk(a, 2, 1024)).ok());
  a.metadata = {{"k", std::string(40, 'x')}};
  auto big = gate_->Admit(team_.id, QuotaGate::CreateAsk(a, 2, 1024));
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.status().code(), ErrorCode::kResourceExhausted);
  EXPECT_TRUE(Contains(big.status().message(), "maxMetadataBytes")) << big.status().message();
  EXPECT_TRUE(Contains(big.status().message(), "metadata is 48 bytes")) << big.status().message();
  a.metadata = {};
  a.env_vars = {{"SECRET", std::string(40, 'x')}};
  auto env = gate_->Admit(team_.id, QuotaGate::CreateAsk(a, 2, 1024));
  ASSERT_FALSE(env.ok());
  EXPECT_TRUE(Contains(env.status().message(), "envVars")) << env.status().message();
  EXPECT_EQ(gate_->CreatesInLastMinute(team_.id), 1) << "refused creates are not counted";
}

// Many creates at once, as many connection threads run them: each admitted one is recorded as
// running (some fail to start and record nothing); the team never has more than its quota.
TEST_F(QuotaGateTest, ConcurrentCreatesNeverExceedTheQuota) {
  store::QuotaSettings q;
  q.max_sandboxes = 5;
  SetQuotas(q);
  std::atomic<int> admitted{0}, refused{0}, next_id{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 16; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 8; ++i) {
        auto hold = gate_->Admit(team_.id, OneSandbox());
        if (!hold.ok()) {
          EXPECT_EQ(hold.status().code(), ErrorCode::kResourceExhausted);
          ++refused;
          continue;
        }
        ++admitted;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));  // the VM starting
        if ((t + i) % 3 == 0) continue;  // its start failed: nothing recorded, the hold goes
        Record("s" + std::to_string(next_id++));
      }
    });
  }
  for (auto& th : threads) th.join();
  auto used = store_->RunningUsage(team_.id);
  ASSERT_TRUE(used.ok());
  EXPECT_EQ(used->sandboxes, 5) << "filled to the quota, and no further";
  EXPECT_GT(refused.load(), 0);
  EXPECT_EQ(admitted + refused, 16 * 8);
}

}  // namespace
}  // namespace moat::api
