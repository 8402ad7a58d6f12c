// End to end: a sandbox with networking survives its agent. The agent detaches; its slot (the
// namespace, links, nftables, record) and the host table stay; the next agent adopts the slot
// with the sandbox — same address, same egress policy, the server inside still reachable from
// the host, policy changes work — and releases the slot of a sandbox whose VMM died meanwhile.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "agent/agent.h"
#include "agent/sandbox_state.h"
#include "common/fs.h"
#include "net/net_tools.h"
#include "support/agent_config.h"
#include "support/sandbox_net.h"
#include "support/test_internet.h"
#include "support/test_util.h"

namespace moat::agent {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;
using test_support::Denied;
using test_support::TestInternet;
using namespace std::chrono_literals;

class SandboxAdoptNetE2e : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_EQ(::geteuid(), 0u);
    dir_ = test_support::NewSuiteDir("moat-adoptnet.");
    ASSERT_NE(dir_, nullptr);
    fds_before_ = test_support::OpenFdCount();
    config_ = new AgentConfig(test_support::E2eAgentConfig(*dir_));
    net::NetConfig n = test_support::TestNetConfig(*dir_, 225);
    config_->network = n;
    config_->ready_slots = 1;
    pool_ = n.pool;
    auto inet = TestInternet::Start(*dir_, n);
    ASSERT_TRUE(inet.ok()) << inet.status().ToString();
    internet_ = inet->release();
  }
  static void TearDownTestSuite() {
    delete internet_;
    internet_ = nullptr;
    delete config_;
    EXPECT_EQ(test_support::CountProcessesMentioning(*dir_), 0);
    EXPECT_EQ(test_support::OpenFdCount(), fds_before_) << "fds leaked";
    EXPECT_TRUE(RemoveTree(*dir_).ok());
    delete dir_;
    EXPECT_EQ(test_support::SlotObjects(pool_), 0) << "slots left after the agents stopped";
  }

  static std::string Sh(const std::shared_ptr<Sandbox>& sb, const std::string& cmd) {
    return test_support::GuestSh(sb, cmd);
  }
  static json Probe(const std::shared_ptr<Sandbox>& sb, const std::vector<std::string>& urls) {
    return test_support::GuestProbe(sb, urls);
  }
  static std::string FetchFromHost(const std::string& address, int port,
                                   const std::string& expect) {
    return test_support::FetchFromHost(address, port, expect);
  }
  static std::string RecordedNetns(const std::shared_ptr<Sandbox>& sb) {
    auto text = ReadFile(sb->paths().state);
    EXPECT_TRUE(text.ok());
    auto state = text.ok() ? ParseSandboxState(*text) : Result<SandboxState>(NotFound(""));
    EXPECT_TRUE(state.ok());
    return state.ok() ? state->netns : "";
  }

  static inline std::string* dir_ = nullptr;
  static inline AgentConfig* config_ = nullptr;
  static inline TestInternet* internet_ = nullptr;
  static inline int fds_before_ = 0;
  static inline net::Ipv4Cidr pool_;
};

TEST_F(SandboxAdoptNetE2e, TheSlotIsAdoptedWithTheSandboxAndADeadOnesSlotReleased) {
  auto agent = Agent::Start(*config_);
  ASSERT_TRUE(agent.ok()) << agent.status().ToString();
  auto deny = net::EgressPolicy::FromE2b({{"denyOut", {"203.0.113.0/24"}}}, true);
  ASSERT_TRUE(deny.ok());
  auto sb = (*agent)->Create("base", {}, *deny);
  auto dies = (*agent)->Create("base", {});
  ASSERT_TRUE(sb.ok() && dies.ok());
  std::string id = (*sb)->id(), dies_id = (*dies)->id();
  std::string address = (*sb)->NetworkAddress()->ToString();
  std::string netns = RecordedNetns(*sb), dies_netns = RecordedNetns(*dies);
  ASSERT_FALSE(netns.empty());
  ASSERT_FALSE(dies_netns.empty());
  pid_t dies_pid = (*dies)->vmm_pid();
  Sh(*sb,
     "mkdir -p /tmp/www && echo adopted-server > /tmp/www/index.html && (setsid python3 -m "
     "http.server 8000 --directory /tmp/www >/dev/null 2>&1 &)");
  ASSERT_NE(FetchFromHost(address, 8000, "adopted-server").find("adopted-server"),
            std::string::npos);

  (*agent)->Detach();
  agent->reset();
  sb->reset();
  dies->reset();
  // With no agent, the sandbox's network and the host table stay: the server still answers.
  EXPECT_TRUE(PathExists(net::NetnsPath(netns)));
  EXPECT_NE(FetchFromHost(address, 8000, "adopted-server").find("adopted-server"),
            std::string::npos);
  ASSERT_EQ(::kill(dies_pid, SIGKILL), 0);
  ASSERT_EQ(::waitpid(dies_pid, nullptr, 0), dies_pid);

  auto next = Agent::Start(*config_);
  ASSERT_TRUE(next.ok()) << next.status().ToString();
  EXPECT_EQ((*next)->recovery().adopted, std::vector<std::string>{id});
  EXPECT_EQ((*next)->recovery().cleaned, std::vector<std::string>{dies_id});
  EXPECT_FALSE(PathExists(net::NetnsPath(dies_netns))) << "the dead sandbox's slot is left";
  auto adopted = (*next)->Get(id);
  ASSERT_TRUE(adopted.ok());
  ASSERT_TRUE((*adopted)->NetworkAddress().ok());
  EXPECT_EQ((*adopted)->NetworkAddress()->ToString(), address);
  auto egress = (*adopted)->Egress();
  ASSERT_TRUE(egress.ok());
  EXPECT_EQ(*egress, *deny);
  EXPECT_NE(FetchFromHost(address, 8000, "adopted-server").find("adopted-server"),
            std::string::npos);
  json r = Probe(*adopted, {TestInternet::kInternet, TestInternet::kInternet2});
  EXPECT_EQ(r[TestInternet::kInternet], "ok:internet");
  EXPECT_TRUE(Denied(r.value(TestInternet::kInternet2, ""))) << r.dump();
  // The adopted slot takes a new policy.
  ASSERT_TRUE((*next)->SetEgress(id, net::EgressPolicy{}).ok());
  r = Probe(*adopted, {TestInternet::kInternet2});
  EXPECT_EQ(r[TestInternet::kInternet2], "ok:internet") << r.dump();
  adopted->reset();
  ASSERT_TRUE((*next)->Kill(id).ok());
  (*next)->WaitForTeardowns();
  EXPECT_FALSE(PathExists(net::NetnsPath(netns)));
  next->reset();
}

}  // namespace
}  // namespace moat::agent
