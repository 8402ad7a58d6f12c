// End to end: what a sandbox owns is released on every path — kill, a VMM that dies under the
// agent, and a VMM that dies with its agent — and a sandbox whose agent died is re-adopted.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <thread>

#include "agent/agent.h"
#include "common/fs.h"
#include "common/sandbox_id.h"
#include "support/agent_config.h"
#include "support/test_util.h"
#include "vmm/cgroup.h"

namespace moat::agent {
namespace {

using namespace std::chrono_literals;

std::string ProcStatusField(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return line.substr(field.size() + 1);
  }
  return "";
}

bool CgroupExists(const std::string& vm_name) {
  auto layout = vmm::DetectCgroupLayout();
  if (!layout.ok()) return false;
  for (const auto& d : vmm::CgroupDirsFor(*layout, "", vm_name)) {
    if (PathExists(d)) return true;
  }
  return false;
}

bool WaitUntil(const std::function<bool()>& cond, std::chrono::milliseconds timeout) {
  auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    if (cond()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return cond();
}

class SandboxLifecycleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = MakeTempDir("/tmp", "moat-life.");
    ASSERT_TRUE(dir.ok());
    dir_ = *dir;
  }
  void TearDown() override {
    EXPECT_EQ(moat::test_support::CountProcessesMentioning(dir_), 0) << "VMM processes left behind";
    EXPECT_TRUE(RemoveTree(dir_).ok());
  }
  // An agent in a child process creates a sandbox and is then SIGKILLed (no destructor runs):
  // the sandbox's id and VMM pid, or an empty id if the child could not create it.
  struct Orphan {
    std::string id;
    pid_t vmm = 0;
  };
  Orphan CreateThenKillItsAgent() {
    int ready[2];
    if (::pipe(ready) != 0) return {};
    pid_t child = ::fork();
    if (child < 0) return {};
    if (child == 0) {
      ::close(ready[0]);
      auto agent = Agent::Start(moat::test_support::E2eAgentConfig(dir_));
      if (!agent.ok()) ::_exit(1);
      auto sb = (*agent)->Create("base", {});
      if (!sb.ok()) ::_exit(2);
      std::string report = (*sb)->id() + std::to_string((*sb)->vmm_pid());
      (void)!::write(ready[1], report.data(), report.size());
      ::pause();
      ::_exit(0);
    }
    ::close(ready[1]);
    char buf[64] = {};
    ssize_t n = ::read(ready[0], buf, sizeof buf);
    ::close(ready[0]);
    ::kill(child, SIGKILL);
    ::waitpid(child, nullptr, 0);
    if (n <= 20) return {};
    return {std::string(buf, 20), static_cast<pid_t>(std::atoi(buf + 20))};
  }
  std::string dir_;
};

TEST_F(SandboxLifecycleTest, TheVmmRunsJailedWithoutPrivileges) {
  auto agent = Agent::Start(moat::test_support::E2eAgentConfig(dir_));
  ASSERT_TRUE(agent.ok()) << agent.status().ToString();
  auto sb = (*agent)->Create("base", {});
  ASSERT_TRUE(sb.ok()) << sb.status().ToString();
  pid_t pid = (*sb)->vmm_pid();
  std::string uid = ProcStatusField(pid, "Uid");
  EXPECT_EQ(uid.find("\t0\t"), std::string::npos) << uid;
  EXPECT_EQ(ProcStatusField(pid, "CapEff"), "\t0000000000000000");
  EXPECT_EQ(ProcStatusField(pid, "NoNewPrivs"), "\t1");
  // Its root is the jail: host files are not there.
  std::string root = "/proc/" + std::to_string(pid) + "/root";
  EXPECT_FALSE(PathExists(root + "/etc/shadow"));
  EXPECT_FALSE(PathExists(root + "/root"));
  EXPECT_TRUE(PathExists(root + (*sb)->paths().guest_socket));
}

TEST_F(SandboxLifecycleTest, AColdBootReachesReadyAndKeepsTheConsoleLog) {
  auto agent = Agent::Start(moat::test_support::E2eAgentConfig(dir_));
  ASSERT_TRUE(agent.ok());
  auto sb = (*agent)->CreateColdBoot({});
  ASSERT_TRUE(sb.ok()) << sb.status().ToString();
  EXPECT_LT((*sb)->boot_time(), 30s);
  std::printf("cold boot to moat-guest ready: %ld ms\n",
              static_cast<long>((*sb)->boot_time().count()));
  auto log = ReadFile((*sb)->paths().console_log);
  ASSERT_TRUE(log.ok());
  // The kernel runs with `quiet`; moat-guest (PID 1) logs its start to the console.
  EXPECT_NE(log->find("event=guest.starting pid1=true"), std::string::npos) << *log;
}

TEST_F(SandboxLifecycleTest, KillReleasesProcessDirectoryAndCgroup) {
  auto agent = Agent::Start(moat::test_support::E2eAgentConfig(dir_));
  ASSERT_TRUE(agent.ok());
  auto sb = (*agent)->Create("base", {});
  ASSERT_TRUE(sb.ok()) << sb.status().ToString();
  std::string id = (*sb)->id();
  std::string sandbox_dir = (*sb)->paths().dir;
  ASSERT_TRUE(CgroupExists("moat-" + id));
  pid_t pid = (*sb)->vmm_pid();
  ASSERT_TRUE((*agent)->Kill(id).ok());
  // Unreachable as soon as the kill answers: gone from the agent, every call on it fails.
  EXPECT_EQ((*agent)->Kill(id).code(), ErrorCode::kNotFound);
  EXPECT_EQ((*agent)->Get(id).status().code(), ErrorCode::kNotFound);
  EXPECT_EQ((*sb)->Guest().status().code(), ErrorCode::kNotFound);
  // Released in the background, and entirely.
  (*agent)->WaitForTeardowns();
  EXPECT_EQ((*agent)->teardowns_pending(), 0u);
  EXPECT_NE(::kill(pid, 0), 0) << "the VMM was reaped";
  EXPECT_FALSE(PathExists(sandbox_dir));
  EXPECT_FALSE(CgroupExists("moat-" + id));
}

TEST_F(SandboxLifecycleTest, AVmmThatDiesIsNoticedAndReleased) {
  auto agent = Agent::Start(moat::test_support::E2eAgentConfig(dir_));
  ASSERT_TRUE(agent.ok());
  auto sb = (*agent)->Create("base", {});
  ASSERT_TRUE(sb.ok()) << sb.status().ToString();
  std::string id = (*sb)->id();
  std::string sandbox_dir = (*sb)->paths().dir;
  ASSERT_EQ(::kill((*sb)->vmm_pid(), SIGKILL), 0);
  EXPECT_TRUE(WaitUntil([&] { return !(*agent)->Get(id).ok(); }, 5s));
  EXPECT_TRUE(WaitUntil([&] { return !PathExists(sandbox_dir); }, 5s));
  EXPECT_FALSE(CgroupExists("moat-" + id));
  // A caller holding the sandbox gets a clear error, not a hang.
  auto guest = (*sb)->Guest();
  EXPECT_FALSE(guest.ok());
}

TEST_F(SandboxLifecycleTest, ARestartedAgentAdoptsTheSandboxOfOneThatDied) {
  Orphan orphan = CreateThenKillItsAgent();
  ASSERT_FALSE(orphan.id.empty()) << "the child agent failed to boot a sandbox";
  const std::string& id = orphan.id;
  ASSERT_TRUE(PathExists(dir_ + "/sandboxes/" + id));
  // Its VMM, directory and cgroup outlive it; the next agent takes them over. The VMM is no
  // child of this process (it was the dead agent's): supervised through its pidfd.
  EXPECT_GT(moat::test_support::CountProcessesMentioning(dir_), 0);
  auto agent = Agent::Start(moat::test_support::E2eAgentConfig(dir_));
  ASSERT_TRUE(agent.ok());
  EXPECT_TRUE((*agent)->recovery().cleaned.empty());
  ASSERT_EQ((*agent)->recovery().adopted, std::vector<std::string>{id});
  auto sb = (*agent)->Get(id);
  ASSERT_TRUE(sb.ok());
  pid_t pid = (*sb)->vmm_pid();
  EXPECT_NE(std::atoi(ProcStatusField(pid, "PPid").c_str()), ::getpid());
  auto g = (*sb)->Guest();
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  auto r = (*g)->Run({.argv = {"echo", "adopted"}}, std::chrono::steady_clock::now() + 30s);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->stdout_data, "adopted\n");
  g->reset();
  sb->reset();
  // Killed from outside, the adopted VMM is noticed and released like any other.
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  EXPECT_TRUE(WaitUntil([&] { return (*agent)->List().empty(); }, 5s));
  EXPECT_TRUE(WaitUntil([&] { return !PathExists(dir_ + "/sandboxes/" + id); }, 5s));
  EXPECT_FALSE(CgroupExists("moat-" + id));
  EXPECT_EQ(moat::test_support::CountProcessesMentioning(dir_), 0) << "the adopted VMM runs on";
}

TEST_F(SandboxLifecycleTest, ARestartedAgentCleansUpAfterAVmmThatDiedWithItsAgent) {
  // As above, but the VMM dies too before the next agent starts.
  Orphan orphan = CreateThenKillItsAgent();
  ASSERT_FALSE(orphan.id.empty()) << "the child agent failed to boot a sandbox";
  const std::string& id = orphan.id;
  // Whether or not its new parent has reaped it yet, it is dead.
  ASSERT_EQ(::kill(orphan.vmm, SIGKILL), 0);
  EXPECT_TRUE(
      WaitUntil([&] { return moat::test_support::CountProcessesMentioning(dir_) == 0; }, 5s));
  auto agent = Agent::Start(moat::test_support::E2eAgentConfig(dir_));
  ASSERT_TRUE(agent.ok());
  EXPECT_TRUE((*agent)->recovery().adopted.empty());
  EXPECT_EQ((*agent)->recovery().cleaned, std::vector<std::string>{id});
  EXPECT_FALSE(PathExists(dir_ + "/sandboxes/" + id));
  EXPECT_FALSE(CgroupExists("moat-" + id));
  EXPECT_TRUE((*agent)->List().empty());
}

TEST_F(SandboxLifecycleTest, ABakeKilledHalfWayIsNeverUsedAndLeavesNothing) {
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto agent = Agent::Start(moat::test_support::E2eAgentConfig(dir_));
    if (!agent.ok()) ::_exit(1);
    (void)(*agent)->Create("base", {});  // bakes first; killed before it finishes
    ::_exit(0);
  }
  // The bake VM is up (its partial template directory exists) well before the bake completes.
  std::string tmpls = dir_ + "/templates/base";
  bool baking = WaitUntil(
      [&] { return moat::test_support::CountProcessesMentioning(tmpls + "/.bake-") > 0; }, 20s);
  // Its VM (and cgroup) is named after the bake directory.
  std::string bake_vm;
  for (const auto& n : DirNames(tmpls)) {
    if (n.rfind(".bake-", 0) == 0) bake_vm = BakeVmName("base", tmpls + "/" + n);
  }
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  ASSERT_TRUE(baking) << "the bake never started";
  ASSERT_FALSE(bake_vm.empty());
  auto agent = Agent::Start(moat::test_support::E2eAgentConfig(dir_));
  ASSERT_TRUE(agent.ok());
  EXPECT_FALSE((*agent)->recovery().removed_partial.empty());
  EXPECT_EQ(moat::test_support::CountProcessesMentioning(dir_), 0) << "the bake VMM runs on";
  EXPECT_FALSE(CgroupExists(bake_vm)) << bake_vm;
  // The next create bakes afresh and works.
  auto sb = (*agent)->Create("base", {});
  ASSERT_TRUE(sb.ok()) << sb.status().ToString();
  auto g = (*sb)->Guest();
  ASSERT_TRUE(g.ok());
  auto r = (*g)->Run({.argv = {"true"}}, std::chrono::steady_clock::now() + 30s);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->exit_code, 0);
}

TEST_F(SandboxLifecycleTest, HalfWrittenSnapshotsAreRemovedAndNeverResumed) {
  {
    auto agent = Agent::Start(moat::test_support::E2eAgentConfig(dir_));
    ASSERT_TRUE(agent.ok());
  }
  // What a kill during pause or fork leaves: a snapshot still under its temporary name, and
  // one without a manifest.
  std::string id = NewSandboxId();
  ASSERT_TRUE(MakeDirs(dir_ + "/snapshots/" + id + ".tmp").ok());
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/snapshots/" + id + ".tmp/state", "partial").ok());
  std::string other = NewSandboxId();
  ASSERT_TRUE(MakeDirs(dir_ + "/snapshots/" + other).ok());
  ASSERT_TRUE(MakeDirs(dir_ + "/snapshots/.fork-" + NewSandboxId()).ok());
  auto agent = Agent::Start(moat::test_support::E2eAgentConfig(dir_));
  ASSERT_TRUE(agent.ok());
  EXPECT_EQ((*agent)->recovery().removed_partial.size(), 3u);
  EXPECT_FALSE((*agent)->IsPaused(id));
  EXPECT_FALSE((*agent)->IsPaused(other));
  EXPECT_EQ((*agent)->Resume(other).status().code(), ErrorCode::kNotFound);
  EXPECT_FALSE(PathExists(dir_ + "/snapshots/" + other));
}

}  // namespace
}  // namespace moat::agent
