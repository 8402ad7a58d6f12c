// Network slot set-up and teardown per sandbox (namespace, veth pair, tap, nftables), what a
// create pays with the ready-slot pool, and — with --guest-dir — what networking adds to
// create-to-first-exec: two agents side by side, one without networking and one with, creates
// alternating between them. Needs root; uses pools of its own (10.224.x.0/24, 10.225.x.0/24)
// and leaves nothing behind.
//
// usage: net_bench [--cycles N] [--pool-target N] [--guest-dir DIR] [--creates N] [--json PATH]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "agent/agent.h"
#include "bench_util.h"
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
  std::string guest_dir;  // empty: no sandboxes, slots only
  int creates = 50;
};

using bench::Percentiles;

double MsSince(Clock::time_point t) {
  return bench::Ms(Clock::now() - t);
}

int Fail(const char* what, const Status& s) {
  std::fprintf(stderr, "net_bench: %s: %s\n", what, s.ToString().c_str());
  return 1;
}

// Create-to-first-exec (`true` returns) of agents without and with networking, alternating,
// after one warm-up create each (the bake). Fills out["create_to_first_exec_ms"].
Status CompareCreates(const Options& o, const std::string& dir, json& out) {
  auto start = [&](const std::string& name, bool network,
                   uint32_t jail_first) -> Result<std::unique_ptr<agent::Agent>> {
    agent::AgentConfig c;
    c.data_dir = dir + "/" + name;
    c.base.kernel_path = o.guest_dir + "/vmlinux";
    c.base.rootfs_path = o.guest_dir + "/rootfs.ext4";
    c.base.memory_mib = 256;
    c.accel = vmm::Accel::kTcg;
    c.jail_id_first = jail_first;
    c.jail_id_count = 4096;
    if (network) {
      NetConfig n;
      n.pool = *Ipv4Cidr::Parse("10.225." + std::to_string(::getpid() % 250) + ".0/24");
      n.state_dir = dir + "/" + name + "-slots";
      c.network = n;
      c.ready_slots = static_cast<size_t>(o.pool_target);
    }
    return agent::Agent::Start(c);
  };
  MOAT_ASSIGN_OR_RETURN(auto plain, start("plain", false, 910000));
  MOAT_ASSIGN_OR_RETURN(auto networked, start("networked", true, 920000));
  auto create_exec = [](agent::Agent& a) -> Result<double> {
    auto t0 = Clock::now();
    MOAT_ASSIGN_OR_RETURN(auto sb, a.Create("base", {}));
    MOAT_ASSIGN_OR_RETURN(auto guest, sb->Guest());
    channel::ExecRequest req;
    req.argv = {"true"};
    MOAT_ASSIGN_OR_RETURN(auto r, guest->Run(req, Clock::now() + std::chrono::seconds(60)));
    double ms = MsSince(t0);
    if (r.exit_code != 0) return Internal("`true` did not exit 0");
    MOAT_RETURN_IF_ERROR(a.Kill(sb->id()));
    return ms;
  };
  for (auto* a : {plain.get(), networked.get()}) MOAT_RETURN_IF_ERROR(create_exec(*a).status());
  std::vector<double> without, with;
  for (int i = 0; i < o.creates; ++i) {
    // The pool refills between creates, as it does when creates are spaced out.
    MOAT_RETURN_IF_ERROR(
        networked->slot_pool()->WaitReady(o.pool_target, std::chrono::seconds(30)));
    MOAT_ASSIGN_OR_RETURN(double a, create_exec(*plain));
    MOAT_ASSIGN_OR_RETURN(double b, create_exec(*networked));
    without.push_back(a);
    with.push_back(b);
  }
  json w = Percentiles(without), n = Percentiles(with);
  out["create_to_first_exec_ms"] = {{"without_network", w},
                                    {"with_network", n},
                                    {"added_p50", n["p50"].get<double>() - w["p50"].get<double>()},
                                    {"added_p99", n["p99"].get<double>() - w["p99"].get<double>()}};
  return Status::Ok();
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
  if (!o.guest_dir.empty()) {
    Status compared = CompareCreates(o, *dir, out);
    if (!compared.ok()) return Fail("create with and without networking", compared);
  }

  Status saved = bench::WriteJson(o.json_path, out);
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
  if (out.contains("create_to_first_exec_ms")) {
    const json& c = out["create_to_first_exec_ms"];
    std::printf(
        "  create to first exec, %d each, alternating:\n"
        "    without networking   p50 %7.1f ms   p99 %7.1f ms\n"
        "    with networking      p50 %7.1f ms   p99 %7.1f ms\n"
        "    added by networking  p50 %+7.1f ms   p99 %+7.1f ms   (target: <= 10 ms at p50)\n",
        o.creates, c["without_network"]["p50"].get<double>(),
        c["without_network"]["p99"].get<double>(), c["with_network"]["p50"].get<double>(),
        c["with_network"]["p99"].get<double>(), c["added_p50"].get<double>(),
        c["added_p99"].get<double>());
  }
  return (*host)->slots_in_use() == 0 ? 0 : 1;
}

}  // namespace
}  // namespace moat::net

int main(int argc, char** argv) {
  using moat::bench::AtLeastOne;
  moat::net::Options o;
  bool parsed = moat::bench::ParseFlags(
      argc, argv,
      {{"--cycles", [&](const std::string& v) { o.cycles = AtLeastOne(v); }},
       {"--pool-target",
        [&](const std::string& v) { o.pool_target = static_cast<size_t>(AtLeastOne(v)); }},
       {"--guest-dir", [&](const std::string& v) { o.guest_dir = v; }},
       {"--creates", [&](const std::string& v) { o.creates = AtLeastOne(v); }},
       {"--json", [&](const std::string& v) { o.json_path = v; }}},
      "net_bench [--cycles N] [--pool-target N] [--guest-dir DIR] [--creates N] [--json PATH]");
  if (!parsed) return 2;
  return moat::net::Run(o);
}
