// End to end: the agent's warm pool. Clones of the base template wait restored and warmed up;
// a create hands one out with the sandbox's own identity (clock, fresh entropy, env, user,
// workdir) and egress policy, the pool refills, dead clones are replaced, clones are never
// listed as sandboxes, and nothing is left when the agent goes.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <set>
#include <thread>

#include "agent/agent.h"
#include "agent/sandbox_state.h"
#include "common/fs.h"
#include "common/sandbox_id.h"
#include "support/agent_config.h"
#include "support/sandbox_net.h"
#include "support/test_util.h"

namespace moat::agent {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

class WarmPoolE2e : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_EQ(::geteuid(), 0u);
    dir_ = test_support::NewSuiteDir("moat-warm.");
    ASSERT_NE(dir_, nullptr);
    fds_before_ = test_support::OpenFdCount();
    AgentConfig c = test_support::E2eAgentConfig(*dir_);
    c.network = test_support::TestNetConfig(*dir_, 227);
    c.ready_slots = 2;
    c.warm_sandboxes = 2;
    c.warm_max = 0;  // a pool of exactly 2 (the last test grows one)
    auto agent = Agent::Start(c);
    ASSERT_TRUE(agent.ok()) << agent.status().ToString();
    agent_ = agent->release();
  }
  static void TearDownTestSuite() {
    delete agent_;
    agent_ = nullptr;
    // The clones still waiting went with the agent.
    EXPECT_EQ(test_support::CountProcessesMentioning(*dir_), 0);
    EXPECT_EQ(DirNames(*dir_ + "/sandboxes"), std::vector<std::string>{});
    EXPECT_EQ(test_support::OpenFdCount(), fds_before_) << "fds leaked";
    EXPECT_TRUE(RemoveTree(*dir_).ok());
    delete dir_;
  }
  static bool WaitForPool(size_t n, std::chrono::seconds limit = 120s) {
    auto end = Clock::now() + limit;
    while (agent_->warm_ready() < n && Clock::now() < end) std::this_thread::sleep_for(50ms);
    return agent_->warm_ready() >= n;
  }
  // Replaces the suite's agent by one with the suite's network and 2 ready slots, then
  // `adjust`'s changes (the last tests: they need a pool configured otherwise).
  static void RestartAgent(const std::function<void(AgentConfig&)>& adjust) {
    delete agent_;
    agent_ = nullptr;
    AgentConfig c = test_support::E2eAgentConfig(*dir_);
    c.network = test_support::TestNetConfig(*dir_, 227);
    c.ready_slots = 2;
    adjust(c);
    auto agent = Agent::Start(c);
    ASSERT_TRUE(agent.ok()) << agent.status().ToString();
    agent_ = agent->release();
  }
  static std::string Sh(const std::shared_ptr<Sandbox>& sb, const std::string& cmd) {
    return test_support::GuestSh(sb, cmd);
  }

  static inline std::string* dir_ = nullptr;
  static inline Agent* agent_ = nullptr;
  static inline int fds_before_ = 0;
};

TEST_F(WarmPoolE2e, ACreateClaimsAWarmCloneWithItsOwnIdentityAndThePoolRefills) {
  ASSERT_TRUE(WaitForPool(2));
  EXPECT_TRUE(agent_->List().empty()) << "warm clones are not sandboxes";
  GuestIdentity who{.env = {{"WARM_TEST", "claimed"}}, .user = "root", .workdir = "/tmp"};
  auto policy = net::EgressPolicy::FromE2b({{"denyOut", {"203.0.113.0/24"}}}, true);
  ASSERT_TRUE(policy.ok());
  auto a = agent_->Create("base", who, *policy);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  auto b = agent_->Create("base", {});
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_TRUE((*a)->from_warm_pool());
  EXPECT_TRUE((*b)->from_warm_pool());
  EXPECT_EQ(agent_->List().size(), 2u);

  // The identity of its create, not the pool's.
  EXPECT_EQ(Sh(*a, "echo $WARM_TEST $(id -un) $(pwd)"), "claimed root /tmp\n");
  EXPECT_EQ(Sh(*b, "id -un"), "user\n");
  EXPECT_NE(Sh(*a, "head -c 32 /dev/urandom | od -An -tx1"),
            Sh(*b, "head -c 32 /dev/urandom | od -An -tx1"));
  auto g = (*a)->Guest();
  ASSERT_TRUE(g.ok());
  auto before = std::chrono::system_clock::now();
  auto r = (*g)->Run({.argv = {"date", "+%s%N"}}, channel::GuestClient::Clock::now() + 10s);
  auto after = std::chrono::system_clock::now();
  ASSERT_TRUE(r.ok());
  auto guest_ns = std::chrono::nanoseconds(std::stoll(r->stdout_data));
  auto guest = std::chrono::system_clock::time_point(
      std::chrono::duration_cast<std::chrono::system_clock::duration>(guest_ns));
  // Within 250 ms: a TCG guest's clock lags the host's by up to ~150 ms right after a restore
  // (as in snapshot_e2e_test).
  EXPECT_GT(guest, before - 250ms);
  EXPECT_LT(guest, after + 250ms);
  // Its policy, and a state.json an agent restart would adopt.
  auto egress = (*a)->Egress();
  ASSERT_TRUE(egress.ok());
  EXPECT_EQ(*egress, *policy);
  auto state = ParseSandboxState(*ReadFile((*a)->paths().state));
  ASSERT_TRUE(state.ok());
  EXPECT_TRUE(state->ready);
  EXPECT_EQ(state->identity->env, who.env);

  // Both were claimed: the pool refills to its target.
  ASSERT_TRUE(WaitForPool(2));
  EXPECT_EQ(agent_->List().size(), 2u);
  EXPECT_TRUE(agent_->Kill((*a)->id()).ok());
  EXPECT_TRUE(agent_->Kill((*b)->id()).ok());
}

TEST_F(WarmPoolE2e, WaitingClonesAreNeverReadyOnDiskAndDeadOnesAreReplaced) {
  ASSERT_TRUE(WaitForPool(2));
  ASSERT_TRUE(agent_->List().empty());
  agent_->WaitForTeardowns();  // the last test's sandboxes' directories go in the background
  // Every directory now is a waiting clone's: none says ready (a restarted agent would clean
  // them up, not adopt them as sandboxes nobody created).
  std::vector<std::string> clones = DirNames(*dir_ + "/sandboxes");
  ASSERT_EQ(clones.size(), 2u);
  for (const auto& id : clones) {
    auto state = ParseSandboxState(*ReadFile(*dir_ + "/sandboxes/" + id + "/state.json"));
    ASSERT_TRUE(state.ok());
    EXPECT_FALSE(state->ready) << id;
    // Kill its VMM from outside.
    ASSERT_GT(state->vmm_pid, 0);
    ::kill(state->vmm_pid, SIGKILL);
  }
  // A create right away still gets a sandbox (a dead clone is dropped, not handed out).
  auto sb = agent_->Create("base", {});
  ASSERT_TRUE(sb.ok()) << sb.status().ToString();
  EXPECT_EQ(Sh(*sb, "echo ok"), "ok\n");
  EXPECT_TRUE(agent_->Kill((*sb)->id()).ok());
  // And the pool is whole again, with new clones.
  ASSERT_TRUE(WaitForPool(2));
  for (const auto& id : DirNames(*dir_ + "/sandboxes")) {
    EXPECT_EQ(std::count(clones.begin(), clones.end(), id), 0) << "a dead clone is still there";
  }
}

// A clone started before its create takes the create's id: the agent knows it by that id for
// everything (get, egress, fork, snapshot, pause and resume, the monitor, kill) while its
// directory, VM and cgroup keep the name it was started under.
TEST_F(WarmPoolE2e, AClaimedCloneTakesTheIdOfItsCreateAndIsKnownByItEverywhere) {
  ASSERT_TRUE(WaitForPool(2));
  const std::string id = NewSandboxId();
  auto sb = agent_->Create(
      {.id = id, .template_name = "base", .identity = {.env = {{"WARM_ID", "given"}}}});
  ASSERT_TRUE(sb.ok()) << sb.status().ToString();
  ASSERT_TRUE((*sb)->from_warm_pool());
  EXPECT_EQ((*sb)->id(), id);
  const std::string local = (*sb)->local_id();
  EXPECT_NE(local, id);
  auto got = agent_->Get(id);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, *sb);
  got->reset();
  EXPECT_EQ(agent_->List().size(), 1u);
  EXPECT_EQ(Sh(*sb, "echo $WARM_ID"), "given\n");
  // On disk: the directory and VM of its local id; state.json names both.
  EXPECT_EQ((*sb)->paths().dir, *dir_ + "/sandboxes/" + local);
  auto state = ParseSandboxState(*ReadFile((*sb)->paths().state));
  ASSERT_TRUE(state.ok()) << state.status().ToString();
  EXPECT_EQ(state->id, id);
  EXPECT_EQ(state->vm_name, "moat-" + local);
  EXPECT_TRUE(state->adoptable());
  // Its id is taken, and so is its local id (a directory of that name exists).
  EXPECT_EQ(agent_->Create({.id = id, .template_name = "base"}).status().code(),
            ErrorCode::kAlreadyExists);
  EXPECT_EQ(agent_->Create({.id = local, .template_name = "base"}).status().code(),
            ErrorCode::kAlreadyExists);

  auto deny = net::EgressPolicy::FromE2b({{"denyOut", {"198.51.100.0/24"}}}, true);
  ASSERT_TRUE(deny.ok());
  ASSERT_TRUE(agent_->SetEgress(id, *deny).ok());
  EXPECT_EQ(*(*sb)->Egress(), *deny);
  const std::string kid = NewSandboxId();
  auto kids = agent_->Fork(id, {kid});
  ASSERT_TRUE(kids.ok()) << kids.status().ToString();
  EXPECT_EQ((*kids)[0]->id(), kid);
  EXPECT_EQ(Sh((*kids)[0], "echo $WARM_ID"), "given\n");
  EXPECT_EQ(*(*kids)[0]->Egress(), *deny);
  ASSERT_TRUE(agent_->Kill(kid).ok());
  kids->clear();
  auto snap = agent_->CreateSnapshot(id, "of-a-claimed-clone");
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  ASSERT_TRUE(agent_->DeleteSnapshot(snap->sandbox_id).ok());

  // Pause writes snapshots/<id>; resume restores it under its id, now its local id too.
  ASSERT_TRUE(agent_->Pause(id).ok());
  sb->reset();
  EXPECT_TRUE(PathExists(*dir_ + "/snapshots/" + id));
  EXPECT_FALSE(PathExists(*dir_ + "/sandboxes/" + local));
  EXPECT_EQ(agent_->Create({.id = id, .template_name = "base"}).status().code(),
            ErrorCode::kAlreadyExists);
  auto resumed = agent_->Resume(id);
  ASSERT_TRUE(resumed.ok()) << resumed.status().ToString();
  EXPECT_EQ((*resumed)->id(), id);
  EXPECT_EQ((*resumed)->local_id(), id);
  EXPECT_EQ(Sh(*resumed, "echo $WARM_ID"), "given\n");
  EXPECT_EQ(*(*resumed)->Egress(), *deny);
  resumed->reset();
  ASSERT_TRUE(agent_->Kill(id).ok());
  agent_->WaitForTeardowns();
  EXPECT_FALSE(PathExists(*dir_ + "/sandboxes/" + id));

  // A claimed clone whose VMM dies is released by the monitor, found by its id.
  ASSERT_TRUE(WaitForPool(1));
  const std::string dies = NewSandboxId();
  auto d = agent_->Create({.id = dies, .template_name = "base"});
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  ASSERT_TRUE((*d)->from_warm_pool());
  const std::string dies_dir = (*d)->paths().dir;
  ASSERT_EQ(::kill((*d)->vmm_pid(), SIGKILL), 0);
  d->reset();
  auto end = Clock::now() + 10s;
  while (agent_->Get(dies).ok() && Clock::now() < end) std::this_thread::sleep_for(20ms);
  EXPECT_EQ(agent_->Get(dies).status().code(), ErrorCode::kNotFound);
  end = Clock::now() + 10s;
  while (PathExists(dies_dir) && Clock::now() < end) std::this_thread::sleep_for(20ms);
  EXPECT_FALSE(PathExists(dies_dir));
  EXPECT_TRUE(agent_->List().empty());
}

// Last (it restarts the suite's agent): a pool that runs dry grows by one clone per create that
// found it dry, up to warm_max, and shrinks back to warm_sandboxes once the demand window has
// none. With low-priority refills, warm clones restore at a low CPU weight and are raised to the
// normal one when claimed.
TEST_F(WarmPoolE2e, ZAPoolThatRunsDryGrowsToItsMaximumAndShrinksBack) {
  RestartAgent([](AgentConfig& c) {
    c.warm_sandboxes = 1;
    c.warm_max = 3;
    c.warm_demand_window = 8s;
    c.low_priority_refills = true;
  });
  ASSERT_NE(agent_, nullptr);
  ASSERT_TRUE(WaitForPool(1));
  // The waiting clone's VMM runs at the background weight.
  std::vector<std::string> waiting = DirNames(*dir_ + "/sandboxes");
  ASSERT_EQ(waiting.size(), 1u);
  auto shares = ReadFile("/sys/fs/cgroup/cpu/moat/moat-" + waiting[0] + "/cpu.shares");
  auto weight = ReadFile("/sys/fs/cgroup/moat/moat-" + waiting[0] + "/cpu.weight");
  if (shares.ok()) {
    EXPECT_EQ(*shares, "10\n");  // cgroup v1 (this machine)
  }
  if (weight.ok()) {
    EXPECT_EQ(*weight, "1\n");  // cgroup v2
  }
  // Three creates back to back: the first claims the clone, the next two find the pool dry.
  std::vector<std::shared_ptr<Sandbox>> made;
  for (int i = 0; i < 3; ++i) {
    auto sb = agent_->Create("base", {});
    ASSERT_TRUE(sb.ok()) << sb.status().ToString();
    made.push_back(*sb);
  }
  EXPECT_TRUE(made[0]->from_warm_pool());
  EXPECT_FALSE(made[2]->from_warm_pool());
  // Claimed: the normal weight.
  shares = ReadFile("/sys/fs/cgroup/cpu/moat/moat-" + made[0]->local_id() + "/cpu.shares");
  weight = ReadFile("/sys/fs/cgroup/moat/moat-" + made[0]->local_id() + "/cpu.weight");
  if (shares.ok()) {
    EXPECT_EQ(*shares, "1024\n");
  }
  if (weight.ok()) {
    EXPECT_EQ(*weight, "100\n");
  }
  for (auto& sb : made) EXPECT_TRUE(agent_->Kill(sb->id()).ok());
  made.clear();
  // 1 + 2 dry creates, within warm_max.
  ASSERT_TRUE(WaitForPool(3));
  std::this_thread::sleep_for(2s);
  EXPECT_EQ(agent_->warm_ready(), 3u) << "never past warm_max";
  // The window passes without a dry create: back to one clone.
  auto end = Clock::now() + 60s;
  while (agent_->warm_ready() > 1 && Clock::now() < end) std::this_thread::sleep_for(100ms);
  EXPECT_EQ(agent_->warm_ready(), 1u);
}

// Last too (it restarts the suite's agent): a claim that leaves a clone in the pool holds the
// refill for refill_delay (the new sandbox's first commands have the cores); one that empties
// the pool refills it at once, all the way.
TEST_F(WarmPoolE2e, ZBRefillIsHeldAfterAClaimThatLeavesAClone) {
  RestartAgent([](AgentConfig& c) {
    c.warm_sandboxes = 2;
    c.warm_max = 0;
    c.refill_delay = 10s;
  });
  ASSERT_NE(agent_, nullptr);
  ASSERT_TRUE(WaitForPool(2));
  auto t0 = Clock::now();
  auto one = agent_->Create("base", {});
  ASSERT_TRUE(one.ok()) << one.status().ToString();
  ASSERT_TRUE((*one)->from_warm_pool());
  EXPECT_EQ(Sh(*one, "echo first"), "first\n");
  ASSERT_TRUE(WaitForPool(2));
  EXPECT_GE(Clock::now() - t0, 10s) << "refilled before the hold ended";
  EXPECT_TRUE(agent_->Kill((*one)->id()).ok());
  one->reset();

  // Two claims back to back empty the pool: both clones come back without waiting for a hold.
  std::vector<std::shared_ptr<Sandbox>> made;
  auto t1 = Clock::now();
  for (int i = 0; i < 2; ++i) {
    auto sb = agent_->Create("base", {});
    ASSERT_TRUE(sb.ok()) << sb.status().ToString();
    EXPECT_TRUE((*sb)->from_warm_pool());
    made.push_back(*sb);
  }
  ASSERT_TRUE(WaitForPool(2));
  EXPECT_LT(Clock::now() - t1, 10s) << "an emptied pool waited for a hold";
  for (auto& sb : made) EXPECT_TRUE(agent_->Kill(sb->id()).ok());
}

// Last too: below --memory-reserve-mb (here more than any host has) no VM starts: a create fails
// with resource_exhausted naming the figures, the pool does not fill, and nothing is left.
TEST_F(WarmPoolE2e, ZCNoVmStartsBelowTheMemoryReserve) {
  RestartAgent([](AgentConfig& c) {
    c.warm_sandboxes = 1;
    c.memory_reserve_mib = uint64_t{1} << 40;
  });
  ASSERT_NE(agent_, nullptr);
  auto sb = agent_->Create("base", {});
  ASSERT_FALSE(sb.ok());
  EXPECT_EQ(sb.status().code(), ErrorCode::kResourceExhausted) << sb.status().ToString();
  EXPECT_NE(sb.status().message().find("host memory low"), std::string::npos)
      << sb.status().ToString();
  EXPECT_NE(sb.status().message().find("--memory-reserve-mb"), std::string::npos);
  std::this_thread::sleep_for(2s);
  EXPECT_EQ(agent_->warm_ready(), 0u) << "a warm clone started below the reserve";
  EXPECT_TRUE(agent_->List().empty());
  EXPECT_EQ(DirNames(*dir_ + "/sandboxes"), std::vector<std::string>{});
}

}  // namespace
}  // namespace moat::agent
