// End to end on one agent: a custom template built from `base` (steps in a builder VM, a COPY
// from an archive, the start command running in the snapshot), the layer cache (a rebuild runs
// only from the first changed step; `force` runs everything), a failing step, creates from the
// build with its default user and workdir, the template's own warm pool, and deletion. The
// control plane's side (store, routes, the SDK) is tests/compat/template.test.mjs.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "agent/agent.h"
#include "agent/template_builder.h"
#include "common/child_process.h"
#include "common/fs.h"
#include "support/agent_config.h"
#include "support/sandbox_net.h"
#include "support/test_util.h"

namespace moat::agent {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

class TemplateBuildE2e : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_EQ(::geteuid(), 0u);
    dir_ = test_support::NewSuiteDir("moat-tplbuild.");
    ASSERT_NE(dir_, nullptr);
    AgentConfig c = test_support::E2eAgentConfig(*dir_);
    c.network = test_support::TestNetConfig(*dir_, 228);
    c.ready_slots = 2;
    c.warm_sandboxes = 1;
    c.warm_memory_budget_mib = 2048;
    auto agent = Agent::Start(c);
    ASSERT_TRUE(agent.ok()) << agent.status().ToString();
    agent_ = agent->release();
    // A COPY archive: files/a.txt and files/sub/b.txt.
    std::string ctx = *dir_ + "/ctx";
    ASSERT_TRUE(MakeDirs(ctx + "/files/sub").ok());
    ASSERT_TRUE(WriteFileAtomic(ctx + "/files/a.txt", "alpha\n").ok());
    ASSERT_TRUE(WriteFileAtomic(ctx + "/files/sub/b.txt", "beta\n").ok());
    archive_ = new std::string(*dir_ + "/files.tar.gz");
    auto tar = RunTool({"tar", "-czf", *archive_, "-C", ctx, "files"});
    ASSERT_TRUE(tar.ok()) << tar.status().ToString();
  }
  static void TearDownTestSuite() {
    delete agent_;
    agent_ = nullptr;
    EXPECT_EQ(test_support::CountProcessesMentioning(*dir_), 0);
    EXPECT_TRUE(RemoveTree(*dir_).ok());
    delete dir_;
    delete archive_;
  }

  static TemplateBuildSpec Spec(const std::string& build_id, std::vector<TemplateStep> steps) {
    TemplateBuildSpec s;
    s.build_id = build_id;
    s.template_id = "tpl";
    s.from_template = "base";
    s.steps = std::move(steps);
    s.vcpus = 1;
    s.memory_mib = 256;
    s.files = {{std::string(64, 'a'), *archive_}};
    return s;
  }
  static std::vector<TemplateStep> Steps(const std::string& last) {
    return {
        {"RUN", {"echo one > /home/user/one"}},
        {"COPY", {"files", "/opt/files/", "", "0750"}, false, std::string(64, 'a')},
        {"ENV", {"GREETING", "hello $HOME"}},
        {"WORKDIR", {"/srv/app"}},
        {"RUN", {"echo \"$GREETING\" > greeting; echo " + last + " > last"}},
        {"USER", {"builder", "true"}},
    };
  }
  struct Built {
    Result<TemplateBuildResult> result;
    BuildFailure failure;
    std::vector<BuildLogLine> logs;
    std::string Text() const {
      std::string t;
      for (const auto& l : logs) t += l.level + " [" + l.step + "] " + l.message + "\n";
      return t;
    }
    int Cached() const {
      int n = 0;
      for (const auto& l : logs) n += l.message.rfind("CACHED ", 0) == 0;
      return n;
    }
  };
  static Built Build(TemplateBuildSpec spec) {
    Built b{Status::Ok(), {}, {}};
    b.result = agent_->BuildTemplate(
        spec, [&](const BuildLogLine& l) { b.logs.push_back(l); }, &b.failure);
    return b;
  }
  static std::string Sh(const std::shared_ptr<Sandbox>& sb, const std::string& cmd) {
    return test_support::GuestSh(sb, cmd);
  }

  static inline std::string* dir_ = nullptr;
  static inline std::string* archive_ = nullptr;
  static inline Agent* agent_ = nullptr;
};

constexpr const char* kFirst = "11111111-1111-4111-8111-111111111111";
constexpr const char* kSecond = "22222222-2222-4222-8222-222222222222";
constexpr const char* kForced = "33333333-3333-4333-8333-333333333333";
constexpr const char* kFailed = "44444444-4444-4444-8444-444444444444";
constexpr const char* kStarted = "55555555-5555-4555-8555-555555555555";

TEST_F(TemplateBuildE2e, BuildsStepsInAVmAndSandboxesStartFromTheResult) {
  Built b = Build(Spec(kFirst, Steps("first")));
  ASSERT_TRUE(b.result.ok()) << b.result.status().ToString() << "\n" << b.Text();
  EXPECT_EQ(b.result->run_steps, 6);
  EXPECT_EQ(b.result->context.user, "builder");
  EXPECT_EQ(b.result->context.workdir, "/srv/app");

  auto sb = agent_->Create(kFirst, {});
  ASSERT_TRUE(sb.ok()) << sb.status().ToString();
  EXPECT_EQ(Sh(*sb, "cat /home/user/one"), "one\n");
  // (0750 and owned by `user`: the default user, `builder`, reads them through sudo.)
  EXPECT_EQ(Sh(*sb, "sudo -n cat /opt/files/a.txt /opt/files/sub/b.txt"), "alpha\nbeta\n");
  EXPECT_EQ(Sh(*sb, "sudo -n stat -c '%a %U' /opt/files/a.txt /opt/files/sub"),
            "750 user\n750 user\n");
  // ENV values are expanded against the build's environment, and reach later steps only.
  EXPECT_EQ(Sh(*sb, "cat /srv/app/greeting"), "hello /home/user\n");
  EXPECT_EQ(Sh(*sb, "echo \"[$GREETING]\""), "[]\n");
  // The last USER and WORKDIR are the sandbox's defaults; USER made the account with sudo.
  EXPECT_EQ(Sh(*sb, "id -un; pwd; sudo -n true && echo sudo-ok"), "builder\n/srv/app\nsudo-ok\n");
  EXPECT_EQ(Sh(*sb, "cat /.e2b"),
            std::string("ENV_ID=tpl\nTEMPLATE_ID=tpl\nBUILD_ID=") + kFirst + "\n");
  (void)agent_->Kill((*sb)->id());
}

TEST_F(TemplateBuildE2e, ARebuildRunsOnlyFromTheFirstChangedStepAndForceRunsAll) {
  Built second = Build(Spec(kSecond, Steps("second")));
  ASSERT_TRUE(second.result.ok()) << second.result.status().ToString() << second.Text();
  EXPECT_EQ(second.Cached(), 4) << second.Text();
  EXPECT_EQ(second.result->run_steps, 2);
  auto sb = agent_->Create(kSecond, {});
  ASSERT_TRUE(sb.ok()) << sb.status().ToString();
  EXPECT_EQ(Sh(*sb, "cat /srv/app/last /home/user/one"), "second\none\n");
  (void)agent_->Kill((*sb)->id());

  // Forced, a step runs again and its new result is the template's (it replaces the layer).
  auto stamped = Steps("second");
  stamped.push_back({"RUN", {"cat /proc/sys/kernel/random/uuid > $HOME/stamp"}, false, ""});
  TemplateBuildSpec once = Spec(kForced, stamped);
  Built o = Build(once);
  ASSERT_TRUE(o.result.ok()) << o.result.status().ToString();
  auto a = agent_->Create(kForced, {});
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  std::string first_stamp = Sh(*a, "cat ~/stamp");
  (void)agent_->Kill((*a)->id());
  ASSERT_TRUE(agent_->DeleteTemplateBuild(kForced).ok());
  TemplateBuildSpec forced = Spec(kForced, stamped);
  forced.force = true;
  forced.min_free_disk_mib = 3000;
  Built f = Build(forced);
  ASSERT_TRUE(f.result.ok()) << f.result.status().ToString() << f.Text();
  EXPECT_EQ(f.Cached(), 0);
  EXPECT_EQ(f.result->run_steps, 7);
  auto b = agent_->Create(kForced, {});
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  std::string second_stamp = Sh(*b, "cat ~/stamp");
  EXPECT_NE(first_stamp, second_stamp) << "the forced step's own result";
  EXPECT_EQ(first_stamp.size(), 37u);
  // minFreeDiskMb: the disk grew and the filesystem with it (in the bake, not on the host).
  std::string avail = Sh(*b, "df -Pm / | tail -n 1 | awk '{print $4}'");
  EXPECT_GE(std::stoll(avail), 3000) << avail;
  (void)agent_->Kill((*b)->id());
}

TEST_F(TemplateBuildE2e, AFailingStepNamesItsExitStatusAndOutputAndLeavesNothing) {
  auto steps = Steps("x");
  steps.push_back({"RUN", {"echo going down; echo on stderr >&2; exit 3"}});
  Built b = Build(Spec(kFailed, steps));
  ASSERT_FALSE(b.result.ok());
  EXPECT_EQ(b.failure.step, "7");
  EXPECT_NE(b.result.status().message().find("exited with status 3"), std::string::npos)
      << b.result.status().ToString();
  EXPECT_NE(b.result.status().message().find("going down"), std::string::npos);
  EXPECT_FALSE(PathExists(*dir_ + "/templates/custom/" + kFailed));
  EXPECT_FALSE(agent_->Create(kFailed, {}).ok());
  // An unknown base and a missing upload fail in their steps.
  TemplateBuildSpec bad = Spec(kFailed, {});
  bad.from_template = "nosuch";
  Built nb = Build(bad);
  ASSERT_FALSE(nb.result.ok());
  EXPECT_EQ(nb.failure.step, "base");
  TemplateBuildSpec missing = Spec(kFailed, {{"COPY", {"x", "/x"}, false, std::string(64, 'b')}});
  Built mb = Build(missing);
  ASSERT_FALSE(mb.result.ok());
  EXPECT_EQ(mb.failure.step, "1");
  // A ready command that never succeeds fails the build after its timeout, with its output.
  TemplateBuildSpec never = Spec(kFailed, {{"RUN", {"true"}}});
  never.start_cmd = "sleep 600";
  never.ready_cmd = "echo not-ready-yet; false";
  never.ready_timeout = std::chrono::seconds(3);
  Built nr = Build(never);
  ASSERT_FALSE(nr.result.ok());
  EXPECT_EQ(nr.failure.step, "finalize");
  EXPECT_NE(nr.result.status().message().find("ready command timed out"), std::string::npos)
      << nr.result.status().ToString();
  EXPECT_NE(nr.result.status().message().find("not-ready-yet"), std::string::npos);
  EXPECT_FALSE(PathExists(*dir_ + "/templates/custom/" + kFailed)) << "nothing of it is kept";
}

TEST_F(TemplateBuildE2e, TheStartCommandRunsInTheSnapshotAndTheTemplateGetsAWarmPool) {
  TemplateBuildSpec s = Spec(kStarted, {{"RUN", {"echo ready-page > /home/user/index.html"}}});
  s.start_cmd = "cd /home/user && python3 -m http.server 8123";
  s.ready_cmd = "[ -n \"$(ss -Htuln sport = :8123)\" ]";
  Built b = Build(s);
  ASSERT_TRUE(b.result.ok()) << b.result.status().ToString() << b.Text();
  auto sb = agent_->Create(kStarted, {});
  ASSERT_TRUE(sb.ok()) << sb.status().ToString();
  EXPECT_FALSE((*sb)->from_warm_pool());
  // Up already: no wait for it.
  EXPECT_EQ(Sh(*sb, "curl -fsS http://127.0.0.1:8123/index.html"), "ready-page\n");
  (void)agent_->Kill((*sb)->id());
  // Used once: one warm clone of it, then the next create takes it.
  auto end = Clock::now() + 120s;
  while (agent_->warm_ready(kStarted) < 1 && Clock::now() < end) std::this_thread::sleep_for(50ms);
  ASSERT_EQ(agent_->warm_ready(kStarted), 1u);
  auto warm = agent_->Create(kStarted, {});
  ASSERT_TRUE(warm.ok()) << warm.status().ToString();
  EXPECT_TRUE((*warm)->from_warm_pool());
  EXPECT_EQ(Sh(*warm, "curl -fsS http://127.0.0.1:8123/index.html"), "ready-page\n");
  (void)agent_->Kill((*warm)->id());
  // Deleting the build takes its clones and files; creates from it fail.
  ASSERT_TRUE(agent_->DeleteTemplateBuild(kStarted).ok());
  end = Clock::now() + 30s;  // (a clone being restored as it was deleted goes at the next pass)
  while (agent_->warm_ready(kStarted) > 0 && Clock::now() < end) std::this_thread::sleep_for(50ms);
  EXPECT_EQ(agent_->warm_ready(kStarted), 0u);
  EXPECT_FALSE(agent_->Create(kStarted, {}).ok());
  EXPECT_EQ(agent_->DeleteTemplateBuild(kStarted).code(), ErrorCode::kNotFound);
}

}  // namespace
}  // namespace moat::agent
