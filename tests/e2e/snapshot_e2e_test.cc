// End to end: snapshots — create restores the baked template, pause/resume, named snapshots and
// fork — on real microVMs, with the reliability loops of the snapshot issue.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <set>
#include <thread>

#include "agent/agent.h"
#include "agent/snapshot.h"
#include "common/fs.h"
#include "common/sandbox_id.h"
#include "support/agent_config.h"
#include "support/test_util.h"

namespace moat::agent {
namespace {

using channel::GuestClient;
using channel::StreamEvent;
using nlohmann::json;
using namespace std::chrono_literals;

GuestClient::Deadline In(std::chrono::milliseconds d) {
  return GuestClient::Clock::now() + d;
}

class SnapshotE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto dir = MakeTempDir("/tmp", "moat-snap.");
    ASSERT_TRUE(dir.ok());
    dir_ = new std::string(*dir);
    fds_before_ = moat::test_support::OpenFdCount();
    StartAgent();
  }
  static void StartAgent(bool memory_file_snapshots = true) {
    auto config = moat::test_support::E2eAgentConfig(*dir_);
    config.memory_file_snapshots = memory_file_snapshots;
    auto agent = Agent::Start(config);
    ASSERT_TRUE(agent.ok()) << agent.status().ToString();
    agent_ = agent->release();
  }
  static void TearDownTestSuite() {
    delete agent_;
    agent_ = nullptr;
    EXPECT_EQ(moat::test_support::CountProcessesMentioning(*dir_), 0);
    EXPECT_EQ(moat::test_support::OpenFdCount(), fds_before_) << "fds leaked";
    EXPECT_TRUE(RemoveTree(*dir_).ok());
    delete dir_;
  }

  static std::shared_ptr<Sandbox> MustCreate(const std::string& tmpl = "base") {
    auto sb = agent_->Create(tmpl, {});
    EXPECT_TRUE(sb.ok()) << sb.status().ToString();
    return sb.ok() ? *sb : nullptr;
  }
  static std::string Sh(const std::shared_ptr<Sandbox>& sb, const std::string& cmd) {
    auto g = sb->Guest();
    EXPECT_TRUE(g.ok()) << g.status().ToString();
    if (!g.ok()) return "";
    auto r = (*g)->Run({.cmd = cmd}, In(60s));
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (!r.ok()) return "";
    EXPECT_EQ(r->exit_code, 0) << cmd << ": " << r->stderr_data;
    return r->stdout_data;
  }
  // Starts a background python process that counts, holding the count in memory, and answers
  // on a FIFO; returns the value it reports now.
  static void StartCounter(const std::shared_ptr<Sandbox>& sb) {
    auto g = sb->Guest();
    ASSERT_TRUE(g.ok());
    auto s = (*g)->Open({{"op", "exec"},
                         {"tag", "counter"},
                         {"cmd",
                          "rm -f /tmp/q /tmp/a; mkfifo /tmp/q /tmp/a; exec python3 -c '\n"
                          "n = 0\n"
                          "while True:\n"
                          "    open(\"/tmp/q\").read()\n"
                          "    n += 1\n"
                          "    open(\"/tmp/a\", \"w\").write(str(n))\n"
                          "'"}});
    ASSERT_TRUE(s.ok());
    auto start = (*s)->Next(In(10s));
    ASSERT_TRUE(start.ok());
    (*s)->Cancel();  // detached: keeps running
    // Ready once both FIFOs exist (python opens /tmp/q next).
    Sh(sb,
       "for i in $(seq 500); do [ -p /tmp/q ] && [ -p /tmp/a ] && exit 0; sleep 0.01; done; "
       "exit 1");
  }
  static int Tick(const std::shared_ptr<Sandbox>& sb) {
    std::string out = Sh(sb, "echo > /tmp/q; cat /tmp/a");
    return out.empty() ? -1 : std::stoi(out);
  }

  static std::string* dir_;
  static Agent* agent_;
  static int fds_before_;
};

std::string* SnapshotE2eTest::dir_ = nullptr;
Agent* SnapshotE2eTest::agent_ = nullptr;
int SnapshotE2eTest::fds_before_ = 0;

TEST_F(SnapshotE2eTest, RestoredSandboxesGetFreshEntropyAndTheHostClock) {
  auto a = MustCreate();
  auto b = MustCreate();
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->origin().kind, "template");
  std::string ra = Sh(a, "head -c 32 /dev/urandom | od -An -tx1");
  std::string rb = Sh(b, "head -c 32 /dev/urandom | od -An -tx1");
  EXPECT_FALSE(ra.empty());
  EXPECT_NE(ra, rb) << "two restores of one snapshot produced the same random bytes";
  // The guest's wall clock, read inside one exec, lies between two host readings (± 250 ms: a
  // snapshot's own clock would be off by the template's age; under TCG on a loaded 2-core host
  // the guest clock was seen 56 ms behind a second after it was set).
  auto g = a->Guest();
  ASSERT_TRUE(g.ok());
  auto before = std::chrono::system_clock::now();
  auto r = (*g)->Run({.argv = {"date", "+%s%N"}}, In(10s));
  auto after = std::chrono::system_clock::now();
  ASSERT_TRUE(r.ok());
  auto ns = [](auto tp) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(tp.time_since_epoch()).count();
  };
  int64_t guest = std::stoll(r->stdout_data);
  EXPECT_GT(guest, ns(before) - 250'000'000);
  EXPECT_LT(guest, ns(after) + 250'000'000);
  ASSERT_TRUE(agent_->Kill(a->id()).ok());
  ASSERT_TRUE(agent_->Kill(b->id()).ok());
}

TEST_F(SnapshotE2eTest, PauseAndResumeKeepProcessesAndFiles) {
  auto sb = MustCreate();
  ASSERT_TRUE(sb);
  std::string id = sb->id();
  StartCounter(sb);
  EXPECT_EQ(Tick(sb), 1);
  Sh(sb, "echo kept > /home/user/before-pause");
  ASSERT_TRUE(agent_->Pause(id).ok());
  EXPECT_TRUE(agent_->IsPaused(id));
  EXPECT_FALSE(agent_->Get(id).ok());
  // A memory-file snapshot: the RAM in `mem` (sparse, the guest's size), the state without it.
  std::string snap = *dir_ + "/snapshots/" + id;
  struct stat mem {
  }, state{};
  ASSERT_EQ(::stat((snap + "/mem").c_str(), &mem), 0);
  ASSERT_EQ(::stat((snap + "/state").c_str(), &state), 0);
  EXPECT_EQ(static_cast<uint64_t>(mem.st_size), uint64_t{256} << 20);
  EXPECT_LT(static_cast<uint64_t>(mem.st_blocks) * 512, uint64_t{200} << 20) << "not sparse";
  EXPECT_LT(state.st_size, 1 << 20) << "RAM left in the device state";
  EXPECT_EQ(moat::test_support::CountProcessesMentioning(sb->paths().dir), 0)
      << "pause must free the VM";
  sb.reset();
  auto resumed = agent_->Resume(id);
  ASSERT_TRUE(resumed.ok()) << resumed.status().ToString();
  EXPECT_EQ((*resumed)->id(), id);
  EXPECT_FALSE(agent_->IsPaused(id));
  EXPECT_EQ(Tick(*resumed), 2) << "the counting process lost its memory";
  EXPECT_EQ(Sh(*resumed, "cat /home/user/before-pause"), "kept\n");
  EXPECT_EQ(agent_->Resume(id).status().code(), ErrorCode::kFailedPrecondition);
  ASSERT_TRUE(agent_->Kill(id).ok());
}

TEST_F(SnapshotE2eTest, ASnapshotFromAnotherQemuThatDoesNotLoadSaysSoAndIsKept) {
  auto sb = MustCreate();
  ASSERT_TRUE(sb);
  std::string id = sb->id();
  Sh(sb, "echo survived > /tmp/f");
  ASSERT_TRUE(agent_->Pause(id).ok());
  sb.reset();
  std::string snap = *dir_ + "/snapshots/" + id;
  auto text = ReadFile(snap + "/manifest.json");
  ASSERT_TRUE(text.ok());
  auto m = ParseManifest(*text);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  std::string here = m->qemu_version;
  EXPECT_FALSE(here.empty()) << "the manifest records the QEMU that saved it";
  // As if saved under QEMU 7.2 (whose manifests did not record it) with a state this QEMU
  // cannot load.
  auto state = ReadFile(snap + "/state");
  ASSERT_TRUE(state.ok());
  SnapshotManifest old = *m;
  old.qemu_version.clear();
  ASSERT_TRUE(WriteFileAtomic(snap + "/manifest.json", SerializeManifest(old), 0600).ok());
  ASSERT_TRUE(
      WriteFileAtomic(snap + "/state", state->substr(0, 8) + std::string(64, '\x42'), 0640).ok());
  auto failed = agent_->Resume(id);
  ASSERT_FALSE(failed.ok());
  const std::string& msg = failed.status().message();
  EXPECT_NE(
      msg.find("was taken under an older QEMU (7.2; not recorded) and this host runs QEMU " + here),
      std::string::npos)
      << msg;
  EXPECT_NE(msg.find("The snapshot is kept"), std::string::npos) << msg;
  // Kept: still paused, its files there, and no VM or sandbox directory left of the attempt.
  EXPECT_TRUE(agent_->IsPaused(id));
  EXPECT_TRUE(PathExists(snap + "/mem"));
  EXPECT_FALSE(PathExists(*dir_ + "/sandboxes/" + id));
  EXPECT_EQ(moat::test_support::CountProcessesMentioning(*dir_ + "/sandboxes/" + id), 0);
  // With its own state back it resumes as it was.
  ASSERT_TRUE(WriteFileAtomic(snap + "/state", *state, 0640).ok());
  ASSERT_TRUE(WriteFileAtomic(snap + "/manifest.json", SerializeManifest(*m), 0600).ok());
  auto resumed = agent_->Resume(id);
  ASSERT_TRUE(resumed.ok()) << resumed.status().ToString();
  EXPECT_EQ(Sh(*resumed, "cat /tmp/f"), "survived\n");
  ASSERT_TRUE(agent_->Kill(id).ok());
}

TEST_F(SnapshotE2eTest, APausedSandboxSurvivesAnAgentRestart) {
  auto sb = MustCreate();
  ASSERT_TRUE(sb);
  std::string id = sb->id();
  Sh(sb, "echo across-restart > /tmp/f");
  ASSERT_TRUE(agent_->Pause(id).ok());
  sb.reset();
  delete agent_;
  agent_ = nullptr;
  StartAgent();
  ASSERT_NE(agent_, nullptr);
  auto& paused = agent_->recovery().paused;
  EXPECT_NE(std::find(paused.begin(), paused.end(), id), paused.end());
  auto resumed = agent_->Resume(id);
  ASSERT_TRUE(resumed.ok()) << resumed.status().ToString();
  EXPECT_EQ(Sh(*resumed, "cat /tmp/f"), "across-restart\n");
  ASSERT_TRUE(agent_->Kill(id).ok());
  // Killing a paused sandbox deletes it.
  auto again = MustCreate();
  ASSERT_TRUE(again);
  ASSERT_TRUE(agent_->Pause(again->id()).ok());
  ASSERT_TRUE(agent_->Kill(again->id()).ok());
  EXPECT_FALSE(agent_->IsPaused(again->id()));
}

// Full-stream snapshots (--snapshot-format stream, and every snapshot written before memory
// files) pause, resume and fork; a sandbox paused that way resumes under an agent that writes
// memory files, and its next pause is one.
TEST_F(SnapshotE2eTest, FullStreamSnapshotsWorkAndResumeAfterTheSwitchToMemoryFiles) {
  delete agent_;
  agent_ = nullptr;
  StartAgent(/*memory_file_snapshots=*/false);
  ASSERT_NE(agent_, nullptr);
  auto sb = MustCreate();
  ASSERT_TRUE(sb);
  std::string id = sb->id();
  StartCounter(sb);
  EXPECT_EQ(Tick(sb), 1);
  Sh(sb, "echo streamed > /home/user/f");
  auto kids = agent_->Fork(id, 1);
  ASSERT_TRUE(kids.ok()) << kids.status().ToString();
  EXPECT_EQ(Tick((*kids)[0]), 2);
  EXPECT_EQ(Sh((*kids)[0], "cat /home/user/f"), "streamed\n");
  ASSERT_TRUE(agent_->Kill((*kids)[0]->id()).ok());
  ASSERT_TRUE(agent_->Pause(id).ok());
  sb.reset();
  std::string snap = *dir_ + "/snapshots/" + id;
  auto m = ReadManifest(snap);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_FALSE(m->memory_file);
  EXPECT_FALSE(PathExists(snap + "/mem"));
  struct stat st {};
  ASSERT_EQ(::stat((snap + "/state").c_str(), &st), 0);
  EXPECT_GT(st.st_size, 4 << 20) << "a full stream carries the RAM";

  delete agent_;
  agent_ = nullptr;
  StartAgent(/*memory_file_snapshots=*/true);
  ASSERT_NE(agent_, nullptr);
  auto resumed = agent_->Resume(id);
  ASSERT_TRUE(resumed.ok()) << resumed.status().ToString();
  EXPECT_EQ(Tick(*resumed), 2);
  EXPECT_EQ(Sh(*resumed, "cat /home/user/f"), "streamed\n");
  resumed->reset();
  ASSERT_TRUE(agent_->Pause(id).ok());
  m = ReadManifest(snap);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_TRUE(m->memory_file);
  resumed = agent_->Resume(id);
  ASSERT_TRUE(resumed.ok()) << resumed.status().ToString();
  EXPECT_EQ(Tick(*resumed), 3);
  ASSERT_TRUE(agent_->Kill(id).ok());
}

TEST_F(SnapshotE2eTest, ANamedSnapshotKeepsTheSandboxRunningAndServesAsATemplate) {
  auto sb = MustCreate();
  ASSERT_TRUE(sb);
  Sh(sb, "echo from-snapshot > /home/user/marker");
  auto snap = agent_->CreateSnapshot(sb->id(), "my-env");
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  std::string snap_id = snap->sandbox_id;
  EXPECT_EQ(Sh(sb, "echo still-running"), "still-running\n");
  auto listed = agent_->ListSnapshots();
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].name, "my-env");
  auto child = MustCreate(snap_id);
  ASSERT_TRUE(child);
  EXPECT_EQ(Sh(child, "cat /home/user/marker"), "from-snapshot\n");
  EXPECT_NE(child->id(), sb->id());
  ASSERT_TRUE(agent_->DeleteSnapshot(snap_id).ok());
  EXPECT_EQ(agent_->DeleteSnapshot(snap_id).code(), ErrorCode::kNotFound);
  EXPECT_EQ(agent_->Create(snap_id, {}).status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(agent_->Create("no-such-template", {}).status().code(), ErrorCode::kNotFound);
  ASSERT_TRUE(agent_->Kill(sb->id()).ok());
  ASSERT_TRUE(agent_->Kill(child->id()).ok());
}

TEST_F(SnapshotE2eTest, ForkedChildrenKeepMemoryAndFilesAndAreIsolated) {
  auto parent = MustCreate();
  ASSERT_TRUE(parent);
  StartCounter(parent);
  EXPECT_EQ(Tick(parent), 1);
  Sh(parent, "echo parent > /tmp/shared-file");
  auto children = agent_->Fork(parent->id(), 2);
  ASSERT_TRUE(children.ok()) << children.status().ToString();
  ASSERT_EQ(children->size(), 2u);
  auto& c0 = (*children)[0];
  auto& c1 = (*children)[1];
  std::set<std::string> ids{parent->id(), c0->id(), c1->id()};
  EXPECT_EQ(ids.size(), 3u);
  // Both children map one memory file (their clean pages are shared), linked into each one's
  // directory; the fork's transient snapshot is gone.
  struct stat m0 {
  }, m1{};
  ASSERT_EQ(::stat(c0->paths().memory.c_str(), &m0), 0);
  ASSERT_EQ(::stat(c1->paths().memory.c_str(), &m1), 0);
  EXPECT_EQ(m0.st_ino, m1.st_ino);
  EXPECT_EQ(m0.st_nlink, 2u);
  for (const auto& name : DirNames(*dir_ + "/snapshots")) {
    EXPECT_NE(name.rfind(".fork-", 0), 0u) << name << " left behind";
  }
  // The running python process and its memory came along; each copy counts on its own.
  EXPECT_EQ(Tick(c0), 2);
  EXPECT_EQ(Tick(c0), 3);
  EXPECT_EQ(Tick(c1), 2);
  EXPECT_EQ(Tick(parent), 2);
  // Files at fork time are there; writes after the fork are isolated in both directions.
  EXPECT_EQ(Sh(c0, "cat /tmp/shared-file"), "parent\n");
  Sh(c0, "echo child0 > /tmp/shared-file");
  Sh(parent, "echo parent-after > /tmp/only-parent");
  EXPECT_EQ(Sh(parent, "cat /tmp/shared-file"), "parent\n");
  EXPECT_EQ(Sh(c1, "cat /tmp/shared-file"), "parent\n");
  EXPECT_EQ(Sh(c0, "test -e /tmp/only-parent && echo yes || echo no"), "no\n");
  // Fresh entropy in each child.
  EXPECT_NE(Sh(c0, "head -c 16 /dev/urandom | od -An -tx1"),
            Sh(c1, "head -c 16 /dev/urandom | od -An -tx1"));
  for (auto& c : *children) ASSERT_TRUE(agent_->Kill(c->id()).ok());
  ASSERT_TRUE(agent_->Kill(parent->id()).ok());
}

// The control plane names a sandbox before it asks for it: the sandbox takes that id, is found
// by it, and no other sandbox — created or forked — can take it while it runs or is paused.
TEST_F(SnapshotE2eTest, ASandboxTakesTheIdItIsCreatedWithAndNoOtherCanTakeIt) {
  const std::string id = NewSandboxId();
  auto sb = agent_->Create(
      {.id = id, .template_name = "base", .identity = {.env = {{"GIVEN_ID", "yes"}}}});
  ASSERT_TRUE(sb.ok()) << sb.status().ToString();
  EXPECT_EQ((*sb)->id(), id);
  EXPECT_EQ((*sb)->local_id(), id);
  EXPECT_FALSE((*sb)->from_warm_pool());
  auto got = agent_->Get(id);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, *sb);
  EXPECT_EQ(Sh(*sb, "echo $GIVEN_ID"), "yes\n");

  // Running: another create or a fork child under its id is refused; it runs on.
  auto dup = agent_->Create({.id = id, .template_name = "base"});
  EXPECT_EQ(dup.status().code(), ErrorCode::kAlreadyExists) << dup.status().ToString();
  EXPECT_EQ(agent_->Fork(id, {id}).status().code(), ErrorCode::kAlreadyExists);
  EXPECT_EQ(agent_->List().size(), 1u);
  EXPECT_EQ(Sh(*sb, "echo still"), "still\n");

  // Fork children take the ids given, in their order.
  const std::vector<std::string> kid_ids{NewSandboxId(), NewSandboxId()};
  auto kids = agent_->Fork(id, kid_ids);
  ASSERT_TRUE(kids.ok()) << kids.status().ToString();
  ASSERT_EQ(kids->size(), 2u);
  for (size_t i = 0; i < kid_ids.size(); ++i) {
    EXPECT_EQ((*kids)[i]->id(), kid_ids[i]);
    EXPECT_TRUE(agent_->Get(kid_ids[i]).ok());
    EXPECT_EQ(Sh((*kids)[i], "echo $GIVEN_ID"), "yes\n");
  }
  // A child id in use fails the whole fork before anything is made.
  EXPECT_EQ(agent_->Fork(id, {NewSandboxId(), kid_ids[1]}).status().code(),
            ErrorCode::kAlreadyExists);
  EXPECT_EQ(agent_->List().size(), 3u);
  for (const auto& kid : kid_ids) ASSERT_TRUE(agent_->Kill(kid).ok());
  kids->clear();

  // Paused: still its id; the snapshot is left alone and resumes under it.
  ASSERT_TRUE(agent_->Pause(id).ok());
  sb->reset();
  got->reset();
  dup = agent_->Create({.id = id, .template_name = "base"});
  EXPECT_EQ(dup.status().code(), ErrorCode::kAlreadyExists) << dup.status().ToString();
  EXPECT_TRUE(agent_->IsPaused(id));
  auto resumed = agent_->Resume(id);
  ASSERT_TRUE(resumed.ok()) << resumed.status().ToString();
  EXPECT_EQ((*resumed)->id(), id);
  EXPECT_EQ(Sh(*resumed, "echo $GIVEN_ID"), "yes\n");
  ASSERT_TRUE(agent_->Kill(id).ok());
  EXPECT_TRUE(agent_->List().empty());
}

TEST_F(SnapshotE2eTest, TwoHundredPauseResumeCyclesLoseNothing) {
  auto sb = MustCreate();
  ASSERT_TRUE(sb);
  std::string id = sb->id();
  StartCounter(sb);
  Sh(sb, "head -c 1000000 /dev/urandom > /home/user/data");
  std::string sum = Sh(sb, "sha256sum < /home/user/data");
  std::shared_ptr<Sandbox> cur = sb;
  sb.reset();
  int losses = 0;
  for (int i = 1; i <= 200; ++i) {
    ASSERT_TRUE(agent_->Pause(id).ok()) << "cycle " << i;
    cur.reset();
    auto r = agent_->Resume(id);
    ASSERT_TRUE(r.ok()) << "cycle " << i << ": " << r.status().ToString();
    cur = *r;
    if (Tick(cur) != i) ++losses;
    if (i % 20 == 0 && Sh(cur, "sha256sum < /home/user/data") != sum) ++losses;
  }
  EXPECT_EQ(losses, 0);
  ASSERT_TRUE(agent_->Kill(id).ok());
}

TEST_F(SnapshotE2eTest, FiveHundredCreateKillCyclesLeaveNothingBehind) {
  agent_->WaitForTeardowns();  // earlier tests' kills still hold fds until torn down
  int fds = moat::test_support::OpenFdCount();
  for (int i = 0; i < 500; ++i) {
    auto sb = agent_->Create("base", {});
    ASSERT_TRUE(sb.ok()) << "cycle " << i << ": " << sb.status().ToString();
    ASSERT_TRUE(agent_->Kill((*sb)->id()).ok());
  }
  agent_->WaitForTeardowns();
  EXPECT_EQ(moat::test_support::CountProcessesMentioning(*dir_ + "/sandboxes"), 0);
  auto left = ReadFile("/proc/self/status");  // touch nothing: just make sure /proc works
  ASSERT_TRUE(left.ok());
  EXPECT_EQ(moat::test_support::OpenFdCount(), fds) << "the agent leaks fds:\n"
                                                    << moat::test_support::OpenFdList();
  EXPECT_TRUE(agent_->List().empty());
  // No directory, socket or file of any sandbox is left.
  EXPECT_EQ(::rmdir((*dir_ + "/sandboxes").c_str()), 0) << "sandbox leftovers";
  ASSERT_TRUE(MakeDirs(*dir_ + "/sandboxes").ok());
}

}  // namespace
}  // namespace moat::agent
