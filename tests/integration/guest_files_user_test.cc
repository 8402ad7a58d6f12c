// moat-guest's file ops obey the requesting user (issue 12, finding 5) and never block on a
// special file (finding 6): the real binary on the host (--listen-unix, as root), driven through
// GuestClient, acting as root and as `nobody` on a temp tree.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>

#include "channel/guest_client.h"
#include "common/child_process.h"
#include "common/fs.h"
#include "common/socket.h"

namespace moat::channel {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

constexpr uid_t kNobody = 65534;

GuestClient::Deadline In(std::chrono::milliseconds d) {
  return GuestClient::Clock::now() + d;
}

bool NobodyExists() {
  auto passwd = ReadFile("/etc/passwd");
  return passwd.ok() && passwd->find("\nnobody:x:65534:") != std::string::npos;
}

uid_t OwnerOf(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 ? st.st_uid : static_cast<uid_t>(-1);
}

class GuestFilesUserTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (::geteuid() != 0 || !NobodyExists()) return;  // each test skips
    const char* build = std::getenv("MOAT_BUILD_DIR");
    std::string binary = std::string(build ? build : "build") + "/bin/moat-guest";
    auto dir = MakeTempDir("/tmp", "moat-guest-files-");
    ASSERT_TRUE(dir.ok()) << dir.status().ToString();
    dir_ = new std::string(*dir);
    SpawnOptions opts;
    opts.argv = {binary, "--listen-unix", *dir_ + "/g.sock", "--log-level", "warn"};
    opts.new_session = true;
    auto child = ChildProcess::Spawn(opts);
    ASSERT_TRUE(child.ok()) << child.status().ToString();
    guest_ = new ChildProcess(std::move(*child));
  }

  static void TearDownTestSuite() {
    delete guest_;  // SIGKILL and reap
    guest_ = nullptr;
    if (dir_ != nullptr) (void)RemoveTree(*dir_);
    delete dir_;
    dir_ = nullptr;
  }

  // <root>/           root 0755
  //   etc/            root 0755: motd (0644), shadow (0600)
  //   private/        root 0700: f
  //   home/           nobody 0755
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root to act as another user";
    if (!NobodyExists()) GTEST_SKIP() << "no user nobody (65534) on this host";
    ASSERT_NE(guest_, nullptr);
    auto fd = ConnectUnix(*dir_ + "/g.sock", 5s);
    ASSERT_TRUE(fd.ok()) << fd.status().ToString();
    auto client = GuestClient::Connect(std::move(*fd), 5s);
    ASSERT_TRUE(client.ok()) << client.status().ToString();
    client_ = std::move(*client);
    auto root = MakeTempDir(*dir_, "tree-");
    ASSERT_TRUE(root.ok());
    root_ = *root;
    ASSERT_EQ(::chmod(root_.c_str(), 0755), 0);
    ASSERT_EQ(::chmod(dir_->c_str(), 0755), 0);
    for (const char* d : {"/etc", "/private", "/home"}) {
      ASSERT_EQ(::mkdir((root_ + d).c_str(), 0755), 0);
    }
    ASSERT_EQ(::chmod((root_ + "/private").c_str(), 0700), 0);
    ASSERT_EQ(::chown((root_ + "/home").c_str(), kNobody, kNobody), 0);
    ASSERT_TRUE(WriteFileAtomic(root_ + "/etc/motd", "original", 0644).ok());
    ASSERT_TRUE(WriteFileAtomic(root_ + "/etc/shadow", "root:secret", 0600).ok());
    ASSERT_TRUE(WriteFileAtomic(root_ + "/private/f", "hidden", 0644).ok());
  }

  Result<std::string> Read(const std::string& path, const std::string& user) {
    auto s = client_->Open({{"op", "read_file"}, {"path", path}, {"user", user}});
    if (!s.ok()) return s.status();
    std::string out;
    auto deadline = In(10s);
    for (;;) {
      auto ev = (*s)->Next(deadline);
      if (!ev.ok()) return ev.status();
      if (ev->kind == StreamEvent::Kind::kData) out += ev->data;
      if (ev->kind == StreamEvent::Kind::kEnd) {
        if (!ev->status.ok()) return ev->status;
        return out;
      }
    }
  }

  // The entry the guest reports, or the END's error.
  Result<json> Write(const std::string& path, const std::string& user, const std::string& data) {
    auto s = client_->Open({{"op", "write_file"}, {"path", path}, {"user", user}});
    if (!s.ok()) return s.status();
    json entry;
    auto deadline = In(10s);
    // The guest may refuse before reading any bytes; then these writes just go unanswered.
    (void)(*s)->Write(SubChannel::kStdin, data, deadline);
    (void)(*s)->CloseWrite(SubChannel::kStdin);
    for (;;) {
      auto ev = (*s)->Next(deadline);
      if (!ev.ok()) return ev.status();
      if (ev->kind == StreamEvent::Kind::kMessage) entry = ev->message;
      if (ev->kind == StreamEvent::Kind::kEnd) {
        if (!ev->status.ok()) return ev->status;
        return entry;
      }
    }
  }

  Result<json> Call(json req) { return client_->Call(req, In(10s)); }

  static inline ChildProcess* guest_ = nullptr;
  static inline std::string* dir_ = nullptr;
  std::unique_ptr<GuestClient> client_;
  std::string root_;
};

TEST_F(GuestFilesUserTest, AUserCannotReadARootOnlyFileButRootCan) {
  auto as_user = Read(root_ + "/etc/shadow", "nobody");
  EXPECT_EQ(as_user.status().code(), ErrorCode::kPermissionDenied) << as_user.status().ToString();
  auto as_root = Read(root_ + "/etc/shadow", "root");
  ASSERT_TRUE(as_root.ok()) << as_root.status().ToString();
  EXPECT_EQ(*as_root, "root:secret");
  // A world-readable file is readable to the user.
  EXPECT_EQ(*Read(root_ + "/etc/motd", "nobody"), "original");
}

TEST_F(GuestFilesUserTest, AUserCannotWriteMakeMoveOrRemoveInARootOwnedDirectory) {
  std::string etc = root_ + "/etc";
  EXPECT_EQ(Write(etc + "/x", "nobody", "evil").status().code(), ErrorCode::kPermissionDenied);
  EXPECT_EQ(Write(etc + "/motd", "nobody", "evil").status().code(), ErrorCode::kPermissionDenied);
  EXPECT_EQ(Write(etc + "/new/dir/x", "nobody", "evil").status().code(),
            ErrorCode::kPermissionDenied);
  auto mk = Call({{"op", "mkdir"}, {"path", etc + "/d"}, {"user", "nobody"}});
  EXPECT_EQ(mk.status().code(), ErrorCode::kPermissionDenied) << mk.status().ToString();
  auto mv = Call(
      {{"op", "move"}, {"from", etc + "/motd"}, {"to", root_ + "/home/m"}, {"user", "nobody"}});
  EXPECT_EQ(mv.status().code(), ErrorCode::kPermissionDenied) << mv.status().ToString();
  auto rm = Call({{"op", "remove"}, {"path", etc + "/motd"}, {"user", "nobody"}});
  EXPECT_EQ(rm.status().code(), ErrorCode::kPermissionDenied) << rm.status().ToString();
  // Nothing changed, and no temporary file was left behind.
  EXPECT_EQ(DirNames(etc), (std::vector<std::string>{"motd", "shadow"}));
  EXPECT_EQ(*ReadFile(etc + "/motd"), "original");
  // Root may.
  ASSERT_TRUE(Write(etc + "/x", "root", "ok").ok());
  EXPECT_EQ(OwnerOf(etc + "/x"), 0u);
}

TEST_F(GuestFilesUserTest, WhatAUserCreatesBelongsToThemParentsIncluded) {
  std::string home = root_ + "/home";
  auto entry = Write(home + "/a/b/f.txt", "nobody", "mine");
  ASSERT_TRUE(entry.ok()) << entry.status().ToString();
  EXPECT_EQ((*entry)["owner"], "nobody");
  for (const std::string& p : {home + "/a", home + "/a/b", home + "/a/b/f.txt"}) {
    EXPECT_EQ(OwnerOf(p), kNobody) << p;
  }
  auto mk = Call({{"op", "mkdir"}, {"path", home + "/c/d"}, {"user", "nobody"}});
  ASSERT_TRUE(mk.ok()) << mk.status().ToString();
  EXPECT_EQ(OwnerOf(home + "/c"), kNobody);
  EXPECT_EQ(OwnerOf(home + "/c/d"), kNobody);
  auto mv = Call({{"op", "move"},
                  {"from", home + "/a/b/f.txt"},
                  {"to", home + "/c/d/g.txt"},
                  {"user", "nobody"}});
  ASSERT_TRUE(mv.ok()) << mv.status().ToString();
  EXPECT_EQ((*mv)["owner"], "nobody");
  auto rm = Call({{"op", "remove"}, {"path", home + "/a"}, {"user", "nobody"}});
  ASSERT_TRUE(rm.ok()) << rm.status().ToString();
  EXPECT_FALSE(PathExists(home + "/a"));
}

TEST_F(GuestFilesUserTest, ASymlinkPlantedInTheUsersHomeDoesNotLetTheirWritesIntoARootDir) {
  // Code in the sandbox (as the user) plants ~/data -> the root-owned etc.
  std::string link = root_ + "/home/data";
  ASSERT_EQ(::symlink((root_ + "/etc").c_str(), link.c_str()), 0);
  ASSERT_EQ(::lchown(link.c_str(), kNobody, kNobody), 0);
  auto w = Write(link + "/motd", "nobody", "pwned");
  EXPECT_EQ(w.status().code(), ErrorCode::kPermissionDenied) << w.status().ToString();
  EXPECT_EQ(*ReadFile(root_ + "/etc/motd"), "original");
  EXPECT_EQ(Read(link + "/shadow", "nobody").status().code(), ErrorCode::kPermissionDenied);
  auto rm = Call({{"op", "remove"}, {"path", link + "/motd"}, {"user", "nobody"}});
  EXPECT_EQ(rm.status().code(), ErrorCode::kPermissionDenied) << rm.status().ToString();
  EXPECT_EQ(DirNames(root_ + "/etc"), (std::vector<std::string>{"motd", "shadow"}));
  // Root follows the link as E2B does.
  ASSERT_TRUE(Write(link + "/motd", "root", "by root").ok());
  EXPECT_EQ(*ReadFile(root_ + "/etc/motd"), "by root");
}

TEST_F(GuestFilesUserTest, AUserCannotStatOrListInsideADirectoryTheyCannotEnter) {
  auto st = Call({{"op", "stat"}, {"path", root_ + "/private/f"}, {"user", "nobody"}});
  EXPECT_EQ(st.status().code(), ErrorCode::kPermissionDenied) << st.status().ToString();
  auto list = Call({{"op", "list"}, {"path", root_ + "/private"}, {"user", "nobody"}});
  EXPECT_EQ(list.status().code(), ErrorCode::kPermissionDenied) << list.status().ToString();
  auto watch = Call({{"op", "watch"}, {"path", root_ + "/private"}, {"user", "nobody"}});
  EXPECT_EQ(watch.status().code(), ErrorCode::kPermissionDenied) << watch.status().ToString();
  st = Call({{"op", "stat"}, {"path", root_ + "/private/f"}, {"user", "root"}});
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  list = Call({{"op", "list"}, {"path", root_ + "/private"}, {"user", "root"}});
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  EXPECT_EQ((*list)["entries"].size(), 1u);
}

TEST_F(GuestFilesUserTest, ReadingAFifoFailsFastAndTheAgentKeepsAnswering) {
  std::string fifo = root_ + "/home/pipe";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0666), 0);
  auto started = GuestClient::Clock::now();
  for (const char* user : {"root", "nobody"}) {
    auto r = Read(fifo, user);
    EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument) << r.status().ToString();
  }
  EXPECT_LT(GuestClient::Clock::now() - started, 5s);
  auto health = Call({{"op", "health"}});
  ASSERT_TRUE(health.ok()) << health.status().ToString();
  // Writing over it is refused too, and the FIFO stays.
  auto w = Write(fifo, "root", "x");
  EXPECT_EQ(w.status().code(), ErrorCode::kInvalidArgument) << w.status().ToString();
  struct stat st {};
  ASSERT_EQ(::lstat(fifo.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
  // stat and list describe it without opening it.
  auto entry = Call({{"op", "stat"}, {"path", fifo}});
  ASSERT_TRUE(entry.ok()) << entry.status().ToString();
  EXPECT_EQ((*entry)["type"], "other");
  auto list = Call({{"op", "list"}, {"path", fifo}});
  EXPECT_EQ(list.status().code(), ErrorCode::kInvalidArgument) << list.status().ToString();
}

TEST_F(GuestFilesUserTest, PathsThroughProcMagicLinksAreRefusedEvenForRoot) {
  auto r = Read("/proc/self/root" + root_ + "/etc/motd", "root");
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument) << r.status().ToString();
  auto w = Write("/proc/self/root" + root_ + "/home/x", "root", "x");
  EXPECT_EQ(w.status().code(), ErrorCode::kInvalidArgument) << w.status().ToString();
}

}  // namespace
}  // namespace moat::channel
