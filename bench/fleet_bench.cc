// Fleet benchmark driver: the same client work against `moatd serve` and against a `moatd api`
// replica in front of two `moatd agent` hosts, interleaved in one run so that the machine's load
// hits both alike. bench/fleet_bench.sh starts the processes (a private PostgreSQL, the agents,
// the replica, serve — all real, VMs included) and runs this with their URLs.
//  1. create → first exec: POST /sandboxes, then `/bin/true` through envd's process.Start on a
//     fresh connection (what an SDK user's first `commands.run` does); the sandbox is killed
//     after each sample (not timed). Serve and fleet alternate sample by sample.
//  2. exec round trip: `/bin/true` on a keep-alive connection to one sandbox on each side,
//     alternating; the fleet's added latency is the difference of the medians and the median of
//     the paired differences.
//  3. creates/s: `clients` threads, each `cycles` times create → kill, against one side at a
//     time (serve, fleet, serve, fleet: two rounds each); creates/s = creates / wall time.
// Prints a summary and writes JSON. Every sandbox it creates is killed before it exits.
//
// usage: fleet_bench --serve URL --fleet URL --key KEY [--samples N] [--execs N]
//                    [--clients N] [--cycles N] [--json PATH] [--info JSON]
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.h"
#include "connect_client.h"

namespace moat::bench {
namespace {

using nlohmann::json;

struct Options {
  std::string serve_url, fleet_url, key;
  int samples = 20;  // create → first exec, per side
  int execs = 200;   // exec round trips, per side
  int clients = 8;
  int cycles = 4;  // create → kill per client per round
  std::string json_path = "build/bench/fleet.json";
  std::string info = "{}";  // what the harness says of the set-up, copied into the JSON
};

struct Target {
  std::string name;
  std::string host = "127.0.0.1";
  uint16_t port = 0;
};

Result<Target> ParseUrl(const std::string& name, const std::string& url) {
  const std::string prefix = "http://127.0.0.1:";
  if (url.rfind(prefix, 0) != 0) return InvalidArgument(name + ": expected " + prefix + "PORT");
  int port = std::atoi(url.c_str() + prefix.size());
  if (port <= 0 || port > 65535) return InvalidArgument(name + ": bad port in " + url);
  return Target{name, "127.0.0.1", static_cast<uint16_t>(port)};
}

Result<json> Control(const Target& t, const std::string& key, const std::string& method,
                     const std::string& target, const json& body, int expect) {
  auto out = ControlCall(t.host, t.port, key, method, target, body, expect);
  if (!out.ok()) return out.status().Annotate(t.name);
  return out;
}

// Every sandbox this run created and has not killed yet, so that a failure kills them too.
class Live {
 public:
  void Add(const Target& t, const std::string& id) {
    std::lock_guard<std::mutex> l(mu_);
    live_.push_back({t, id});
  }
  Status Kill(const Target& t, const std::string& key, const std::string& id) {
    MOAT_RETURN_IF_ERROR(Control(t, key, "DELETE", "/sandboxes/" + id, nullptr, 204).status());
    std::lock_guard<std::mutex> l(mu_);  // killed: KillAll need not try again
    live_.erase(
        std::remove_if(live_.begin(), live_.end(), [&](const auto& e) { return e.second == id; }),
        live_.end());
    return Status::Ok();
  }
  void KillAll(const std::string& key) {
    std::vector<std::pair<Target, std::string>> left;
    {
      std::lock_guard<std::mutex> l(mu_);
      left.swap(live_);
    }
    for (const auto& [t, id] : left)
      (void)Control(t, key, "DELETE", "/sandboxes/" + id, nullptr, 204);
  }

 private:
  std::mutex mu_;
  std::vector<std::pair<Target, std::string>> live_;
};

Result<SandboxRef> Create(const Target& t, const std::string& key, Live& live) {
  MOAT_ASSIGN_OR_RETURN(json sb,
                        Control(t, key, "POST", "/sandboxes",
                                {{"templateID", "base"}, {"timeout", 600}, {"secure", true}}, 201));
  if (!sb.contains("sandboxID") || !sb["sandboxID"].is_string()) {
    return Internal(t.name + ": POST /sandboxes: no sandboxID in " + sb.dump());
  }
  live.Add(t, sb["sandboxID"]);
  const json token = sb.value("envdAccessToken", json(""));
  return SandboxRef{sb["sandboxID"], token.is_string() ? token.get<std::string>() : ""};
}

struct FirstExec {
  std::vector<double> create_ms, first_exec_ms, total_ms;
};

Status CreateThenExec(const Target& t, const std::string& key, Live& live, FirstExec& into) {
  auto t0 = Clock::now();
  MOAT_ASSIGN_OR_RETURN(SandboxRef sb, Create(t, key, live));
  auto t1 = Clock::now();
  HttpConnection conn;
  MOAT_RETURN_IF_ERROR(conn.Connect(t.host, t.port));
  ExecOutcome r = StartProcess(conn, sb, {"/bin/true"});
  auto t2 = Clock::now();
  MOAT_RETURN_IF_ERROR(r.status.Annotate(t.name + ": first exec in " + sb.id));
  into.create_ms.push_back(Ms(t1 - t0));
  into.first_exec_ms.push_back(Ms(t2 - t1));
  into.total_ms.push_back(Ms(t2 - t0));
  return live.Kill(t, key, sb.id);
}

// One round of `clients` threads × `cycles` create → kill against `t`.
Result<json> CreateRound(const Target& t, const Options& o, Live& live) {
  std::mutex mu;
  std::vector<double> create_ms;
  Status first_error;
  auto t0 = Clock::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < o.clients; ++c) {
    threads.emplace_back([&] {
      for (int i = 0; i < o.cycles; ++i) {
        auto s0 = Clock::now();
        auto sb = Create(t, o.key, live);
        double ms = Ms(Clock::now() - s0);
        Status killed = sb.ok() ? live.Kill(t, o.key, sb->id) : sb.status();
        std::lock_guard<std::mutex> l(mu);
        if (!killed.ok()) {
          if (first_error.ok()) first_error = killed;
          return;
        }
        create_ms.push_back(ms);
      }
    });
  }
  for (auto& th : threads) th.join();
  double wall_s = Ms(Clock::now() - t0) / 1000;
  MOAT_RETURN_IF_ERROR(first_error);
  return json{{"creates", create_ms.size()},
              {"wall_s", wall_s},
              {"creates_per_s", create_ms.size() / wall_s},
              {"create_ms", Percentiles(create_ms)}};
}

double P50(const std::vector<double>& v) {
  return Percentiles(v)["p50"].get<double>();
}

Status Run(const Options& o, json& out) {
  MOAT_ASSIGN_OR_RETURN(Target serve, ParseUrl("serve", o.serve_url));
  MOAT_ASSIGN_OR_RETURN(Target fleet, ParseUrl("fleet", o.fleet_url));
  Target sides[2] = {serve, fleet};
  Live live;
  auto body = [&]() -> Status {
    // Warm-up, not recorded: each side creates and execs once (the first create of a host
    // may bake its template; the first exec translates the guest's cold paths).
    for (const Target& t : sides) {
      FirstExec ignored;
      for (int i = 0; i < 2; ++i) MOAT_RETURN_IF_ERROR(CreateThenExec(t, o.key, live, ignored));
    }
    // 1. create → first exec, alternating (a pause between samples lets the warm pools refill,
    // as a user's agent loop does between tasks).
    FirstExec fe[2];
    for (int i = 0; i < o.samples; ++i) {
      for (int s = 0; s < 2; ++s) {
        int side = (i + s) % 2;
        MOAT_RETURN_IF_ERROR(CreateThenExec(sides[side], o.key, live, fe[side]));
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
      }
    }
    for (int s = 0; s < 2; ++s) {
      out["create_first_exec"][sides[s].name] = {
          {"create_ms", Percentiles(fe[s].create_ms)},
          {"first_exec_ms", Percentiles(fe[s].first_exec_ms)},
          {"total_ms", Percentiles(fe[s].total_ms)}};
    }
    out["create_first_exec"]["fleet_added_p50_ms"] = P50(fe[1].total_ms) - P50(fe[0].total_ms);

    // 2. exec round trips on keep-alive connections, alternating per exec.
    SandboxRef sb[2];
    HttpConnection conn[2];
    for (int s = 0; s < 2; ++s) {
      MOAT_ASSIGN_OR_RETURN(sb[s], Create(sides[s], o.key, live));
      MOAT_RETURN_IF_ERROR(conn[s].Connect(sides[s].host, sides[s].port));
      for (int w = 0; w < 10; ++w) {
        if (!conn[s].open()) MOAT_RETURN_IF_ERROR(conn[s].Connect(sides[s].host, sides[s].port));
        MOAT_RETURN_IF_ERROR(StartProcess(conn[s], sb[s], {"/bin/true"}).status);
      }
    }
    std::vector<double> rtt[2], paired;
    int reconnects[2] = {0, 0};
    for (int i = 0; i < o.execs; ++i) {
      double ms[2];
      for (int k = 0; k < 2; ++k) {
        int s = (i + k) % 2;
        // A side that closes the connection after an exchange (the fleet relay does) is
        // reconnected to, as an SDK client would, and the connect is timed with the exec.
        auto t0 = Clock::now();
        if (!conn[s].open()) {
          MOAT_RETURN_IF_ERROR(conn[s].Connect(sides[s].host, sides[s].port));
          ++reconnects[s];
        }
        ExecOutcome r = StartProcess(conn[s], sb[s], {"/bin/true"});
        MOAT_RETURN_IF_ERROR(r.status.Annotate(sides[s].name + ": exec"));
        ms[s] = Ms(Clock::now() - t0);
        rtt[s].push_back(r.total_ms);
      }
      paired.push_back(ms[1] - ms[0]);
    }
    for (int s = 0; s < 2; ++s) {
      out["exec_rtt"][sides[s].name] = Percentiles(rtt[s]);
      out["exec_rtt"][sides[s].name]["reconnects"] = reconnects[s];
      MOAT_RETURN_IF_ERROR(live.Kill(sides[s], o.key, sb[s].id));
    }
    out["exec_rtt"]["fleet_added_ms"] = {{"p50_difference", P50(rtt[1]) - P50(rtt[0])},
                                         {"paired_median", P50(paired)}};

    // 3. creates/s under `clients` concurrent clients, two rounds per side, alternating.
    std::this_thread::sleep_for(std::chrono::seconds(2));
    for (int round = 0; round < 2; ++round) {
      for (int s = 0; s < 2; ++s) {
        MOAT_ASSIGN_OR_RETURN(json r, CreateRound(sides[s], o, live));
        out["concurrent_creates"][sides[s].name].push_back(r);
        std::this_thread::sleep_for(std::chrono::seconds(3));  // pools refill between rounds
      }
    }
    return Status::Ok();
  };
  Status st = body();
  live.KillAll(o.key);
  return st;
}

void PrintSummary(const json& out) {
  auto q = [&](const json& j, const char* p) { return j.value(p, 0.0); };
  std::printf("fleet_bench (%s)\n", out.value("info", json::object()).dump().c_str());
  for (const char* side : {"serve", "fleet"}) {
    const json& fe = out["create_first_exec"][side];
    std::printf(
        "  %-5s create→first exec p50 %7.1f ms  p99 %7.1f ms  (create p50 %6.1f, exec "
        "p50 %6.1f)\n",
        side, q(fe["total_ms"], "p50"), q(fe["total_ms"], "p99"), q(fe["create_ms"], "p50"),
        q(fe["first_exec_ms"], "p50"));
  }
  for (const char* side : {"serve", "fleet"}) {
    const json& r = out["exec_rtt"][side];
    std::printf("  %-5s exec RTT p50 %6.2f ms  p99 %6.2f ms  (%d reconnects)\n", side, q(r, "p50"),
                q(r, "p99"), r.value("reconnects", 0));
  }
  std::printf("  fleet adds to an exec: %.2f ms (p50 difference), %.2f ms (paired median)\n",
              q(out["exec_rtt"]["fleet_added_ms"], "p50_difference"),
              q(out["exec_rtt"]["fleet_added_ms"], "paired_median"));
  for (const char* side : {"serve", "fleet"}) {
    for (const json& r : out["concurrent_creates"][side]) {
      std::printf(
          "  %-5s %d creates by %d clients: %.2f creates/s (create p50 %.1f ms, p99 %.1f "
          "ms)\n",
          side, r["creates"].get<int>(), out["clients"].get<int>(), q(r, "creates_per_s"),
          q(r["create_ms"], "p50"), q(r["create_ms"], "p99"));
    }
  }
}

}  // namespace
}  // namespace moat::bench

int main(int argc, char** argv) {
  using namespace moat::bench;
  Options o;
  if (!ParseFlags(argc, argv,
                  {{"--serve", [&](const std::string& v) { o.serve_url = v; }},
                   {"--fleet", [&](const std::string& v) { o.fleet_url = v; }},
                   {"--key", [&](const std::string& v) { o.key = v; }},
                   {"--samples", [&](const std::string& v) { o.samples = AtLeastOne(v); }},
                   {"--execs", [&](const std::string& v) { o.execs = AtLeastOne(v); }},
                   {"--clients", [&](const std::string& v) { o.clients = AtLeastOne(v); }},
                   {"--cycles", [&](const std::string& v) { o.cycles = AtLeastOne(v); }},
                   {"--json", [&](const std::string& v) { o.json_path = v; }},
                   {"--info", [&](const std::string& v) { o.info = v; }}},
                  "usage: fleet_bench --serve URL --fleet URL --key KEY [--samples N] [--execs N] "
                  "[--clients N] [--cycles N] [--json PATH] [--info JSON]")) {
    return 2;
  }
  if (o.serve_url.empty() || o.fleet_url.empty() || o.key.empty()) {
    std::fprintf(stderr, "fleet_bench: --serve, --fleet and --key are required\n");
    return 2;
  }
  nlohmann::json info = nlohmann::json::parse(o.info, nullptr, false);
  nlohmann::json out = {{"info", info.is_discarded() ? nlohmann::json(o.info) : info},
                        {"clients", o.clients},
                        {"cycles", o.cycles}};
  moat::Status st = Run(o, out);
  if (!st.ok()) {
    std::fprintf(stderr, "fleet_bench: %s\n", st.ToString().c_str());
    return 1;
  }
  moat::Status written = WriteJson(o.json_path, out);
  if (!written.ok()) {
    std::fprintf(stderr, "fleet_bench: %s\n", written.ToString().c_str());
    return 1;
  }
  PrintSummary(out);
  std::printf("  JSON: %s\n", o.json_path.c_str());
  return 0;
}
