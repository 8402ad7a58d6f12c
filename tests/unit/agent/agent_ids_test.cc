// The agent's checks of the ids a caller gives its sandboxes (Create and Fork with ids): an id
// that is not a sandbox id, one given twice, or one in use on disk is refused before any VM is
// made, and a refused or failed create gives its id back. No VM runs here: the agent starts on
// placeholder guest files and is never asked to bake (tests/e2e cover ids of running sandboxes).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "agent/agent.h"
#include "agent/snapshot.h"
#include "common/fs.h"
#include "common/sandbox_id.h"

namespace moat::agent {
namespace {

constexpr char kPausedId[] = "paused00000000000001";

class AgentIdsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = MakeTempDir("/tmp", "moat-agent-ids.");
    ASSERT_TRUE(dir.ok()) << dir.status().ToString();
    dir_ = *dir;
    // Placeholders: Start checks that they exist; nothing here boots them.
    ASSERT_TRUE(WriteFileAtomic(dir_ + "/vmlinux", "").ok());
    ASSERT_TRUE(WriteFileAtomic(dir_ + "/rootfs.ext4", "").ok());
    // A sandbox paused by an earlier agent.
    std::string snap = dir_ + "/data/snapshots/" + kPausedId;
    ASSERT_TRUE(MakeDirs(snap).ok());
    ASSERT_TRUE(
        WriteManifest(snap, {.kind = "paused", .name = kPausedId, .sandbox_id = kPausedId}).ok());
    AgentConfig c;
    c.data_dir = dir_ + "/data";
    c.base.kernel_path = dir_ + "/vmlinux";
    c.base.rootfs_path = dir_ + "/rootfs.ext4";
    c.jail = false;
    auto agent = Agent::Start(c);
    ASSERT_TRUE(agent.ok()) << agent.status().ToString();
    agent_ = std::move(*agent);
  }
  void TearDown() override {
    agent_.reset();
    EXPECT_TRUE(RemoveTree(dir_).ok());
  }
  static bool Mentions(const Status& s, const std::string& text) {
    return s.message().find(text) != std::string::npos;
  }

  std::string dir_;
  std::unique_ptr<Agent> agent_;
};

TEST_F(AgentIdsTest, AnIdThatIsNotASandboxIdIsRefusedNamingIt) {
  for (const std::string id :
       {"", "short", "UPPERCASE00000000000", "abcdefghij012345678/", "abcdefghij0123456789x"}) {
    auto sb = agent_->Create({.id = id, .template_name = "base"});
    ASSERT_FALSE(sb.ok()) << id;
    EXPECT_EQ(sb.status().code(), ErrorCode::kInvalidArgument) << id;
    EXPECT_TRUE(Mentions(sb.status(), "\"" + id + "\"")) << sb.status().message();
  }
  // Not at any length: a client's bytes.
  auto sb = agent_->Create({.id = std::string(10000, 'x'), .template_name = "base"});
  EXPECT_EQ(sb.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_LT(sb.status().message().size(), 200u);
}

TEST_F(AgentIdsTest, ThePausedSandboxsIdIsInUseAndItsSnapshotIsLeftAsItWas) {
  ASSERT_EQ(agent_->recovery().paused, std::vector<std::string>{kPausedId});
  auto sb = agent_->Create({.id = kPausedId, .template_name = "base"});
  ASSERT_FALSE(sb.ok());
  EXPECT_EQ(sb.status().code(), ErrorCode::kAlreadyExists);
  EXPECT_TRUE(Mentions(sb.status(), kPausedId)) << sb.status().message();
  EXPECT_TRUE(agent_->IsPaused(kPausedId));
  EXPECT_EQ(agent_->ListPaused().size(), 1u);
}

TEST_F(AgentIdsTest, AnIdWhoseDirectoryExistsIsInUse) {
  // What a warm clone's directory, or any sandbox's under its local id, looks like.
  std::string id = NewSandboxId();
  ASSERT_TRUE(MakeDirs(dir_ + "/data/sandboxes/" + id).ok());
  auto sb = agent_->Create({.id = id, .template_name = "base"});
  EXPECT_EQ(sb.status().code(), ErrorCode::kAlreadyExists);
  EXPECT_TRUE(Mentions(sb.status(), "sandboxes/" + id)) << sb.status().message();
  EXPECT_TRUE(PathExists(dir_ + "/data/sandboxes/" + id));
}

TEST_F(AgentIdsTest, AFailedCreateGivesItsIdBack) {
  std::string id = NewSandboxId();
  for (int i = 0; i < 2; ++i) {
    auto sb = agent_->Create({.id = id, .template_name = "no-such-template"});
    EXPECT_EQ(sb.status().code(), ErrorCode::kNotFound) << sb.status().ToString();
  }
  EXPECT_TRUE(agent_->List().empty());
}

TEST_F(AgentIdsTest, ForkChecksEveryChildIdBeforeItLooksForTheParent) {
  std::string a = NewSandboxId(), b = NewSandboxId();
  auto kids = agent_->Fork("noparent000000000000", {a, b, a});
  EXPECT_EQ(kids.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_TRUE(Mentions(kids.status(), a + " is given more than once")) << kids.status().message();
  kids = agent_->Fork("noparent000000000000", {a, "bad id"});
  EXPECT_EQ(kids.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_TRUE(Mentions(kids.status(), "\"bad id\"")) << kids.status().message();
  kids = agent_->Fork("noparent000000000000", {a, kPausedId});
  EXPECT_EQ(kids.status().code(), ErrorCode::kAlreadyExists);
  EXPECT_TRUE(Mentions(kids.status(), kPausedId)) << kids.status().message();
  kids = agent_->Fork("noparent000000000000", std::vector<std::string>{});
  EXPECT_EQ(kids.status().code(), ErrorCode::kInvalidArgument);
  kids = agent_->Fork("noparent000000000000", std::vector<std::string>(65, a));
  EXPECT_EQ(kids.status().code(), ErrorCode::kInvalidArgument);
  // Valid ids and no such parent: NotFound, and the ids are free again.
  for (int i = 0; i < 2; ++i) {
    kids = agent_->Fork("noparent000000000000", {a, b});
    EXPECT_EQ(kids.status().code(), ErrorCode::kNotFound) << kids.status().ToString();
  }
  EXPECT_EQ(agent_->Fork("noparent000000000000", 2).status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(agent_->Fork("noparent000000000000", 0).status().code(), ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace moat::agent
