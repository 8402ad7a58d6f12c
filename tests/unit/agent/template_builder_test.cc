// The template builder's pure parts: step cache keys, COPY sources and destinations, ENV
// expansion, build ids, the build context's JSON; and the check every uploaded archive passes.
#include "agent/template_builder.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "common/child_process.h"
#include "common/fs.h"
#include "common/tar_check.h"

namespace moat::agent {
namespace {

TEST(StepKey, ChangesWithEveryInputAndOnlyWithThem) {
  TemplateStep run{"RUN", {"echo hi", "root"}};
  std::string k = StepKey("parent", run);
  EXPECT_EQ(k.size(), 64u);
  EXPECT_EQ(k, StepKey("parent", run)) << "stable";
  EXPECT_NE(k, StepKey("other", run));
  TemplateStep user{"RUN", {"echo hi", "user"}};
  EXPECT_NE(k, StepKey("parent", user));
  // Arguments are length-prefixed: moving text between them changes the key.
  EXPECT_NE(StepKey("p", {"RUN", {"a b", ""}}), StepKey("p", {"RUN", {"a", "b"}}));
  TemplateStep copy{"COPY", {"a", "/a"}, false, std::string(64, '1')};
  TemplateStep copy2 = copy;
  copy2.files_hash = std::string(64, '2');
  EXPECT_NE(StepKey("p", copy), StepKey("p", copy2));
  TemplateStep forced = run;
  forced.force = true;
  EXPECT_EQ(k, StepKey("parent", forced)) << "force decides whether the cache is used, not the key";
}

TEST(StaticPrefix, IsThePathBeforeTheFirstGlob) {
  EXPECT_EQ(StaticPrefix("app"), "app");
  EXPECT_EQ(StaticPrefix("./app/src/"), "app/src");
  EXPECT_EQ(StaticPrefix("files/*.txt"), "files");
  EXPECT_EQ(StaticPrefix("a/b?/c"), "a");
  EXPECT_EQ(StaticPrefix("*"), "");
  EXPECT_EQ(StaticPrefix("."), "");
}

TEST(ResolveDest, AgainstTheWorkdirOrTheHomeKeepingATrailingSlash) {
  BuildContext none;
  BuildContext wd;
  wd.workdir = "/srv/app";
  EXPECT_EQ(ResolveDest("/opt/x", wd, "/home/user"), "/opt/x");
  EXPECT_EQ(ResolveDest("x.txt", wd, "/home/user"), "/srv/app/x.txt");
  EXPECT_EQ(ResolveDest("x.txt", none, "/home/user"), "/home/user/x.txt");
  EXPECT_EQ(ResolveDest("sub/", none, "/home/user"), "/home/user/sub/");
  EXPECT_EQ(ResolveDest("../etc/../tmp/./y", wd, "/home/user"), "/srv/tmp/y");
  EXPECT_EQ(ResolveDest("/", wd, "/home/user"), "/");
}

TEST(ExpandVars, ReplacesVariablesAndRunsNothing) {
  std::vector<std::pair<std::string, std::string>> ctx = {{"A", "one"}, {"B", "two"}, {"A", "uno"}};
  std::map<std::string, std::string> guest = {{"PATH", "/usr/bin"}, {"A", "guest"}};
  EXPECT_EQ(ExpandVars("$A-${B}", ctx, guest), "uno-two") << "the last ENV wins";
  EXPECT_EQ(ExpandVars("/opt/bin:$PATH", ctx, guest), "/opt/bin:/usr/bin");
  EXPECT_EQ(ExpandVars("$MISSING.", ctx, guest), ".");
  EXPECT_EQ(ExpandVars("\\$A costs $5", ctx, guest), "$A costs $5");
  EXPECT_EQ(ExpandVars("$(rm -rf /) `id`", ctx, guest), "$(rm -rf /) `id`");
  EXPECT_EQ(ExpandVars("${unterminated", ctx, guest), "${unterminated");
  EXPECT_EQ(ExpandVars("${B}_x$B_x", ctx, guest), "two_x");
}

TEST(IsBuildId, OnlyLowerCaseUuids) {
  EXPECT_TRUE(IsBuildId("11111111-1111-4111-8111-111111111111"));
  EXPECT_TRUE(IsBuildId("0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d"));
  EXPECT_FALSE(IsBuildId("base"));
  EXPECT_FALSE(IsBuildId("11111111-1111-4111-8111-11111111111"));
  EXPECT_FALSE(IsBuildId("11111111-1111-4111-8111-11111111111G"));
  EXPECT_FALSE(IsBuildId("../11111-1111-4111-8111-111111111111"));
}

TEST(TemplateBuildResult, RoundTripsThroughJson) {
  TemplateBuildResult r;
  r.build_id = "11111111-1111-4111-8111-111111111111";
  r.vcpus = 2;
  r.memory_mib = 1024;
  r.disk_mib = 2048;
  r.context.user = "app";
  r.context.workdir = "/srv";
  r.context.env = {{"K", "v 1"}, {"P", "$x"}};
  r.start_cmd = "serve";
  r.ready_cmd = "true";
  auto back = TemplateBuildResult::FromJson(r.ToJson());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->ToJson(), r.ToJson());
  EXPECT_FALSE(TemplateBuildResult::FromJson(nlohmann::json::object()).ok());
}

class TarCheck : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = MakeTempDir("/tmp", "moat-tarcheck.");
    ASSERT_TRUE(d.ok());
    dir_ = *d;
  }
  void TearDown() override { (void)RemoveTree(dir_); }
  // An archive made by tar(1) from a tree set up by `script` (run in dir_/t).
  std::string Make(const std::string& script, const std::string& tar_args, bool gzip = true) {
    std::string archive = dir_ + "/a" + std::to_string(n_++) + (gzip ? ".tgz" : ".tar");
    auto r = RunTool({"sh", "-c",
                      "set -e; cd " + dir_ + "; rm -rf t; mkdir t; cd t; " + script + "; tar " +
                          (gzip ? "-cz" : "-c") + "f " + archive + " " + tar_args},
                     std::chrono::seconds(30));
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return archive;
  }
  std::string dir_;
  int n_ = 0;
};

TEST_F(TarCheck, PassesOrdinaryArchivesPlainOrGzippedAndUnpacksThem) {
  std::string long_name(150, 'n');
  std::string gz = Make("mkdir -p d/sub; echo hi > d/sub/f; ln -s f d/sub/link; mkdir -p " +
                            long_name + "; echo x > " + long_name + "/y",
                        "d " + long_name);
  ASSERT_TRUE(PathExists(gz));
  EXPECT_TRUE(CheckTarArchive(gz, "", 1 << 20).ok());
  std::string plain = dir_ + "/plain.tar";
  ASSERT_TRUE(CheckTarArchive(gz, plain, 1 << 20).ok());
  auto list = RunTool({"tar", "-tf", plain});
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  EXPECT_NE(list->find("d/sub/f"), std::string::npos);
  EXPECT_NE(list->find(long_name + "/y"), std::string::npos);
}

TEST_F(TarCheck, RefusesTraversalAbsolutePathsDevicesAndGarbage) {
  // GNU tar keeps ".." and absolute names with -P.
  std::string dotdot = Make("mkdir a; echo x > a/f", "-P a/../a/f");
  auto s = CheckTarArchive(dotdot, "", 1 << 20);
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << s.ToString();
  std::string abs = Make("echo x > f", "-P " + dir_ + "/t/f");
  EXPECT_EQ(CheckTarArchive(abs, "", 1 << 20).code(), ErrorCode::kInvalidArgument);
  std::string dev = Make("mknod null c 1 3", "null");
  EXPECT_EQ(CheckTarArchive(dev, "", 1 << 20).code(), ErrorCode::kInvalidArgument);
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/garbage", std::string(2000, 'g')).ok());
  EXPECT_EQ(CheckTarArchive(dir_ + "/garbage", "", 1 << 20).code(), ErrorCode::kInvalidArgument);
  std::string big = Make("head -c 200000 /dev/zero > z", "z");
  EXPECT_EQ(CheckTarArchive(big, "", 100000).code(), ErrorCode::kResourceExhausted);
}

}  // namespace
}  // namespace moat::agent

namespace moat::agent {
namespace {

TEST(PruneLayers, DropsLayersOverGoneBasesThenTheLeastRecentlyUsedOverTheBudget) {
  auto d = MakeTempDir("/tmp", "moat-prune.");
  ASSERT_TRUE(d.ok());
  std::string dir = *d;
  ASSERT_TRUE(WriteFileAtomic(dir + "/base.raw", "base").ok());
  auto layer = [&](const std::string& name, const std::string& base, int64_t used_s) {
    std::string l = dir + "/layers/" + name;
    ASSERT_TRUE(MakeDirs(l).ok());
    ASSERT_TRUE(WriteFileAtomic(l + "/disk.qcow2", std::string(64 * 1024, 'x')).ok());
    ASSERT_TRUE(WriteFileAtomic(l + "/context.json", nlohmann::json{{"base", base}}.dump()).ok());
    timespec times[2] = {{used_s, 0}, {used_s, 0}};
    ASSERT_EQ(::utimensat(AT_FDCWD, (l + "/context.json").c_str(), times, 0), 0);
  };
  layer("old", dir + "/base.raw", 1000);
  layer("mid", dir + "/base.raw", 2000);
  layer("new", dir + "/base.raw", 3000);
  layer("orphan", dir + "/gone.raw", 4000);
  ASSERT_TRUE(MakeDirs(dir + "/layers/.layer-tmp").ok());
  // Room for two layers: the orphan goes, then the least recently used; the kept one stays
  // whatever its age.
  PruneLayers(dir + "/layers", 2 * 64 * 1024 + 4096, dir + "/layers/old/disk.qcow2");
  EXPECT_TRUE(PathExists(dir + "/layers/old"));
  EXPECT_FALSE(PathExists(dir + "/layers/mid"));
  EXPECT_TRUE(PathExists(dir + "/layers/new"));
  EXPECT_FALSE(PathExists(dir + "/layers/orphan"));
  EXPECT_TRUE(PathExists(dir + "/layers/.layer-tmp")) << "a layer being written is not touched";
  (void)RemoveTree(dir);
}

}  // namespace
}  // namespace moat::agent
