// Templates from OCI images, up to the guest disk, with real tools and no VM: a private
// docker-registry on loopback holds a busybox image the suite makes itself with umoci; it is
// pulled (skopeo), unpacked (umoci), made bootable and written into an ext4 image (mkfs.ext4),
// which debugfs then reads back. Also what a hostile image tree cannot do to the host.
#include "agent/oci_image.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>

#include "agent/external_tool.h"
#include "agent/guest_rootfs.h"
#include "agent/rooted_dir.h"
#include "common/fs.h"
#include "support/oci_test_image.h"
#include "support/test_util.h"

namespace moat::agent {
namespace {

using moat::test_support::MissingTool;

// The tools the whole path needs (busybox-static makes the test image).
const std::vector<std::string> kTools = {"skopeo",       "umoci",   "/usr/bin/docker-registry",
                                         "/bin/busybox", "debugfs", "mkfs.ext4",
                                         "e2fsck"};

// debugfs -R CMD IMAGE: stdout, or "" when it fails.
std::string Debugfs(const std::string& image, const std::string& request) {
  auto out = RunExternalTool({.argv = {"debugfs", "-R", request, image}, .max_stdout = 64 << 20});
  return out.ok() && out->succeeded() ? out->stdout_data : "";
}

mode_t ModeOf(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 ? st.st_mode : 0;
}

// A stand-in for the base template's image: an ext4 holding /usr/sbin/moat-guest (the real
// binary from this build when there is one, else busybox: any ELF executable will do).
Result<std::string> MakeFakeBaseImage(const std::string& dir) {
  std::string agent = moat::test_support::BuildDir() + "/bin/moat-guest";
  if (!PathExists(agent)) agent = "/bin/busybox";
  std::string tree = dir + "/base-tree";
  MOAT_RETURN_IF_ERROR(MakeDirs(tree + "/usr/sbin"));
  MOAT_RETURN_IF_ERROR(moat::test_support::RunOk({"cp", agent, tree + "/usr/sbin/moat-guest"}));
  std::string image = dir + "/base.ext4";
  MOAT_RETURN_IF_ERROR(
      moat::test_support::RunOk({"mkfs.ext4", "-q", "-F", "-d", tree, image, "64M"}));
  return agent;
}

class OciImageTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    missing_ = new std::string(MissingTool(kTools));
    if (!missing_->empty()) return;
    auto dir = MakeTempDir("/tmp", "moat-oci-test.");
    ASSERT_TRUE(dir.ok()) << dir.status().ToString();
    dir_ = new std::string(*dir);
    auto registry = moat::test_support::TestRegistry::Start(*dir_ + "/registry");
    ASSERT_TRUE(registry.ok()) << registry.status().ToString();
    registry_ = registry->release();
    ASSERT_TRUE(MakeDirs(*dir_ + "/make").ok());
    auto started = std::chrono::steady_clock::now();
    Status made =
        moat::test_support::MakeBusyboxImage(*dir_ + "/make", *dir_ + "/make/layout", "v1");
    ASSERT_TRUE(made.ok()) << made.ToString();
    Status pushed = moat::test_support::PushImage(*dir_ + "/make/layout:v1",
                                                  registry_->host() + "/test/img:v1", *dir_);
    ASSERT_TRUE(pushed.ok()) << pushed.ToString();
    std::printf("made and pushed the test image: %ld ms\n",
                static_cast<long>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                      std::chrono::steady_clock::now() - started)
                                      .count()));
    auto agent = MakeFakeBaseImage(*dir_);
    ASSERT_TRUE(agent.ok()) << agent.status().ToString();
    agent_binary_ = new std::string(*agent);
  }

  static void TearDownTestSuite() {
    delete registry_;  // kills docker-registry
    registry_ = nullptr;
    if (dir_ != nullptr) {
      EXPECT_TRUE(RemoveTree(*dir_).ok());
    }
    delete dir_;
    dir_ = nullptr;
    delete agent_binary_;
    delete missing_;
  }

  void SetUp() override {
    if (!missing_->empty()) GTEST_SKIP() << "tool missing: " << *missing_;
    ASSERT_NE(registry_, nullptr);
    auto scratch = MakeTempDir(*dir_, "case.");
    ASSERT_TRUE(scratch.ok());
    case_dir_ = *scratch;
    ASSERT_TRUE(MakeDirs(case_dir_ + "/work").ok());
    ::chmod((case_dir_ + "/work").c_str(), 0700);
  }

  void TearDown() override {
    if (!case_dir_.empty()) {
      EXPECT_TRUE(RemoveTree(case_dir_).ok());
    }
  }

  OciPullOptions Options(const std::string& ref) {
    return {.ref = ref,
            .work_dir = case_dir_ + "/work",
            .progress = [this](const std::string& line) { progress_.push_back(line); }};
  }

  static std::string* missing_;
  static std::string* dir_;
  static std::string* agent_binary_;
  static moat::test_support::TestRegistry* registry_;
  std::string case_dir_;
  std::vector<std::string> progress_;
};

std::string* OciImageTest::missing_ = nullptr;
std::string* OciImageTest::dir_ = nullptr;
std::string* OciImageTest::agent_binary_ = nullptr;
moat::test_support::TestRegistry* OciImageTest::registry_ = nullptr;

TEST_F(OciImageTest, PullUnpacksTheImageAndReadsItsConfig) {
  std::string rootfs = case_dir_ + "/rootfs";
  auto config = PullOciImage(Options(registry_->host() + "/test/img:v1"), rootfs);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->user, "1000");
  EXPECT_EQ(config->workdir, "/srv/app");
  EXPECT_NE(std::find(config->env.begin(), config->env.end(),
                      std::pair<std::string, std::string>("MOAT_IMAGE", "busybox")),
            config->env.end());
  EXPECT_EQ(config->digest.rfind("sha256:", 0), 0u) << config->digest;
  EXPECT_TRUE(S_ISREG(ModeOf(rootfs + "/bin/busybox")));
  EXPECT_TRUE(S_ISLNK(ModeOf(rootfs + "/bin/sh")));
  auto os_release = ReadFile(rootfs + "/etc/os-release");
  ASSERT_TRUE(os_release.ok());
  EXPECT_NE(os_release->find("ID=moat-busybox"), std::string::npos);
  // One line per phase; the scratch dir keeps no credentials file.
  ASSERT_GE(progress_.size(), 3u);
  EXPECT_EQ(progress_.front().rfind("pulling " + registry_->host() + "/test/img:v1", 0), 0u);
  EXPECT_EQ(progress_.back().rfind("unpacked ", 0), 0u) << progress_.back();
  EXPECT_FALSE(PathExists(case_dir_ + "/work/auth.json"));
}

TEST_F(OciImageTest, AWrongTagIsNotFoundNamingTheImage) {
  std::string ref = registry_->host() + "/test/img:nope";
  auto config = PullOciImage(Options(ref), case_dir_ + "/rootfs");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), ErrorCode::kNotFound) << config.status().ToString();
  EXPECT_EQ(config.status().message().rfind("pulling image " + ref + ": ", 0), 0u)
      << config.status().message();
  EXPECT_NE(config.status().message().find("manifest unknown"), std::string::npos);
  EXPECT_FALSE(PathExists(case_dir_ + "/rootfs/bin"));
}

TEST_F(OciImageTest, ARegistryThatIsNotThereIsUnavailable) {
  auto port = moat::test_support::FreeLoopbackPort();
  ASSERT_TRUE(port.ok());
  auto config = PullOciImage(Options("127.0.0.1:" + std::to_string(*port) + "/test/img:v1"),
                             case_dir_ + "/rootfs");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), ErrorCode::kUnavailable) << config.status().ToString();
}

TEST_F(OciImageTest, CredentialsARegistryDoesNotAskForDoNoHarm) {
  OciPullOptions o = Options(registry_->host() + "/test/img:v1");
  o.auth = RegistryAuth{"alice", "s3cret-pw"};
  auto config = PullOciImage(o, case_dir_ + "/rootfs");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_FALSE(PathExists(case_dir_ + "/work/auth.json"));
}

TEST_F(OciImageTest, APrivateRegistryTakesTheRightCredentialsOnly) {
  RegistryAuth alice{"alice", "s3cret-pw"};
  auto registry = moat::test_support::TestRegistry::Start(case_dir_ + "/private", alice);
  ASSERT_TRUE(registry.ok()) << registry.status().ToString();
  std::string ref = (*registry)->host() + "/team/img:v1";
  ASSERT_TRUE(moat::test_support::PushImage(*dir_ + "/make/layout:v1", ref, case_dir_, alice).ok());

  OciPullOptions o = Options(ref);
  o.auth = alice;
  auto config = PullOciImage(o, case_dir_ + "/rootfs");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->workdir, "/srv/app");
  EXPECT_FALSE(PathExists(case_dir_ + "/work/auth.json"));

  auto anonymous = PullOciImage(Options(ref), case_dir_ + "/rootfs2");
  EXPECT_EQ(anonymous.status().code(), ErrorCode::kPermissionDenied)
      << anonymous.status().ToString();
  o.auth = RegistryAuth{"alice", "wrong-pw"};
  auto wrong = PullOciImage(o, case_dir_ + "/rootfs3");
  EXPECT_EQ(wrong.status().code(), ErrorCode::kPermissionDenied) << wrong.status().ToString();
  EXPECT_EQ(wrong.status().message().find("wrong-pw"), std::string::npos);
  EXPECT_NE(wrong.status().message().find(ref), std::string::npos);
  for (const auto& line : progress_) EXPECT_EQ(line.find("s3cret"), std::string::npos) << line;
}

TEST_F(OciImageTest, PulledImageBecomesABootableExt4Image) {
  std::string rootfs = case_dir_ + "/rootfs";
  auto started = std::chrono::steady_clock::now();
  auto config = PullOciImage(Options(registry_->host() + "/test/img:v1"), rootfs);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  auto pulled = std::chrono::steady_clock::now();
  Status prepared = PrepareGuestRootfs(rootfs, *dir_ + "/base.ext4");
  ASSERT_TRUE(prepared.ok()) << prepared.ToString();
  auto prepared_at = std::chrono::steady_clock::now();

  // The tree: moat-guest as the base image has it, root's, 0755; the user account; mount points.
  auto agent = ReadFile(rootfs + "/usr/sbin/moat-guest");
  auto expected = ReadFile(*agent_binary_);
  ASSERT_TRUE(agent.ok() && expected.ok());
  EXPECT_TRUE(*agent == *expected) << "moat-guest differs from the base image's";
  struct stat st {};
  ASSERT_EQ(::stat((rootfs + "/usr/sbin/moat-guest").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0755u);
  EXPECT_EQ(st.st_uid, 0u);
  auto passwd = ReadFile(rootfs + "/etc/passwd");
  ASSERT_TRUE(passwd.ok());
  EXPECT_NE(passwd->find("root:x:0:0:"), std::string::npos) << *passwd;
  // busybox has no bash: the login shell is sh.
  EXPECT_NE(passwd->find("user:x:1000:1000::/home/user:/bin/sh\n"), std::string::npos) << *passwd;
  auto group = ReadFile(rootfs + "/etc/group");
  ASSERT_TRUE(group.ok());
  EXPECT_NE(group->find("user:x:1000:"), std::string::npos) << *group;
  ASSERT_EQ(::stat((rootfs + "/home/user").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 1000u);
  EXPECT_EQ(st.st_gid, 1000u);
  EXPECT_EQ(ModeOf(rootfs + "/tmp") & 07777, 01777u);
  for (const char* d : {"/proc", "/sys", "/dev", "/run", "/root"}) {
    EXPECT_TRUE(S_ISDIR(ModeOf(rootfs + d))) << d;
  }
  EXPECT_EQ(ModeOf(rootfs + "/etc/sudoers.d/user") & 07777, 0440u);
  auto resolv = ReadFile(rootfs + "/etc/resolv.conf");
  EXPECT_TRUE(resolv.ok() && resolv->find("nameserver 169.254.0.22") != std::string::npos);

  std::string image = case_dir_ + "/rootfs.ext4";
  Status made = MakeExt4Image(rootfs, image, 32);
  ASSERT_TRUE(made.ok()) << made.ToString();
  auto done = std::chrono::steady_clock::now();
  auto ms = [](auto d) {
    return static_cast<long>(std::chrono::duration_cast<std::chrono::milliseconds>(d).count());
  };
  ASSERT_EQ(::stat(image.c_str(), &st), 0);
  std::printf("pull+unpack %ld ms, prepare %ld ms, mkfs %ld ms; image %ld MiB, %ld MiB on disk\n",
              ms(pulled - started), ms(prepared_at - pulled), ms(done - prepared_at),
              static_cast<long>(st.st_size >> 20), static_cast<long>((st.st_blocks * 512) >> 20));
  EXPECT_GE(st.st_size, 256 << 20);
  EXPECT_EQ(st.st_size % (1 << 20), 0);
  EXPECT_LT(st.st_blocks * 512, st.st_size / 2) << "the image is not sparse";

  // A clean file system that holds the tree as it was, owners and modes included.
  auto fsck = RunExternalTool({.argv = {"e2fsck", "-fn", image}});
  ASSERT_TRUE(fsck.ok());
  EXPECT_TRUE(fsck->succeeded()) << fsck->Describe();
  EXPECT_NE(Debugfs(image, "stat /usr/sbin/moat-guest").find("Mode:  0755"), std::string::npos);
  EXPECT_NE(Debugfs(image, "cat /etc/os-release").find("ID=moat-busybox"), std::string::npos);
  EXPECT_NE(Debugfs(image, "cat /etc/passwd").find("user:x:1000:1000:"), std::string::npos);
  std::string home = Debugfs(image, "stat /home/user");
  EXPECT_NE(home.find("User:  1000"), std::string::npos) << home;
  EXPECT_NE(Debugfs(image, "stat /bin/sh").find("Type: symlink"), std::string::npos);
  EXPECT_NE(Debugfs(image, "stat /tmp").find("Mode:  01777"), std::string::npos);
  auto agent_in_image = Debugfs(image, "cat /usr/sbin/moat-guest");
  EXPECT_TRUE(agent_in_image == *expected) << "moat-guest in the image differs";
}

TEST_F(OciImageTest, MakeExt4ImageLeavesRoomForMinFreeAndRefusesAnExistingFile) {
  std::string tree = case_dir_ + "/tree";
  ASSERT_TRUE(MakeDirs(tree + "/data").ok());
  ASSERT_TRUE(WriteFileAtomic(tree + "/data/blob", std::string(3 << 20, 'x')).ok());
  std::string image = case_dir_ + "/big.ext4";
  ASSERT_TRUE(MakeExt4Image(tree, image, 1024).ok());
  struct stat st {};
  ASSERT_EQ(::stat(image.c_str(), &st), 0);
  EXPECT_GE(st.st_size, int64_t{1024 + 64} << 20);
  // Free blocks after mkfs: at least the minimum asked for.
  std::string stats = Debugfs(image, "stats");
  auto at = stats.find("Free blocks:");
  ASSERT_NE(at, std::string::npos) << stats;
  long free_blocks = std::stol(stats.substr(at + 12));
  EXPECT_GE(free_blocks * 4096, int64_t{1024} << 20);
  Status again = MakeExt4Image(tree, image, 0);
  EXPECT_EQ(again.code(), ErrorCode::kAlreadyExists) << again.ToString();
}

// An image whose tree points its symlinks at the host: /etc/passwd at a host file, /usr/sbin
// and /home at host directories (absolute and through ".."), /tmp at itself. Nothing outside
// the tree changes, and the tree ends up with real files and directories in those places.
TEST_F(OciImageTest, PrepareNeverWritesThroughSymlinksOutOfTheTree) {
  std::string outside = case_dir_ + "/host";
  std::string rootfs = case_dir_ + "/hostile";
  ASSERT_TRUE(MakeDirs(outside + "/sbin").ok());
  ASSERT_TRUE(MakeDirs(outside + "/home").ok());
  ASSERT_TRUE(WriteFileAtomic(outside + "/passwd", "host:x:0:0::/:/bin/false\n", 0644).ok());
  ASSERT_TRUE(WriteFileAtomic(outside + "/shadow", "host:*:1::::::\n", 0600).ok());
  ASSERT_TRUE(WriteFileAtomic(outside + "/hostname", "host\n", 0644).ok());
  for (const char* d : {"/etc", "/usr", "/bin"}) ASSERT_TRUE(MakeDirs(rootfs + d).ok());
  ASSERT_TRUE(moat::test_support::RunOk({"cp", "/bin/busybox", rootfs + "/bin/busybox"}).ok());
  std::string dots = "../../../../../../../../../../../..";
  auto link = [&](const std::string& target, const std::string& at) {
    ASSERT_EQ(::symlink(target.c_str(), (rootfs + at).c_str()), 0) << at;
  };
  link(outside + "/passwd", "/etc/passwd");
  link(outside + "/shadow", "/etc/shadow");
  link(dots + outside + "/hostname", "/etc/hostname");
  link(outside + "/sbin", "/usr/sbin");
  link(dots + outside + "/home", "/home");
  link("/tmp", "/tmp");
  link("busybox", "/bin/sh");

  Status prepared = PrepareGuestRootfs(rootfs, *dir_ + "/base.ext4");
  ASSERT_TRUE(prepared.ok()) << prepared.ToString();

  EXPECT_EQ(ReadFile(outside + "/passwd").value(), "host:x:0:0::/:/bin/false\n");
  EXPECT_EQ(ReadFile(outside + "/shadow").value(), "host:*:1::::::\n");
  EXPECT_EQ(ReadFile(outside + "/hostname").value(), "host\n");
  EXPECT_TRUE(DirNames(outside + "/sbin").empty());
  EXPECT_TRUE(DirNames(outside + "/home").empty());
  EXPECT_EQ(ModeOf(outside + "/passwd") & 07777, 0644u);

  EXPECT_TRUE(S_ISREG(ModeOf(rootfs + "/etc/passwd")));
  EXPECT_NE(ReadFile(rootfs + "/etc/passwd")->find("user:x:1000:1000::/home/user:/bin/sh"),
            std::string::npos);
  EXPECT_TRUE(S_ISREG(ModeOf(rootfs + "/etc/hostname")));
  EXPECT_TRUE(S_ISDIR(ModeOf(rootfs + "/usr/sbin")));
  EXPECT_TRUE(S_ISREG(ModeOf(rootfs + "/usr/sbin/moat-guest")));
  EXPECT_TRUE(S_ISDIR(ModeOf(rootfs + "/home/user")));
  EXPECT_TRUE(S_ISDIR(ModeOf(rootfs + "/tmp")));
  // A symlink that stays inside the tree is left alone (the shadow's pointed at nothing there).
  EXPECT_TRUE(S_ISLNK(ModeOf(rootfs + "/bin/sh")));
}

TEST_F(OciImageTest, AnAbsoluteSymlinkInsideTheTreeResolvesWithinIt) {
  // /etc -> /usr/etc (absolute): legitimate in an image; writes land in the tree's /usr/etc.
  std::string rootfs = case_dir_ + "/tree";
  ASSERT_TRUE(MakeDirs(rootfs + "/usr/etc").ok());
  ASSERT_EQ(::symlink("/usr/etc", (rootfs + "/etc").c_str()), 0);
  auto root = RootedDir::Open(rootfs);
  ASSERT_TRUE(root.ok());
  ASSERT_TRUE(root->WriteFile("/etc/hostname", "moat\n", 0644).ok());
  EXPECT_EQ(ReadFile(rootfs + "/usr/etc/hostname").value(), "moat\n");
  auto back = root->ReadFile("etc/hostname", 100);
  ASSERT_TRUE(back.ok() && back->has_value());
  EXPECT_EQ((*back)->data, "moat\n");
  EXPECT_FALSE(root->ReadFile("etc/missing", 100)->has_value());
  EXPECT_FALSE(root->Resolve("../../etc/passwd", O_RDONLY).ok());  // ".." is refused
}

TEST_F(OciImageTest, AnExistingUserAndAnotherAccountOnUid1000AreRespected) {
  std::string rootfs = case_dir_ + "/tree";
  ASSERT_TRUE(MakeDirs(rootfs + "/etc").ok());
  ASSERT_TRUE(WriteFileAtomic(rootfs + "/etc/passwd",
                              "root:x:0:0:root:/root:/bin/sh\nnode:x:1000:1000::/home/node:/bin/sh",
                              0644)
                  .ok());
  ASSERT_TRUE(WriteFileAtomic(rootfs + "/etc/group", "root:x:0:\nnode:x:1000:\n", 0644).ok());
  ASSERT_TRUE(WriteFileAtomic(rootfs + "/etc/shadow", "root:*:1::::::\n", 0640).ok());
  ASSERT_TRUE(PrepareGuestRootfs(rootfs, *dir_ + "/base.ext4").ok());
  auto passwd = ReadFile(rootfs + "/etc/passwd").value();
  EXPECT_NE(passwd.find("node:x:1000:1000::/home/node:/bin/sh\nuser:x:1001:1001::/home/user:"),
            std::string::npos)
      << passwd;
  EXPECT_NE(ReadFile(rootfs + "/etc/group")->find("user:x:1001:"), std::string::npos);
  EXPECT_NE(ReadFile(rootfs + "/etc/shadow")->find("\nuser:!:"), std::string::npos);
  EXPECT_EQ(ModeOf(rootfs + "/etc/shadow") & 07777, 0640u);
  // A second run finds the account and adds nothing.
  ASSERT_TRUE(PrepareGuestRootfs(rootfs, *dir_ + "/base.ext4").ok());
  EXPECT_EQ(ReadFile(rootfs + "/etc/passwd").value(), passwd);
}

TEST_F(OciImageTest, ABaseImageWithoutTheAgentIsAnError) {
  std::string rootfs = case_dir_ + "/tree";
  ASSERT_TRUE(MakeDirs(rootfs).ok());
  std::string empty_tree = case_dir_ + "/empty";
  ASSERT_TRUE(MakeDirs(empty_tree).ok());
  std::string image = case_dir_ + "/empty.ext4";
  ASSERT_TRUE(
      moat::test_support::RunOk({"mkfs.ext4", "-q", "-F", "-d", empty_tree, image, "8M"}).ok());
  Status s = PrepareGuestRootfs(rootfs, image);
  EXPECT_EQ(s.code(), ErrorCode::kFailedPrecondition) << s.ToString();
  EXPECT_NE(s.message().find("moat-guest"), std::string::npos) << s.ToString();
}

// Pure parsing: no tools needed.
TEST(ParseImageReference, FollowsDockersRules) {
  auto ref = [](std::string_view r) {
    auto p = ParseImageReference(r);
    return p.ok() ? p->ToString() + (p->insecure ? " insecure" : "") : p.status().ToString();
  };
  EXPECT_EQ(ref("python"), "docker.io/library/python:latest");
  EXPECT_EQ(ref("python:3.12"), "docker.io/library/python:3.12");
  EXPECT_EQ(ref("e2bdev/base"), "docker.io/e2bdev/base:latest");
  EXPECT_EQ(ref("index.docker.io/library/debian:12"), "docker.io/library/debian:12");
  EXPECT_EQ(ref("ghcr.io/org/app:v1"), "ghcr.io/org/app:v1");
  EXPECT_EQ(ref("localhost/app"), "localhost/app:latest insecure");
  EXPECT_EQ(ref("localhost:5000/a/b:c"), "localhost:5000/a/b:c insecure");
  EXPECT_EQ(ref("127.0.0.1:5000/x:y"), "127.0.0.1:5000/x:y insecure");
  EXPECT_EQ(ref("[::1]:5000/x"), "[::1]:5000/x:latest insecure");
  EXPECT_EQ(ref("127.0.0.1.example.com/x"), "127.0.0.1.example.com/x:latest");
  EXPECT_EQ(ref("registry.example.com:443/team/app:1.0-rc_2"),
            "registry.example.com:443/team/app:1.0-rc_2");
  std::string digest = "sha256:" + std::string(64, 'a');
  EXPECT_EQ(ref("alpine@" + digest), "docker.io/library/alpine@" + digest);
  EXPECT_EQ(ref("alpine:3@" + digest), "docker.io/library/alpine:3@" + digest);
}

TEST(ParseImageReference, RejectsWhatIsNotAReference) {
  for (std::string bad : {"", "Python", "python:", ":tag", "a//b", "-rm", "x@sha256:12", "a b",
                          "host:99999999/x", "python:-x", "a/b/", "ghcr.io/", "x;rm -rf"}) {
    auto r = ParseImageReference(bad);
    EXPECT_FALSE(r.ok()) << "\"" << bad << "\" gave " << r->ToString();
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
    }
  }
}

TEST(ReadOciImageConfig, BadLayoutsAreErrorsNotExceptions) {
  auto dir = MakeTempDir("/tmp", "moat-oci-layout.");
  ASSERT_TRUE(dir.ok());
  std::string d = *dir;
  EXPECT_FALSE(ReadOciImageConfig(d, "img").ok());  // no index.json
  ASSERT_TRUE(WriteFileAtomic(d + "/index.json", "{not json").ok());
  EXPECT_EQ(ReadOciImageConfig(d, "img").status().code(), ErrorCode::kInvalidArgument);
  ASSERT_TRUE(WriteFileAtomic(d + "/index.json", R"({"manifests":"x"})").ok());
  EXPECT_FALSE(ReadOciImageConfig(d, "img").ok());
  // A digest that would name a path outside blobs/.
  ASSERT_TRUE(WriteFileAtomic(d + "/index.json",
                              R"({"manifests":[{"digest":"sha256:../../etc/passwd",)"
                              R"("annotations":{"org.opencontainers.image.ref.name":"img"}}]})")
                  .ok());
  EXPECT_EQ(ReadOciImageConfig(d, "img").status().code(), ErrorCode::kInvalidArgument);
  // Wrong-typed fields are skipped, a null config is an empty one.
  std::string m = std::string(64, '1');
  std::string c = std::string(64, '2');
  ASSERT_TRUE(MakeDirs(d + "/blobs/sha256").ok());
  ASSERT_TRUE(
      WriteFileAtomic(d + "/index.json",
                      R"({"manifests":[{"digest":"sha256:)" + m +
                          R"(","annotations":{"org.opencontainers.image.ref.name":"img"}}]})")
          .ok());
  ASSERT_TRUE(
      WriteFileAtomic(d + "/blobs/sha256/" + m, R"({"config":{"digest":"sha256:)" + c + R"("}})")
          .ok());
  ASSERT_TRUE(WriteFileAtomic(d + "/blobs/sha256/" + c,
                              R"({"config":{"Env":["A=1",7,"NOEQ","=x","B=2=3"],"User":5}})")
                  .ok());
  auto config = ReadOciImageConfig(d, "img");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  using Env = std::vector<std::pair<std::string, std::string>>;
  EXPECT_EQ(config->env, (Env{{"A", "1"}, {"B", "2=3"}}));
  EXPECT_EQ(config->user, "");
  EXPECT_EQ(config->digest, "sha256:" + m);
  ASSERT_TRUE(WriteFileAtomic(d + "/blobs/sha256/" + c, R"({"config":null})").ok());
  EXPECT_TRUE(ReadOciImageConfig(d, "img").ok());
  EXPECT_EQ(ReadOciImageConfig(d, "other").status().code(), ErrorCode::kNotFound);
  EXPECT_TRUE(RemoveTree(d).ok());
}

}  // namespace
}  // namespace moat::agent
