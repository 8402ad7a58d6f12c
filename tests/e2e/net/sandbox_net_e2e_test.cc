// Sandboxes of an Agent with networking on: created, restored, forked, paused and resumed
// sandboxes each get a slot of their own with their egress policy; the host reaches their ports
// at the slot address (what moatd's port proxy does); kill releases everything. The "internet"
// is a namespace the test makes (tests/support/test_internet.h); traffic goes nowhere else.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>

#include "agent/agent.h"
#include "common/fs.h"
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

const std::string kInternet = TestInternet::kInternet;
const std::string kInternet2 = TestInternet::kInternet2;

class SandboxNetE2e : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_EQ(::geteuid(), 0u);
    dir_ = test_support::NewSuiteDir("moat-sbnet.");
    ASSERT_NE(dir_, nullptr);
    fds_before_ = test_support::OpenFdCount();
    AgentConfig c = test_support::E2eAgentConfig(*dir_);
    net::NetConfig n = test_support::TestNetConfig(*dir_, 224);
    // The real nft, except that `list counters` logs itself to dir_/reads and, while dir_/slow
    // exists, touches dir_/reading and takes 1.8 s (under the read's 2 s timeout).
    std::string d = *dir_;
    ASSERT_TRUE(WriteFileAtomic(d + "/nft",
                                "#!/bin/sh\ncase \"$*\" in *counters*)\n  echo >> " + d +
                                    "/reads\n  if [ -e " + d + "/slow ]; then touch " + d +
                                    "/reading; sleep 1.8; fi;;\nesac\nexec " + n.nft_binary +
                                    " \"$@\"\n",
                                0755)
                    .ok());
    n.nft_binary = d + "/nft";
    c.network = n;
    pool_ = n.pool;
    c.ready_slots = 2;
    auto inet = TestInternet::Start(*dir_, n);
    ASSERT_TRUE(inet.ok()) << inet.status().ToString();
    internet_ = inet->release();
    auto agent = Agent::Start(c);
    ASSERT_TRUE(agent.ok()) << agent.status().ToString();
    agent_ = agent->release();
  }
  static void TearDownTestSuite() {
    delete agent_;
    agent_ = nullptr;
    delete internet_;
    internet_ = nullptr;
    EXPECT_EQ(test_support::CountProcessesMentioning(*dir_), 0);
    EXPECT_EQ(test_support::OpenFdCount(), fds_before_) << "fds leaked";
    EXPECT_TRUE(RemoveTree(*dir_).ok());
    delete dir_;
    EXPECT_EQ(test_support::SlotObjects(pool_), 0) << "slots left after the agent stopped";
    std::printf("moat namespaces, links, nft tables left on the machine: %s\n",
                test_support::MoatNetworkObjects().c_str());
  }

  static std::shared_ptr<Sandbox> MustCreate(const net::EgressPolicy& egress = {}) {
    auto sb = agent_->Create("base", {}, egress);
    EXPECT_TRUE(sb.ok()) << sb.status().ToString();
    return sb.ok() ? *sb : nullptr;
  }
  static std::string Sh(const std::shared_ptr<Sandbox>& sb, const std::string& cmd) {
    return test_support::GuestSh(sb, cmd);
  }
  static json Probe(const std::shared_ptr<Sandbox>& sb, const std::vector<std::string>& urls) {
    return test_support::GuestProbe(sb, urls);
  }
  // Serves `content` on `port` inside the sandbox (a background process of the guest).
  static void Serve(const std::shared_ptr<Sandbox>& sb, int port, const std::string& content) {
    std::string www = "/tmp/www" + std::to_string(port);
    Sh(sb, "mkdir -p " + www + " && echo " + content + " > " + www +
               "/index.html && (setsid python3 -m http.server " + std::to_string(port) +
               " --directory " + www + " >/dev/null 2>&1 &)");
  }
  // What the host (moatd's port proxy) gets from `port` of the sandbox.
  static std::string FetchFromHost(const std::shared_ptr<Sandbox>& sb, int port,
                                   const std::string& expect) {
    auto addr = sb->NetworkAddress();
    EXPECT_TRUE(addr.ok()) << addr.status().ToString();
    return addr.ok() ? test_support::FetchFromHost(addr->ToString(), port, expect) : "";
  }

  static inline std::string* dir_ = nullptr;
  static inline Agent* agent_ = nullptr;
  static inline TestInternet* internet_ = nullptr;
  static inline int fds_before_ = 0;
  static inline net::Ipv4Cidr pool_;
};

TEST_F(SandboxNetE2e, DefaultPolicyReachesTheInternetAndNothingElse) {
  auto a = MustCreate();
  auto b = MustCreate();
  ASSERT_TRUE(a && b);
  Serve(b, 8080, "sandbox-b");
  ASSERT_NE(FetchFromHost(b, 8080, "sandbox-b").find("sandbox-b"), std::string::npos);
  std::string b_url = "http://" + b->NetworkAddress()->ToString() + ":8080/";
  std::string host_url = internet_->HostUrl();
  json p = Probe(a, {kInternet, TestInternet::kControlPlane, TestInternet::kMetadata, host_url,
                     b_url, TestInternet::kDnsProbe});
  EXPECT_EQ(p[kInternet], "ok:internet");
  EXPECT_EQ(p[TestInternet::kDnsProbe], "ok:answer:query");
  for (const std::string& u : {std::string(TestInternet::kControlPlane),
                               std::string(TestInternet::kMetadata), host_url, b_url}) {
    EXPECT_TRUE(Denied(p.value(u, ""))) << u << " -> " << p.value(u, "");
  }
  EXPECT_TRUE(agent_->Kill(a->id()).ok());
  EXPECT_TRUE(agent_->Kill(b->id()).ok());
}

TEST_F(SandboxNetE2e, CreatePolicyAndUpdateWhileRunning) {
  auto p = net::EgressPolicy::FromE2b(nullptr, false);
  ASSERT_TRUE(p.ok());
  auto sb = MustCreate(*p);
  ASSERT_TRUE(sb);
  json r = Probe(sb, {kInternet});
  EXPECT_TRUE(Denied(r.value(kInternet, ""))) << r.dump();
  // denyOut one range, the rest allowed.
  auto deny = net::EgressPolicy::FromE2b({{"denyOut", {"203.0.113.0/24"}}}, true);
  ASSERT_TRUE(deny.ok());
  ASSERT_TRUE(agent_->SetEgress(sb->id(), *deny).ok());
  r = Probe(sb, {kInternet, kInternet2});
  EXPECT_EQ(r[kInternet], "ok:internet");
  EXPECT_TRUE(Denied(r.value(kInternet2, ""))) << r.dump();
  EXPECT_TRUE(agent_->Kill(sb->id()).ok());
}

TEST_F(SandboxNetE2e, PauseResumeKeepsThePolicyOnANewSlot) {
  auto deny = net::EgressPolicy::FromE2b({{"denyOut", {"203.0.113.0/24"}}}, true);
  ASSERT_TRUE(deny.ok());
  auto sb = MustCreate(*deny);
  ASSERT_TRUE(sb);
  Serve(sb, 8000, "before-pause");
  ASSERT_NE(FetchFromHost(sb, 8000, "before-pause").find("before-pause"), std::string::npos);
  std::string id = sb->id();
  ASSERT_TRUE(agent_->Pause(id).ok());
  sb.reset();
  auto resumed = agent_->Resume(id);
  ASSERT_TRUE(resumed.ok()) << resumed.status().ToString();
  auto egress = (*resumed)->Egress();
  ASSERT_TRUE(egress.ok());
  EXPECT_EQ(*egress, *deny);
  json r = Probe(*resumed, {kInternet, kInternet2});
  EXPECT_EQ(r[kInternet], "ok:internet");
  EXPECT_TRUE(Denied(r.value(kInternet2, ""))) << r.dump();
  // The server that ran before the pause answers on the new slot.
  EXPECT_NE(FetchFromHost(*resumed, 8000, "before-pause").find("before-pause"), std::string::npos);
  EXPECT_TRUE(agent_->Kill(id).ok());
}

TEST_F(SandboxNetE2e, ForkedChildrenHaveSeparateWorkingNetworks) {
  auto parent = MustCreate();
  ASSERT_TRUE(parent);
  Serve(parent, 8000, "parent");
  ASSERT_NE(FetchFromHost(parent, 8000, "parent").find("parent"), std::string::npos);
  auto children = agent_->Fork(parent->id(), 2);
  ASSERT_TRUE(children.ok()) << children.status().ToString();
  ASSERT_EQ(children->size(), 2u);
  auto& c1 = (*children)[0];
  auto& c2 = (*children)[1];
  EXPECT_NE(c1->NetworkAddress()->ToString(), c2->NetworkAddress()->ToString());
  EXPECT_NE(c1->NetworkAddress()->ToString(), parent->NetworkAddress()->ToString());
  // The same port in both children, different content: the page each one serves changes.
  Sh(c1, "echo child-one > /tmp/www8000/index.html");
  Sh(c2, "echo child-two > /tmp/www8000/index.html");
  EXPECT_NE(FetchFromHost(c1, 8000, "child-one").find("child-one"), std::string::npos);
  EXPECT_NE(FetchFromHost(c2, 8000, "child-two").find("child-two"), std::string::npos);
  EXPECT_NE(FetchFromHost(parent, 8000, "parent").find("parent"), std::string::npos);
  // Each child reaches the internet, never its parent.
  std::string parent_url = "http://" + parent->NetworkAddress()->ToString() + ":8000/";
  for (auto* c : {&c1, &c2}) {
    json r = Probe(*c, {kInternet, parent_url});
    EXPECT_EQ(r[kInternet], "ok:internet");
    EXPECT_TRUE(Denied(r.value(parent_url, ""))) << r.dump();
  }
  for (auto& c : *children) EXPECT_TRUE(agent_->Kill(c->id()).ok());
  EXPECT_TRUE(agent_->Kill(parent->id()).ok());
}

TEST_F(SandboxNetE2e, DomainsInAllowOutAreMatchedBySniAndHost) {
  auto by_name = net::EgressPolicy::FromE2b(
      {{"allowOut", {"allowed.test", "*.wild.test"}}, {"denyOut", {"0.0.0.0/0"}}}, std::nullopt);
  ASSERT_TRUE(by_name.ok()) << by_name.status().ToString();
  auto sb = MustCreate(*by_name);
  ASSERT_TRUE(sb);
  const std::string allowed_http = TestInternet::kAllowedHttp;
  const std::string allowed_https = TestInternet::kAllowedHttps;
  const std::string other_http = TestInternet::kOtherHttp;
  const std::string other_https = TestInternet::kOtherHttps;
  const std::string wild_http = TestInternet::kWildHttp;
  const std::string wild_https = TestInternet::kWildHttps;
  const std::string wild_base = TestInternet::kWildBaseHttp;
  const std::string spoofed_host = TestInternet::kSpoofedHost;
  const std::string spoofed_sni = TestInternet::kSpoofedSni;
  json r = Probe(sb, {allowed_http, allowed_https, wild_http, wild_https, other_http, other_https,
                      kInternet, spoofed_host, spoofed_sni, wild_base});
  EXPECT_EQ(r[allowed_http], "ok:internet80");
  EXPECT_EQ(r[allowed_https], "ok:tls-internet");
  EXPECT_EQ(r[wild_http], "ok:internet80");
  EXPECT_EQ(r[wild_https], "ok:tls-internet");
  // A name outside the list: the proxy answers HTTP itself and closes TLS.
  std::string other = r.value(other_http, "");
  EXPECT_NE(other.find("403"), std::string::npos) << other;
  EXPECT_NE(other.find("not allowed"), std::string::npos) << other;
  EXPECT_EQ(r.value(other_https, "").rfind("err:", 0), 0u) << r.dump();
  // Names are matched on 80 and 443 only; any other port is up to the CIDR lists.
  EXPECT_TRUE(Denied(r.value(kInternet, ""))) << r.dump();
  // An allowed name claimed for an address that is not the name's never reaches that address
  // (the proxy goes to the name's own address instead, or refuses).
  EXPECT_EQ(r.value(spoofed_host, "").find("other80"), std::string::npos) << r.dump();
  EXPECT_EQ(r.value(spoofed_sni, "").find("tls-other"), std::string::npos) << r.dump();
  // "*.wild.test" matches names under wild.test, not wild.test itself.
  EXPECT_EQ(r.value(wild_base, "").rfind("err:", 0), 0u) << r.dump();
  EXPECT_NE(r.value(wild_base, "").find("403"), std::string::npos) << r.dump();

  // Without domains the name is refused like any address; with them again, it is reachable.
  auto no_names = net::EgressPolicy::FromE2b({{"denyOut", {"0.0.0.0/0"}}}, std::nullopt);
  ASSERT_TRUE(no_names.ok());
  Status set = agent_->SetEgress(sb->id(), *no_names);
  ASSERT_TRUE(set.ok()) << set.ToString();
  r = Probe(sb, {allowed_http});
  EXPECT_EQ(r.value(allowed_http, "").rfind("err:", 0), 0u) << r.dump();
  set = agent_->SetEgress(sb->id(), *by_name);
  ASSERT_TRUE(set.ok()) << set.ToString();
  r = Probe(sb, {allowed_http});
  EXPECT_EQ(r[allowed_http], "ok:internet80");

  // The default policy goes to any name directly, with no proxy in the way.
  auto open = MustCreate();
  ASSERT_TRUE(open);
  r = Probe(open, {other_http, other_https});
  EXPECT_EQ(r[other_http], "ok:other80");
  EXPECT_EQ(r[other_https], "ok:tls-other");
  EXPECT_TRUE(agent_->Kill(sb->id()).ok());
  EXPECT_TRUE(agent_->Kill(open->id()).ok());
}

// The dashboard samples every sandbox's usage every 2 s. Reading the slot's counters forks nft:
// at most once a second per sandbox (a reading is reused for up to a second, never longer), and
// with no lock held that the sandbox's guest calls or its kill need.
TEST_F(SandboxNetE2e, CounterReadsAreRateLimitedAndASlowOneHoldsUpNoGuestCallNorTheKill) {
  auto sb = MustCreate();
  ASSERT_TRUE(sb);
  const std::string reads_file = *dir_ + "/reads";
  auto reads = [&] {
    auto text = ReadFile(reads_file);
    return text.ok() ? std::count(text->begin(), text->end(), '\n') : 0;
  };
  json p = Probe(sb, {kInternet});
  EXPECT_EQ(p[kInternet], "ok:internet");
  auto first = sb->Usage();
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_GT(first->net_egress_bytes, 0u);
  EXPECT_GT(first->net_ingress_bytes, 0u);
  const auto read_at = Clock::now();
  const auto n = reads();
  // Within the second: the same reading, no nft.
  auto cached = sb->Usage();
  ASSERT_TRUE(cached.ok());
  if (Clock::now() - read_at < 900ms) {
    EXPECT_EQ(reads(), n);
    EXPECT_EQ(cached->net_egress_bytes, first->net_egress_bytes);
  }
  // After it: read anew, with what the guest sent since.
  Probe(sb, {kInternet});
  std::this_thread::sleep_for(1100ms);
  auto fresh = sb->Usage();
  ASSERT_TRUE(fresh.ok());
  EXPECT_EQ(reads(), n + 1);
  EXPECT_GT(fresh->net_egress_bytes, first->net_egress_bytes);
  EXPECT_GT(fresh->net_ingress_bytes, first->net_ingress_bytes);

  // A slow read (1.8 s): guest calls go on meanwhile, and a kill does not wait for it.
  std::this_thread::sleep_for(1100ms);
  ASSERT_TRUE(WriteFileAtomic(*dir_ + "/slow", "").ok());
  auto sample = [&](std::atomic<bool>* done) {
    (void)::unlink((*dir_ + "/reading").c_str());
    std::thread t([sb, done] {
      auto u = sb->Usage();  // ok (the read started before any kill) or NotFound
      EXPECT_TRUE(u.ok() || u.status().code() == ErrorCode::kNotFound) << u.status().ToString();
      done->store(true);
    });
    auto deadline = Clock::now() + 10s;
    while (!PathExists(*dir_ + "/reading") && Clock::now() < deadline) {
      std::this_thread::sleep_for(10ms);
    }
    EXPECT_TRUE(PathExists(*dir_ + "/reading")) << "the counter read never started";
    return t;
  };
  std::atomic<bool> done{false};
  std::thread sampler = sample(&done);
  EXPECT_EQ(Sh(sb, "echo still-here"), "still-here\n");
  EXPECT_FALSE(done.load()) << "the guest calls waited for the counter read";
  sampler.join();

  std::this_thread::sleep_for(1100ms);
  done = false;
  sampler = sample(&done);
  auto kill_start = Clock::now();
  EXPECT_TRUE(agent_->Kill(sb->id()).ok());
  auto kill_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - kill_start).count();
  std::printf("kill during a 1.8 s counter read: %lld ms\n", static_cast<long long>(kill_ms));
  EXPECT_LT(kill_ms, 1000) << "the kill waited for the counter read";
  sampler.join();
  (void)::unlink((*dir_ + "/slow").c_str());
  EXPECT_FALSE(sb->Usage().ok());
}

TEST_F(SandboxNetE2e, ThreeHundredCreateKillCyclesLeaveNoNetworkBehind) {
  auto pool = agent_->slot_pool();
  ASSERT_NE(pool, nullptr);
  agent_->WaitForTeardowns();  // earlier tests' kills hold slots and fds until torn down
  ASSERT_TRUE(pool->WaitReady(2, 30s).ok());
  int before = test_support::SlotObjects(pool_);
  int fds = test_support::OpenFdCount();
  for (int i = 0; i < 300; ++i) {
    auto sb = agent_->Create("base", {});
    ASSERT_TRUE(sb.ok()) << "cycle " << i << ": " << sb.status().ToString();
    ASSERT_TRUE((*sb)->NetworkAddress().ok());
    ASSERT_TRUE(agent_->Kill((*sb)->id()).ok());
  }
  agent_->WaitForTeardowns();
  EXPECT_TRUE(agent_->List().empty());
  EXPECT_EQ(test_support::OpenFdCount(), fds) << "the agent leaks fds";
  // Only the ready pool's slots (refilled in the background) remain: as many as before.
  ASSERT_TRUE(pool->WaitReady(2, 30s).ok());
  EXPECT_EQ(test_support::SlotObjects(pool_), before);
}

}  // namespace
}  // namespace moat::agent
