// Network slot set-up and teardown per sandbox (namespace, veth pair, tap, nftables), and what
// a create pays with the ready-slot pool. Needs root; uses a pool of its own (10.224.x.0/24)
// and leaves nothing behind.
//
// usage: net_bench [--cycles N] [--pool-target N] [--json PATH]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/fs.h"
#include "net/network_slot.h"
#include "net/slot_pool.h"

namespace moat::net {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

struct Options {
  int cycles = 100;
  size_t pool_target = 4;
  std::string json_path = "build/bench/net.json";
};

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

json Percentiles(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  auto at = [&](double q) { return v.empty() ? 0.0 : v[static_cast<size_t>(q * (v.size() - 1))]; };
  return {
      {"n", v.size()}, {"p50", at(0.50)}, {"p99", at(0.99)}, {"max", v.empty() ? 0.0 : v.back()}};
}

int Fail(const char* what, const Status& s) {
  std::fprintf(stderr, "net_bench: %s: %s\n", what, s.ToString().c_str());
  return 1;
}

int Run(const Options& o) {
  auto dir = MakeTempDir("/tmp", "moat-net-bench.");
  if (!dir.ok()) return Fail("temp dir", dir.status());
  struct Remove {
    std::string p;
    ~Remove() { (void)RemoveTree(p); }
  } remove{*dir};
  NetConfig config;
  config.pool = *Ipv4Cidr::Parse("10.224." + std::to_string(::getpid() % 250) + ".0/24");
  config.state_dir = *dir + "/slots";
  config.dns_servers = {*Ipv4Address::Parse("192.0.2.53")};
  auto host = HostNetwork::Create(config);
  if (!host.ok()) return Fail("host network", host.status());

  json out = {{"pool", config.pool.ToString()}, {"cycles", o.cycles}};
  std::vector<double> setup, teardown, policy;
  auto deny = EgressPolicy::FromE2b({{"denyOut", {"203.0.113.0/24", "198.51.100.0/24"}}}, true);
  for (int i = 0; i < o.cycles; ++i) {
    auto t0 = Clock::now();
    auto slot = (*host)->CreateSlot();
    if (!slot.ok()) return Fail("create slot", slot.status());
    setup.push_back(MsSince(t0));
    t0 = Clock::now();
    Status applied = (*slot)->ApplyPolicy(*deny);
    if (!applied.ok()) return Fail("apply policy", applied);
    policy.push_back(MsSince(t0));
    t0 = Clock::now();
    Status released = (*slot)->Release();
    if (!released.ok()) return Fail("release slot", released);
    teardown.push_back(MsSince(t0));
  }
  out["setup_ms"] = Percentiles(setup);
  out["apply_policy_ms"] = Percentiles(policy);
  out["teardown_ms"] = Percentiles(teardown);

  // With the ready pool: what a create waits for when a slot is ready (the pool refilled
  // between creates, as it does when creates are spaced further apart than one set-up).
  std::vector<double> acquire, acquire_cold;
  {
    SlotPool pool(**host, o.pool_target);
    for (int i = 0; i < o.cycles; ++i) {
      Status ready = pool.WaitReady(o.pool_target, std::chrono::seconds(30));
      if (!ready.ok()) return Fail("pool refill", ready);
      auto t0 = Clock::now();
      auto slot = pool.Acquire();
      if (!slot.ok()) return Fail("acquire", slot.status());
      acquire.push_back(MsSince(t0));
    }
    // A burst larger than the pool: the rest are set up inline.
    std::vector<std::unique_ptr<NetworkSlot>> burst;
    Status ready = pool.WaitReady(o.pool_target, std::chrono::seconds(30));
    if (!ready.ok()) return Fail("pool refill", ready);
    for (size_t i = 0; i < o.pool_target * 3; ++i) {
      auto t0 = Clock::now();
      auto slot = pool.Acquire();
      if (!slot.ok()) return Fail("acquire", slot.status());
      acquire_cold.push_back(MsSince(t0));
      burst.push_back(std::move(*slot));
    }
  }
  out["pool_target"] = o.pool_target;
  out["acquire_ready_ms"] = Percentiles(acquire);
  out["acquire_burst_ms"] = Percentiles(acquire_cold);
  out["slots_left"] = (*host)->slots_in_use();

  std::string text = out.dump(2) + "\n";
  if (o.json_path.find('/') != std::string::npos) {
    (void)MakeDirs(o.json_path.substr(0, o.json_path.rfind('/')));
  }
  Status saved = WriteFileAtomic(o.json_path, text);
  if (!saved.ok()) return Fail("write json", saved);
  auto p = [&](const char* k, const char* q) { return out[k][q].get<double>(); };
  std::printf(
      "net_bench (%d cycles, pool %s)\n"
      "  slot set-up            p50 %7.2f ms   p99 %7.2f ms\n"
      "  slot teardown          p50 %7.2f ms   p99 %7.2f ms\n"
      "  replace egress policy  p50 %7.2f ms   p99 %7.2f ms\n"
      "  acquire, pool ready    p50 %7.3f ms   p99 %7.3f ms   (target %zu)\n"
      "  acquire, burst of %2zu   p50 %7.2f ms   p99 %7.2f ms\n"
      "  json: %s\n",
      o.cycles, config.pool.ToString().c_str(), p("setup_ms", "p50"), p("setup_ms", "p99"),
      p("teardown_ms", "p50"), p("teardown_ms", "p99"), p("apply_policy_ms", "p50"),
      p("apply_policy_ms", "p99"), p("acquire_ready_ms", "p50"), p("acquire_ready_ms", "p99"),
      o.pool_target, o.pool_target * 3, p("acquire_burst_ms", "p50"), p("acquire_burst_ms", "p99"),
      o.json_path.c_str());
  return (*host)->slots_in_use() == 0 ? 0 : 1;
}

}  // namespace
}  // namespace moat::net

int main(int argc, char** argv) {
  moat::net::Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--cycles") {
      o.cycles = std::max(1, std::stoi(v));
    } else if (k == "--pool-target") {
      o.pool_target = static_cast<size_t>(std::max(1, std::stoi(v)));
    } else if (k == "--json") {
      o.json_path = v;
    } else {
      std::fprintf(stderr, "usage: net_bench [--cycles N] [--pool-target N] [--json PATH]\n");
      return 2;
    }
  }
  return moat::net::Run(o);
}
