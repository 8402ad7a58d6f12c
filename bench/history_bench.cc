// History benchmark: what keeping history costs and how its reading scales, against real
// `moatd serve` processes (the built binary, own data dirs and key, free loopback ports).
//  1. The hot path, history on vs off: two moatds side by side, one `--history=true`, one
//     `--history=false`, in interleaved rounds (which goes first alternates) of
//     (a) the round trip of envd `process.Process/Start` of `true` in a sandbox that exists (one
//         keep-alive connection a round, E2b-Sandbox-Id and X-Access-Token as the SDK sends), and
//     (b) create → first exec: POST /sandboxes {"templateID":"base"}, the same exec, then DELETE
//         (timed apart). Before each create both warm pools are full again, so that neither
//         side's refill runs under the other's sample.
//     Target: history adds at most 3 % at p50 to each.
//  2. The list API over 10,000 history records: the history-on moatd's store is seeded before
//     it starts (history_seed.h), then GET /history (first page, filtered by state and template
//     and by metadata, the 50th page), GET /history/{id} and GET /usage?groupBy=day,template
//     are timed, interleaved. Target: the list's p99 at most 50 ms, for each of its queries.
//  3. The dashboard's first load (bench/history_dashboard_bench.mjs in headless chromium): the
//     bytes moatd sends and the time to the live table, cold and warm, against the history-on
//     moatd with its sandbox live and its 10,000 records.
// --work-dir /dev/shm (with the guest dir there too: moatd copies the rootfs within one file
// system) takes the disk's fsyncs out of part 1: what history costs apart from its durability.
// Prints a summary, writes JSON with a `targets` section; kills every sandbox, stops moatd and
// chromium, and removes its temp dirs before it exits, whatever failed.
//
// usage: history_bench [--moatd PATH] [--guest-dir DIR] [--accel auto|kvm|tcg] [--work-dir DIR]
//                      [--rounds N] [--execs N] [--creates N] [--records N] [--requests N]
//                      [--loads N] [--browser-script PATH] [--puppeteer-dir DIR]
//                      [--chromium PATH] [--json PATH]
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "api/codec/query.h"
#include "bench_util.h"
#include "common/child_process.h"
#include "common/fs.h"
#include "common/unique_fd.h"
#include "connect_client.h"
#include "history_seed.h"
#include "moatd_log.h"
#include "moatd_process.h"

namespace moat::bench {
namespace {

using nlohmann::json;

struct Options {
  std::string moatd;  // default: moatd next to this binary
  std::string guest_dir = "build/guest";
  std::string accel = "auto";
  // Where the moatds' data dirs go. A tmpfs here (/dev/shm) takes the disk's fsyncs out of the
  // comparison: what history costs apart from its durability.
  std::string work_dir = "/tmp";
  int rounds = 50;      // interleaved rounds of the hot path
  int execs = 20;       // exec round trips per side per round
  int creates = 2;      // create → first exec samples per side per round
  int records = 10000;  // history records seeded
  int requests = 200;   // per list API route
  int loads = 10;       // dashboard loads per kind
  std::string browser_script = "bench/history_dashboard_bench.mjs";
  std::string puppeteer_dir = "tests/browser";
  std::string chromium = "/usr/bin/chromium";
  std::string json_path = "build/bench/history.json";
};

constexpr int kWarmClones = 2;           // moatd's default pool of the base template, on both sides
constexpr int kSeedDays = 14;            // the seeded records' creations spread over this many days
constexpr double kHotPathTarget = 0.03;  // history adds at most this at p50
constexpr double kListP99TargetMs = 50;

// SIGINT or SIGTERM: the run stops at its next step and cleans up as after a failure.
std::atomic<bool> g_interrupted{false};
extern "C" void OnStopSignal(int) {
  g_interrupted.store(true);
}
Status CheckInterrupted() {
  return g_interrupted.load() ? Internal("interrupted by a signal") : Status::Ok();
}

int Fail(const Status& s, const char* what) {
  std::fprintf(stderr, "history_bench: %s: %s\n", what, s.ToString().c_str());
  return 1;
}

std::string Absolute(const std::string& path) {
  char* real = ::realpath(path.c_str(), nullptr);
  if (real == nullptr) return path;
  std::string out = real;
  std::free(real);
  return out;
}

// /proc/loadavg's 1-minute figure: other work on the machine, which the figures share it with.
double LoadAverage() {
  auto text = ReadFile("/proc/loadavg");
  return text.ok() ? std::atof(text->c_str()) : -1;
}

int64_t UnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// One `moatd serve` of the comparison, its sandbox and its samples.
struct Side {
  const char* name;  // "on" or "off"
  MoatdProcess moatd;
  std::string dir;
  SandboxRef sandbox;                // the one the exec round trips run in
  std::vector<std::string> created;  // sandboxes created and not yet deleted
  std::vector<double> exec_ms, create_ms, first_exec_ms, create_first_exec_ms, delete_ms;
  std::vector<double> round_exec_p50, round_create_first_exec;  // per round, for the spread
};

Result<json> Control(Side& s, const std::string& key, const std::string& method,
                     const std::string& target, const json& body, int expect) {
  return ControlCall("127.0.0.1", s.moatd.port(), key, method, target, body, expect);
}

Result<SandboxRef> CreateSandbox(Side& s, const std::string& key) {
  MOAT_ASSIGN_OR_RETURN(
      json sb, Control(s, key, "POST", "/sandboxes",
                       {{"templateID", "base"}, {"timeout", 3600}, {"secure", true}}, 201));
  if (!sb.contains("sandboxID") || !sb["sandboxID"].is_string()) {
    return Internal("POST /sandboxes: no sandboxID in " + sb.dump());
  }
  const json token = sb.value("envdAccessToken", json(""));
  SandboxRef ref{sb["sandboxID"], token.is_string() ? token.get<std::string>() : ""};
  s.created.push_back(ref.id);
  return ref;
}

Status DeleteSandbox(Side& s, const std::string& key, const std::string& id) {
  MOAT_RETURN_IF_ERROR(Control(s, key, "DELETE", "/sandboxes/" + id, nullptr, 204).status());
  s.created.erase(std::remove(s.created.begin(), s.created.end(), id), s.created.end());
  return Status::Ok();
}

// `true` in `sb` over `conn` (connected), its round trip in ms.
Result<double> ExecTrue(HttpConnection& conn, const SandboxRef& sb) {
  auto r = StartProcess(conn, sb, {"/bin/true"});
  if (!r.status.ok()) return r.status.Annotate("exec in " + sb.id);
  return r.total_ms;
}

// Waits (up to 60 s) until moatd's log says both pools hold kWarmClones of base again; false
// if one did not.
bool WaitPoolsFull(std::vector<Side*> sides) {
  auto until = Clock::now() + std::chrono::seconds(60);
  for (Side* s : sides) {
    while (PooledClones(ParseLog(s->moatd.Log()))["base"] < kWarmClones) {
      if (Clock::now() > until || g_interrupted.load()) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  return true;
}

// The spread of `v` (not empty): its quartiles and extremes.
json Quartiles(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  auto at = [&](double q) { return v[std::min(v.size() - 1, static_cast<size_t>(q * v.size()))]; };
  return {{"n", v.size()},   {"min", v.front()}, {"p25", at(0.25)},
          {"p50", at(0.50)}, {"p75", at(0.75)},  {"max", v.back()}};
}

// The ratio on/off − 1 of two percentiles.
double Overhead(const json& on, const json& off, const char* q) {
  return on[q].get<double>() / off[q].get<double>() - 1;
}

// What one store write costs on the data dirs' disk (SqliteStore commits and fsyncs each): a
// scratch store in `dir`, 100 events appended, timed one by one. Recording history adds such
// writes to the hot path: a command's start and its end to an exec (the end before the stream
// ends), the sandbox's record and its created event to a create.
Result<json> StoreWriteMs(const std::string& dir) {
  std::vector<double> ms;
  {
    MOAT_ASSIGN_OR_RETURN(auto store, api::store::SqliteStore::Open(dir + "/probe.db"));
    for (int i = 0; i < 100; ++i) {
      auto t0 = Clock::now();
      MOAT_RETURN_IF_ERROR(store->AppendSandboxEvent(
          {.sandbox_id = "probe", .team_id = "probe", .at_ms = i, .kind = "created"}));
      ms.push_back(Ms(Clock::now() - t0));
    }
  }
  for (const char* suffix : {"", "-wal", "-shm"})
    (void)::unlink((dir + "/probe.db" + suffix).c_str());
  return Percentiles(ms);
}

// Phase 1: the hot path, history on vs off.
Result<json> RunHotPath(const Options& o, Side& on, Side& off, const std::string& key) {
  std::vector<Side*> both = {&on, &off};
  // Warm-up, not recorded: the first create of each side bakes the base template; a second
  // create→exec→delete and a few execs warm the paths the rounds take.
  for (Side* s : both) {
    MOAT_ASSIGN_OR_RETURN(s->sandbox, CreateSandbox(*s, key));
    HttpConnection conn;
    MOAT_RETURN_IF_ERROR(conn.Connect("127.0.0.1", s->moatd.port()));
    for (int i = 0; i < 10; ++i) MOAT_RETURN_IF_ERROR(ExecTrue(conn, s->sandbox).status());
  }
  int pool_timeouts = 0;
  for (int w = 0; w < 2; ++w) {
    for (Side* s : both) {
      if (!WaitPoolsFull(both)) ++pool_timeouts;
      MOAT_ASSIGN_OR_RETURN(SandboxRef sb, CreateSandbox(*s, key));
      HttpConnection conn;
      MOAT_RETURN_IF_ERROR(conn.Connect("127.0.0.1", s->moatd.port()));
      MOAT_RETURN_IF_ERROR(ExecTrue(conn, sb).status());
      MOAT_RETURN_IF_ERROR(DeleteSandbox(*s, key, sb.id));
    }
  }

  for (int r = 0; r < o.rounds; ++r) {
    MOAT_RETURN_IF_ERROR(CheckInterrupted());
    std::vector<Side*> order =
        r % 2 == 0 ? std::vector<Side*>{&on, &off} : std::vector<Side*>{&off, &on};
    // (a) exec round trips, each side's batch on a connection of its own.
    if (!WaitPoolsFull(both)) ++pool_timeouts;
    for (Side* s : order) {
      HttpConnection conn;
      MOAT_RETURN_IF_ERROR(conn.Connect("127.0.0.1", s->moatd.port()));
      std::vector<double> round;
      for (int i = 0; i < o.execs; ++i) {
        MOAT_ASSIGN_OR_RETURN(double ms, ExecTrue(conn, s->sandbox));
        round.push_back(ms);
      }
      s->exec_ms.insert(s->exec_ms.end(), round.begin(), round.end());
      s->round_exec_p50.push_back(Percentiles(round)["p50"].get<double>());
    }
    // (b) create → first exec, then the delete (timed apart), with both pools full before.
    std::vector<Side*> create_order;
    for (int c = 0; c < o.creates; ++c)
      create_order.insert(create_order.end(), order.begin(), order.end());
    std::map<Side*, std::vector<double>> round_creates;
    for (Side* s : create_order) {
      if (!WaitPoolsFull(both)) ++pool_timeouts;
      auto t0 = Clock::now();
      MOAT_ASSIGN_OR_RETURN(SandboxRef sb, CreateSandbox(*s, key));
      auto t1 = Clock::now();
      HttpConnection conn;
      MOAT_RETURN_IF_ERROR(conn.Connect("127.0.0.1", s->moatd.port()));
      MOAT_RETURN_IF_ERROR(ExecTrue(conn, sb).status());
      auto t2 = Clock::now();
      conn.Close();
      MOAT_RETURN_IF_ERROR(DeleteSandbox(*s, key, sb.id));
      s->create_ms.push_back(Ms(t1 - t0));
      s->first_exec_ms.push_back(Ms(t2 - t1));
      s->create_first_exec_ms.push_back(Ms(t2 - t0));
      round_creates[s].push_back(Ms(t2 - t0));
      s->delete_ms.push_back(Ms(Clock::now() - t2));
    }
    for (Side* s : order) {
      s->round_create_first_exec.push_back(Percentiles(round_creates[s])["p50"].get<double>());
    }
    for (Side* s : both) {
      if (!s->moatd.running())
        return Internal(std::string("moatd (history ") + s->name + ") died: " + s->moatd.LogTail());
    }
  }

  json out = {{"rounds", o.rounds},
              {"execs_per_round", o.execs},
              {"creates_per_round", o.creates},
              {"pool_wait_timeouts", pool_timeouts}};
  auto compare = [&](const char* name, std::vector<double> Side::*samples,
                     std::vector<double> Side::*per_round) {
    json on_p = Percentiles(on.*samples), off_p = Percentiles(off.*samples);
    json c = {{"on", on_p},
              {"off", off_p},
              {"overhead",
               {{"p50", Overhead(on_p, off_p, "p50")}, {"p99", Overhead(on_p, off_p, "p99")}}}};
    if (per_round != nullptr) {
      // The same ratio within each round (its medians, or its one sample): how far the
      // machine's noise moves it from round to round.
      std::vector<double> ratios;
      for (size_t i = 0; i < (on.*per_round).size() && i < (off.*per_round).size(); ++i) {
        ratios.push_back((on.*per_round)[i] / (off.*per_round)[i] - 1);
      }
      c["overhead"]["per_round"] = Quartiles(ratios);
    }
    out[name] = c;
  };
  compare("exec_true_ms", &Side::exec_ms, &Side::round_exec_p50);
  compare("create_to_first_exec_ms", &Side::create_first_exec_ms, &Side::round_create_first_exec);
  compare("create_ms", &Side::create_ms, nullptr);
  compare("first_exec_ms", &Side::first_exec_ms, nullptr);
  compare("delete_ms", &Side::delete_ms, nullptr);

  // That the "on" side recorded what it ran and the "off" side did not.
  MOAT_ASSIGN_OR_RETURN(
      json cmds,
      Control(on, key, "GET", "/history/" + on.sandbox.id + "/commands?limit=1", nullptr, 200));
  out["on_recorded_commands"] = cmds.contains("items") && !cmds["items"].empty();
  auto off_history = Control(off, key, "GET", "/history/" + off.sandbox.id, nullptr, 200);
  out["off_recorded_history"] = off_history.ok();
  return out;
}

// Phase 2: the list API over the seeded records, each route timed `o.requests` times,
// interleaved, on one keep-alive connection.
Result<json> RunListApi(const Options& o, Side& on, const std::string& key,
                        const std::string& middle_id) {
  uint16_t port = on.moatd.port();
  // The 50th page's token: walk the first 49 pages once.
  std::string token;
  for (int page = 1; page < 50; ++page) {
    std::string target = "/history?limit=100";
    if (!token.empty()) target += "&nextToken=" + api::codec::PercentEncode(token);
    MOAT_ASSIGN_OR_RETURN(json p, ControlCall("127.0.0.1", port, key, "GET", target, nullptr, 200));
    token = p.value("nextToken", "");
    if (token.empty())
      return Internal("GET /history ended before page 50 (page " + std::to_string(page) + ")");
  }
  struct Route {
    const char* name;
    std::string target;
    bool list;  // a page of the list (the 50 ms target applies)
    std::vector<double> ms;
    size_t bytes = 0;
  };
  std::vector<Route> routes = {
      {"first_page", "/history?limit=100", true},
      {"filtered", "/history?state=ended&templateID=base&limit=100", true},
      // One seeded record in 50 matches: the page reads some 5,000 records' metadata.
      {"filtered_metadata",
       "/history?state=ended&metadata=" + api::codec::PercentEncode("user=user-7") + "&limit=100",
       true},
      {"page_50", "/history?limit=100&nextToken=" + api::codec::PercentEncode(token), true},
      {"detail", "/history/" + middle_id, false},
      {"usage_day_template",
       "/usage?groupBy=day,template&from=" + std::to_string(UnixMs() - 20 * 86400000LL), false},
  };
  HttpConnection conn;
  MOAT_RETURN_IF_ERROR(conn.Connect("127.0.0.1", port));
  std::map<std::string, std::string> headers = {{"X-API-Key", key}};
  std::vector<size_t> order(routes.size());
  for (size_t k = 0; k < order.size(); ++k) order[k] = k;
  std::mt19937 rng(1);
  for (int i = -5; i < o.requests; ++i) {  // five untimed rounds first
    MOAT_RETURN_IF_ERROR(CheckInterrupted());
    // A new order each round (a fixed seed), so that no route always follows the same one: the
    // request after the usage report pays for its aftermath.
    std::shuffle(order.begin(), order.end(), rng);
    for (size_t k : order) {
      auto& r = routes[k];
      if (!conn.open()) MOAT_RETURN_IF_ERROR(conn.Connect("127.0.0.1", port));
      auto t0 = Clock::now();
      MOAT_ASSIGN_OR_RETURN(HttpResult res, conn.Exchange("GET", r.target, headers, ""));
      double ms = Ms(Clock::now() - t0);
      if (res.status != 200) {
        return Internal("GET " + r.target + ": HTTP " + std::to_string(res.status) + " " +
                        res.body.substr(0, 300));
      }
      if (i < 0) {
        json body = json::parse(res.body, nullptr, false);
        if (r.list && (body.is_discarded() || body["items"].size() != 100)) {
          return Internal("GET " + r.target + ": not a page of 100 items");
        }
        r.bytes = res.body.size();
        continue;
      }
      r.ms.push_back(ms);
    }
  }
  json out = {{"requests", o.requests}};
  for (const auto& r : routes) {
    out["routes"][r.name] = {{"target", r.target}, {"ms", Percentiles(r.ms)}, {"bytes", r.bytes}};
  }
  return out;
}

// Phase 3: the dashboard script in node; its JSON, or {"skipped": why}.
json RunDashboard(const Options& o, const std::string& url, const std::string& key,
                  const std::string& work) {
  std::string puppeteer = o.puppeteer_dir + "/node_modules/puppeteer-core/package.json";
  if (::access(o.chromium.c_str(), X_OK) != 0) return {{"skipped", o.chromium + " not found"}};
  if (!PathExists(puppeteer)) {
    return {{"skipped", puppeteer + " not found (npm ci in tests/browser installs it)"}};
  }
  if (!PathExists(o.browser_script)) return {{"skipped", o.browser_script + " not found"}};
  std::string profiles = work + "/chromium";
  (void)MakeDirs(profiles);
  UniqueFd out(
      ::open((work + "/dashboard.json").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  UniqueFd err(
      ::open((work + "/dashboard.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!out.valid() || !err.valid()) return {{"error", "open " + work + "/dashboard.json"}};
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
  env.push_back("MOAT_URL=" + url);
  env.push_back("MOAT_KEY=" + key);
  env.push_back("MOAT_CHROMIUM=" + o.chromium);
  env.push_back("MOAT_PROFILE_ROOT=" + profiles);
  env.push_back("MOAT_PUPPETEER_DIR=" + o.puppeteer_dir);
  env.push_back("MOAT_LOADS=" + std::to_string(o.loads));
  auto node = ChildProcess::Spawn(
      {.argv = {"node", o.browser_script}, .env = env, .fds = {{1, out.get()}, {2, err.get()}}});
  if (!node.ok()) return {{"error", node.status().ToString()}};
  // Waits in short steps so that a signal to the bench stops the script too.
  Result<int> st = DeadlineExceeded("");
  for (auto until = Clock::now() + std::chrono::seconds(400);
       Clock::now() < until && !g_interrupted.load();) {
    st = node->Wait(std::chrono::milliseconds(200));
    if (st.ok()) break;
  }
  auto text_of = [](const std::string& path) {
    auto t = ReadFile(path);
    return t.ok() ? *t : std::string();
  };
  std::string log = text_of(work + "/dashboard.log");
  if (log.size() > 2000) log = log.substr(log.size() - 2000);
  if (!st.ok()) {
    node->Kill();
    return {{"error",
             std::string(g_interrupted.load() ? "interrupted" : "ran past 400 s") + ": " + log}};
  }
  if (*st != 0) return {{"error", "the dashboard script " + DescribeWaitStatus(*st) + ": " + log}};
  json result = json::parse(text_of(work + "/dashboard.json"), nullptr, false);
  if (result.is_discarded()) return {{"error", "the dashboard script printed no JSON: " + log}};
  return result;
}

// Chromium processes the script left (a crash, or the script killed): by pid, the profile
// directory in their command lines.
void KillLeftoverBrowsers(const std::string& work) {
  for (const auto& p : ProcessesMentioning(work + "/chromium")) {
    pid_t pid = static_cast<pid_t>(std::atoi(p.c_str()));
    if (pid > 1 && pid != ::getpid()) ::kill(pid, SIGKILL);
  }
}

json Target(const std::string& name, const std::string& target, double measured, bool met) {
  return {{"name", name}, {"target", target}, {"measured", measured}, {"met", met}};
}

json Targets(const json& out) {
  json t = json::array();
  if (out.contains("hot_path")) {
    const json& h = out["hot_path"];
    for (auto [name, key] :
         {std::pair{"exec round trip: history's overhead at p50", "exec_true_ms"},
          std::pair{"create -> first exec: history's overhead at p50",
                    "create_to_first_exec_ms"}}) {
      double v = h[key]["overhead"]["p50"].get<double>();
      t.push_back(Target(name, "<= 3 %", v, v <= kHotPathTarget));
    }
  }
  if (out.contains("list_api") && out["list_api"].contains("routes")) {
    for (const char* r : {"first_page", "filtered", "filtered_metadata", "page_50"}) {
      double v = out["list_api"]["routes"][r]["ms"]["p99"].get<double>();
      t.push_back(Target(std::string("GET /history (") + r + ") over " +
                             std::to_string(out["list_api"]["records"].get<int>()) +
                             " records: p99 ms",
                         "<= 50 ms", v, v <= kListP99TargetMs));
    }
  }
  return t;
}

void PrintSummary(const Options& o, const json& out) {
  std::printf("History benchmark (moatd serve, accel %s, %d cores, load average %.1f at start)\n",
              out.value("accel", "?").c_str(), out["cores"].get<int>(),
              out["load_average"].value("start", -1.0));
  if (out.contains("hot_path")) {
    const json& h = out["hot_path"];
    std::printf(
        "  hot path, history on vs off (%d interleaved rounds; a side a round: %d execs, %d "
        "creates)\n",
        o.rounds, o.execs, o.creates);
    for (auto [label, key] :
         {std::pair{"exec `true`", "exec_true_ms"},
          std::pair{"create->1st exec", "create_to_first_exec_ms"},
          std::pair{"  create", "create_ms"}, std::pair{"  first exec", "first_exec_ms"},
          std::pair{"delete", "delete_ms"}}) {
      const json& c = h[key];
      std::printf(
          "    %-17s on p50 %7.2f p99 %7.2f | off p50 %7.2f p99 %7.2f ms | overhead "
          "p50 %+5.1f %% p99 %+5.1f %%",
          label, c["on"]["p50"].get<double>(), c["on"]["p99"].get<double>(),
          c["off"]["p50"].get<double>(), c["off"]["p99"].get<double>(),
          100 * c["overhead"]["p50"].get<double>(), 100 * c["overhead"]["p99"].get<double>());
      if (c["overhead"].contains("per_round")) {
        const json& pr = c["overhead"]["per_round"];
        std::printf(" (rounds: median %+.1f %%, middle half %+.1f..%+.1f %%)",
                    100 * pr["p50"].get<double>(), 100 * pr["p25"].get<double>(),
                    100 * pr["p75"].get<double>());
      }
      std::printf("\n");
    }
    std::printf(
        "    one store write (commit + fsync) on the data dir's disk: p50 %.2f p99 %.2f ms\n",
        h["store_write_ms"]["p50"].get<double>(), h["store_write_ms"]["p99"].get<double>());
  }
  if (out.contains("list_api") && out["list_api"].contains("routes")) {
    const json& l = out["list_api"];
    std::printf("  list API over %d seeded records (%d requests a route)\n",
                l["records"].get<int>(), l["requests"].get<int>());
    for (const auto& [name, r] : l["routes"].items()) {
      std::printf("    %-19s p50 %7.2f p99 %7.2f ms  %7zu bytes\n", name.c_str(),
                  r["ms"]["p50"].get<double>(), r["ms"]["p99"].get<double>(),
                  r["bytes"].get<size_t>());
    }
  }
  if (out.contains("dashboard")) {
    const json& d = out["dashboard"];
    if (d.contains("sent")) {
      std::printf("  dashboard: %lld bytes sent (gzip -9 would be %lld; moatd compresses: %s)\n",
                  d["sent"]["totalBytesSent"].get<long long>(),
                  d["sent"]["totalGzip9Bytes"].get<long long>(),
                  d["sent"]["compressed"].get<bool>() ? "yes" : "no");
      for (const char* kind : {"cold", "warm", "history_page_warm"}) {
        const json& k = d[kind];
        std::printf("    %-17s DCL p50 %6.0f  load p50 %6.0f  table p50 %6.0f p99 %6.0f ms\n", kind,
                    k["dom_content_loaded_ms"]["p50"].get<double>(),
                    k["load_ms"]["p50"].get<double>(), k["table_rendered_ms"]["p50"].get<double>(),
                    k["table_rendered_ms"]["p99"].get<double>());
      }
    } else {
      std::printf("  dashboard: %s\n", d.dump().c_str());
    }
  }
  for (const auto& t : out["targets"]) {
    std::printf("  target %-55s %s: %.3f (%s)\n", t["name"].get<std::string>().c_str(),
                t["target"].get<std::string>().c_str(), t["measured"].get<double>(),
                t["met"].get<bool>() ? "met" : "MISSED");
  }
  std::printf("  JSON: %s\n", o.json_path.c_str());
}

int Run(const Options& o) {
  struct sigaction sa = {};
  sa.sa_handler = OnStopSignal;
  sa.sa_flags = SA_RESTART;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  auto dir = MakeTempDir(o.work_dir, "moat-history-bench.");
  if (!dir.ok()) return Fail(dir.status(), "temp dir");
  // The seeding's scratch copy of the store, on a tmpfs (history_seed.h).
  auto seed_dir = MakeTempDir(PathExists("/dev/shm") ? "/dev/shm" : "/tmp", "moat-history-seed.");
  if (!seed_dir.ok()) {
    (void)RemoveTree(*dir);
    return Fail(seed_dir.status(), "temp dir");
  }
  std::string key = "e2b_bench" + std::to_string(::getpid()) + "x" +
                    std::to_string(Clock::now().time_since_epoch().count());
  json out = {{"bench", "history"},
              {"cores", static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN))},
              {"network", false},
              {"warm_clones", kWarmClones}};
  int rc = 0;
  Side on{.name = "on"}, off{.name = "off"};
  on.dir = *dir + "/on";
  off.dir = *dir + "/off";
  const std::vector<std::string> vm = {"--accel", o.accel,       "--network",
                                       "off",     "--guest-dir", o.guest_dir};
  auto flags = [&](const char* history) {
    std::vector<std::string> f = vm;
    f.push_back(std::string("--history=") + history);
    return f;
  };

  auto body = [&]() -> Status {
    MOAT_RETURN_IF_ERROR(MakeDirs(on.dir));
    MOAT_RETURN_IF_ERROR(MakeDirs(off.dir));
    MOAT_ASSIGN_OR_RETURN(json write_ms, StoreWriteMs(*dir));
    // The history-on moatd starts once with no pool to make its store and admin team, stops,
    // and is seeded while stopped.
    {
      std::vector<std::string> f = flags("true");
      f.insert(f.end(), {"--warm-sandboxes", "0"});
      MOAT_RETURN_IF_ERROR(on.moatd.Start(o.moatd, f, on.dir, key).Annotate("first start"));
      MOAT_RETURN_IF_ERROR(on.moatd.Stop());
      MOAT_RETURN_IF_ERROR(CopySqliteDb(on.dir + "/data", *seed_dir));
      MOAT_ASSIGN_OR_RETURN(SeedResult seed,
                            SeedHistory(*seed_dir + "/moat.db", o.records, kSeedDays));
      MOAT_RETURN_IF_ERROR(CopySqliteDb(*seed_dir, on.dir + "/data"));
      out["list_api"]["records"] = seed.records;
      out["list_api"]["seed"] = {{"records", seed.records},
                                 {"events", seed.events},
                                 {"commands", seed.commands},
                                 {"days", kSeedDays},
                                 {"ms", seed.ms},
                                 {"via", "SqliteStore on a tmpfs copy"}};
      out["list_api"]["detail_id"] = seed.middle_id;
      std::printf("history_bench: seeded %d records in %.0f ms\n", seed.records, seed.ms);
    }
    MOAT_RETURN_IF_ERROR(
        on.moatd.Start(o.moatd, flags("true"), on.dir, key).Annotate("history on"));
    MOAT_RETURN_IF_ERROR(
        off.moatd.Start(o.moatd, flags("false"), off.dir, key).Annotate("history off"));
    for (const auto& f : ParseLog(on.moatd.Log())) {
      if (f.count("event") && f.at("event") == "moatd.accel" && f.count("accel")) {
        out["accel"] = f.at("accel");
      }
    }
    out["load_average"]["start"] = LoadAverage();
    std::printf("history_bench: hot path, %d rounds...\n", o.rounds);
    std::fflush(stdout);
    MOAT_ASSIGN_OR_RETURN(out["hot_path"], RunHotPath(o, on, off, key));
    out["hot_path"]["store_write_ms"] = write_ms;
    out["load_average"]["after_hot_path"] = LoadAverage();

    // The rest runs on the history-on moatd alone.
    for (const auto& id : std::vector<std::string>(off.created)) {
      MOAT_RETURN_IF_ERROR(DeleteSandbox(off, key, id));
    }
    MOAT_RETURN_IF_ERROR(off.moatd.Stop().Annotate("stopping moatd (history off)"));
    std::printf("history_bench: list API...\n");
    std::fflush(stdout);
    MOAT_ASSIGN_OR_RETURN(json list,
                          RunListApi(o, on, key, out["list_api"]["detail_id"].get<std::string>()));
    out["list_api"].update(list);
    MOAT_RETURN_IF_ERROR(CheckInterrupted());
    std::printf("history_bench: dashboard...\n");
    std::fflush(stdout);
    out["dashboard"] =
        RunDashboard(o, "http://127.0.0.1:" + std::to_string(on.moatd.port()), key, *dir);
    if (out["dashboard"].contains("error")) {
      return Internal("dashboard: " + out["dashboard"]["error"].get<std::string>());
    }
    return Status::Ok();
  };
  Status s = body();
  if (!s.ok()) rc = Fail(s, "run");

  // Clean-up, whatever happened: chromium, the sandboxes, both moatds; then nothing may be left.
  KillLeftoverBrowsers(*dir);
  for (Side* side : {&on, &off}) {
    if (side->moatd.running()) {
      for (const auto& id : std::vector<std::string>(side->created)) {
        Status k = DeleteSandbox(*side, key, id);
        if (!k.ok()) rc = Fail(k, "kill");
      }
    }
    Status stopped = side->moatd.Stop();
    if (!stopped.ok()) rc = Fail(stopped, "stopping moatd");
    if (rc != 0) {
      std::fprintf(stderr, "history_bench: moatd (history %s) log ends:\n%s\n", side->name,
                   side->moatd.LogTail().c_str());
    }
  }
  auto left = ProcessesMentioning(*dir);
  for (const auto& p : left) std::fprintf(stderr, "history_bench: left running: %s\n", p.c_str());
  if (!left.empty()) rc = 1;
  (void)RemoveTree(*dir);
  (void)RemoveTree(*seed_dir);
  if (!out.contains("hot_path")) return 1;

  out["load_average"]["end"] = LoadAverage();
  out["targets"] = Targets(out);
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
       {"--accel", [&](const std::string& v) { o.accel = v; }},
       {"--work-dir", [&](const std::string& v) { o.work_dir = v; }},
       {"--rounds", [&](const std::string& v) { o.rounds = AtLeastOne(v); }},
       {"--execs", [&](const std::string& v) { o.execs = AtLeastOne(v); }},
       {"--creates", [&](const std::string& v) { o.creates = AtLeastOne(v); }},
       {"--records", [&](const std::string& v) { o.records = std::max(5000, AtLeastOne(v)); }},
       {"--requests", [&](const std::string& v) { o.requests = AtLeastOne(v); }},
       {"--loads", [&](const std::string& v) { o.loads = AtLeastOne(v); }},
       {"--browser-script", [&](const std::string& v) { o.browser_script = v; }},
       {"--puppeteer-dir", [&](const std::string& v) { o.puppeteer_dir = v; }},
       {"--chromium", [&](const std::string& v) { o.chromium = v; }},
       {"--json", [&](const std::string& v) { o.json_path = v; }}},
      "history_bench [--moatd PATH] [--guest-dir DIR] [--accel auto|kvm|tcg] [--work-dir DIR] "
      "[--rounds N] "
      "[--execs N] [--creates N] [--records N] [--requests N] [--loads N] [--browser-script PATH] "
      "[--puppeteer-dir DIR] [--chromium PATH] [--json PATH]");
  if (!parsed) return 2;
  if (o.moatd.empty()) {
    std::string self = moat::bench::Absolute("/proc/self/exe");
    o.moatd = self.substr(0, self.rfind('/') + 1) + "moatd";
  }
  o.guest_dir = moat::bench::Absolute(o.guest_dir);
  o.browser_script = moat::bench::Absolute(o.browser_script);
  o.puppeteer_dir = moat::bench::Absolute(o.puppeteer_dir);
  return moat::bench::Run(o);
}
