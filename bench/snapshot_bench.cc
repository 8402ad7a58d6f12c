// Snapshot benchmark, side by side in one run: cold boot vs create (restore) to first exec vs
// create from the agent's warm pool (paced so that a clone is ready, and back to back),
// pause/resume and fork (N = 1 and 8) of a sandbox with dirtied memory (memory-file snapshots
// side by side with full-stream ones), PSS of idle sandboxes, and creates per second with
// concurrent clients. Prints a summary and writes JSON.
//
// usage: snapshot_bench [--guest-dir DIR] [--creates N] [--idle N] [--json PATH] [--only S,..]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "agent/agent.h"
#include "bench_util.h"
#include "common/fs.h"

namespace moat::bench {
namespace {

using nlohmann::json;

struct Options {
  std::string guest_dir = "build/guest";
  int creates = 100;
  int idle = 50;
  std::string json_path = "build/bench/snapshot.json";
  // Sections to run (restore, pause, pss, clients, pool, fork); empty: all.
  std::set<std::string> only;
  bool Runs(const std::string& section) const { return only.empty() || only.count(section) > 0; }
};

[[noreturn]] void Die(const Status& s, const char* what) {
  std::fprintf(stderr, "snapshot_bench: %s: %s\n", what, s.ToString().c_str());
  std::exit(1);
}

template <typename T>
T Must(Result<T> r, const char* what) {
  if (!r.ok()) Die(r.status(), what);
  return std::move(r).value();
}

// Time from asking for a sandbox to `true` having run in it.
double CreateToFirstExec(agent::Agent& a, bool cold, std::string* id, bool* from_pool = nullptr) {
  auto t0 = Clock::now();
  auto sb = Must(cold ? a.CreateColdBoot({}) : a.Create("base", {}), "create");
  auto g = Must(sb->Guest(), "guest");
  auto r = Must(g->Run({.argv = {"/bin/true"}}, Clock::now() + std::chrono::seconds(60)), "exec");
  if (r.exit_code != 0) Die(Internal("true failed"), "exec");
  *id = sb->id();
  if (from_pool != nullptr) *from_pool = sb->from_warm_pool();
  return Ms(Clock::now() - t0);
}

std::unique_ptr<agent::Agent> StartAgent(const Options& o, const std::string& dir, uint64_t mib,
                                         size_t warm = 0, bool memory_files = true) {
  agent::AgentConfig c;
  c.data_dir = dir;
  c.base.kernel_path = o.guest_dir + "/vmlinux";
  c.base.rootfs_path = o.guest_dir + "/rootfs.ext4";
  c.base.vcpus = 1;
  c.base.memory_mib = mib;
  c.accel = vmm::Accel::kTcg;
  c.warm_sandboxes = warm;
  c.memory_file_snapshots = memory_files;
  // Agents alive side by side must not hand out the same jail uids.
  static uint32_t next_jail_range = 900000;
  c.jail_id_first = next_jail_range;
  next_jail_range += c.jail_id_count;
  return Must(agent::Agent::Start(c), "agent");
}

int Run(const Options& o) {
  std::string dir = Must(MakeTempDir("/tmp", "moat-snapbench."), "temp dir");
  json out = {{"accel", "tcg"}, {"vcpus", 1}};
  {
    auto a = StartAgent(o, dir + "/small", 256);
    std::string id;
    CreateToFirstExec(*a, false, &id);  // bakes the template; not counted
    (void)a->Kill(id);
    out["memory_mib"] = 256;
    if (o.Runs("restore")) {
      std::vector<double> cold, warm;
      for (int i = 0; i < 5; ++i) {
        cold.push_back(CreateToFirstExec(*a, true, &id));
        (void)a->Kill(id);
      }
      for (int i = 0; i < o.creates; ++i) {
        warm.push_back(CreateToFirstExec(*a, false, &id));
        (void)a->Kill(id);
      }
      out["cold_boot_to_first_exec_ms"] = Percentiles(cold);
      out["create_to_first_exec_ms"] = Percentiles(warm);
    }

    if (o.Runs("pause")) {
      // Pause / resume of one sandbox: the resume call (the sandbox runs and its guest has
      // answered the identity op), and on to the first exec. Side by side, alternating: memory-
      // file snapshots (this agent) and full-stream snapshots (an agent of its own).
      auto a_stream = StartAgent(o, dir + "/small-stream", 256, 0, /*memory_files=*/false);
      struct Run {
        agent::Agent* a;
        std::string suffix, id;
        std::vector<double> pause, resume, resume_exec;
      };
      std::vector<Run> runs{{a.get(), ""}, {a_stream.get(), "_stream"}};
      for (auto& r : runs) r.id = Must(r.a->Create("base", {}), "create")->id();
      for (int i = 0; i < 20; ++i) {
        for (auto& r : runs) {
          auto t0 = Clock::now();
          if (Status s = r.a->Pause(r.id); !s.ok()) Die(s, "pause");
          r.pause.push_back(Ms(Clock::now() - t0));
          t0 = Clock::now();
          auto sb = Must(r.a->Resume(r.id), "resume");
          r.resume.push_back(Ms(Clock::now() - t0));
          auto g = Must(sb->Guest(), "guest");
          (void)Must(g->Run({.argv = {"/bin/true"}}, Clock::now() + std::chrono::seconds(60)),
                     "exec");
          r.resume_exec.push_back(Ms(Clock::now() - t0));
        }
      }
      for (auto& r : runs) {
        (void)r.a->Kill(r.id);
        out["pause" + r.suffix + "_ms"] = Percentiles(r.pause);
        out["resume" + r.suffix + "_ms"] = Percentiles(r.resume);
        out["resume_to_first_exec" + r.suffix + "_ms"] = Percentiles(r.resume_exec);
      }
    }

    if (o.Runs("pss")) {
      // PSS of idle sandboxes restored from one template.
      std::vector<std::shared_ptr<agent::Sandbox>> idle;
      for (int i = 0; i < o.idle; ++i) idle.push_back(Must(a->Create("base", {}), "create idle"));
      std::this_thread::sleep_for(std::chrono::seconds(3));
      double pss = 0, rss = 0;
      for (auto& s : idle) {
        auto u = Must(s->Usage(), "usage");
        pss += static_cast<double>(u.pss_bytes);
        rss += static_cast<double>(u.rss_bytes);
      }
      out["idle_sandboxes"] = o.idle;
      out["pss_per_idle_sandbox_mib"] = pss / o.idle / (1 << 20);
      out["rss_per_idle_sandbox_mib"] = rss / o.idle / (1 << 20);
      for (auto& s : idle) (void)a->Kill(s->id());
      idle.clear();
    }
    if (o.Runs("clients")) {
      // Creates per second with 4 concurrent clients.
      std::atomic<int> done{0}, failed{0};
      auto t0 = Clock::now();
      std::vector<std::thread> clients;
      for (int c = 0; c < 4; ++c) {
        clients.emplace_back([&] {
          for (int i = 0; i < 10; ++i) {
            auto s = a->Create("base", {});
            if (!s.ok()) {
              ++failed;
              continue;
            }
            ++done;
            (void)a->Kill((*s)->id());
          }
        });
      }
      for (auto& t : clients) t.join();
      out["creates_per_second_4_clients"] =
          done / std::chrono::duration<double>(Clock::now() - t0).count();
      out["create_failures_4_clients"] = failed.load();
    }
  }
  if (o.Runs("pool")) {
    // The same creates from an agent with a warm pool of 2. Paced: each create comes once a
    // clone is ready (arrivals slower than the refill: what the pool is for); back to back:
    // creates with no pause, so the pool drains and some creates restore on their own path.
    auto a = StartAgent(o, dir + "/pool", 256, /*warm=*/2);
    auto wait_for_clone = [&] {
      auto t0 = Clock::now();
      while (a->warm_ready() < 1 && Clock::now() - t0 < std::chrono::seconds(60)) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      return Ms(Clock::now() - t0);
    };
    wait_for_clone();  // the bake and the first fill
    std::string id;
    std::vector<double> paced, refill, burst;
    int paced_hits = 0, burst_hits = 0;
    for (int i = 0; i < o.creates; ++i) {
      refill.push_back(wait_for_clone());
      bool hit = false;
      paced.push_back(CreateToFirstExec(*a, false, &id, &hit));
      paced_hits += hit;
      (void)a->Kill(id);
    }
    wait_for_clone();
    for (auto t0 = Clock::now();
         a->warm_ready() < 2 && Clock::now() - t0 < std::chrono::minutes(1);) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    for (int i = 0; i < o.creates; ++i) {
      bool hit = false;
      burst.push_back(CreateToFirstExec(*a, false, &id, &hit));
      burst_hits += hit;
      (void)a->Kill(id);
    }
    out["warm_pool_size"] = 2;
    out["create_to_first_exec_warm_pool_paced_ms"] = Percentiles(paced);
    out["create_to_first_exec_warm_pool_paced_hits"] = paced_hits;
    out["warm_pool_wait_for_a_clone_ms"] = Percentiles(refill);
    out["create_to_first_exec_warm_pool_back_to_back_ms"] = Percentiles(burst);
    out["create_to_first_exec_warm_pool_back_to_back_hits"] = burst_hits;
  }
  if (o.Runs("fork")) {
    // Fork of a 512 MiB sandbox with 128 MiB dirtied (a python process holding it). Side by
    // side, alternating: memory-file snapshots and full-stream snapshots, an agent each.
    struct Parent {
      std::unique_ptr<agent::Agent> a;
      std::string suffix;
      std::shared_ptr<agent::Sandbox> sb;
      std::unique_ptr<channel::GuestClient::Stream> dirty;
    };
    std::vector<Parent> parents;
    parents.push_back({StartAgent(o, dir + "/big", 512), ""});
    parents.push_back({StartAgent(o, dir + "/big-stream", 512, 0, false), "_stream"});
    for (auto& p : parents) {
      p.sb = Must(p.a->Create("base", {}), "create 512 MiB");
      auto g = Must(p.sb->Guest(), "guest");
      p.dirty = Must(g->Open({{"op", "exec"},
                              {"cmd",
                               "python3 -c 'import os,time; b=bytearray(os.urandom(1<<20))*128; "
                               "open(\"/tmp/ready\",\"w\").close(); time.sleep(3600)'"}}),
                     "dirty");
      (void)Must(g->Run({.cmd = "while [ ! -e /tmp/ready ]; do sleep 0.1; done"},
                        Clock::now() + std::chrono::seconds(120)),
                 "wait for dirty memory");
    }
    for (int n : {1, 8}) {
      std::vector<std::vector<double>> times(parents.size());
      for (int i = 0; i < (n == 1 ? 10 : 3); ++i) {
        for (size_t k = 0; k < parents.size(); ++k) {
          auto& p = parents[k];
          auto t0 = Clock::now();
          auto kids = Must(p.a->Fork(p.sb->id(), n), "fork");
          times[k].push_back(Ms(Clock::now() - t0));
          for (auto& c : kids) (void)p.a->Kill(c->id());
        }
      }
      for (size_t k = 0; k < parents.size(); ++k) {
        out["fork_512mib_128mib_dirty_n" + std::to_string(n) + parents[k].suffix + "_ms"] =
            Percentiles(times[k]);
      }
    }
    for (auto& p : parents) {
      p.dirty->Cancel();
      (void)p.a->Kill(p.sb->id());
    }
  }
  (void)RemoveTree(dir);

  if (Status w = WriteJson(o.json_path, out); !w.ok()) Die(w, "json");
  // The summary: what ran.
  std::printf("snapshot benchmark (TCG, 1 vCPU)\n");
  auto row = [&](const char* key, const char* label) {
    if (!out.contains(key)) return;
    const json& v = out[key];
    std::printf("  %-40s p50 %8.1f ms  p95 %8.1f ms  p99 %8.1f ms  (n=%d)\n", label,
                v["p50"].get<double>(), v["p95"].get<double>(), v["p99"].get<double>(),
                v["n"].get<int>());
  };
  row("cold_boot_to_first_exec_ms", "cold boot to first exec");
  row("create_to_first_exec_ms", "create (restore) to first exec");
  row("create_to_first_exec_warm_pool_paced_ms", "create from the warm pool, paced");
  row("create_to_first_exec_warm_pool_back_to_back_ms", "create from the warm pool, back to back");
  row("warm_pool_wait_for_a_clone_ms", "warm pool refill");
  if (out.contains("create_to_first_exec_warm_pool_paced_hits")) {
    std::printf("  warm pool hits: paced %d/%d, back to back %d/%d\n",
                out["create_to_first_exec_warm_pool_paced_hits"].get<int>(), o.creates,
                out["create_to_first_exec_warm_pool_back_to_back_hits"].get<int>(), o.creates);
  }
  row("pause_ms", "pause");
  row("pause_stream_ms", "  (full-stream snapshots)");
  row("resume_ms", "resume");
  row("resume_stream_ms", "  (full-stream snapshots)");
  row("resume_to_first_exec_ms", "resume to first exec");
  row("resume_to_first_exec_stream_ms", "  (full-stream snapshots)");
  row("fork_512mib_128mib_dirty_n1_ms", "fork 512 MiB/128 MiB dirty, N=1");
  row("fork_512mib_128mib_dirty_n1_stream_ms", "  (full-stream snapshots)");
  row("fork_512mib_128mib_dirty_n8_ms", "fork 512 MiB/128 MiB dirty, N=8");
  row("fork_512mib_128mib_dirty_n8_stream_ms", "  (full-stream snapshots)");
  if (out.contains("pss_per_idle_sandbox_mib")) {
    std::printf("  idle sandbox: PSS %.1f MiB, RSS %.1f MiB (%d idle from one template)\n",
                out["pss_per_idle_sandbox_mib"].get<double>(),
                out["rss_per_idle_sandbox_mib"].get<double>(), o.idle);
  }
  if (out.contains("creates_per_second_4_clients")) {
    std::printf("  creates/s with 4 clients: %.1f (%d failures)\n",
                out["creates_per_second_4_clients"].get<double>(),
                out["create_failures_4_clients"].get<int>());
  }
  std::printf("  JSON: %s\n", o.json_path.c_str());
  return 0;
}

}  // namespace
}  // namespace moat::bench

int main(int argc, char** argv) {
  using moat::bench::AtLeastOne;
  moat::bench::Options o;
  bool parsed = moat::bench::ParseFlags(
      argc, argv,
      {{"--guest-dir", [&](const std::string& v) { o.guest_dir = v; }},
       {"--creates", [&](const std::string& v) { o.creates = AtLeastOne(v); }},
       {"--idle", [&](const std::string& v) { o.idle = AtLeastOne(v); }},
       {"--json", [&](const std::string& v) { o.json_path = v; }},
       {"--only",
        [&](const std::string& v) {
          for (size_t i = 0; i <= v.size();) {
            size_t j = std::min(v.find(',', i), v.size());
            o.only.insert(v.substr(i, j - i));
            i = j + 1;
          }
        }}},
      "snapshot_bench [--guest-dir DIR] [--creates N] [--idle N] [--json PATH]\n"
      "               [--only restore,pause,pss,clients,pool,fork]");
  if (!parsed) return 2;
  return moat::bench::Run(o);
}
