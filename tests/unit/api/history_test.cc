// History and usage: what the controller records of a sandbox's life against a fake host and a
// real SQLite store (who created and killed it, its events, lineage, console, network), and the
// usage arithmetic (api/usage.h) — exact across a moatd restart and a pause/resume.
#include "api/history.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <thread>

#include "api/auth.h"
#include "api/http/router.h"
#include "api/routes/routes.h"
#include "api/sandbox_controller.h"
#include "api/store/sqlite_store.h"
#include "api/usage.h"
#include "common/fs.h"
#include "support/fake_host_agent.h"

namespace moat::api {
namespace {

using store::HistoryRecord;
using store::SandboxEvent;

constexpr int64_t kDay = 86400000;

class HistoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = MakeTempDir("/tmp", "moat-history-test.");
    ASSERT_TRUE(d.ok());
    dir_ = *d;
    auto s = store::SqliteStore::Open(dir_ + "/moat.db");
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(*s);
    team_ = *store_->CreateTeam("acme", false);
    StartController();
  }
  void TearDown() override {
    controller_.reset();
    store_.reset();
    EXPECT_TRUE(RemoveTree(dir_).ok());
  }
  void StartController() {
    controller_.reset();
    ControllerOptions o;
    o.reap_interval = std::chrono::hours(1);
    o.usage_interval = std::chrono::hours(1);  // metered by hand (MeterOnce)
    auto c = SandboxController::Start(host_, *store_, metrics_, o);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    controller_ = std::move(*c);
  }
  Result<store::SandboxRecord> Create(int64_t timeout_s = 300) {
    CreateSandboxAction a;
    a.timeout_s = timeout_s;
    a.metadata = {{"job", "etl"}};
    return controller_->Create(team_, a);
  }
  HistoryRecord History(const std::string& id) {
    auto h = store_->GetHistory(id);
    EXPECT_TRUE(h.ok() && h->has_value()) << id;
    return h.ok() && *h ? **h : HistoryRecord{};
  }
  std::vector<std::string> Kinds(const std::string& id) {
    std::vector<std::string> out;
    auto events = store_->SandboxEvents(id);
    EXPECT_TRUE(events.ok());
    if (events.ok()) {
      for (const auto& e : *events) out.push_back(e.kind);
    }
    return out;
  }
  UsageReport Usage(int64_t from, int64_t to, int64_t now) {
    auto input = store_->LoadUsageInput(team_.id, from, to);
    EXPECT_TRUE(input.ok());
    UsageQuery q{.from_ms = from, .to_ms = to, .bucket_ms = 86400000, .now_ms = now};
    auto r = ComputeUsage(*input, q);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : UsageReport{};
  }

  std::string dir_;
  test_support::FakeHostAgent host_{"h1"};
  std::unique_ptr<store::SqliteStore> store_;
  Metrics metrics_;
  store::TeamRecord team_;
  std::unique_ptr<SandboxController> controller_;
  Actor alice_{"", "key-1", "alice", "10.0.0.9", "req-1"};
};

TEST_F(HistoryTest, ASandboxsRecordOutlivesItAndNamesWhoCreatedAndKilledIt) {
  alice_.team_id = team_.id;
  ScopedActor as_alice(&alice_);
  auto r = Create();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  host_.console[r->id] = "boot line 1\nboot line 2\n";
  ASSERT_TRUE(controller_->Pause(team_.id, r->id).ok());
  EXPECT_EQ(History(r->id).state, "paused");
  ASSERT_TRUE(controller_->Resume(team_.id, r->id, 300).ok());
  ASSERT_TRUE(controller_->Kill(team_.id, r->id).ok());
  EXPECT_FALSE(store_->GetSandbox(r->id)->has_value()) << "the live record goes";

  HistoryRecord h = History(r->id);
  EXPECT_EQ(h.team_id, team_.id);
  EXPECT_EQ(h.key_id, "key-1");
  EXPECT_EQ(h.key_name, "alice");
  EXPECT_EQ(h.metadata.at("job"), "etl");
  EXPECT_EQ(h.host_id, "h1");
  EXPECT_EQ(h.end_reason, store::kEndKilled);
  EXPECT_EQ(h.ended_by, "alice");
  EXPECT_GT(h.ended_at_ms, 0);
  EXPECT_EQ(Kinds(r->id), (std::vector<std::string>{"created", "paused", "resumed", "killed"}));
  auto console = store_->ConsoleLog(r->id);
  ASSERT_TRUE(console.ok() && console->has_value());
  EXPECT_EQ(**console, "boot line 1\nboot line 2\n");
}

TEST_F(HistoryTest, TheReaperEndsAnExpiredSandboxAsTimeoutWithNoKeyNamed) {
  auto r = Create(0);
  ASSERT_TRUE(r.ok());
  controller_->ReapOnce();
  HistoryRecord h = History(r->id);
  EXPECT_EQ(h.end_reason, store::kEndTimeout);
  EXPECT_EQ(h.ended_by, "");
}

TEST_F(HistoryTest, ForksNameTheirParentAndTheParentListsThem) {
  auto parent = Create();
  ASSERT_TRUE(parent.ok());
  auto kids = controller_->Fork(team_.id, parent->id, 2, 300);
  ASSERT_TRUE(kids.ok()) << kids.status().ToString();
  auto children = store_->HistoryChildren(parent->id);
  ASSERT_TRUE(children.ok());
  ASSERT_EQ(children->size(), 2u);
  for (const auto& c : *children) {
    EXPECT_EQ(c.parent_kind, "fork");
    EXPECT_EQ(c.parent_id, parent->id);
  }
  EXPECT_EQ(Kinds(parent->id).back(), "forked");
  auto report = Usage(UnixMillisNow() - kDay, UnixMillisNow() + 1000, UnixMillisNow());
  EXPECT_EQ(report.totals.creates, 1);
  EXPECT_EQ(report.totals.forks, 2);
}

TEST_F(HistoryTest, NetworkBytesAreMeteredOnceAcrossARestartAndAtTheKill) {
  auto r = Create();
  ASSERT_TRUE(r.ok());
  host_.net[r->id] = {1000, 200};
  controller_->MeterOnce(false);
  // moatd restarts: the new controller reads the same counters again, which adds nothing.
  StartController();
  controller_->MeterOnce(false);
  EXPECT_EQ(History(r->id).egress_bytes, 1000);
  host_.net[r->id] = {1500, 300};
  ASSERT_TRUE(controller_->Kill(team_.id, r->id).ok());  // the last reading is taken at the kill
  HistoryRecord h = History(r->id);
  EXPECT_EQ(h.egress_bytes, 1500);
  EXPECT_EQ(h.ingress_bytes, 300);
  auto report = Usage(UnixMillisNow() - kDay, UnixMillisNow() + 1000, UnixMillisNow());
  EXPECT_EQ(report.totals.egress_bytes, 1500);
  EXPECT_EQ(report.totals.ingress_bytes, 300);
}

TEST_F(HistoryTest, NetworkBytesAreMeteredAtAPauseAndANewSlotAfterAResumeCountsWhole) {
  auto r = Create();
  ASSERT_TRUE(r.ok());
  host_.net[r->id] = {1000, 100};
  ASSERT_TRUE(controller_->Pause(team_.id, r->id).ok());  // read as its slot goes
  EXPECT_EQ(History(r->id).egress_bytes, 1000);
  ASSERT_TRUE(controller_->Resume(team_.id, r->id, 300).ok());
  host_.net[r->id] = {5000, 50};  // the new slot's counters, above the old reading
  controller_->MeterOnce(false);
  EXPECT_EQ(History(r->id).egress_bytes, 6000);
  EXPECT_EQ(History(r->id).ingress_bytes, 150);
}

TEST_F(HistoryTest, RunningTimeIsExactAcrossARestartAndAPauseResume) {
  int64_t t0 = UnixMillisNow();
  auto r = Create();
  ASSERT_TRUE(r.ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  StartController();  // a restart re-adopts it (the fake host still runs it)
  ASSERT_EQ(History(r->id).ended_at_ms, 0) << "still alive after the restart";
  ASSERT_TRUE(controller_->Pause(team_.id, r->id).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  ASSERT_TRUE(controller_->Resume(team_.id, r->id, 300).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  ASSERT_TRUE(controller_->Kill(team_.id, r->id).ok());
  int64_t t1 = UnixMillisNow();
  HistoryRecord h = History(r->id);
  auto report = Usage(t0 - 3600000, t1 + 3600000, t1);
  double lifetime = static_cast<double>(h.ended_at_ms - h.created_at_ms) / 1000.0;
  // Every second of its life is counted once, as running or as paused: no gap, no overlap.
  EXPECT_NEAR(report.totals.running_seconds + report.totals.paused_seconds, lifetime, 1e-6);
  EXPECT_GE(report.totals.paused_seconds, 0.19);
  EXPECT_GE(report.totals.running_seconds, 0.39);
  EXPECT_NEAR(report.totals.vcpu_seconds, report.totals.running_seconds * h.cpu_count, 1e-6);
  EXPECT_NEAR(report.totals.gib_seconds, report.totals.running_seconds * h.memory_mb / 1024.0,
              1e-6);
  EXPECT_EQ(report.totals.creates, 1);
  // The pause's snapshot was stored while it was paused.
  EXPECT_GT(report.totals.snapshot_byte_hours, 0);
  // Asked twice (or by another replica), the same answer.
  auto again = Usage(t0 - 3600000, t1 + 3600000, t1);
  EXPECT_EQ(again.totals.running_seconds, report.totals.running_seconds);
}

// The routes: who did what is in the audit log, the history answers for the team's own
// sandboxes only, usage and E2B's logs route read the same records.
class HistoryRoutesTest : public HistoryTest {
 protected:
  void SetUp() override {
    HistoryTest::SetUp();
    ASSERT_TRUE(store_->AddApiKey(team_.id, "ci-bot", Sha256Hex("e2b_acme"), "e2b_a…").ok());
    other_ = *store_->CreateTeam("other", false);
    ASSERT_TRUE(store_->AddApiKey(other_.id, "x", Sha256Hex("e2b_other"), "e2b_o…").ok());
    cc_ = routes::ControlContext{controller_.get(), store_.get(), &metrics_, "0.6.4"};
    routes::RegisterSandboxRoutes(router_, cc_);
    routes::RegisterHistoryRoutes(router_, cc_);
  }
  http::RecordingWriter Call(const std::string& method, const std::string& target,
                             const std::string& key, const std::string& body = "") {
    http::Request req;
    req.method = method;
    size_t q = target.find('?');
    req.path = target.substr(0, q);
    if (q != std::string::npos) req.raw_query = target.substr(q + 1);
    req.headers["X-API-KEY"] = key;
    req.peer = "192.0.2.7:5555";
    req.body = body;
    http::RecordingWriter w;
    auto match = router_.Find(req.method, req.path);
    EXPECT_NE(match.route, nullptr) << method << " " << target;
    if (match.route == nullptr) return w;
    req.params = match.params;
    match.route->handler(req, w);
    return w;
  }
  nlohmann::json Json(const http::RecordingWriter& w) { return nlohmann::json::parse(w.body()); }

  http::Router router_;
  routes::ControlContext cc_{};
  store::TeamRecord other_;
};

TEST_F(HistoryRoutesTest, AuditHistoryUsageAndLogsTellTheSameStory) {
  auto created =
      Call("POST", "/sandboxes", "e2b_acme", R"({"templateID":"base","metadata":{"job":"etl"}})");
  ASSERT_EQ(created.status(), 201) << created.body();
  std::string id = Json(created)["sandboxID"];
  EXPECT_EQ(Call("DELETE", "/sandboxes/nosuchsandbox000000", "e2b_acme").status(), 404);
  EXPECT_EQ(Call("DELETE", "/sandboxes/" + id, "e2b_acme").status(), 204);

  auto audit = Json(Call("GET", "/audit", "e2b_acme"));
  ASSERT_EQ(audit["items"].size(), 3u) << audit.dump();
  EXPECT_EQ(audit["items"][0]["action"], "sandbox.kill");
  EXPECT_EQ(audit["items"][0]["target"], id);
  EXPECT_EQ(audit["items"][0]["keyName"], "ci-bot");
  EXPECT_EQ(audit["items"][0]["source"], "192.0.2.7");
  EXPECT_EQ(audit["items"][0]["outcome"], "ok");
  EXPECT_EQ(audit["items"][1]["outcome"], "error");
  EXPECT_EQ(audit["items"][1]["status"], 404);
  EXPECT_EQ(audit["items"][2]["action"], "sandbox.create");
  EXPECT_EQ(audit["items"][2]["target"], id) << "the create's target is the sandbox it made";
  EXPECT_TRUE(Json(Call("GET", "/audit", "e2b_other"))["items"].empty()) << "another team's";
  EXPECT_EQ(Call("GET", "/audit?allTeams=true", "e2b_acme").status(), 403);

  auto list = Json(Call("GET", "/history?state=ended&metadata=job%3Detl", "e2b_acme"));
  ASSERT_EQ(list["items"].size(), 1u) << list.dump();
  EXPECT_EQ(list["items"][0]["endReason"], "killed");
  EXPECT_EQ(list["items"][0]["endedBy"], "ci-bot");
  EXPECT_EQ(list["items"][0]["createdBy"]["keyName"], "ci-bot");
  EXPECT_TRUE(Json(Call("GET", "/history?state=live", "e2b_acme"))["items"].empty());
  EXPECT_EQ(Call("GET", "/history/" + id, "e2b_other").status(), 404);
  auto one = Json(Call("GET", "/history/" + id, "e2b_acme"));
  EXPECT_EQ(one["events"].size(), 2u);
  EXPECT_EQ(Call("GET", "/history?from=yesterday", "e2b_acme").status(), 400);
  EXPECT_EQ(Call("GET", "/history?limit=0", "e2b_acme").status(), 400);

  auto usage = Json(Call("GET", "/usage?groupBy=hour,template", "e2b_acme"));
  EXPECT_EQ(usage["totals"]["creates"], 1);
  EXPECT_EQ(usage["groupBy"], nlohmann::json({"hour", "template"}));
  EXPECT_EQ(Call("GET", "/usage?groupBy=week", "e2b_acme").status(), 400);
  EXPECT_EQ(Call("GET", "/usage?groupBy=team", "e2b_acme").status(), 403);
  auto csv = Call("GET", "/usage?format=csv", "e2b_acme");
  EXPECT_EQ(csv.status(), 200);
  EXPECT_EQ(csv.body().rfind("bucket,runningSeconds", 0), 0u) << csv.body();

  std::string m = metrics_.Render(StoreGauges{});
  for (const char* series :
       {"moat_history_writes_total{kind=\"audit\"}", "moat_history_writes_total{kind=\"event\"}",
        "moat_history_write_errors_total 0", "moat_web_terminals 0",
        "moat_dashboard_sign_ins_total{outcome=\"ok\"} 0"}) {
    EXPECT_NE(m.find(series), std::string::npos) << series;
  }

  auto logs = Json(Call("GET", "/sandboxes/" + id + "/logs", "e2b_acme"));
  EXPECT_TRUE(logs.contains("logs"));
  EXPECT_TRUE(logs.contains("logEntries"));
}

// --- The arithmetic alone. ---

HistoryRecord Sandbox(const std::string& id, int64_t created, int64_t ended,
                      const std::string& tmpl = "base") {
  HistoryRecord h;
  h.sandbox_id = id;
  h.team_id = "t";
  h.template_id = tmpl;
  h.cpu_count = 2;
  h.memory_mb = 512;
  h.created_at_ms = created;
  h.ended_at_ms = ended;
  return h;
}

SandboxEvent Ev(const std::string& id, int64_t seq, int64_t at, const std::string& kind) {
  return SandboxEvent{.seq = seq, .sandbox_id = id, .team_id = "t", .at_ms = at, .kind = kind};
}

constexpr int64_t kHour = 3600000;

TEST(UsageMath, SplitsRunningAndPausedTimeAcrossHourBuckets) {
  store::UsageInput in;
  // Runs 00:30-01:30, paused 01:30-02:00, runs 02:00-02:15 and is killed.
  in.histories = {Sandbox("a", kHour / 2, 2 * kHour + kHour / 4)};
  in.events = {Ev("a", 1, kHour / 2, "created"), Ev("a", 2, kHour + kHour / 2, "paused"),
               Ev("a", 3, 2 * kHour, "resumed"), Ev("a", 4, 2 * kHour + kHour / 4, "killed")};
  UsageQuery q{.from_ms = 0, .to_ms = 3 * kHour, .bucket_ms = kHour, .now_ms = 10 * kHour};
  auto r = ComputeUsage(in, q);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->rows.size(), 3u);
  EXPECT_EQ(r->rows[0].bucket_ms, 0);
  EXPECT_DOUBLE_EQ(r->rows[0].figures.running_seconds, 1800);
  EXPECT_EQ(r->rows[0].figures.creates, 1);
  EXPECT_DOUBLE_EQ(r->rows[1].figures.running_seconds, 1800);
  EXPECT_DOUBLE_EQ(r->rows[1].figures.paused_seconds, 1800);
  EXPECT_DOUBLE_EQ(r->rows[2].figures.running_seconds, 900);
  EXPECT_DOUBLE_EQ(r->totals.running_seconds, 4500);
  EXPECT_DOUBLE_EQ(r->totals.vcpu_seconds, 9000);
  EXPECT_DOUBLE_EQ(r->totals.gib_seconds, 2250);
  // Idle: no command ran at all.
  EXPECT_DOUBLE_EQ(r->totals.idle_seconds, 4500);
}

TEST(UsageMath, IdleTimeIsRunningTimeWithNoCommandInFlight) {
  store::UsageInput in;
  in.histories = {Sandbox("a", 0, 100000)};
  in.events = {Ev("a", 1, 0, "created"), Ev("a", 2, 100000, "killed")};
  store::CommandRecord c1{.sandbox_id = "a", .started_at_ms = 10000, .ended_at_ms = 30000};
  store::CommandRecord c2{.sandbox_id = "a", .started_at_ms = 20000, .ended_at_ms = 40000};
  store::CommandRecord open{.sandbox_id = "a", .started_at_ms = 90000};  // never ended
  in.commands = {c1, c2, open};
  UsageQuery q{.from_ms = 0, .to_ms = kHour, .bucket_ms = kHour, .now_ms = kHour};
  auto r = ComputeUsage(in, q);
  ASSERT_TRUE(r.ok());
  // Busy 10-40 s (two overlapping commands) and 90-100 s (until it ended): idle 60 s of 100.
  EXPECT_DOUBLE_EQ(r->totals.running_seconds, 100);
  EXPECT_DOUBLE_EQ(r->totals.idle_seconds, 60);
}

TEST(UsageMath, ASandboxStillAliveCountsUpToNowAndOnlyInsideTheWindow) {
  store::UsageInput in;
  in.histories = {Sandbox("a", -kHour, 0)};
  in.events = {Ev("a", 1, -kHour, "created")};
  UsageQuery q{.from_ms = 0, .to_ms = kHour, .bucket_ms = kHour, .now_ms = kHour / 2};
  auto r = ComputeUsage(in, q);
  ASSERT_TRUE(r.ok());
  EXPECT_DOUBLE_EQ(r->totals.running_seconds, 1800);
  EXPECT_EQ(r->totals.creates, 0) << "created before the window";
}

TEST(UsageMath, GroupsByTemplateAndCountsSnapshotsAndNetwork) {
  store::UsageInput in;
  in.histories = {Sandbox("a", 0, kHour, "base"), Sandbox("b", 0, kHour, "py")};
  in.net = {{"a", 0, 100, 10}, {"b", 0, 5, 1}};
  in.snapshots = {{.id = "s",
                   .team_id = "t",
                   .template_id = "py",
                   .bytes = 1000,
                   .created_at_ms = 0,
                   .deleted_at_ms = kHour / 2}};
  UsageQuery q{
      .from_ms = 0, .to_ms = kHour, .bucket_ms = kHour, .by_template = true, .now_ms = kHour};
  auto r = ComputeUsage(in, q);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->rows.size(), 2u);
  EXPECT_EQ(r->rows[0].template_id, "base");
  EXPECT_EQ(r->rows[0].figures.egress_bytes, 100);
  EXPECT_EQ(r->rows[1].template_id, "py");
  EXPECT_DOUBLE_EQ(r->rows[1].figures.snapshot_byte_hours, 500);
  EXPECT_EQ(r->totals.ingress_bytes, 11);
  std::string csv = UsageCsv(*r, q);
  EXPECT_EQ(csv.substr(0, csv.find('\n')),
            "bucket,templateID,runningSeconds,pausedSeconds,vcpuSeconds,gibSeconds,idleSeconds,"
            "creates,forks,egressBytes,ingressBytes,snapshotByteHours");
  EXPECT_NE(csv.find("\"py\",3600.000"), std::string::npos) << csv;
  in.histories[1].template_id = "=HYPERLINK(\"x\")";
  auto formula = ComputeUsage(in, q);
  ASSERT_TRUE(formula.ok());
  EXPECT_NE(UsageCsv(*formula, q).find("\"'=HYPERLINK(\"\"x\"\")\""), std::string::npos)
      << "a cell a spreadsheet would run is quoted";
}

TEST(UsageMath, RefusesBadWindowsAndBuckets) {
  store::UsageInput in;
  EXPECT_FALSE(ComputeUsage(in, {.from_ms = 10, .to_ms = 10, .bucket_ms = kHour}).ok());
  EXPECT_FALSE(ComputeUsage(in, {.from_ms = 0, .to_ms = kHour, .bucket_ms = 1000}).ok());
  EXPECT_FALSE(ComputeUsage(in, {.from_ms = 0, .to_ms = 20000 * kHour, .bucket_ms = kHour}).ok());
}

TEST(OutputTail, KeepsTheFirstAndLastBytesAndCountsAll) {
  OutputTail t;
  std::string big(10000, 'x');
  big[0] = 'A';
  big[9999] = 'Z';
  t.Append(big.substr(0, 3000));
  t.Append(big.substr(3000));
  std::string head, tail;
  int64_t bytes = 0;
  t.Fill(&head, &tail, &bytes);
  EXPECT_EQ(bytes, 10000);
  EXPECT_EQ(head.size(), OutputTail::kOutputKeep);
  EXPECT_EQ(head[0], 'A');
  EXPECT_EQ(tail.size(), OutputTail::kOutputKeep);
  EXPECT_EQ(tail.back(), 'Z');
  OutputTail small;
  small.Append("hi\n");
  small.Fill(&head, &tail, &bytes);
  EXPECT_EQ(head, "hi\n");
  EXPECT_EQ(tail, "");
}

}  // namespace
}  // namespace moat::api
