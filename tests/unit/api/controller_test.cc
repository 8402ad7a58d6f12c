// The SandboxController's lifecycle against a fake host (no VMs) and a real SQLite store: ids
// minted and recorded `creating` before the host starts them, failures that leave nothing
// half-made, and races decided by the store's compare-and-set.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <thread>

#include "api/sandbox_controller.h"
#include "api/store/sqlite_store.h"
#include "common/fs.h"
#include "support/fake_host_agent.h"

namespace moat::api {
namespace {

class ControllerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = MakeTempDir("/tmp", "moat-controller-test.");
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
    // The reaper is driven by hand (ReapOnce).
    auto c = SandboxController::Start(host_, *store_, metrics_,
                                      {.reap_interval = std::chrono::hours(1)});
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    controller_ = std::move(*c);
  }
  Result<store::SandboxRecord> Create(int64_t timeout_s = 300, bool auto_pause = false) {
    CreateSandboxAction a;
    a.timeout_s = timeout_s;
    a.auto_pause = auto_pause;
    return controller_->Create(team_, a);
  }
  std::optional<store::SandboxRecord> Record(const std::string& id) {
    auto r = store_->GetSandbox(id);
    EXPECT_TRUE(r.ok());
    return r.ok() ? *r : std::nullopt;
  }
  SandboxState StateOf(const std::string& id) {
    auto r = Record(id);
    EXPECT_TRUE(r.has_value()) << id;
    return r ? r->state : SandboxState::kKilled;
  }

  std::string dir_;
  test_support::FakeHostAgent host_{"h1"};
  std::unique_ptr<store::SqliteStore> store_;
  Metrics metrics_;
  store::TeamRecord team_;
  std::unique_ptr<SandboxController> controller_;
};

TEST_F(ControllerTest, RecordsCreatingBeforeTheHostStartsItThenRunning) {
  std::optional<SandboxState> seen;
  std::string host_of;
  host_.during["create"] = [&](const std::string& id) {
    auto r = Record(id);
    if (r) {
      seen = r->state;
      host_of = r->host_id;
    }
  };
  auto r = Create();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(seen, SandboxState::kCreating) << "recorded before the host was asked";
  EXPECT_EQ(host_of, "h1");
  EXPECT_EQ(r->state, SandboxState::kRunning);
  EXPECT_EQ(StateOf(r->id), SandboxState::kRunning);
  EXPECT_EQ(host_.running.count(r->id), 1u) << "the host got the id the controller minted";
  EXPECT_EQ(r->cpu_count, 2u);
  EXPECT_EQ(r->memory_mb, 512u);
  EXPECT_EQ(r->disk_size_mb, 1024u);
}

TEST_F(ControllerTest, AFailedStartLeavesNoRecordAndNoVm) {
  host_.fail_next["create"] = Unavailable("the host is out of memory");
  auto r = Create();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kUnavailable);
  EXPECT_TRUE(store_->AllSandboxes()->empty()) << "the creating record is gone";
  EXPECT_TRUE(host_.running.empty());
  EXPECT_EQ(host_.CountCalls("kill "), 1) << "whatever may have started is killed";
  EXPECT_EQ(store_->RunningUsage(team_.id)->sandboxes, 0) << "nothing held against the quota";
}

TEST_F(ControllerTest, AKillDuringCreateWinsAndTheCreateReleasesWhatItStarted) {
  host_.during["create"] = [&](const std::string& id) {
    // A kill of the creating record (a janitor, or a client that guessed the id).
    auto r = Record(id);
    ASSERT_TRUE(r);
    EXPECT_TRUE(
        *store_->TransitionSandbox(id, {SandboxState::kCreating}, {SandboxState::kKilling}));
  };
  auto r = Create();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kNotFound) << r.status().ToString();
  EXPECT_TRUE(host_.running.empty()) << "the VM the host started is killed";
  EXPECT_TRUE(store_->AllSandboxes()->empty());
}

TEST_F(ControllerTest, PauseAndResumeGoThroughTheirIntermediateStates) {
  auto r = *Create();
  std::optional<SandboxState> during_pause, during_resume;
  host_.during["pause"] = [&](const std::string& id) { during_pause = StateOf(id); };
  host_.during["resume"] = [&](const std::string& id) { during_resume = StateOf(id); };
  ASSERT_TRUE(controller_->Pause(team_.id, r.id).ok());
  EXPECT_EQ(during_pause, SandboxState::kPausing);
  EXPECT_EQ(StateOf(r.id), SandboxState::kPaused);
  EXPECT_EQ(controller_->Pause(team_.id, r.id).code(), ErrorCode::kFailedPrecondition);
  auto resumed = controller_->Resume(team_.id, r.id, 60);
  ASSERT_TRUE(resumed.ok()) << resumed.status().ToString();
  EXPECT_EQ(during_resume, SandboxState::kResuming);
  EXPECT_EQ(StateOf(r.id), SandboxState::kRunning);
  EXPECT_EQ(controller_->Resume(team_.id, r.id, 60).status().code(), ErrorCode::kAborted)
      << "already running: 409";
}

TEST_F(ControllerTest, AFailedPauseKeepsItRunningAndAFailedResumeKeepsItPaused) {
  auto r = *Create();
  host_.fail_next["pause"] = Internal("snapshot write failed");
  EXPECT_FALSE(controller_->Pause(team_.id, r.id).ok());
  EXPECT_EQ(StateOf(r.id), SandboxState::kRunning);
  ASSERT_TRUE(controller_->Pause(team_.id, r.id).ok());
  host_.fail_next["resume"] = Internal("restore failed");
  EXPECT_FALSE(controller_->Resume(team_.id, r.id, 60).ok());
  EXPECT_EQ(StateOf(r.id), SandboxState::kPaused) << "the snapshot is kept";
  EXPECT_EQ(store_->RunningUsage(team_.id)->sandboxes, 0);
  EXPECT_TRUE(controller_->Resume(team_.id, r.id, 60).ok());
}

TEST_F(ControllerTest, OnlyOneOfTwoRacingResumesRunsIt) {
  auto r = *Create();
  ASSERT_TRUE(controller_->Pause(team_.id, r.id).ok());
  Result<store::SandboxRecord> second = NotFound("not run");
  host_.during["resume"] = [&](const std::string&) {
    host_.during.erase("resume");
    // Another replica's resume of the same sandbox arrives while this one restores it.
    second = controller_->Resume(team_.id, r.id, 60);
  };
  auto first = controller_->Resume(team_.id, r.id, 60);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), ErrorCode::kAborted) << second.status().ToString();
  EXPECT_EQ(host_.CountCalls("resume "), 1) << "the host was asked once";
}

TEST_F(ControllerTest, AKillDuringAPauseWinsAndThePauseRemovesItsSnapshot) {
  auto r = *Create();
  host_.during["pause"] = [&](const std::string& id) {
    host_.during.erase("pause");
    EXPECT_TRUE(controller_->Kill(team_.id, id).ok());
  };
  Status paused = controller_->Pause(team_.id, r.id);
  EXPECT_FALSE(paused.ok());
  EXPECT_FALSE(Record(r.id).has_value()) << "killed: the record is gone";
  EXPECT_TRUE(host_.paused.empty()) << "the snapshot the pause wrote is removed";
  EXPECT_TRUE(host_.running.empty());
}

TEST_F(ControllerTest, ClientsSeeNothingOfKillingOrLostSandboxes) {
  auto r = *Create();
  ASSERT_TRUE(*store_->TransitionSandbox(r.id, {SandboxState::kRunning}, {SandboxState::kLost}));
  EXPECT_EQ(controller_->Get(team_.id, r.id).status().code(), ErrorCode::kNotFound);
  store::SandboxFilter f;
  f.team_id = team_.id;
  EXPECT_TRUE(controller_->List(f)->items.empty());
  EXPECT_EQ(controller_->FindRunning(r.id).status().code(), ErrorCode::kNotFound);
  // The reaper removes what is left of it.
  controller_->ReapOnce();
  EXPECT_FALSE(Record(r.id).has_value());
  EXPECT_TRUE(host_.running.empty());
}

TEST_F(ControllerTest, ForkRecordsEveryChildBeforeTheHostStartsThem) {
  auto parent = *Create();
  size_t creating = 0;
  host_.during["fork"] = [&](const std::string&) {
    auto all = store_->AllSandboxes();
    ASSERT_TRUE(all.ok());
    for (const auto& r : *all) creating += r.state == SandboxState::kCreating ? 1 : 0;
  };
  auto children = controller_->Fork(team_.id, parent.id, 3, 60);
  ASSERT_TRUE(children.ok()) << children.status().ToString();
  EXPECT_EQ(creating, 3u);
  ASSERT_EQ(children->size(), 3u);
  for (const auto& c : *children) {
    EXPECT_EQ(StateOf(c.id), SandboxState::kRunning);
    EXPECT_EQ(host_.running.count(c.id), 1u);
  }
  host_.fail_next["fork"] = Internal("disk full");
  EXPECT_FALSE(controller_->Fork(team_.id, parent.id, 2, 60).ok());
  EXPECT_EQ(store_->AllSandboxes()->size(), 4u) << "the failed fork's records are gone";
}

TEST_F(ControllerTest, TheReaperKillsOrPausesWhatExpiredAndDropsWhatItsHostLost) {
  auto kill_me = *Create(300);
  auto pause_me = *Create(300, /*auto_pause=*/true);
  auto vanished = *Create(300);
  ASSERT_TRUE(store_->SetSandboxEndAt(kill_me.id, 1).ok());
  ASSERT_TRUE(store_->SetSandboxEndAt(pause_me.id, 1).ok());
  host_.running.erase(vanished.id);  // its VMM exited
  controller_->ReapOnce();
  EXPECT_FALSE(Record(kill_me.id).has_value());
  EXPECT_EQ(StateOf(pause_me.id), SandboxState::kPaused);
  EXPECT_EQ(host_.paused.count(pause_me.id), 1u);
  EXPECT_FALSE(Record(vanished.id).has_value());
}

TEST_F(ControllerTest, APauseKeepsMemoryOrTheFilesystemOnlyAsAsked) {
  auto memory = *Create();
  auto disk = *Create();
  ASSERT_TRUE(controller_->Pause(team_.id, memory.id).ok());
  ASSERT_TRUE(controller_->Pause(team_.id, disk.id, /*keep_memory=*/false).ok());
  EXPECT_EQ(host_.paused_filesystem_only.count(memory.id), 0u);
  EXPECT_EQ(host_.paused_filesystem_only.count(disk.id), 1u);
  // The timeout's pause keeps what the create asked for (autoPauseMemory).
  CreateSandboxAction a;
  a.auto_pause = true;
  a.options.auto_pause_memory = false;
  auto expiring = *controller_->Create(team_, a);
  EXPECT_FALSE(Record(expiring.id)->options.auto_pause_memory) << "stored with the record";
  ASSERT_TRUE(store_->SetSandboxEndAt(expiring.id, 1).ok());
  controller_->ReapOnce();
  EXPECT_EQ(StateOf(expiring.id), SandboxState::kPaused);
  EXPECT_EQ(host_.paused_filesystem_only.count(expiring.id), 1u);
}

TEST_F(ControllerTest, PortTrafficWakesOnlyAPausedSandboxWithAutoResume) {
  CreateSandboxAction a;
  a.auto_pause = true;
  a.options.auto_resume = true;
  auto wakes = *controller_->Create(team_, a);
  auto sleeps = *Create();
  ASSERT_TRUE(controller_->Pause(team_.id, wakes.id).ok());
  ASSERT_TRUE(controller_->Pause(team_.id, sleeps.id).ok());
  ASSERT_TRUE(controller_->WakeForTraffic(sleeps.id).ok());
  EXPECT_EQ(StateOf(sleeps.id), SandboxState::kPaused) << "no auto-resume: it stays paused";
  ASSERT_TRUE(controller_->WakeForTraffic(wakes.id).ok());
  EXPECT_EQ(StateOf(wakes.id), SandboxState::kRunning);
  EXPECT_EQ(host_.running.count(wakes.id), 1u);
  ASSERT_TRUE(controller_->WakeForTraffic(wakes.id).ok()) << "running: nothing to do";
  EXPECT_EQ(host_.CountCalls("resume "), 1);
  EXPECT_TRUE(controller_->WakeForTraffic("nosuchsandbox").ok());
  // Two requests at once: one resumes, the other waits for it.
  ASSERT_TRUE(controller_->Pause(team_.id, wakes.id).ok());
  std::vector<std::thread> requests;
  std::atomic<int> ok{0};
  for (int i = 0; i < 2; ++i) {
    requests.emplace_back([&] { ok += controller_->WakeForTraffic(wakes.id).ok() ? 1 : 0; });
  }
  for (auto& t : requests) t.join();
  EXPECT_EQ(ok.load(), 2);
  EXPECT_EQ(StateOf(wakes.id), SandboxState::kRunning);
  EXPECT_EQ(host_.CountCalls("resume "), 2);
}

TEST_F(ControllerTest, PrivatePortsWakeOnlyForTheirTrafficToken) {
  CreateSandboxAction a;
  a.auto_pause = true;
  a.allow_public_traffic = false;
  a.options.auto_resume = true;
  auto r = *controller_->Create(team_, a);
  ASSERT_FALSE(r.traffic_access_token.empty());
  ASSERT_TRUE(controller_->Pause(team_.id, r.id).ok());
  ASSERT_TRUE(controller_->WakeForTraffic(r.id, "").ok());
  ASSERT_TRUE(controller_->WakeForTraffic(r.id, "wrong").ok());
  EXPECT_EQ(StateOf(r.id), SandboxState::kPaused) << "a stranger does not wake it";
  ASSERT_TRUE(controller_->WakeForTraffic(r.id, r.traffic_access_token).ok());
  EXPECT_EQ(StateOf(r.id), SandboxState::kRunning);
}

TEST_F(ControllerTest, StartResolvesRecordsAnEarlierControlPlaneLeftMidChange) {
  auto mk = [&](const std::string& id, SandboxState s) {
    store::SandboxRecord r;
    r.id = id;
    r.team_id = team_.id;
    r.template_id = "base";
    r.state = s;
    r.end_at_ms = UnixMillisNow() + 600000;
    ASSERT_TRUE(store_->InsertSandbox(r).ok());
  };
  mk("creatingaaaaaaaaaaaa", SandboxState::kCreating);  // its create never returned
  host_.running.insert("creatingaaaaaaaaaaaa");
  mk("pausingaaaaaaaaaaaaa", SandboxState::kPausing);  // the pause completed on the host
  host_.paused.insert("pausingaaaaaaaaaaaaa");
  mk("resumingaaaaaaaaaaaa", SandboxState::kResuming);  // the resume never reached the host
  host_.paused.insert("resumingaaaaaaaaaaaa");
  mk("killingaaaaaaaaaaaaa", SandboxState::kKilling);
  host_.running.insert("killingaaaaaaaaaaaaa");
  mk("runningaaaaaaaaaaaaa", SandboxState::kRunning);
  host_.running.insert("runningaaaaaaaaaaaaa");
  host_.running.insert("orphanaaaaaaaaaaaaaa");  // a VM without a record
  StartController();
  EXPECT_FALSE(Record("creatingaaaaaaaaaaaa").has_value());
  EXPECT_EQ(host_.running.count("creatingaaaaaaaaaaaa"), 0u);
  EXPECT_EQ(StateOf("pausingaaaaaaaaaaaaa"), SandboxState::kPaused);
  EXPECT_EQ(StateOf("resumingaaaaaaaaaaaa"), SandboxState::kPaused);
  EXPECT_FALSE(Record("killingaaaaaaaaaaaaa").has_value());
  EXPECT_EQ(host_.running.count("killingaaaaaaaaaaaaa"), 0u);
  EXPECT_EQ(StateOf("runningaaaaaaaaaaaaa"), SandboxState::kRunning);
  EXPECT_EQ(host_.running.count("orphanaaaaaaaaaaaaaa"), 0u);
}

TEST_F(ControllerTest, TheReaperLeavesAKillInFlightToItsKiller) {
  auto r = Create();
  ASSERT_TRUE(r.ok());
  // Its kill is in flight (killing, the VM not yet released): the reaper's pass leaves it, so
  // that the kill is released once and its history names who killed it.
  host_.during["kill"] = [&](const std::string&) { controller_->ReapOnce(); };
  ASSERT_TRUE(controller_->Kill(team_.id, r->id).ok());
  EXPECT_EQ(std::count(host_.calls.begin(), host_.calls.end(), "kill " + r->id), 1);
  EXPECT_FALSE(Record(r->id).has_value());
}

}  // namespace
}  // namespace moat::api
