// End to end: running sandboxes survive their agent. An agent detaches (what moatd
// --keep-sandboxes-on-stop does, and what a crash leaves: VMMs running, their state on disk); the
// next agent on the data dir re-adopts the sandboxes whose VMM still runs — processes ran on,
// files are intact, exec, pause and resume work, kill releases everything — and cleans up the
// ones whose VMM died or whose state it cannot use.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "agent/agent.h"
#include "agent/sandbox_state.h"
#include "api/metrics.h"
#include "api/sandbox_controller.h"
#include "api/store/sqlite_store.h"
#include "common/fs.h"
#include "common/sandbox_id.h"
#include "common/socket.h"
#include "common/unique_fd.h"
#include "host/in_process_host_agent.h"
#include "support/agent_config.h"
#include "support/test_util.h"
#include "vmm/cgroup.h"
#include "vmm/qemu/qmp_client.h"

namespace moat::agent {
namespace {

using channel::GuestClient;
using nlohmann::json;
using namespace std::chrono_literals;

bool CgroupExists(const std::string& vm_name) {
  auto layout = vmm::DetectCgroupLayout();
  if (!layout.ok()) return false;
  for (const auto& d : vmm::CgroupDirsFor(*layout, "", vm_name)) {
    if (PathExists(d)) return true;
  }
  return false;
}

bool ProcessRuns(pid_t pid) {
  return pid > 0 && ::kill(pid, 0) == 0;
}

std::string ProcUid(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("Uid:", 0) == 0) return line;
  }
  return "";
}

std::vector<std::string> Sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}

class SandboxAdoptE2eTest : public ::testing::Test {
 protected:
  // One data dir for the suite: the template is baked once.
  static void SetUpTestSuite() {
    auto dir = MakeTempDir("/tmp", "moat-adopt.");
    ASSERT_TRUE(dir.ok());
    dir_ = new std::string(*dir);
    fds_before_ = test_support::OpenFdCount();
  }
  static void TearDownTestSuite() {
    EXPECT_EQ(test_support::CountProcessesMentioning(*dir_), 0) << "VMM processes left behind";
    EXPECT_EQ(test_support::OpenFdCount(), fds_before_) << "fds leaked";
    EXPECT_TRUE(RemoveTree(*dir_).ok());
    delete dir_;
  }
  void TearDown() override {
    // Every test ends with its agents gone and nothing of its sandboxes left.
    EXPECT_EQ(test_support::CountProcessesMentioning(*dir_ + "/sandboxes"), 0);
  }

  static std::unique_ptr<Agent> StartAgent(std::chrono::milliseconds ready_timeout = 60s) {
    AgentConfig config = test_support::E2eAgentConfig(*dir_);
    config.ready_timeout = ready_timeout;
    auto agent = Agent::Start(config);
    EXPECT_TRUE(agent.ok()) << agent.status().ToString();
    return agent.ok() ? std::move(*agent) : nullptr;
  }
  static std::string Sh(const std::shared_ptr<Sandbox>& sb, const std::string& cmd) {
    auto g = sb->Guest();
    EXPECT_TRUE(g.ok()) << g.status().ToString();
    if (!g.ok()) return "";
    auto r = (*g)->Run({.cmd = cmd}, GuestClient::Clock::now() + 60s);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (!r.ok()) return "";
    EXPECT_EQ(r->exit_code, 0) << cmd << ": " << r->stderr_data;
    return r->stdout_data;
  }
  // A process of the guest that counts into /tmp/count, detached from any exec.
  static void StartCounter(const std::shared_ptr<Sandbox>& sb) {
    Sh(sb,
       "(setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/count.new; "
       "mv /tmp/count.new /tmp/count; sleep 0.1; done' >/dev/null 2>&1 &)");
  }
  static int Count(const std::shared_ptr<Sandbox>& sb) {
    std::string out = Sh(sb, "cat /tmp/count 2>/dev/null || echo 0");
    return out.empty() ? -1 : std::stoi(out);
  }
  static bool WaitUntil(const std::function<bool()>& cond, std::chrono::milliseconds timeout) {
    auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      if (cond()) return true;
      std::this_thread::sleep_for(100ms);
    }
    return cond();
  }

  static inline std::string* dir_ = nullptr;
  static inline int fds_before_ = 0;
};

TEST_F(SandboxAdoptE2eTest, RunningSandboxesAreAdoptedByTheNextAgentAndDeadOnesCleaned) {
  auto agent = StartAgent();
  ASSERT_TRUE(agent);
  GuestIdentity identity{.env = {{"MOAT_ADOPT", "kept-env"}}};
  auto counter = agent->Create("base", identity);
  auto stopped = agent->Create("base", {});
  auto dies = agent->Create("base", {});
  ASSERT_TRUE(counter.ok() && stopped.ok() && dies.ok());
  const std::string counter_id = (*counter)->id(), stopped_id = (*stopped)->id(),
                    dies_id = (*dies)->id();
  const pid_t counter_pid = (*counter)->vmm_pid(), stopped_pid = (*stopped)->vmm_pid(),
              dies_pid = (*dies)->vmm_pid();
  const std::string stopped_qmp = (*stopped)->paths().qmp_socket;
  Sh(*counter, "echo kept-file > /home/user/keep.txt");
  StartCounter(*counter);
  ASSERT_TRUE(WaitUntil([&] { return Count(*counter) >= 2; }, 30s));
  // A caller's connection open across the detach must not keep the next agent out.
  auto held = (*counter)->Guest();
  ASSERT_TRUE(held.ok());

  agent->Detach();
  EXPECT_TRUE(agent->List().empty());
  EXPECT_FALSE((*held)->alive());
  EXPECT_EQ((*counter)->Guest().status().code(), ErrorCode::kNotFound);
  agent.reset();
  counter->reset();
  stopped->reset();
  dies->reset();
  // No agent runs: the VMMs and their directories live on.
  EXPECT_TRUE(ProcessRuns(counter_pid));
  EXPECT_TRUE(ProcessRuns(stopped_pid));
  EXPECT_TRUE(PathExists(*dir_ + "/sandboxes/" + counter_id + "/state.json"));
  EXPECT_TRUE(CgroupExists("moat-" + counter_id));
  // One VM is left as by an agent that died in the middle of a snapshot: stopped, its state
  // being written (slowly: the migration is still running when the next agent comes).
  {
    auto qmp = vmm::qemu::QmpClient::Connect(stopped_qmp, 10s);
    ASSERT_TRUE(qmp.ok()) << qmp.status().ToString();
    ASSERT_TRUE((*qmp)->Execute("stop").ok());
    ASSERT_TRUE((*qmp)->Execute("migrate-set-parameters", {{"max-bandwidth", 1 << 20}}).ok());
    std::string half = *dir_ + "/half-written-state";
    UniqueFd out(::open(half.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    ASSERT_TRUE(out.valid());
    ASSERT_TRUE((*qmp)->GetFd("half-written", out.get()).ok());
    ASSERT_TRUE((*qmp)->Execute("migrate", {{"uri", "fd:half-written"}}).ok());
    std::string status;
    for (int i = 0; i < 100 && status != "active"; ++i) {
      if (i > 0) std::this_thread::sleep_for(50ms);
      auto q = (*qmp)->Execute("query-migrate");
      ASSERT_TRUE(q.ok());
      status = q->value("status", "");
    }
    EXPECT_EQ(status, "active");
    ::unlink(half.c_str());
  }
  // One VMM dies while no agent runs (its parent, this process, reaps it, as init would).
  ASSERT_EQ(::kill(dies_pid, SIGKILL), 0);
  ASSERT_EQ(::waitpid(dies_pid, nullptr, 0), dies_pid);
  {
    auto text = ReadFile(*dir_ + "/sandboxes/" + counter_id + "/state.json");
    ASSERT_TRUE(text.ok());
    auto state = ParseSandboxState(*text);
    ASSERT_TRUE(state.ok()) << state.status().ToString();
    EXPECT_TRUE(state->adoptable());
    EXPECT_EQ(state->identity->env, identity.env);
  }
  std::this_thread::sleep_for(1s);

  auto start = std::chrono::steady_clock::now();
  auto next = StartAgent();
  ASSERT_TRUE(next);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                                  start);
  std::printf("agent start adopting 2 sandboxes and cleaning 1: %ld ms\n",
              static_cast<long>(ms.count()));
  EXPECT_EQ(Sorted(next->recovery().adopted), Sorted({counter_id, stopped_id}));
  EXPECT_EQ(next->recovery().cleaned, std::vector<std::string>{dies_id});
  EXPECT_FALSE(PathExists(*dir_ + "/sandboxes/" + dies_id));
  EXPECT_FALSE(CgroupExists("moat-" + dies_id));
  EXPECT_EQ(next->List().size(), 2u);
  held->reset();

  auto c = next->Get(counter_id);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ((*c)->vmm_pid(), counter_pid);
  EXPECT_EQ((*c)->identity().env, identity.env);
  EXPECT_EQ((*c)->origin().kind, "template");
  // The counter counted on while no agent ran, and counts on.
  int count_before = Count(*c);
  EXPECT_GT(count_before, 2);
  EXPECT_TRUE(WaitUntil([&] { return Count(*c) > count_before; }, 30s));
  EXPECT_EQ(Sh(*c, "cat /home/user/keep.txt"), "kept-file\n");
  EXPECT_EQ(Sh(*c, "echo $MOAT_ADOPT"), "kept-env\n");
  // The stopped VM runs again.
  auto s = next->Get(stopped_id);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(Sh(*s, "echo alive"), "alive\n");

  // A new sandbox beside the adopted ones gets a jail uid of its own.
  auto fresh = next->Create("base", {});
  ASSERT_TRUE(fresh.ok()) << fresh.status().ToString();
  EXPECT_NE(ProcUid((*fresh)->vmm_pid()), ProcUid(counter_pid));
  EXPECT_NE(ProcUid((*fresh)->vmm_pid()), ProcUid(stopped_pid));

  // What it came from came along: it pauses and resumes, files and processes intact.
  ASSERT_TRUE(next->Pause(counter_id).ok());
  EXPECT_FALSE(ProcessRuns(counter_pid));
  c->reset();
  auto resumed = next->Resume(counter_id);
  ASSERT_TRUE(resumed.ok()) << resumed.status().ToString();
  EXPECT_EQ(Sh(*resumed, "cat /home/user/keep.txt"), "kept-file\n");
  int after_resume = Count(*resumed);
  EXPECT_TRUE(WaitUntil([&] { return Count(*resumed) > after_resume; }, 30s));
  std::string resumed_dir = (*resumed)->paths().dir;
  resumed->reset();

  // Kill releases everything an adopted sandbox holds.
  std::string stopped_dir = (*s)->paths().dir;
  s->reset();
  ASSERT_TRUE(next->Kill(stopped_id).ok());
  next->WaitForTeardowns();  // the kill answers before the teardown is done
  EXPECT_FALSE(ProcessRuns(stopped_pid));
  EXPECT_FALSE(PathExists(stopped_dir));
  EXPECT_FALSE(CgroupExists("moat-" + stopped_id));
  ASSERT_TRUE(next->Kill(counter_id).ok());
  next->WaitForTeardowns();
  EXPECT_FALSE(PathExists(resumed_dir));
  ASSERT_TRUE(next->Kill((*fresh)->id()).ok());
  fresh->reset();
  EXPECT_TRUE(next->List().empty());
  next.reset();
  EXPECT_EQ(test_support::CountProcessesMentioning(*dir_), 0);
}

// A warm clone runs in a directory, and as a VM, of the name it was started under; claimed, it
// took its create's id. The next agent finds it by its directory and adopts it under that id.
TEST_F(SandboxAdoptE2eTest, AClaimedWarmCloneIsAdoptedUnderItsPublicIdAndKilledByIt) {
  AgentConfig config = test_support::E2eAgentConfig(*dir_);
  config.warm_sandboxes = 1;
  auto agent = Agent::Start(config);
  ASSERT_TRUE(agent.ok()) << agent.status().ToString();
  ASSERT_TRUE(WaitUntil([&] { return (*agent)->warm_ready() >= 1; }, 120s));
  const std::string id = NewSandboxId();
  auto sb = (*agent)->Create(
      {.id = id, .template_name = "base", .identity = {.env = {{"MOAT_ADOPT", "warm"}}}});
  ASSERT_TRUE(sb.ok()) << sb.status().ToString();
  ASSERT_TRUE((*sb)->from_warm_pool());
  const std::string local = (*sb)->local_id();
  ASSERT_NE(local, id);
  const pid_t pid = (*sb)->vmm_pid();
  Sh(*sb, "echo warm-file > /home/user/keep.txt");
  (*agent)->Detach();
  agent->reset();
  sb->reset();
  EXPECT_TRUE(ProcessRuns(pid));
  EXPECT_TRUE(PathExists(*dir_ + "/sandboxes/" + local + "/state.json"));
  EXPECT_EQ(DirNames(*dir_ + "/sandboxes"), std::vector<std::string>{local})
      << "the clone that was waiting went with its agent";

  auto next = StartAgent();
  ASSERT_TRUE(next);
  EXPECT_EQ(next->recovery().adopted, std::vector<std::string>{id});
  EXPECT_TRUE(next->recovery().cleaned.empty());
  auto c = next->Get(id);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ((*c)->id(), id);
  EXPECT_EQ((*c)->local_id(), local);
  EXPECT_EQ((*c)->vmm_pid(), pid);
  EXPECT_EQ(Sh(*c, "cat /home/user/keep.txt; echo $MOAT_ADOPT"), "warm-file\nwarm\n");
  EXPECT_EQ(next->Create({.id = id, .template_name = "base"}).status().code(),
            ErrorCode::kAlreadyExists);
  c->reset();
  ASSERT_TRUE(next->Kill(id).ok());
  next->WaitForTeardowns();
  EXPECT_FALSE(ProcessRuns(pid));
  EXPECT_FALSE(PathExists(*dir_ + "/sandboxes/" + local));
  EXPECT_FALSE(CgroupExists("moat-" + local));
  EXPECT_TRUE(next->List().empty());
}

TEST_F(SandboxAdoptE2eTest, AStateFileWithoutAdoptionRecordsIsCleanedNotAdopted) {
  auto agent = StartAgent();
  ASSERT_TRUE(agent);
  auto sb = agent->Create("base", {});
  ASSERT_TRUE(sb.ok()) << sb.status().ToString();
  std::string id = (*sb)->id();
  std::string state_path = (*sb)->paths().state;
  agent->Detach();
  agent.reset();
  sb->reset();
  // What an agent from before re-adoption wrote.
  auto text = ReadFile(state_path);
  ASSERT_TRUE(text.ok());
  json j = json::parse(*text);
  for (const char* key : {"ready", "origin", "identity", "netns"}) j.erase(key);
  ASSERT_TRUE(WriteFileAtomic(state_path, j.dump(), 0600).ok());
  ASSERT_GT(test_support::CountProcessesMentioning(*dir_ + "/sandboxes/" + id), 0);

  auto next = StartAgent();
  ASSERT_TRUE(next);
  EXPECT_TRUE(next->recovery().adopted.empty());
  EXPECT_EQ(next->recovery().cleaned, std::vector<std::string>{id});
  EXPECT_EQ(test_support::CountProcessesMentioning(*dir_ + "/sandboxes/" + id), 0);
  EXPECT_FALSE(PathExists(*dir_ + "/sandboxes/" + id));
  EXPECT_FALSE(CgroupExists("moat-" + id));
  EXPECT_TRUE(next->List().empty());
}

TEST_F(SandboxAdoptE2eTest, AnAgentThatFailsToReachTheGuestCleansTheSandboxUp) {
  auto agent = StartAgent();
  ASSERT_TRUE(agent);
  auto sb = agent->Create("base", {});
  ASSERT_TRUE(sb.ok()) << sb.status().ToString();
  std::string id = (*sb)->id();
  std::string guest_socket = (*sb)->paths().guest_socket;
  agent->Detach();
  agent.reset();
  sb->reset();
  // The guest channel's socket is gone: the VM runs but cannot be reached.
  ASSERT_EQ(::unlink(guest_socket.c_str()), 0);
  auto next = StartAgent(/*ready_timeout=*/5s);
  ASSERT_TRUE(next);
  EXPECT_TRUE(next->recovery().adopted.empty());
  EXPECT_EQ(next->recovery().cleaned, std::vector<std::string>{id});
  EXPECT_EQ(test_support::CountProcessesMentioning(*dir_ + "/sandboxes/" + id), 0);
  EXPECT_FALSE(CgroupExists("moat-" + id));
  // Its jail id went back: the next sandbox works.
  auto fresh = next->Create("base", {});
  ASSERT_TRUE(fresh.ok()) << fresh.status().ToString();
  EXPECT_EQ(Sh(*fresh, "echo ok"), "ok\n");
}

TEST_F(SandboxAdoptE2eTest, MoatdKillsAnAdoptedSandboxThatNoRecordNames) {
  // A create in flight when moatd stopped: the agent made the sandbox, the store never recorded
  // it. Re-adopted, it belongs to no team: moatd's controller kills it on start.
  auto agent = StartAgent();
  ASSERT_TRUE(agent);
  auto sb = agent->Create("base", {});
  ASSERT_TRUE(sb.ok()) << sb.status().ToString();
  std::string id = (*sb)->id();
  agent->Detach();
  agent.reset();
  sb->reset();
  auto next = StartAgent();
  ASSERT_TRUE(next);
  ASSERT_EQ(next->recovery().adopted, std::vector<std::string>{id});
  auto store = api::store::SqliteStore::Open(*dir_ + "/moat.db");
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  api::Metrics metrics;
  host::InProcessHostAgent next_host("local", *next);
  auto controller = api::SandboxController::Start(next_host, **store, metrics, {});
  ASSERT_TRUE(controller.ok()) << controller.status().ToString();
  EXPECT_TRUE(next->List().empty());
  next->WaitForTeardowns();
  EXPECT_EQ(test_support::CountProcessesMentioning(*dir_ + "/sandboxes/" + id), 0);
  EXPECT_FALSE(PathExists(*dir_ + "/sandboxes/" + id));
  controller->reset();
  store->reset();
  EXPECT_TRUE(RemoveTree(*dir_ + "/moat.db").ok());
}

}  // namespace
}  // namespace moat::agent
