// The template builder's pure parts: step cache keys, COPY sources and destinations, ENV
// expansion, build ids, the build context's JSON; and the check every uploaded archive passes.
#include "agent/template_builder.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdio>
#include <string>

#include "common/child_process.h"
#include "common/fs.h"
#include "common/tar_check.h"

namespace moat::agent {
namespace {

using namespace std::string_literals;

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

// Crafted archives, block by block: what tar(1) will not write.
std::string Octal(uint64_t v, size_t width) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%0*llo", static_cast<int>(width - 1),
                static_cast<unsigned long long>(v));
  return std::string(buf, width - 1) + '\0';
}

// A ustar header; `size_field`, when given, is written as the size field verbatim.
std::string Header(const std::string& name, char type, uint64_t size, const std::string& link = "",
                   const std::string& size_field = "") {
  std::string b(512, '\0');
  b.replace(0, std::min<size_t>(name.size(), 100), name.substr(0, 100));
  b.replace(100, 8, Octal(0644, 8));
  b.replace(108, 8, Octal(0, 8));
  b.replace(116, 8, Octal(0, 8));
  b.replace(124, 12, size_field.empty() ? Octal(size, 12) : size_field);
  b.replace(136, 12, Octal(0, 12));
  b[156] = type;
  b.replace(157, std::min<size_t>(link.size(), 100), link.substr(0, 100));
  b.replace(257, 6, std::string("ustar\0", 6));
  b.replace(263, 2, "00");
  b.replace(148, 8, std::string(8, ' '));
  unsigned sum = 0;
  for (unsigned char c : b) sum += c;
  b.replace(148, 8, Octal(sum, 7) + ' ');
  return b;
}

// `data` padded to whole blocks.
std::string Blocks(std::string data) {
  data.resize((data.size() + 511) / 512 * 512, '\0');
  return data;
}

// A pax header (`type` 'x' or 'g') and its body of records.
std::string Pax(char type, const std::vector<std::pair<std::string, std::string>>& records) {
  std::string body;
  for (const auto& [k, v] : records) {
    std::string rest = " " + k + "=" + v + "\n";
    size_t len = rest.size() + 1;
    while (std::to_string(len).size() + rest.size() != len) ++len;
    body += std::to_string(len) + rest;
  }
  return Header("PaxHeaders/x", type, body.size()) + Blocks(body);
}

// The archive: `blocks`, then the end marker.
std::string TarOf(const std::string& blocks) {
  return blocks + std::string(1024, '\0');
}

class CraftedTar : public TarCheck {
 protected:
  Status Check(const std::string& blocks, uint64_t max_bytes = 1 << 20,
               std::string* plain = nullptr) {
    std::string path = dir_ + "/c" + std::to_string(n_++) + ".tar";
    EXPECT_TRUE(WriteFileAtomic(path, TarOf(blocks)).ok());
    std::string out = plain != nullptr ? path + ".plain" : "";
    if (plain != nullptr) *plain = out;
    return CheckTarArchive(path, out, max_bytes);
  }
};

TEST_F(CraftedTar, TheHelpersWriteWhatTarReads) {
  std::string plain;
  ASSERT_TRUE(Check(Header("f", '0', 3) + Blocks("hi\n"), 1 << 20, &plain).ok());
  auto list = RunTool({"tar", "-tvf", plain});
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  EXPECT_NE(list->find(" 3 "), std::string::npos) << *list;
  EXPECT_NE(list->find(" f\n"), std::string::npos) << *list;
}

TEST_F(CraftedTar, PaxPathRenamesTheNextEntryAndIsChecked) {
  auto s = Check(Pax('x', {{"path", "../evil"}}) + Header("harmless", '0', 1) + Blocks("x"));
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << s.ToString();
  EXPECT_NE(s.message().find("../evil"), std::string::npos) << s.ToString();
  s = Check(Pax('x', {{"path", "/etc/evil"}}) + Header("harmless", '0', 0));
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << s.ToString();
  s = Check(Pax('x', {{"GNU.sparse.name", "a/../../evil"}}) + Header("harmless", '0', 0));
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << s.ToString();
  // A NUL ends the name as tar reads it.
  s = Check(Pax('x', {{"path", std::string("..\0/ok", 5)}}) + Header("harmless", '0', 0));
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << s.ToString();
  // It applies to the next entry only: the one after keeps its own (good) name.
  EXPECT_TRUE(
      Check(Pax('x', {{"path", "dir/ok"}}) + Header("a", '0', 0) + Header("b", '0', 0)).ok());
  // A GNU long name is checked the same way.
  s = Check(Header("././@LongLink", 'L', 8) + Blocks(std::string("../evil\0", 8)) +
            Header("harmless", '0', 0));
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << s.ToString();
}

TEST_F(CraftedTar, GlobalPaxHeadersCannotRenameEntriesOrResizeThem) {
  // GNU tar applies a global path to the entries that follow, busybox does not: it is checked.
  auto s = Check(Pax('g', {{"path", "../evil"}}) + Header("harmless", '0', 0));
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << s.ToString();
  s = Check(Pax('g', {{"linkpath", "/etc/shadow"}}) + Header("harmless", '0', 0));
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << s.ToString();
  s = Check(Pax('g', {{"size", "1024"}}) + Header("harmless", '0', 0) +
            Blocks(std::string(1024, 'x')));
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << s.ToString();
  // Harmless global records (comments, times) pass.
  EXPECT_TRUE(Check(Pax('g', {{"comment", "hello"}, {"mtime", "1.5"}}) + Header("f", '0', 0)).ok());
}

TEST_F(CraftedTar, PaxSizeIsHonouredAndMustAgreeWithTheHeader) {
  // 1024 bytes of data whose first block reads as a header naming ../evil if misread.
  std::string data = Header("../evil", '0', 0) + std::string(512, 'x');
  // Header and pax size agree: the data is data, and passes.
  std::string plain;
  ASSERT_TRUE(
      Check(Pax('x', {{"size", "1024"}}) + Header("f", '0', 1024) + data, 1 << 20, &plain).ok());
  auto list = RunTool({"tar", "-tf", plain});
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  EXPECT_EQ(*list, "f\n");
  // The header says 0, pax 1024: GNU tar reads 1024 bytes of data, busybox tar (which ignores pax
  // sizes) the header of ../evil. Refused, whichever the guest has.
  auto s = Check(Pax('x', {{"size", "1024"}}) + Header("f", '0', 0) + data);
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << s.ToString();
  EXPECT_NE(s.message().find("pax size"), std::string::npos) << s.ToString();
  // ... and with harmless data too.
  s = Check(Pax('x', {{"size", "1024"}}) + Header("f", '0', 0) + std::string(1024, 'x'));
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << s.ToString();
  // The other way round: the header says 1024, pax 0.
  s = Check(Pax('x', {{"size", "0"}}) + Header("f", '0', 1024) + data);
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << s.ToString();
  // A pax size past the limit, or not a number.
  s = Check(Pax('x', {{"size", "99999999999"}}) + Header("f", '0', 0), 1 << 20);
  EXPECT_EQ(s.code(), ErrorCode::kResourceExhausted) << s.ToString();
  s = Check(Pax('x', {{"size", "+1024"}}) + Header("f", '0', 1024) + data);
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << s.ToString();
}

TEST_F(CraftedTar, Base256SizesAreDecoded) {
  auto base256 = [](uint64_t v, bool negative = false) {
    std::string f(12, '\0');
    for (int i = 11; i >= 1; --i, v >>= 8) f[i] = static_cast<char>(v & 0xff);
    f[0] = static_cast<char>(negative ? 0xff : 0x80);
    return f;
  };
  // 512 bytes of data that read as a header naming ../evil if the size were taken as 0.
  std::string data = Header("../evil", '0', 0);
  std::string plain;
  ASSERT_TRUE(
      Check(Header("f", '0', 0, "", base256(512)) + data + Header("g", '0', 0), 1 << 20, &plain)
          .ok());
  auto list = RunTool({"tar", "-tvf", plain});
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  EXPECT_EQ(list->find("evil"), std::string::npos) << *list;
  EXPECT_NE(list->find(" 512 "), std::string::npos) << *list;
  // Absurd sizes are refused before anything is read.
  auto s = Check(Header("f", '0', 0, "", base256(uint64_t{1} << 40)));
  EXPECT_EQ(s.code(), ErrorCode::kResourceExhausted) << s.ToString();
  s = Check(Header("f", '0', 0, "", std::string(1, '\x80') + std::string(11, '\xff')));
  EXPECT_NE(s.code(), ErrorCode::kOk) << s.ToString();
  s = Check(Header("f", '0', 0, "", base256(1, /*negative=*/true)));
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << s.ToString();
  // Octal as GNU tar reads it: leading blanks are skipped; garbage is refused.
  EXPECT_TRUE(
      Check(Header("f", '0', 0, "", "       1000\0"s) + Blocks(std::string(512, 'x'))).ok());
  s = Check(Header("f", '0', 0, "", "0000000001x\0"s));
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << s.ToString();
}

TEST_F(CraftedTar, RefusesWhatTarsReadDifferently) {
  // GNU tar reads no data after a hard link, busybox none after a symlink or directory.
  std::string data = Header("../evil", '0', 0);
  auto s = Check(Header("l", '1', 512, "f") + data);
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << s.ToString();
  s = Check(Header("l", '2', 512, "f") + data);
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << s.ToString();
  s = Check(Header("d/", '5', 512) + data);
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << s.ToString();
  // A lone zero block: busybox stops there, GNU tar reads on.
  s = Check(Header("f", '0', 0) + std::string(512, '\0') + Header("../evil", '0', 0));
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << s.ToString();
  // Unknown entry types, malformed pax records.
  s = Check(Header("f", 'Q', 0));
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << s.ToString();
  std::string bad_pax = "99 path=../evil\n";
  s = Check(Header("PaxHeaders/x", 'x', bad_pax.size()) + Blocks(bad_pax) + Header("f", '0', 0));
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << s.ToString();
  // The ustar name alone (old GNU headers have no prefix) and with its prefix are both checked.
  std::string h = Header("/abs", '0', 0);
  h.replace(257, 8, std::string("ustar  \0", 8));
  h.replace(345, 4, "0123");
  h.replace(148, 8, std::string(8, ' '));
  unsigned sum = 0;
  for (unsigned char c : h) sum += c;
  h.replace(148, 8, Octal(sum, 7) + ' ');
  s = Check(h);
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << s.ToString();
}

TEST_F(CraftedTar, LinksTargetsAreCheckedForHardLinksOnly) {
  auto s = Check(Pax('x', {{"linkpath", "../../etc/shadow"}}) + Header("l", '1', 0, "f"));
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << s.ToString();
  s = Check(Header("l", '1', 0, "/etc/shadow"));
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << s.ToString();
  // A symlink may point anywhere (tar creates such links last).
  EXPECT_TRUE(Check(Header("l", '2', 0, "/usr/bin/python3")).ok());
  EXPECT_TRUE(Check(Pax('x', {{"linkpath", "../x"}}) + Header("l", '2', 0, "f")).ok());
}

TEST_F(TarCheck, PassesPaxArchivesMadeByTar) {
  std::string long_name(150, 'n');
  std::string pax = Make("mkdir -p d/" + long_name + "; echo hi > d/" + long_name +
                             "/f; ln -s /usr/bin/env d/env; ln d/" + long_name + "/f d/hard",
                         "--format=pax d");
  std::string plain = dir_ + "/pax.tar";
  auto s = CheckTarArchive(pax, plain, 1 << 20);
  ASSERT_TRUE(s.ok()) << s.ToString();
  auto list = RunTool({"tar", "-tf", plain});
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  EXPECT_NE(list->find(long_name + "/f"), std::string::npos);
  std::string gnu = Make("mkdir -p " + long_name + "; echo x > " + long_name + "/y",
                         "--format=gnu " + long_name, false);
  EXPECT_TRUE(CheckTarArchive(gnu, "", 1 << 20).ok());
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

namespace moat::agent {
namespace {

TEST(IsHostLocalRegistry, CatchesLoopbackAndLinkLocalInEveryForm) {
  for (const char* r : {"localhost:5000", "127.0.0.1", "127.1.2.3:80", "2130706433", "0x7f.1",
                        "[::1]:5000", "[::ffff:127.0.0.1]", "169.254.169.254", "[fe80::1]",
                        "0.0.0.0:5000", "[fd00:ec2::254]", "registry.localhost"}) {
    EXPECT_TRUE(IsHostLocalRegistry(r)) << r;
  }
  for (const char* r : {"docker.io", "10.0.0.5:5000", "192.168.1.10", "[2001:db8::1]", "ghcr.io"}) {
    EXPECT_FALSE(IsHostLocalRegistry(r)) << r;
  }
  EXPECT_EQ(RegistryHostName("[::1]:5000"), "[::1]");
  EXPECT_EQ(RegistryHostName("127.0.0.1:5000"), "127.0.0.1");
}

}  // namespace
}  // namespace moat::agent
