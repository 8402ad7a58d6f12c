// Real network slots in real namespaces (root, no VM): set-up and teardown leave nothing, the
// generated rulesets are accepted by nft, 300 create/release cycles leave nothing, a crashed
// agent's slots are adopted or released, and the ready pool refills. Each test uses a pool of
// its own derived from the pid, so concurrent runs on one machine do not meet.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "common/fs.h"
#include "net/net_tools.h"
#include "net/network_slot.h"
#include "net/nft_ruleset.h"
#include "net/slot_pool.h"
#include "support/test_util.h"

namespace moat::net {
namespace {

using Clock = std::chrono::steady_clock;

// Everything of `pool` that could be left behind: namespaces, host links, the host table.
std::vector<std::string> Leftovers(const Ipv4Cidr& pool) {
  std::vector<std::string> left;
  for (const auto& n : DirNames("/run/netns")) {
    if (n.rfind("moat-", 0) != 0) continue;
    auto a = Ipv4Address::Parse(n.substr(5));
    if (a.ok() && pool.Contains(*a)) left.push_back("netns " + n);
  }
  for (const auto& n : DirNames("/sys/class/net")) {
    if (n.rfind("moat", 0) != 0 || n.size() != 13) continue;
    uint32_t v = static_cast<uint32_t>(std::stoul(n.substr(4, 8), nullptr, 16));
    if (pool.Contains({v})) left.push_back("link " + n);
  }
  auto tables = RunTool({"nft", "list", "tables"});
  if (tables.ok() && tables->find(HostTableName(pool)) != std::string::npos) {
    left.push_back("nft table " + HostTableName(pool));
  }
  return left;
}

class NetSlotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::geteuid(), 0u) << "network slot tests need root";
    auto dir = MakeTempDir("/tmp", "moat-net-it.");
    ASSERT_TRUE(dir.ok());
    dir_ = *dir;
    config_.pool = *Ipv4Cidr::Parse("10.222." + std::to_string(::getpid() % 250) + ".0/24");
    config_.state_dir = dir_ + "/slots";
    ASSERT_TRUE(Leftovers(config_.pool).empty()) << "a previous run left slots in the test pool";
  }
  void TearDown() override {
    EXPECT_EQ(Leftovers(config_.pool), std::vector<std::string>{});
    (void)CleanupLeftoverSlots(config_.state_dir);
    (void)RemoveTree(dir_);
  }
  std::string dir_;
  NetConfig config_;
};

std::string InNs(const std::string& ns, const std::string& args) {
  auto r = RunTool({"sh", "-c", "ip -n " + ns + " " + args});
  return r.ok() ? *r : r.status().ToString();
}

TEST_F(NetSlotTest, SetUpBuildsNamespaceVethTapAndRulesAndReleaseRemovesThemAll) {
  int fds_before = test_support::OpenFdCount();
  {
    auto host = HostNetwork::Create(config_);
    ASSERT_TRUE(host.ok()) << host.status().ToString();
    auto tables = RunTool({"nft", "list", "table", "ip", HostTableName(config_.pool)});
    ASSERT_TRUE(tables.ok()) << tables.status().ToString();
    EXPECT_NE(tables->find("masquerade"), std::string::npos);

    auto slot = (*host)->CreateSlot();
    ASSERT_TRUE(slot.ok()) << slot.status().ToString();
    const SlotAddresses& a = (*slot)->addresses();
    EXPECT_EQ(a.index, 0u);
    EXPECT_GE((*slot)->tap_fd(), 0);
    EXPECT_TRUE(PathExists((*slot)->netns_path()));
    EXPECT_TRUE(PathExists(config_.state_dir + "/" + a.netns + ".json"));
    // Host end: address and group; forwarding only on this link.
    auto host_link = RunTool({"ip", "-d", "addr", "show", "dev", a.host_link});
    ASSERT_TRUE(host_link.ok()) << host_link.status().ToString();
    EXPECT_NE(host_link->find(a.host_address.ToString() + "/30"), std::string::npos);
    EXPECT_NE(host_link->find("group 28015"), std::string::npos) << *host_link;
    EXPECT_EQ(*ReadFile("/proc/sys/net/ipv4/conf/" + a.host_link + "/forwarding"), "1\n");
    // Inside: veth end, tap with the gateway address and fixed MAC, default route, rules.
    std::string addrs = InNs(a.netns, "addr show");
    EXPECT_NE(addrs.find(a.slot_address.ToString() + "/30"), std::string::npos) << addrs;
    EXPECT_NE(addrs.find("169.254.0.22/30"), std::string::npos) << addrs;
    EXPECT_NE(addrs.find(std::string(kGatewayMac)), std::string::npos) << addrs;
    EXPECT_NE(InNs(a.netns, "route show").find("default via " + a.host_address.ToString()),
              std::string::npos);
    auto ns_fd = OpenNetns(a.netns);
    ASSERT_TRUE(ns_fd.ok());
    auto ruleset = RunTool({"nft", "list", "table", "ip", "moat"}, {}, ns_fd->get());
    ASSERT_TRUE(ruleset.ok()) << ruleset.status().ToString();
    EXPECT_NE(ruleset->find("snat to " + a.slot_address.ToString()), std::string::npos);
    EXPECT_NE(ruleset->find("chain egress"), std::string::npos);

    // A policy replaced while running is what nft then lists.
    auto policy =
        EgressPolicy::FromE2b({{"allowOut", {"198.51.100.7"}}, {"denyOut", {"0.0.0.0/0"}}}, true);
    ASSERT_TRUE(policy.ok());
    Status applied = (*slot)->ApplyPolicy(*policy);
    ASSERT_TRUE(applied.ok()) << applied.ToString();
    auto egress = RunTool({"nft", "list", "chain", "ip", "moat", "egress"}, {}, ns_fd->get());
    ASSERT_TRUE(egress.ok());
    EXPECT_NE(egress->find("ip daddr 198.51.100.7 accept"), std::string::npos) << *egress;
    EXPECT_EQ((*slot)->policy(), *policy);
    auto record = ParseSlotRecord(*ReadFile(config_.state_dir + "/" + a.netns + ".json"));
    ASSERT_TRUE(record.ok());
    EXPECT_EQ(record->policy, *policy);

    auto guest = (*slot)->GuestConfig();
    EXPECT_EQ(guest.address, "169.254.0.21/30");
    EXPECT_EQ(guest.gateway, "169.254.0.22");

    ns_fd->Reset();
    Status released = (*slot)->Release();
    ASSERT_TRUE(released.ok()) << released.ToString();
    EXPECT_FALSE(PathExists((*slot)->netns_path()));
    EXPECT_FALSE(PathExists("/sys/class/net/" + a.host_link));
    EXPECT_FALSE(PathExists(config_.state_dir + "/" + a.netns + ".json"));
    EXPECT_TRUE((*slot)->Release().ok());  // idempotent
    EXPECT_EQ((*host)->slots_in_use(), 0u);
    EXPECT_FALSE((*slot)->ApplyPolicy(*policy).ok());
  }
  EXPECT_EQ(test_support::OpenFdCount(), fds_before);
}

// An nft that takes `seconds` over `list counters` while `dir`/slow exists (touching
// `dir`/reading as it starts); the real `nft` otherwise.
std::string SlowCountersNft(const std::string& dir, const std::string& nft, double seconds) {
  std::string path = dir + "/nft";
  std::string script = "#!/bin/sh\ncase \"$*\" in *counters*)\n  if [ -e " + dir +
                       "/slow ]; then touch " + dir + "/reading; sleep " + std::to_string(seconds) +
                       "; fi;;\nesac\nexec " + nft + " \"$@\"\n";
  EXPECT_TRUE(WriteFileAtomic(path, script, 0755).ok());
  return path;
}

// Sandbox::Usage reads the counters holding no lock of the sandbox; the slot's own lock must
// not bring the wait back: a slow read holds up neither a policy change nor the release, and a
// read racing the release reads the namespace it opened or fails cleanly (never another slot's).
TEST_F(NetSlotTest, ASlowCounterReadHoldsUpNeitherThePolicyNorTheRelease) {
  config_.nft_binary = SlowCountersNft(dir_, config_.nft_binary, 1.5);
  auto host = HostNetwork::Create(config_);
  ASSERT_TRUE(host.ok()) << host.status().ToString();
  auto slot = (*host)->CreateSlot();
  ASSERT_TRUE(slot.ok()) << slot.status().ToString();
  ASSERT_TRUE((*slot)->ReadCounters().ok());  // fast while dir_/slow does not exist
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/slow", "").ok());

  auto read_in_background = [&] {
    (void)::unlink((dir_ + "/reading").c_str());
    std::thread t([&, s = slot->get()] {
      auto c = s->ReadCounters();
      EXPECT_TRUE(c.ok() || c.status().code() == ErrorCode::kFailedPrecondition)
          << c.status().ToString();
    });
    auto deadline = Clock::now() + std::chrono::seconds(5);
    while (!PathExists(dir_ + "/reading") && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_TRUE(PathExists(dir_ + "/reading")) << "the read never started";
    return t;
  };
  auto ms_since = [](Clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
  };

  std::thread reader = read_in_background();
  auto start = Clock::now();
  auto policy = EgressPolicy::FromE2b({{"denyOut", {"203.0.113.0/24"}}}, true);
  ASSERT_TRUE(policy.ok());
  EXPECT_EQ((*slot)->policy(), EgressPolicy{});
  Status applied = (*slot)->ApplyPolicy(*policy);
  EXPECT_TRUE(applied.ok()) << applied.ToString();
  EXPECT_EQ((*slot)->policy(), *policy);
  EXPECT_LT(ms_since(start), 1000) << "the policy waited for the counter read";
  reader.join();

  reader = read_in_background();
  start = Clock::now();
  Status released = (*slot)->Release();
  EXPECT_TRUE(released.ok()) << released.ToString();
  EXPECT_LT(ms_since(start), 1000) << "the release waited for the counter read";
  EXPECT_FALSE(PathExists((*slot)->netns_path()));
  reader.join();  // the namespace it held goes with its fd
  auto after = (*slot)->ReadCounters();
  EXPECT_EQ(after.status().code(), ErrorCode::kFailedPrecondition) << after.status().ToString();
  EXPECT_EQ((*host)->slots_in_use(), 0u);
}

// Listening TCP sockets in the slot's namespace.
std::string Listening(const std::string& ns) {
  auto r = RunTool({"ip", "netns", "exec", ns, "ss", "-ltnH"});
  return r.ok() ? *r : r.status().ToString();
}

TEST_F(NetSlotTest, ADomainPolicyRunsTheDomainProxyInTheSlotUntilThePolicyDropsIt) {
  int fds_before = test_support::OpenFdCount();
  auto domains = EgressPolicy::FromE2b(
      {{"allowOut", {"allowed.test", "*.wild.test"}}, {"denyOut", {"0.0.0.0/0"}}}, true);
  ASSERT_TRUE(domains.ok()) << domains.status().ToString();
  const std::string proxy = "169.254.0.22:" + std::to_string(kDomainProxyPort);
  {
    // Without a resolver names cannot be checked: refused, the old policy stays.
    auto host = HostNetwork::Create(config_);
    ASSERT_TRUE(host.ok()) << host.status().ToString();
    auto slot = (*host)->CreateSlot();
    ASSERT_TRUE(slot.ok()) << slot.status().ToString();
    Status s = (*slot)->ApplyPolicy(*domains);
    EXPECT_EQ(s.code(), ErrorCode::kFailedPrecondition);
    EXPECT_NE(s.message().find("--dns"), std::string::npos) << s.ToString();
    EXPECT_EQ((*slot)->policy(), EgressPolicy{});
    EXPECT_TRUE((*slot)->Release().ok());
  }
  config_.dns_servers = {*Ipv4Address::Parse("192.0.2.53")};
  {
    auto host = HostNetwork::Create(config_);
    ASSERT_TRUE(host.ok()) << host.status().ToString();
    auto slot = (*host)->CreateSlot(*domains);
    ASSERT_TRUE(slot.ok()) << slot.status().ToString();
    const std::string ns = (*slot)->netns_name();
    EXPECT_NE(Listening(ns).find(proxy), std::string::npos) << Listening(ns);
    auto ns_fd = OpenNetns(ns);
    ASSERT_TRUE(ns_fd.ok());
    auto chain = RunTool({"nft", "list", "chain", "ip", "moat", "domains"}, {}, ns_fd->get());
    ASSERT_TRUE(chain.ok()) << chain.status().ToString();
    EXPECT_NE(chain->find("redirect to :" + std::to_string(kDomainProxyPort)), std::string::npos)
        << *chain;
    // A policy without names stops the proxy and empties the chain; names again restart it.
    auto plain = EgressPolicy::FromE2b({{"denyOut", {"0.0.0.0/0"}}}, true);
    ASSERT_TRUE((*slot)->ApplyPolicy(*plain).ok());
    EXPECT_EQ(Listening(ns).find(proxy), std::string::npos) << Listening(ns);
    chain = RunTool({"nft", "list", "chain", "ip", "moat", "domains"}, {}, ns_fd->get());
    ASSERT_TRUE(chain.ok());
    EXPECT_EQ(chain->find("redirect"), std::string::npos) << *chain;
    ASSERT_TRUE((*slot)->ApplyPolicy(*domains).ok());
    EXPECT_NE(Listening(ns).find(proxy), std::string::npos);
    // The record keeps the names: an agent that adopts the slot restarts the proxy.
    auto record = ParseSlotRecord(*ReadFile(config_.state_dir + "/" + ns + ".json"));
    ASSERT_TRUE(record.ok());
    EXPECT_EQ(record->policy.allow_domains, domains->allow_domains);
    ns_fd->Reset();
    EXPECT_TRUE((*slot)->Release().ok());
  }
  EXPECT_EQ(test_support::OpenFdCount(), fds_before);
}

TEST_F(NetSlotTest, ThreeHundredCreateReleaseCyclesLeaveNothing) {
  int fds_before = test_support::OpenFdCount();
  {
    auto host = HostNetwork::Create(config_);
    ASSERT_TRUE(host.ok()) << host.status().ToString();
    auto start = Clock::now();
    for (int i = 0; i < 300; ++i) {
      auto slot = (*host)->CreateSlot();
      ASSERT_TRUE(slot.ok()) << "cycle " << i << ": " << slot.status().ToString();
      // Two alive at once now and then, so that reuse crosses live slots.
      if (i % 50 == 0) {
        auto other = (*host)->CreateSlot();
        ASSERT_TRUE(other.ok()) << other.status().ToString();
        EXPECT_NE((*other)->addresses().index, (*slot)->addresses().index);
      }
    }
    double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    std::printf("300 slot create+release cycles: %.0f ms (%.1f ms each)\n", ms, ms / 300);
    EXPECT_EQ((*host)->slots_in_use(), 0u);
    EXPECT_TRUE(DirNames(config_.state_dir).empty());
  }
  EXPECT_EQ(test_support::OpenFdCount(), fds_before);
}

TEST_F(NetSlotTest, SlotsOfACrashedAgentAreAdoptedOrReleased) {
  // A child "agent" makes two slots and dies without releasing anything.
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto host = HostNetwork::Create(config_);
    if (!host.ok()) ::_exit(2);
    auto a = (*host)->CreateSlot();
    auto b = (*host)->CreateSlot(*EgressPolicy::FromE2b(nullptr, false));
    ::_exit(a.ok() && b.ok() ? 0 : 3);  // no destructors: like a crash
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_EQ(Leftovers(config_.pool).size(), 5u);  // 2 netns, 2 links, the host table

  auto host = HostNetwork::Create(config_);  // replaces the stale host table
  ASSERT_TRUE(host.ok()) << host.status().ToString();
  auto leftovers = (*host)->LeftoverSlots();
  ASSERT_TRUE(leftovers.ok()) << leftovers.status().ToString();
  ASSERT_EQ(leftovers->size(), 2u);
  EXPECT_FALSE((*leftovers)[1].policy.allow_internet_access);
  // The sandbox of the first is re-adopted; the second's is gone.
  auto adopted = (*host)->AdoptSlot((*leftovers)[0]);
  ASSERT_TRUE(adopted.ok()) << adopted.status().ToString();
  EXPECT_EQ((*adopted)->tap_fd(), -1);
  EXPECT_FALSE((*host)->AdoptSlot((*leftovers)[0]).ok());  // already taken
  auto released = (*host)->CleanupLeftovers();
  ASSERT_TRUE(released.ok()) << released.status().ToString();
  EXPECT_EQ(*released, 1u);
  EXPECT_TRUE(PathExists((*adopted)->netns_path()));
  EXPECT_FALSE(PathExists(NetnsPath((*leftovers)[1].slot.netns)));
  EXPECT_TRUE((*adopted)->ApplyPolicy(*EgressPolicy::FromE2b(nullptr, false)).ok());
  // A new slot does not take the adopted one's address.
  auto fresh = (*host)->CreateSlot();
  ASSERT_TRUE(fresh.ok()) << fresh.status().ToString();
  EXPECT_NE((*fresh)->addresses().index, (*adopted)->addresses().index);
  fresh->reset();
  adopted->reset();
  EXPECT_TRUE(DirNames(config_.state_dir).empty());
}

TEST_F(NetSlotTest, SlotOfSomeoneElseIsSkippedNotTouched) {
  auto host = HostNetwork::Create(config_);
  ASSERT_TRUE(host.ok()) << host.status().ToString();
  // Someone else holds slot 0's namespace name.
  SlotAddresses s0 = *SlotAddresses::For(config_.pool, 0);
  ASSERT_TRUE(RunTool({"ip", "netns", "add", s0.netns}).ok());
  auto slot = (*host)->CreateSlot();
  ASSERT_TRUE(slot.ok()) << slot.status().ToString();
  EXPECT_EQ((*slot)->addresses().index, 1u);
  slot->reset();
  EXPECT_TRUE(PathExists(NetnsPath(s0.netns)));  // still there: not ours
  ASSERT_TRUE(RunTool({"ip", "netns", "del", s0.netns}).ok());
}

TEST_F(NetSlotTest, ReadyPoolHandsOutSetUpSlotsAndRefills) {
  auto host = HostNetwork::Create(config_);
  ASSERT_TRUE(host.ok()) << host.status().ToString();
  {
    SlotPool pool(**host, 3);
    Status ready = pool.WaitReady(3, std::chrono::seconds(20));
    ASSERT_TRUE(ready.ok()) << ready.ToString();
    auto t0 = Clock::now();
    auto slot = pool.Acquire();
    double us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
    ASSERT_TRUE(slot.ok()) << slot.status().ToString();
    EXPECT_GE((*slot)->tap_fd(), 0);
    EXPECT_TRUE(PathExists((*slot)->netns_path()));
    std::printf("acquire from a ready pool: %.0f us\n", us);
    EXPECT_LT(us, 5000);
    ASSERT_TRUE(pool.WaitReady(3, std::chrono::seconds(20)).ok());
    EXPECT_EQ((*host)->slots_in_use(), 4u);
  }
  // The pool released its ready slots; the acquired one went with its scope.
  EXPECT_EQ((*host)->slots_in_use(), 0u);
}

}  // namespace
}  // namespace moat::net
