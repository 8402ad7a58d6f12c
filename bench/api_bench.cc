// API benchmark: a real `moatd serve` (the built binary, its own data dir and key, a free
// loopback port) under load, and what the HTTP path adds to an exec.
//  1. Load: N concurrent streaming execs (`process.Process/Start`, one client connection each)
//     spread over a few sandboxes, each printing five lines 0.2 s apart; every stream is checked
//     as the e2b SDK would (start first, all output, one clean `end`, the end-stream). Any error
//     fails the run. The same load on the guest channels of as many sandboxes of an in-process
//     agent, in alternating rounds, is the reference.
//  2. Added latency: the round trip of `/bin/true` through the API (a keep-alive connection, and a
//     fresh connection per exec) against the same exec on the agent's guest channel directly (an
//     in-process Agent, as sandbox_bench does) on a sandbox of the same template, interleaved in
//     one run so that machine load hits both alike.
// Prints a human summary and writes JSON; kills every sandbox and stops moatd before it exits.
//
// usage: api_bench [--moatd PATH] [--guest-dir DIR] [--sandboxes N] [--streams N] [--execs N]
//                  [--rounds N] [--json PATH]
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <latch>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "agent/agent.h"
#include "bench_util.h"
#include "common/fs.h"
#include "connect_client.h"
#include "moatd_process.h"

namespace moat::bench {
namespace {

using nlohmann::json;

struct Options {
  std::string moatd;  // default: moatd next to this binary
  std::string guest_dir = "build/guest";
  int sandboxes = 4;
  int streams = 200;
  int execs = 200;
  int rounds = 2;  // timed load rounds per path
  std::string json_path = "build/bench/api.json";
};

constexpr const char* kLoadScript = "for i in 1 2 3 4 5; do echo $i; sleep 0.2; done";
constexpr const char* kLoadOutput = "1\n2\n3\n4\n5\n";
// How long one load round may take. On a 2-core machine under TCG the guests' CPU, not the
// API, bounds it: 200 shells forking `sleep` take tens of seconds there, past the SDK's default
// 60 s command lifetime when other work shares the machine. The streams therefore ask for this
// lifetime (Connect-Timeout-Ms) as a caller of `commands.run(..., {timeoutMs})` would.
constexpr auto kLoadDeadline = std::chrono::seconds(300);
constexpr int64_t kLoadTimeoutMs = 300000;
constexpr int kWarmUpStreams = 8;  // per sandbox, before the timed rounds

int Fail(const Status& s, const char* what) {
  std::fprintf(stderr, "api_bench: %s: %s\n", what, s.ToString().c_str());
  return 1;
}

std::string Absolute(const std::string& path) {
  char* real = ::realpath(path.c_str(), nullptr);
  if (real == nullptr) return path;
  std::string out = real;
  std::free(real);
  return out;
}

// A control-API call with the key (connect_client.h's ControlCall).
Result<json> Control(uint16_t port, const std::string& key, const std::string& method,
                     const std::string& target, const json& body, int expect) {
  return ControlCall("127.0.0.1", port, key, method, target, body, expect);
}

// An exec on the guest channel directly, read as StartProcess reads the API's stream.
ExecOutcome DirectExec(channel::GuestClient& guest, const std::vector<std::string>& argv,
                       Clock::time_point deadline) {
  using channel::StreamEvent;
  ExecOutcome out;
  auto t0 = Clock::now();
  // The API runs a Start as the default user `user`; the direct call asks for the same.
  auto stream = guest.Open(
      channel::proto::Request(channel::ExecRequest{.argv = argv, .user = "user"}.ToOp()));
  if (!stream.ok()) {
    out.status = stream.status();
    return out;
  }
  bool started = false, exited = false;
  for (;;) {
    auto ev = (*stream)->Next(deadline);
    if (!ev.ok()) {
      out.status = ev.status();
      break;
    }
    if (ev->kind == StreamEvent::Kind::kData) {
      out.stdout_data += ev->data;
      ++out.data_events;
    } else if (ev->kind == StreamEvent::Kind::kMessage) {
      const json& m = ev->message;
      std::string type = m.value("type", json("")).is_string() ? m.value("type", "") : "";
      if (type == "start" && !started) {
        started = true;
        out.start_ms = Ms(Clock::now() - t0);
      } else if (type == "exit") {
        exited = m.value("exit_code", json(-1)) == json(0);
      }
    } else if (ev->kind == StreamEvent::Kind::kEnd) {
      out.status = ev->status;
      if (out.status.ok() && (!started || !exited)) {
        out.status = Internal(started ? "no clean exit" : "no start");
      }
      break;
    }
  }
  out.total_ms = Ms(Clock::now() - t0);
  return out;
}

// Runs one stream; `watch(fd)` hands the watchdog a socket to shut down past the deadline.
using StreamFn = std::function<ExecOutcome(size_t i, Clock::time_point deadline,
                                           const std::function<void(int)>& watch)>;

// Per-stream results of one or more load rounds.
struct LoadStats {
  std::vector<double> exec_ms, start_ms, wall_ms;
  int streams = 0;
  int errors = 0;
  int data_events = 0;
  std::vector<std::string> error_samples;

  json ToJson() const {
    json out = {{"streams", streams}, {"errors", errors}, {"wall_ms", wall_ms}};
    if (!error_samples.empty()) out["error_samples"] = error_samples;
    if (!exec_ms.empty()) {
      out["exec_ms"] = Percentiles(exec_ms);
      out["start_event_ms"] = Percentiles(start_ms);
      out["data_events_per_stream"] = static_cast<double>(data_events) / exec_ms.size();
    }
    return out;
  }
};

// One round: `n` concurrent streams of kLoadScript, all released at once; each must print
// kLoadOutput and exit 0. Adds to `stats`.
void RunLoad(int n, const StreamFn& fn, LoadStats& stats) {
  std::vector<ExecOutcome> results(static_cast<size_t>(n));
  std::vector<Clock::time_point> ended(static_cast<size_t>(n));
  // A watchdog shuts down the sockets of streams still open past the deadline, so that a stuck
  // server fails the run instead of hanging it.
  std::mutex mu;
  std::condition_variable cv;
  std::vector<int> open_fds(static_cast<size_t>(n), -1);
  int remaining = n;
  std::latch ready(n + 1);
  Clock::time_point t0;
  std::vector<std::thread> threads;
  threads.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, idx = static_cast<size_t>(i)] {
      ready.arrive_and_wait();
      auto watch = [&](int fd) {
        std::lock_guard lock(mu);
        open_fds[idx] = fd;
      };
      results[idx] = fn(idx, t0 + kLoadDeadline, watch);
      if (results[idx].status.ok() && results[idx].stdout_data != kLoadOutput) {
        results[idx].status = Internal("stdout was \"" + results[idx].stdout_data + "\"");
      }
      ended[idx] = Clock::now();
      std::lock_guard lock(mu);
      --remaining;
      cv.notify_all();
    });
  }
  t0 = Clock::now();
  ready.arrive_and_wait();
  {
    std::unique_lock lock(mu);
    if (!cv.wait_until(lock, t0 + kLoadDeadline, [&] { return remaining == 0; })) {
      for (int fd : open_fds) {
        if (fd >= 0) ::shutdown(fd, SHUT_RDWR);
      }
    }
  }
  for (auto& t : threads) t.join();

  stats.streams += n;
  stats.wall_ms.push_back(Ms(*std::max_element(ended.begin(), ended.end()) - t0));
  for (size_t i = 0; i < results.size(); ++i) {
    const auto& r = results[i];
    if (!r.status.ok()) {
      if (++stats.errors <= 5) {
        std::fprintf(stderr, "api_bench: stream %zu: %s\n", i, r.status.ToString().c_str());
        stats.error_samples.push_back(r.status.ToString());
      }
      continue;
    }
    stats.exec_ms.push_back(r.total_ms);
    stats.start_ms.push_back(r.start_ms);
    stats.data_events += r.data_events;
  }
}

// A round through the API: a connection per stream (connect included in its time), as the e2b
// SDK holds one per open stream.
void RunApiLoad(int n, uint16_t port, const std::vector<SandboxRef>& sbs, LoadStats& stats) {
  RunLoad(
      n,
      [&](size_t i, Clock::time_point, const std::function<void(int)>& watch) {
        HttpConnection conn;
        auto t0 = Clock::now();
        ExecOutcome r;
        r.status = conn.Connect("127.0.0.1", port);
        if (!r.status.ok()) return r;
        watch(conn.native_fd());
        r = StartProcess(conn, sbs[i % sbs.size()], {"/bin/sh", "-c", kLoadScript}, kLoadTimeoutMs);
        r.total_ms = Ms(Clock::now() - t0);
        watch(-1);
        return r;
      },
      stats);
}

// The same round on the guest channels of the direct agent's sandboxes.
void RunDirectLoad(int n, const std::vector<std::shared_ptr<channel::GuestClient>>& guests,
                   LoadStats& stats) {
  RunLoad(
      n,
      [&](size_t i, Clock::time_point deadline, const std::function<void(int)>&) {
        return DirectExec(*guests[i % guests.size()], {"/bin/sh", "-c", kLoadScript}, deadline);
      },
      stats);
}

// Phase 2: `/bin/true` through the API (keep-alive and fresh connections) against the guest
// channel directly, interleaved.
Result<json> RunLatency(const Options& o, uint16_t port, const std::vector<SandboxRef>& sbs,
                        const std::vector<std::shared_ptr<channel::GuestClient>>& guests) {
  // Sample i uses the i-th sandbox of each side, round-robin, so that no one VM's luck (where
  // its vCPU thread lands, what it last ran) decides the comparison.
  size_t turn = 0;
  HttpConnection keep;
  MOAT_RETURN_IF_ERROR(keep.Connect("127.0.0.1", port));
  auto api_exec = [&](HttpConnection& conn) -> Result<double> {
    if (!conn.open()) MOAT_RETURN_IF_ERROR(conn.Connect("127.0.0.1", port));
    auto r = StartProcess(conn, sbs[turn % sbs.size()], {"/bin/true"});
    if (!r.status.ok()) return r.status;
    return r.total_ms;
  };
  auto fresh_exec = [&]() -> Result<double> {
    HttpConnection conn;
    auto t0 = Clock::now();
    MOAT_RETURN_IF_ERROR(conn.Connect("127.0.0.1", port));
    auto r = StartProcess(conn, sbs[turn % sbs.size()], {"/bin/true"});
    if (!r.status.ok()) return r.status;
    return Ms(Clock::now() - t0);
  };
  auto direct_exec = [&]() -> Result<double> {
    auto r = DirectExec(*guests[turn % guests.size()], {"/bin/true"},
                        Clock::now() + std::chrono::seconds(30));
    if (!r.status.ok()) return r.status;
    return r.total_ms;
  };
  // envd `GET /health` routed to the sandbox: the API's own share (HTTP, routing, the sandbox
  // lookup) with no guest round trip, a floor for what it adds to an exec.
  auto health = [&]() -> Result<double> {
    if (!keep.open()) MOAT_RETURN_IF_ERROR(keep.Connect("127.0.0.1", port));
    auto t0 = Clock::now();
    MOAT_ASSIGN_OR_RETURN(
        HttpResult r,
        keep.Exchange("GET", "/health", {{"E2b-Sandbox-Id", sbs[turn % sbs.size()].id}}, ""));
    if (r.status != 204) return Internal("envd GET /health: HTTP " + std::to_string(r.status));
    return Ms(Clock::now() - t0);
  };
  for (int i = 0; i < 10; ++i) {  // warm-up, not recorded
    turn = static_cast<size_t>(i);
    MOAT_RETURN_IF_ERROR(api_exec(keep).status());
    MOAT_RETURN_IF_ERROR(direct_exec().status());
    MOAT_RETURN_IF_ERROR(health().status());
  }
  std::vector<double> api, api_fresh, direct, health_ms;
  for (int i = 0; i < o.execs; ++i) {
    turn = static_cast<size_t>(i);
    // Which path goes first alternates too.
    double a = 0, d = 0;
    if (i % 2 == 0) {
      MOAT_ASSIGN_OR_RETURN(a, api_exec(keep));
      MOAT_ASSIGN_OR_RETURN(d, direct_exec());
    } else {
      MOAT_ASSIGN_OR_RETURN(d, direct_exec());
      MOAT_ASSIGN_OR_RETURN(a, api_exec(keep));
    }
    MOAT_ASSIGN_OR_RETURN(double f, fresh_exec());
    api.push_back(a);
    direct.push_back(d);
    api_fresh.push_back(f);
    MOAT_ASSIGN_OR_RETURN(double h, health());
    health_ms.push_back(h);
  }
  json out = {{"execs", o.execs},
              {"api_keepalive_ms", Percentiles(api)},
              {"api_new_connection_ms", Percentiles(api_fresh)},
              {"direct_guest_channel_ms", Percentiles(direct)},
              {"envd_health_ms", Percentiles(health_ms)}};
  // What the API adds: the difference of the percentiles, and (less sensitive to noise) the
  // median of the differences of neighbouring samples.
  for (const char* q : {"p50", "p99"}) {
    out["added_ms"][q] =
        out["api_keepalive_ms"][q].get<double>() - out["direct_guest_channel_ms"][q].get<double>();
    out["added_new_connection_ms"][q] = out["api_new_connection_ms"][q].get<double>() -
                                        out["direct_guest_channel_ms"][q].get<double>();
  }
  std::vector<double> paired, paired_fresh;
  for (size_t i = 0; i < api.size(); ++i) {
    paired.push_back(api[i] - direct[i]);
    paired_fresh.push_back(api_fresh[i] - direct[i]);
  }
  out["added_ms"]["paired_median"] = Percentiles(paired)["p50"];
  out["added_new_connection_ms"]["paired_median"] = Percentiles(paired_fresh)["p50"];
  return out;
}

// The template moatd bakes (same kernel and rootfs, 1 vCPU, 512 MiB, no network) in an
// in-process agent of its own. Its jail ids lie outside moatd's range so the two never share a
// uid.
agent::AgentConfig DirectAgentConfig(const Options& o, const std::string& dir) {
  agent::AgentConfig c;
  c.data_dir = dir;
  c.base.kernel_path = o.guest_dir + "/vmlinux";
  c.base.rootfs_path = o.guest_dir + "/rootfs.ext4";
  c.accel = vmm::Accel::kTcg;
  c.jail_id_first = 980000;
  c.jail_id_count = 1024;
  return c;
}

void PrintLoad(const char* name, const json& load) {
  std::printf("    %-7s %d streams, %d errors, wall", name, load["streams"].get<int>(),
              load["errors"].get<int>());
  for (const auto& w : load["wall_ms"]) std::printf(" %.0f", w.get<double>());
  std::printf(" ms\n");
  if (load.contains("exec_ms")) {
    std::printf("            exec p50 %6.0f p99 %6.0f ms   start event p50 %5.0f p99 %5.0f ms\n",
                load["exec_ms"]["p50"].get<double>(), load["exec_ms"]["p99"].get<double>(),
                load["start_event_ms"]["p50"].get<double>(),
                load["start_event_ms"]["p99"].get<double>());
  }
}

void PrintSummary(const Options& o, const json& out) {
  const json& load = out["load"];
  const json& lat = out["exec_true"];
  auto q = [](const json& j, const char* k, const char* p) { return j[k][p].get<double>(); };
  std::printf("API benchmark (moatd serve, TCG, 1 vCPU, 512 MiB per sandbox)\n");
  std::printf("  load: %d concurrent streaming execs of `%s` over %d sandboxes, %d rounds\n",
              o.streams, kLoadScript, o.sandboxes, o.rounds);
  PrintLoad("API", load["api"]);
  PrintLoad("direct", load["direct"]);
  if (load.contains("added_ms")) {
    std::printf("    API - direct: exec p50 %+.0f ms, p99 %+.0f ms (the guests' CPU bounds both)\n",
                q(load, "added_ms", "p50"), q(load, "added_ms", "p99"));
  }
  std::printf("  exec `true` round trip (n=%d, interleaved)\n", o.execs);
  std::printf("    direct guest channel  p50 %6.2f ms  p99 %6.2f ms\n",
              q(lat, "direct_guest_channel_ms", "p50"), q(lat, "direct_guest_channel_ms", "p99"));
  for (auto [name, key, added] :
       {std::tuple{"API, keep-alive", "api_keepalive_ms", "added_ms"},
        std::tuple{"API, new connection", "api_new_connection_ms", "added_new_connection_ms"}}) {
    std::printf(
        "    %-20s  p50 %6.2f ms  p99 %6.2f ms   added p50 %+.2f  p99 %+.2f  paired median "
        "%+.2f ms\n",
        name, q(lat, key, "p50"), q(lat, key, "p99"), q(lat, added, "p50"), q(lat, added, "p99"),
        q(lat, added, "paired_median"));
  }
  std::printf("  envd GET /health (no guest)  p50 %6.2f ms  p99 %6.2f ms\n",
              q(lat, "envd_health_ms", "p50"), q(lat, "envd_health_ms", "p99"));
  std::printf("  JSON: %s\n", o.json_path.c_str());
}

int Run(const Options& o) {
  auto dir = MakeTempDir("/tmp", "moat-api-bench.");
  if (!dir.ok()) return Fail(dir.status(), "temp dir");
  std::string key = "moat_bench_" + std::to_string(::getpid()) + "_" +
                    std::to_string(Clock::now().time_since_epoch().count());
  json out = {{"accel", "tcg"}, {"vcpus", 1}, {"memory_mib", 512}, {"network", false}};
  int rc = 0;
  {
    MoatdProcess moatd;
    Status started = moatd.Start(
        o.moatd, {"--accel", "tcg", "--network", "off", "--guest-dir", o.guest_dir}, *dir, key);
    if (!started.ok()) {
      (void)moatd.Stop();
      (void)RemoveTree(*dir);
      return Fail(started, "moatd");
    }
    uint16_t port = moatd.port();
    std::vector<SandboxRef> sbs;
    std::unique_ptr<agent::Agent> direct_agent;
    // Whatever fails in here, the clean-up below still runs.
    auto body = [&]() -> Status {
      MOAT_RETURN_IF_ERROR(Control(port, key, "GET", "/healthz", nullptr, 200).status());
      std::vector<double> creates;
      for (int i = 0; i < o.sandboxes; ++i) {
        auto t0 = Clock::now();
        MOAT_ASSIGN_OR_RETURN(
            json sb, Control(port, key, "POST", "/sandboxes",
                             {{"templateID", "base"}, {"timeout", 3600}, {"secure", true}}, 201));
        creates.push_back(Ms(Clock::now() - t0));
        if (!sb.contains("sandboxID") || !sb["sandboxID"].is_string()) {
          return Internal("POST /sandboxes: no sandboxID in " + sb.dump());
        }
        const json token = sb.value("envdAccessToken", json(""));
        sbs.push_back({sb["sandboxID"], token.is_string() ? token.get<std::string>() : ""});
      }
      out["api_create_first_ms"] = creates.front();  // bakes the template
      if (creates.size() > 1) {
        out["api_create_ms"] = Percentiles(std::vector<double>(creates.begin() + 1, creates.end()));
      }
      MOAT_ASSIGN_OR_RETURN(direct_agent,
                            agent::Agent::Start(DirectAgentConfig(o, *dir + "/agent")));
      std::vector<std::shared_ptr<channel::GuestClient>> guests;
      for (int i = 0; i < o.sandboxes; ++i) {
        MOAT_ASSIGN_OR_RETURN(auto sb, direct_agent->Create("base", {}));
        MOAT_ASSIGN_OR_RETURN(auto guest, sb->Guest());
        guests.push_back(std::move(guest));
      }
      // Every sandbox answers once before the load starts.
      for (const auto& sb : sbs) {
        HttpConnection conn;
        MOAT_RETURN_IF_ERROR(conn.Connect("127.0.0.1", port));
        MOAT_RETURN_IF_ERROR(
            StartProcess(conn, sb, {"/bin/true"}).status.Annotate("warm-up exec in " + sb.id));
      }
      for (const auto& g : guests) {
        auto r = DirectExec(*g, {"/bin/true"}, Clock::now() + std::chrono::seconds(30));
        MOAT_RETURN_IF_ERROR(r.status.Annotate("warm-up exec in a direct sandbox"));
      }

      // The load: a small warm-up round on each path (not recorded: the first burst in a fresh
      // VM pays for cold page and translation caches), then full rounds in A-B-B-A order so that
      // drift in the machine's load hits both paths alike.
      LoadStats api, direct, warm_api, warm_direct;
      RunApiLoad(kWarmUpStreams * o.sandboxes, port, sbs, warm_api);
      RunDirectLoad(kWarmUpStreams * o.sandboxes, guests, warm_direct);
      for (int r = 0; r < o.rounds; ++r) {
        if (r % 2 == 0) {
          RunApiLoad(o.streams, port, sbs, api);
          RunDirectLoad(o.streams, guests, direct);
        } else {
          RunDirectLoad(o.streams, guests, direct);
          RunApiLoad(o.streams, port, sbs, api);
        }
        if (!moatd.running()) return Internal("moatd died under load: " + moatd.LogTail());
      }
      out["load"] = {
          {"sandboxes", o.sandboxes},  {"command", kLoadScript},
          {"rounds", o.rounds},        {"api", api.ToJson()},
          {"direct", direct.ToJson()}, {"warm_up_errors", warm_api.errors + warm_direct.errors}};
      if (api.errors + direct.errors + warm_api.errors + warm_direct.errors > 0) rc = 1;
      if (!api.exec_ms.empty() && !direct.exec_ms.empty()) {
        for (const char* q : {"p50", "p99"}) {
          out["load"]["added_ms"][q] = out["load"]["api"]["exec_ms"][q].get<double>() -
                                       out["load"]["direct"]["exec_ms"][q].get<double>();
        }
      }
      MOAT_ASSIGN_OR_RETURN(out["exec_true"], RunLatency(o, port, sbs, guests));
      return Status::Ok();
    };
    Status s = body();
    if (!s.ok()) rc = Fail(s, "run");

    // Clean-up: kill the sandboxes through the API, stop both agents, check nothing is left.
    direct_agent.reset();
    for (const auto& sb : sbs) {
      auto k = Control(port, key, "DELETE", "/sandboxes/" + sb.id, nullptr, 204);
      if (!k.ok()) rc = Fail(k.status(), "kill");
    }
    Status stopped = moatd.Stop();
    if (!stopped.ok()) rc = Fail(stopped, "stopping moatd");
    // moatd logs every 5xx and failure as a warning or an error: a clean run has none.
    std::string log = moatd.Log();
    int warnings = 0;
    for (size_t at = 0; (at = log.find("level=", at)) != std::string::npos; ++at) {
      if (log.compare(at, 10, "level=warn") == 0 || log.compare(at, 11, "level=error") == 0) {
        size_t eol = log.find('\n', at);
        if (++warnings <= 5) {
          std::fprintf(stderr, "api_bench: moatd logged: %s\n", log.substr(at, eol - at).c_str());
        }
      }
    }
    out["moatd_log_warnings"] = warnings;
    auto left = ProcessesMentioning(*dir);
    for (const auto& p : left) std::fprintf(stderr, "api_bench: left running: %s\n", p.c_str());
    if (!left.empty()) rc = 1;
    if (rc != 0) {
      std::fprintf(stderr, "api_bench: moatd's log ends:\n%s\n", moatd.LogTail().c_str());
    }
  }
  (void)RemoveTree(*dir);
  if (!out.contains("exec_true")) return 1;

  Status saved = WriteJson(o.json_path, out);
  if (!saved.ok()) return Fail(saved, "writing JSON");
  PrintSummary(o, out);
  return rc;
}

}  // namespace
}  // namespace moat::bench

int main(int argc, char** argv) {
  using moat::bench::AtLeastOne;
  moat::bench::Options o;
  bool parsed = moat::bench::ParseFlags(
      argc, argv,
      {{"--moatd", [&](const std::string& v) { o.moatd = v; }},
       {"--guest-dir", [&](const std::string& v) { o.guest_dir = v; }},
       {"--sandboxes", [&](const std::string& v) { o.sandboxes = AtLeastOne(v); }},
       {"--streams", [&](const std::string& v) { o.streams = AtLeastOne(v); }},
       {"--rounds", [&](const std::string& v) { o.rounds = AtLeastOne(v); }},
       {"--execs", [&](const std::string& v) { o.execs = AtLeastOne(v); }},
       {"--json", [&](const std::string& v) { o.json_path = v; }}},
      "api_bench [--moatd PATH] [--guest-dir DIR] [--sandboxes N] [--streams N] [--rounds N] "
      "[--execs N] [--json PATH]");
  if (!parsed) return 2;
  if (o.moatd.empty()) {
    std::string self = moat::bench::Absolute("/proc/self/exe");
    o.moatd = self.substr(0, self.rfind('/') + 1) + "moatd";
  }
  o.guest_dir = moat::bench::Absolute(o.guest_dir);
  return moat::bench::Run(o);
}
