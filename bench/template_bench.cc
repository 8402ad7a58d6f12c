// Custom template benchmark: a real `moatd serve` (the built binary, its own data dir and key, a
// free loopback port) driven through the E2B template build API as the official SDK drives it
// (shared/E2B-TEMPLATES.md §1), three measurements side by side in one run:
//  1. Create → first exec from a custom template against `base`, each with its warm pool
//     filled: a one-RUN-step template built from base, used once so that the agent's pool learns
//     the demand, then K interleaved rounds of POST /sandboxes + `/bin/bash -l -c true` through
//     the envd process API (as `commands.run` sends it) + kill, waiting for both pools to refill
//     between rounds. moatd exposes no per-template warm gauge, so the pools are followed in its
//     log: `agent.warm_clone_added` (template=<build>) adds a clone, `sandbox.claimed`
//     (local_id) takes one; a settle time after the last restore covers the clone's warm-up exec.
//     Whether each create got a warm clone is read from the same log.
//  2. A 5-step build (RUN, COPY of an uploaded tar.gz, ENV, WORKDIR, RUN) cold, then rebuilt
//     unchanged (every step cached), each timed from POST /v3/templates to status `ready`; the
//     phases come from the build log's entries and their timestamps, the bake's share from
//     moatd's `template.baked` line.
//  3. A RUN step's cost in a build (built with top-level force K times: the step's own time from
//     the build log, the builder VM's boot, layer save, flatten and bake around it) against the
//     same command run with `commands.run` in a fresh `base` sandbox. The command prints a random
//     stamp and writes it to ~/stamp; a sandbox of the last forced build must hold that build's
//     stamp, not an earlier one's (a forced step's result must replace the cached layer).
// Also the disk the builds took under DATA_DIR/templates, before and after the templates' delete.
// Prints a human summary and writes JSON; kills every sandbox, deletes its templates and stops
// moatd before it exits, also on failure. The API client is template_client.h; the reading of
// moatd's log, moatd_log.h.
//
// usage: template_bench [--moatd PATH] [--guest-dir DIR] [--rounds N] [--run-builds N]
//                       [--settle-ms N] [--run-cmd CMD] [--json PATH]
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "agent/external_tool.h"
#include "bench_util.h"
#include "common/fs.h"
#include "connect_client.h"
#include "moatd_log.h"
#include "moatd_process.h"
#include "template_client.h"

namespace moat::bench {
namespace {

using nlohmann::json;

// Every template is built with the shape of `base` (1 vCPU, 512 MiB), so that sandboxes of both
// are alike and the builder VM runs a step on what a sandbox runs a command on.
constexpr int kCpuCount = 1;
constexpr int kMemoryMb = 512;
constexpr int kWarmSandboxes = 2;
constexpr const char* kFirstExec = "true";  // as the SDK runs it: /bin/bash -l -c true
// Prints "<sum> <16 hex>" and writes the same to ~/stamp: a few hundred ms of guest CPU plus a
// stamp that tells one run's result from another's.
constexpr const char* kDefaultRunCmd =
    "python3 -c 'import os; s=\"%d %s\" % (sum(range(10**6)), os.urandom(8).hex()); print(s); "
    "open(os.path.expanduser(\"~/stamp\"), \"w\").write(s)'";

struct Options {
  std::string moatd;  // default: moatd next to this binary
  std::string guest_dir = "build/guest";
  int rounds = 20;       // phase 1
  int run_builds = 3;    // phase 3
  int settle_ms = 1000;  // after a pool's last restore: its warm-up exec
  std::string run_cmd = kDefaultRunCmd;
  std::string json_path = "build/bench/template.json";
};

std::string RandomHex(size_t n) {
  auto bytes = ReadFile("/proc/sys/kernel/random/uuid");
  std::string out;
  for (char c : bytes.ok() ? *bytes : std::to_string(::getpid())) {
    if (std::isxdigit(static_cast<unsigned char>(c))) out.push_back(c);
  }
  return out.substr(0, n);
}

// {"n", "p50", "p90", "min", "max", "mean"} (nearest rank, as bench_util's Percentiles).
json Summary(std::vector<double> v) {
  if (v.empty()) return {{"n", 0}};
  std::sort(v.begin(), v.end());
  auto at = [&](double q) { return v[std::min(v.size() - 1, static_cast<size_t>(q * v.size()))]; };
  double sum = 0;
  for (double x : v) sum += x;
  return {{"n", v.size()},    {"p50", at(0.50)}, {"p90", at(0.90)},
          {"min", v.front()}, {"max", v.back()}, {"mean", sum / static_cast<double>(v.size())}};
}

double Median(std::vector<double> v) {
  return Summary(std::move(v))["p50"].get<double>();
}

// The benchmark's view of one moatd: its API, the sandboxes it made (killed at the end) and
// the warm pools as moatd's log tells them.
class Bench {
 public:
  Bench(const Options& o, MoatdProcess& moatd, const std::string& key, std::string dir)
      : o_(o), moatd_(moatd), port_(moatd.port()), api_(moatd.port(), key), dir_(std::move(dir)) {}

  Result<json> Call(const std::string& method, const std::string& target, const json& body,
                    int expect) {
    return api_.Call(method, target, body, expect);
  }

  // A template of the shape of `base` (kCpuCount, kMemoryMb).
  Result<BuildRun> Build(const std::string& name, const json& start,
                         const std::vector<UploadFile>& files = {}) {
    return api_.Build(name, kCpuCount, kMemoryMb, start, files);
  }
  Result<std::string> DeleteTemplates() { return api_.DeleteTemplates(); }

  Result<SandboxRef> Create(const std::string& tmpl) {
    MOAT_ASSIGN_OR_RETURN(json sb,
                          Call("POST", "/sandboxes",
                               {{"templateID", tmpl}, {"timeout", 600}, {"secure", true}}, 201));
    if (!sb.contains("sandboxID") || !sb["sandboxID"].is_string()) {
      return Internal("POST /sandboxes: no sandboxID in " + sb.dump());
    }
    const json token = sb.value("envdAccessToken", json(""));
    SandboxRef ref{sb["sandboxID"], token.is_string() ? token.get<std::string>() : ""};
    sandboxes_.insert(ref.id);
    return ref;
  }

  Status Kill(const std::string& id) {
    MOAT_RETURN_IF_ERROR(Call("DELETE", "/sandboxes/" + id, nullptr, 204).status());
    sandboxes_.erase(id);
    return Status::Ok();
  }

  // `commands.run(cmd)`: /bin/bash -l -c cmd through the envd process API on a new connection.
  ExecOutcome Run(const SandboxRef& sb, const std::string& cmd) {
    HttpConnection conn;
    auto t0 = Clock::now();
    ExecOutcome r;
    r.status = conn.Connect("127.0.0.1", port_);
    if (!r.status.ok()) return r;
    r = StartProcess(conn, sb, {"/bin/bash", "-l", "-c", cmd});
    r.total_ms = Ms(Clock::now() - t0);
    return r;
  }

  std::vector<LogFields> Log() { return ParseLog(moatd_.Log()); }

  // Waits until every template in `want` has that many warm clones, then `settle_ms` more (the
  // newest clone's warm-up exec runs after its restore is logged). The ms waited; a timeout is
  // counted, not an error: the creates that follow say whether they got a warm clone.
  double WaitPools(const std::map<std::string, int>& want, std::chrono::seconds limit) {
    auto t0 = Clock::now();
    for (;;) {
      auto have = PooledClones(Log());
      bool full = std::all_of(want.begin(), want.end(),
                              [&](const auto& w) { return have[w.first] >= w.second; });
      if (full) break;
      if (Clock::now() - t0 > limit) {
        ++pool_timeouts_;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(o_.settle_ms));
    return Ms(Clock::now() - t0);
  }

  const std::set<std::string>& sandboxes() const { return sandboxes_; }
  int pool_timeouts() const { return pool_timeouts_; }
  const std::string& dir() const { return dir_; }
  const Options& options() const { return o_; }

 private:
  const Options& o_;
  MoatdProcess& moatd_;
  uint16_t port_;
  TemplateApi api_;
  std::string dir_;
  std::set<std::string> sandboxes_;
  int pool_timeouts_ = 0;
};

// 1. Create → first exec from a custom template against base, both pools full.
Result<json> CreateVsBase(Bench& bench) {
  const Options& o = bench.options();
  std::string name = "bench-warm-" + RandomHex(8);
  json start = {
      {"fromTemplate", "base"},
      {"steps",
       {{{"type", "RUN"}, {"args", {"echo custom > /home/user/marker"}}, {"force", false}}}},
      {"force", false}};
  MOAT_ASSIGN_OR_RETURN(BuildRun built, bench.Build(name, start));
  json out = {{"template", name},
              {"steps", "RUN echo custom > /home/user/marker"},
              {"build_ms", built.total_ms},
              {"first_exec", std::string("/bin/bash -l -c ") + kFirstExec},
              {"rounds", o.rounds}};
  const std::string& build = built.build_id;

  // The first create from it restores without a pool (and teaches the agent the demand).
  auto t0 = Clock::now();
  MOAT_ASSIGN_OR_RETURN(SandboxRef first, bench.Create(name));
  double first_create = Ms(Clock::now() - t0);
  ExecOutcome check = bench.Run(first, "cat /home/user/marker");
  double first_total = Ms(Clock::now() - t0);
  MOAT_RETURN_IF_ERROR(check.status.Annotate("first exec in the custom template"));
  if (check.stdout_data != "custom\n") {
    return Internal("the custom template's sandbox has marker \"" + check.stdout_data + "\"");
  }
  MOAT_RETURN_IF_ERROR(bench.Kill(first.id));
  out["custom_first_create_ms"] = first_create;
  out["custom_first_create_exec_ms"] = first_total;

  int custom_creates = 1;
  auto want = [&] {
    return std::map<std::string, int>{{"base", kWarmSandboxes},
                                      {build, std::min(custom_creates, kWarmSandboxes)}};
  };
  std::vector<double> refill;
  refill.push_back(bench.WaitPools(want(), std::chrono::seconds(120)));
  struct Side {
    std::vector<double> create, total;
    std::vector<double> claim;  // the agent's share of the create (sandbox.claimed ready_us)
    int warm = 0;
  } base, custom;
  auto one = [&](const std::string& tmpl, Side& side) -> Status {
    auto t_create = Clock::now();
    MOAT_ASSIGN_OR_RETURN(SandboxRef sb, bench.Create(tmpl));
    double c = Ms(Clock::now() - t_create);
    ExecOutcome r = bench.Run(sb, kFirstExec);
    double total = Ms(Clock::now() - t_create);
    MOAT_RETURN_IF_ERROR(r.status.Annotate("first exec in a sandbox of " + tmpl));
    side.create.push_back(c);
    side.total.push_back(total);
    double claim = WarmClaimMs(bench.Log(), sb.id);
    if (claim >= 0) {
      ++side.warm;
      side.claim.push_back(claim);
    }
    return bench.Kill(sb.id);
  };
  std::vector<double> diff;
  for (int r = 0; r < o.rounds; ++r) {
    // Which goes first alternates; each create finds both pools full and no restore running
    // (a claim starts the refill at once, which would otherwise overlap the next create).
    for (int k = 0; k < 2; ++k) {
      if ((r + k) % 2 == 0) {
        MOAT_RETURN_IF_ERROR(one("base", base));
      } else {
        MOAT_RETURN_IF_ERROR(one(name, custom));
        ++custom_creates;
      }
      refill.push_back(bench.WaitPools(want(), std::chrono::seconds(60)));
    }
    diff.push_back(custom.total.back() - base.total.back());
  }
  auto side_json = [](const Side& s) {
    return json{{"create_ms", Summary(s.create)},
                {"create_first_exec_ms", Summary(s.total)},
                {"warm_hits", s.warm},
                {"agent_claim_ms", Summary(s.claim)},
                {"samples_create_ms", s.create},
                {"samples_create_first_exec_ms", s.total}};
  };
  out["base"] = side_json(base);
  out["custom"] = side_json(custom);
  out["refill_wait_ms"] = Summary(refill);
  out["paired_median_diff_ms"] = Median(diff);
  // Less sensitive to the machine's noise than the ratio of medians.
  out["paired_median_diff_over_base_p50"] =
      Median(diff) / out["base"]["create_first_exec_ms"]["p50"].get<double>();
  auto q = [&](const char* side, const char* what, const char* p) {
    return out[side][what][p].get<double>();
  };
  json ratio = {{"create_p50", q("custom", "create_ms", "p50") / q("base", "create_ms", "p50")},
                {"create_p90", q("custom", "create_ms", "p90") / q("base", "create_ms", "p90")},
                {"create_first_exec_p50", q("custom", "create_first_exec_ms", "p50") /
                                              q("base", "create_first_exec_ms", "p50")},
                {"create_first_exec_p90", q("custom", "create_first_exec_ms", "p90") /
                                              q("base", "create_first_exec_ms", "p90")}};
  out["ratio_custom_over_base"] = ratio;
  // "As fast as base": a custom template may not be more than 10 % slower (faster is no miss).
  out["target"] = "create+first exec p50 at most 10 % above base's";
  out["target_met"] = ratio["create_first_exec_p50"].get<double>() <= 1.10;
  return out;
}

// 2. The 5-step build cold, then rebuilt unchanged (every step cached).
Result<json> ColdVsCached(Bench& bench) {
  std::string nonce = RandomHex(12);
  std::string name = "bench-cache-" + nonce.substr(0, 8);
  // The COPY's files: one small file in a tar.gz made with tar(1), as the SDK uploads them.
  std::string ctx = bench.dir() + "/context";
  MOAT_RETURN_IF_ERROR(MakeDirs(ctx, 0755));
  std::string content;
  for (int i = 0; i < 200; ++i) content += "line " + std::to_string(i) + " of " + nonce + "\n";
  MOAT_RETURN_IF_ERROR(WriteFileAtomic(ctx + "/app.txt", content));
  std::string tgz = bench.dir() + "/app.tar.gz";
  MOAT_ASSIGN_OR_RETURN(
      agent::ToolOutput tar,
      agent::RunExternalTool({.argv = {"tar", "-czf", tgz, "-C", ctx, "app.txt"}}));
  if (!tar.succeeded()) return Internal("tar -czf: " + tar.Describe());
  // Any 64-hex key will do for the server; this one mimics the SDK's (what, then contents).
  UploadFile file{Sha256Hex("COPY app.txt /home/user/app/\napp.txt\n" + content), tgz};
  auto step = [](const char* type, json args) {
    return json{{"type", type}, {"args", std::move(args)}, {"force", false}};
  };
  json copy = step("COPY", {"app.txt", "/home/user/app/", "", ""});
  copy["filesHash"] = file.hash;
  json steps = {step("RUN", {"echo " + nonce + " > /home/user/step1"}), copy,
                step("ENV", {"GREETING", "hello"}), step("WORKDIR", {"/home/user/app"}),
                step("RUN", {"test -s app.txt && echo \"$GREETING\" > /home/user/greeting"})};
  json start = {{"fromTemplate", "base"}, {"steps", steps}, {"force", false}};

  MOAT_ASSIGN_OR_RETURN(BuildRun cold, bench.Build(name, start, {file}));
  MOAT_ASSIGN_OR_RETURN(BuildRun cached, bench.Build(name, start, {file}));
  auto log = bench.Log();
  json out = {{"template", name},
              {"steps",
               {"RUN echo <nonce> > /home/user/step1", "COPY app.txt /home/user/app/",
                "ENV GREETING hello", "WORKDIR /home/user/app",
                "RUN test -s app.txt && echo \"$GREETING\" > /home/user/greeting"}},
              {"cold", BuildTimeline(cold, BakeMs(log, cold.build_id))},
              {"cached", BuildTimeline(cached, BakeMs(log, cached.build_id))}};
  if (out["cached"]["cached_steps"].size() != steps.size()) {
    return Internal("the rebuild did not take all " + std::to_string(steps.size()) +
                    " steps from the cache: " + out["cached"]["cached_steps"].dump());
  }
  out["ratio_cached_over_cold"] = cached.total_ms / cold.total_ms;
  out["target"] = "cached rebuild <= 10 % of cold";
  out["target_met"] = cached.total_ms <= 0.10 * cold.total_ms;
  return out;
}

// The "<sum> <16 hex>" a run of the default command printed, from a build's log; "" if none.
std::string StampIn(const json& entries) {
  for (const auto& e : entries) {
    const std::string& m = e["message"].get_ref<const std::string&>();
    size_t sp = m.find(' ');
    if (e["step"] == "1" && sp != std::string::npos && m.size() == sp + 17 &&
        m.find_first_not_of("0123456789") == sp &&
        m.find_first_not_of("0123456789abcdef", sp + 1) == std::string::npos) {
      return m;
    }
  }
  return "";
}

// 3. A RUN step in forced builds against commands.run of the same command in a sandbox.
Result<json> RunStepOverhead(Bench& bench) {
  const Options& o = bench.options();
  std::string name = "bench-run-" + RandomHex(8);
  json start = {{"fromTemplate", "base"},
                {"steps", {{{"type", "RUN"}, {"args", {o.run_cmd}}, {"force", false}}}},
                {"force", true}};
  const std::map<std::string, int> base_pool = {{"base", kWarmSandboxes}};
  std::vector<double> build_total, step_took, step_exec, layer_save, boot, sandbox_first,
      sandbox_repeat;
  json builds = json::array();
  std::vector<std::string> stamps;
  for (int i = 0; i < o.run_builds; ++i) {
    MOAT_ASSIGN_OR_RETURN(BuildRun b, bench.Build(name, start));
    json p = BuildTimeline(b, BakeMs(bench.Log(), b.build_id));
    const json& e = b.entries;
    auto msg = [](const json& x) -> const std::string& {
      return x["message"].get_ref<const std::string&>();
    };
    double step_start = FirstAt(e, [&](const json& x) {
      return x["step"] == "1" && StartsWith(msg(x), "[builder 1/1] RUN");
    });
    std::string stamp = StampIn(e);
    stamps.push_back(stamp);
    double output = FirstAt(e, [&](const json& x) { return msg(x) == stamp; });
    double took = p["step_took_ms"].empty() ? -1 : p["step_took_ms"][0]["ms"].get<double>();
    double took_at = FirstAt(e, [&](const json& x) { return StartsWith(msg(x), "step 1 took"); });
    build_total.push_back(b.total_ms);
    if (took >= 0) step_took.push_back(took);
    if (p.contains("builder_vm_boot_ms")) boot.push_back(p["builder_vm_boot_ms"]);
    json one = {{"build_id", b.build_id}, {"stamp", stamp}, {"step_took_ms", took}};
    if (!stamp.empty() && step_start >= 0 && output >= 0) {
      step_exec.push_back(output - step_start);
      one["step_exec_ms"] = output - step_start;
      if (took_at >= 0) {
        layer_save.push_back(took_at - output);
        one["layer_save_ms"] = took_at - output;
      }
    }
    one["build"] = p;
    builds.push_back(one);

    // The same command with commands.run in a fresh base sandbox (a warm clone; its pool
    // refilled before the command runs so that no restore competes for the CPU): its first run,
    // as cold as the builder's, and a repeat.
    MOAT_ASSIGN_OR_RETURN(SandboxRef sb, bench.Create("base"));
    bench.WaitPools(base_pool, std::chrono::seconds(60));
    for (int k = 0; k < 2; ++k) {
      ExecOutcome r = bench.Run(sb, o.run_cmd);
      MOAT_RETURN_IF_ERROR(r.status.Annotate("commands.run of the RUN step's command"));
      (k == 0 ? sandbox_first : sandbox_repeat).push_back(r.total_ms);
    }
    MOAT_RETURN_IF_ERROR(bench.Kill(sb.id));
    bench.WaitPools(base_pool, std::chrono::seconds(60));
  }
  json out = {{"template", name},
              {"command", o.run_cmd},
              {"builds", o.run_builds},
              {"build_total_ms", Summary(build_total)},
              {"builder_vm_boot_ms", Summary(boot)},
              {"step_took_ms", Summary(step_took)},
              {"step_exec_ms", Summary(step_exec)},
              {"layer_save_ms", Summary(layer_save)},
              {"commands_run_first_ms", Summary(sandbox_first)},
              {"commands_run_repeat_ms", Summary(sandbox_repeat)},
              {"per_build", builds}};
  if (!step_exec.empty()) {
    double s = Median(step_exec), c = Median(sandbox_first);
    out["step_overhead_ms"] = s - c;
    out["step_ratio"] = s / c;
  }
  if (!step_took.empty()) {
    out["step_took_overhead_ms"] = Median(step_took) - Median(sandbox_first);
  }
  out["build_overhead_ms"] = Median(build_total) - Median(sandbox_first);
  out["build_ratio"] = Median(build_total) / Median(sandbox_first);

  // A forced build must leave its own result in the template: a sandbox of the last build holds
  // the stamp that build's step printed.
  if (!stamps.empty() && !stamps.back().empty()) {
    MOAT_ASSIGN_OR_RETURN(SandboxRef sb, bench.Create(name));
    ExecOutcome r = bench.Run(sb, "cat ~/stamp");
    MOAT_RETURN_IF_ERROR(r.status.Annotate("reading ~/stamp"));
    MOAT_RETURN_IF_ERROR(bench.Kill(sb.id));
    int from = -1;
    for (size_t i = 0; i < stamps.size(); ++i) {
      if (stamps[i] == r.stdout_data) from = static_cast<int>(i) + 1;
    }
    out["forced_rebuild_check"] = {{"sandbox_stamp", r.stdout_data},
                                   {"last_build_stamp", stamps.back()},
                                   {"stamp_from_build", from},
                                   {"ok", r.stdout_data == stamps.back()}};
  }
  return out;
}

void PrintSummary(const Options& o, const json& out) {
  std::printf("Template benchmark (moatd serve, TCG, templates of 1 vCPU / 512 MiB, %d warm)\n",
              kWarmSandboxes);
  if (out.contains("create_first_exec")) {
    const json& c = out["create_first_exec"];
    std::printf("  1. create -> first exec (`/bin/bash -l -c %s`), %d interleaved rounds\n",
                kFirstExec, o.rounds);
    for (const char* side : {"base", "custom"}) {
      const json& s = c[side];
      std::printf(
          "    %-6s create p50 %4.0f p90 %4.0f ms (agent claim p50 %3.0f)   +exec p50 %4.0f p90 "
          "%4.0f "
          "ms   warm %d/%d\n",
          side, s["create_ms"]["p50"].get<double>(), s["create_ms"]["p90"].get<double>(),
          s["agent_claim_ms"].value("p50", -1.0), s["create_first_exec_ms"]["p50"].get<double>(),
          s["create_first_exec_ms"]["p90"].get<double>(), s["warm_hits"].get<int>(),
          s["create_ms"]["n"].get<int>());
    }
    const json& r = c["ratio_custom_over_base"];
    std::printf(
        "    custom/base: create p50 %.2f, create+exec p50 %.2f p90 %.2f (target: p50 <= 1.10: "
        "%s)\n    paired median difference %+.0f ms (%+.0f %% of base's p50)\n",
        r["create_p50"].get<double>(), r["create_first_exec_p50"].get<double>(),
        r["create_first_exec_p90"].get<double>(), c["target_met"].get<bool>() ? "met" : "MISSED",
        c["paired_median_diff_ms"].get<double>(),
        100 * c["paired_median_diff_over_base_p50"].get<double>());
    std::printf("    (first create of the custom template, no pool yet: %.0f ms, +exec %.0f ms)\n",
                c["custom_first_create_ms"].get<double>(),
                c["custom_first_create_exec_ms"].get<double>());
  }
  auto phases = [](const json& b) {
    std::string s;
    for (const auto& [k, v] : b["phases"].items()) {
      char buf[64];
      std::snprintf(buf, sizeof buf, " %s %.0f", k.substr(0, k.size() - 3).c_str(),
                    v.get<double>());
      s += buf;
    }
    return s;
  };
  if (out.contains("build_cache")) {
    const json& b = out["build_cache"];
    std::printf("  2. 5-step build (RUN, COPY, ENV, WORKDIR, RUN)\n");
    std::printf("    cold   %7.0f ms:%s\n", b["cold"]["total_ms"].get<double>(),
                phases(b["cold"]).c_str());
    std::printf("    cached %7.0f ms:%s\n", b["cached"]["total_ms"].get<double>(),
                phases(b["cached"]).c_str());
    std::printf("    cached/cold %.2f (target <= 0.10: %s; the rebuild's largest phase: %s)\n",
                b["ratio_cached_over_cold"].get<double>(),
                b["target_met"].get<bool>() ? "met" : "MISSED",
                b["cached"]["dominant_phase"].get<std::string>().c_str());
  }
  if (out.contains("run_step")) {
    const json& r = out["run_step"];
    auto p50 = [&](const char* k) { return r[k].value("p50", -1.0); };
    std::printf("  3. RUN step vs commands.run, %d forced builds\n", o.run_builds);
    std::printf(
        "    step in the build: exec p50 %.0f ms (\"step took\" p50 %.0f ms, layer save "
        "p50 %.0f ms)\n",
        p50("step_exec_ms"), p50("step_took_ms"), p50("layer_save_ms"));
    std::printf("    commands.run in a fresh sandbox: first p50 %.0f ms, repeat p50 %.0f ms\n",
                p50("commands_run_first_ms"), p50("commands_run_repeat_ms"));
    if (r.contains("step_overhead_ms")) {
      std::printf(
          "    step overhead %+.0f ms (x%.2f); whole build p50 %.0f ms (builder boot p50 "
          "%.0f ms) = %+.0f ms (x%.1f)\n",
          r["step_overhead_ms"].get<double>(), r["step_ratio"].get<double>(), p50("build_total_ms"),
          p50("builder_vm_boot_ms"), r["build_overhead_ms"].get<double>(),
          r["build_ratio"].get<double>());
    }
    if (r.contains("forced_rebuild_check")) {
      const json& f = r["forced_rebuild_check"];
      std::printf(
          "    forced rebuild leaves its own result: %s (sandbox stamp from build %d of %d)\n",
          f["ok"].get<bool>() ? "yes" : "NO", f["stamp_from_build"].get<int>(), o.run_builds);
    }
  }
  std::printf("  JSON: %s\n", o.json_path.c_str());
}

// MiB allocated under DATA_DIR/templates, per entry (layers/, custom/, the bakes of base and of
// each build), as du(1) counts them: what the builds left on disk.
json TemplatesDiskMb(const std::string& dir) {
  json out = json::object();
  std::vector<std::string> argv = {"du", "-sm"};
  for (const auto& name : DirNames(dir)) argv.push_back(dir + "/" + name);
  if (argv.size() == 2) return out;
  auto du = agent::RunExternalTool({.argv = argv, .max_stdout = 1 << 20});
  if (!du.ok()) return out;
  size_t at = 0;
  const std::string& text = du->stdout_data;
  while (at < text.size()) {
    size_t eol = text.find('\n', at);
    if (eol == std::string::npos) eol = text.size();
    std::string line = text.substr(at, eol - at);
    size_t tab = line.find('\t');
    if (tab != std::string::npos) {
      out[line.substr(line.rfind('/') + 1)] = std::atoi(line.c_str());
    }
    at = eol + 1;
  }
  return out;
}

int Run(const Options& o) {
  auto dir = MakeTempDir("/tmp", "moat-template-bench.");
  if (!dir.ok()) {
    std::fprintf(stderr, "template_bench: temp dir: %s\n", dir.status().ToString().c_str());
    return 1;
  }
  std::string key = "moat_bench_" + std::to_string(::getpid()) + "_" + RandomHex(16);
  json out = {{"accel", "tcg"},
              {"vcpus", kCpuCount},
              {"memory_mib", kMemoryMb},
              {"network", false},
              {"warm_sandboxes", kWarmSandboxes}};
  // The machine's load before and after: on a shared 2-core host other work widens the spread.
  auto loadavg = [] {
    auto text = ReadFile("/proc/loadavg");
    return text.ok() ? text->substr(0, text->find(' ', text->find(' ', text->find(' ') + 1) + 1))
                     : std::string();
  };
  out["loadavg_start"] = loadavg();
  int rc = 0;
  auto t_all = Clock::now();
  {
    MoatdProcess moatd;
    Status started = moatd.Start(o.moatd,
                                 {"--accel", "tcg", "--network", "off", "--guest-dir", o.guest_dir,
                                  "--warm-sandboxes", std::to_string(kWarmSandboxes)},
                                 *dir, key);
    if (!started.ok()) {
      std::fprintf(stderr, "template_bench: moatd: %s\n", started.ToString().c_str());
      (void)moatd.Stop();
      (void)RemoveTree(*dir);
      return 1;
    }
    Bench bench(o, moatd, key, *dir);
    auto body = [&]() -> Status {
      MOAT_RETURN_IF_ERROR(bench.Call("GET", "/healthz", nullptr, 200).status());
      // The base template is baked and its pool filled before anything is timed.
      out["base_pool_ready_ms"] =
          bench.WaitPools({{"base", kWarmSandboxes}}, std::chrono::seconds(240));
      auto t = Clock::now();
      MOAT_ASSIGN_OR_RETURN(out["create_first_exec"], CreateVsBase(bench));
      out["create_first_exec"]["phase_ms"] = Ms(Clock::now() - t);
      t = Clock::now();
      MOAT_ASSIGN_OR_RETURN(out["build_cache"], ColdVsCached(bench));
      out["build_cache"]["phase_ms"] = Ms(Clock::now() - t);
      t = Clock::now();
      MOAT_ASSIGN_OR_RETURN(out["run_step"], RunStepOverhead(bench));
      out["run_step"]["phase_ms"] = Ms(Clock::now() - t);
      return Status::Ok();
    };
    Status s = body();
    if (!s.ok()) {
      std::fprintf(stderr, "template_bench: %s\n", s.ToString().c_str());
      out["error"] = s.ToString();
      rc = 1;
    }
    out["pool_wait_timeouts"] = bench.pool_timeouts();

    // Clean-up: the sandboxes, then the templates (refused while a sandbox uses one), then moatd.
    for (const std::string& id : std::set<std::string>(bench.sandboxes())) {
      Status k = bench.Kill(id);
      if (!k.ok()) {
        std::fprintf(stderr, "template_bench: kill %s: %s\n", id.c_str(), k.ToString().c_str());
        rc = 1;
      }
    }
    out["disk_mb"]["before_delete"] = TemplatesDiskMb(*dir + "/data/templates");
    auto deleted = bench.DeleteTemplates();
    if (!deleted.ok() || !deleted->empty()) {
      std::fprintf(stderr, "template_bench: deleting templates: %s\n",
                   deleted.ok() ? deleted->c_str() : deleted.status().ToString().c_str());
      rc = 1;
    }
    out["disk_mb"]["after_delete"] = TemplatesDiskMb(*dir + "/data/templates");
    Status stopped = moatd.Stop();
    if (!stopped.ok()) {
      std::fprintf(stderr, "template_bench: stopping moatd: %s\n", stopped.ToString().c_str());
      rc = 1;
    }
    // moatd logs every 5xx and failure as a warning or an error: a clean run has none.
    int warnings = 0;
    json samples = json::array();
    for (const auto& f : ParseLog(moatd.Log())) {
      auto lv = f.find("level");
      if (lv == f.end() || (lv->second != "warn" && lv->second != "error")) continue;
      if (++warnings <= 5) {
        json j(f);
        samples.push_back(j);
        std::fprintf(stderr, "template_bench: moatd logged: %s\n", j.dump().c_str());
      }
    }
    out["moatd_log_warnings"] = warnings;
    if (warnings > 0) out["moatd_log_warning_samples"] = samples;
    auto left = ProcessesMentioning(*dir);
    for (const auto& p : left)
      std::fprintf(stderr, "template_bench: left running: %s\n", p.c_str());
    if (!left.empty()) rc = 1;
    if (rc != 0) {
      std::fprintf(stderr, "template_bench: moatd's log ends:\n%s\n", moatd.LogTail().c_str());
    }
  }
  (void)RemoveTree(*dir);
  out["wall_s"] = Ms(Clock::now() - t_all) / 1000.0;
  out["loadavg_end"] = loadavg();
  Status saved = WriteJson(o.json_path, out);
  if (!saved.ok()) {
    std::fprintf(stderr, "template_bench: writing JSON: %s\n", saved.ToString().c_str());
    return 1;
  }
  PrintSummary(o, out);
  return rc;
}

std::string Absolute(const std::string& path) {
  char* real = ::realpath(path.c_str(), nullptr);
  if (real == nullptr) return path;
  std::string out = real;
  std::free(real);
  return out;
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
       {"--rounds", [&](const std::string& v) { o.rounds = AtLeastOne(v); }},
       {"--run-builds", [&](const std::string& v) { o.run_builds = AtLeastOne(v); }},
       {"--settle-ms",
        [&](const std::string& v) { o.settle_ms = std::max(0, std::atoi(v.c_str())); }},
       {"--run-cmd", [&](const std::string& v) { o.run_cmd = v; }},
       {"--json", [&](const std::string& v) { o.json_path = v; }}},
      "template_bench [--moatd PATH] [--guest-dir DIR] [--rounds N] [--run-builds N] "
      "[--settle-ms N] [--run-cmd CMD] [--json PATH]");
  if (!parsed) return 2;
  if (o.moatd.empty()) {
    std::string self = moat::bench::Absolute("/proc/self/exe");
    o.moatd = self.substr(0, self.rfind('/') + 1) + "moatd";
  }
  o.guest_dir = moat::bench::Absolute(o.guest_dir);
  return moat::bench::Run(o);
}
