// End to end: a template from an OCI image boots. A busybox image (no bash, no accounts) that the
// suite makes and pushes into a private docker-registry is pulled, made bootable with the build's
// moat-guest (from build/guest/rootfs.ext4) and written into an ext4 image, which the agent
// cold-boots as its base template; the E2B client's `/bin/bash -l -c CMD` then runs through
// /bin/sh, as root and as `user`.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdio>

#include "agent/agent.h"
#include "agent/guest_rootfs.h"
#include "agent/oci_image.h"
#include "common/fs.h"
#include "support/agent_config.h"
#include "support/oci_test_image.h"
#include "support/test_util.h"

namespace moat::agent {
namespace {

using channel::ExecRequest;
using channel::GuestClient;
using namespace std::chrono_literals;

long Ms(std::chrono::steady_clock::duration d) {
  return static_cast<long>(std::chrono::duration_cast<std::chrono::milliseconds>(d).count());
}

class OciImageE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string guest = moat::test_support::BuildDir() + "/guest";
    ASSERT_TRUE(PathExists(guest + "/vmlinux") && PathExists(guest + "/rootfs.ext4"))
        << "guest artifacts missing in " << guest << " (run `make guest`)";
    missing_ = new std::string(moat::test_support::MissingTool(
        {"skopeo", "umoci", "/usr/bin/docker-registry", "/bin/busybox", "debugfs", "mkfs.ext4"}));
    if (!missing_->empty()) return;
    dir_ = moat::test_support::NewSuiteDir("moat-oci-e2e.");
    ASSERT_NE(dir_, nullptr);
    auto registry = moat::test_support::TestRegistry::Start(*dir_ + "/registry");
    ASSERT_TRUE(registry.ok()) << registry.status().ToString();
    registry_ = registry->release();
    ASSERT_TRUE(MakeDirs(*dir_ + "/make").ok());
    ASSERT_TRUE(
        moat::test_support::MakeBusyboxImage(*dir_ + "/make", *dir_ + "/make/layout", "v1").ok());
    std::string ref = registry_->host() + "/e2e/busybox:v1";
    ASSERT_TRUE(moat::test_support::PushImage(*dir_ + "/make/layout:v1", ref, *dir_).ok());

    // The template build's base phase, as the builder runs it.
    auto started = std::chrono::steady_clock::now();
    ASSERT_TRUE(MakeDirs(*dir_ + "/work", 0700).ok());
    auto config = PullOciImage({.ref = ref, .work_dir = *dir_ + "/work"}, *dir_ + "/rootfs");
    ASSERT_TRUE(config.ok()) << config.status().ToString();
    auto pulled = std::chrono::steady_clock::now();
    Status prepared = PrepareGuestRootfs(*dir_ + "/rootfs", guest + "/rootfs.ext4");
    ASSERT_TRUE(prepared.ok()) << prepared.ToString();
    image_ = new std::string(*dir_ + "/busybox.ext4");
    Status made = MakeExt4Image(*dir_ + "/rootfs", *image_, 64);
    ASSERT_TRUE(made.ok()) << made.ToString();
    std::printf("pull+unpack %ld ms, prepare+mkfs %ld ms\n", Ms(pulled - started),
                Ms(std::chrono::steady_clock::now() - pulled));
    ASSERT_TRUE(RemoveTree(*dir_ + "/rootfs").ok());
    ASSERT_TRUE(RemoveTree(*dir_ + "/work").ok());

    AgentConfig c = moat::test_support::E2eAgentConfig(*dir_ + "/data");
    c.base.rootfs_path = *image_;
    auto agent = Agent::Start(c);
    ASSERT_TRUE(agent.ok()) << agent.status().ToString();
    agent_ = agent->release();
    auto sb = agent_->CreateColdBoot({});
    ASSERT_TRUE(sb.ok()) << sb.status().ToString();
    sandbox_ = new std::shared_ptr<Sandbox>(*sb);
    std::printf("cold boot of the busybox image to moat-guest ready: %ld ms\n",
                static_cast<long>((*sandbox_)->boot_time().count()));
  }

  static void TearDownTestSuite() {
    delete sandbox_;
    sandbox_ = nullptr;
    delete agent_;  // kills the sandbox
    agent_ = nullptr;
    delete registry_;
    registry_ = nullptr;
    if (dir_ != nullptr) {
      EXPECT_EQ(moat::test_support::CountProcessesMentioning(*dir_), 0);
      EXPECT_TRUE(RemoveTree(*dir_).ok());
    }
    delete dir_;
    dir_ = nullptr;
    delete image_;
    delete missing_;
  }

  void SetUp() override {
    if (missing_ != nullptr && !missing_->empty()) GTEST_SKIP() << "tool missing: " << *missing_;
    ASSERT_NE(sandbox_, nullptr);
  }

  static channel::ExecResult Run(ExecRequest req) {
    auto g = (*sandbox_)->Guest();
    EXPECT_TRUE(g.ok()) << g.status().ToString();
    if (!g.ok()) return {};
    auto r = (*g)->Run(req, GuestClient::Clock::now() + 30s);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : channel::ExecResult{};
  }

  static std::string* missing_;
  static std::string* dir_;
  static std::string* image_;
  static moat::test_support::TestRegistry* registry_;
  static Agent* agent_;
  static std::shared_ptr<Sandbox>* sandbox_;
};

std::string* OciImageE2eTest::missing_ = nullptr;
std::string* OciImageE2eTest::dir_ = nullptr;
std::string* OciImageE2eTest::image_ = nullptr;
moat::test_support::TestRegistry* OciImageE2eTest::registry_ = nullptr;
Agent* OciImageE2eTest::agent_ = nullptr;
std::shared_ptr<Sandbox>* OciImageE2eTest::sandbox_ = nullptr;

TEST_F(OciImageE2eTest, TheImageBootsWithMoatGuestAsPid1) {
  auto g = (*sandbox_)->Guest();
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_TRUE((*g)->guest_hello().pid1);
  auto r = Run({.argv = {"/bin/cat", "/etc/os-release"}});
  EXPECT_NE(r.stdout_data.find("ID=moat-busybox"), std::string::npos) << r.stdout_data;
  EXPECT_EQ(r.exit_code, 0);
}

TEST_F(OciImageE2eTest, BashLoginCommandsRunThroughShWhenTheImageHasNoBash) {
  auto r = Run({.argv = {"/bin/bash", "-l", "-c", "echo hi"}});
  EXPECT_EQ(r.stdout_data, "hi\n") << r.stderr_data;
  EXPECT_EQ(r.exit_code, 0);
  auto cmd = Run({.cmd = "echo out; echo err >&2; exit 3"});
  EXPECT_EQ(cmd.stdout_data, "out\n");
  EXPECT_EQ(cmd.stderr_data, "err\n");
  EXPECT_EQ(cmd.exit_code, 3);
}

TEST_F(OciImageE2eTest, CommandsRunAsUserInItsHome) {
  auto r = Run({.argv = {"/bin/bash", "-l", "-c", "id -u; id -g; echo $HOME; pwd; touch ~/f"},
                .user = "user"});
  EXPECT_EQ(r.stdout_data, "1000\n1000\n/home/user\n/home/user\n") << r.stderr_data;
  EXPECT_EQ(r.exit_code, 0);
  auto root = Run({.cmd = "id -u; stat -c %u:%g /home/user/f", .user = "root"});
  EXPECT_EQ(root.stdout_data, "0\n1000:1000\n") << root.stderr_data;
}

}  // namespace
}  // namespace moat::agent
