// read_file/write_file's halves and the credential switch, on a temp dir. Cases that switch to
// another user need root and skip without it; the rest need nothing.
#include "guest/file_transfer.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <chrono>
#include <future>
#include <thread>

#include "common/fs.h"
#include "guest/event_loop.h"
#include "guest/files.h"
#include "guest/fs_credentials.h"
#include "guest/watch.h"

namespace moat::guest {
namespace {

using namespace std::chrono_literals;

UserInfo Nobody() {
  UserInfo u;
  u.name = "nobody";
  u.uid = 65534;
  u.gid = 65534;
  u.home = "/";
  u.groups = {65534};
  return u;
}

UserInfo Self() {
  UserInfo u;
  u.name = "self";
  u.uid = ::geteuid();
  u.gid = ::getegid();
  return u;
}

class FileTransferTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = MakeTempDir("/tmp", "moat-file-transfer-");
    ASSERT_TRUE(dir.ok()) << dir.status().ToString();
    dir_ = *dir;
    ASSERT_EQ(::chmod(dir_.c_str(), 0755), 0);
  }
  void TearDown() override { (void)RemoveTree(dir_); }

  std::string Put(const std::string& name, const std::string& data, mode_t mode = 0644) {
    std::string path = dir_ + "/" + name;
    EXPECT_TRUE(WriteFileAtomic(path, data, mode).ok());
    return path;
  }

  std::string dir_;
};

TEST_F(FileTransferTest, ReadsARegularFile) {
  std::string path = Put("a.txt", "hello");
  auto down = FileDownload::Open(path);
  ASSERT_TRUE(down.ok()) << down.status().ToString();
  EXPECT_EQ((*down)->size(), 5u);
  EXPECT_EQ(*(*down)->Read(64), "hello");
  EXPECT_EQ(*(*down)->Read(64), "");
}

TEST_F(FileTransferTest, RefusesAFifoWithoutWaitingForAWriter) {
  std::string fifo = dir_ + "/fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0666), 0);
  auto opened = std::async(std::launch::async, [&] { return FileDownload::Open(fifo).status(); });
  if (opened.wait_for(5s) != std::future_status::ready) {
    // Release the blocked open (a writer appears) so that the test can end, then fail.
    int w = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    opened.wait();
    if (w >= 0) ::close(w);
    FAIL() << "read_file of a FIFO blocked";
  }
  Status st = opened.get();
  EXPECT_EQ(st.code(), ErrorCode::kInvalidArgument) << st.ToString();
  EXPECT_NE(st.message().find("FIFO"), std::string::npos) << st.ToString();
}

TEST_F(FileTransferTest, RefusesADirectoryAndADevice) {
  EXPECT_EQ(FileDownload::Open(dir_).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(FileDownload::Open("/dev/null").status().code(), ErrorCode::kInvalidArgument);
}

TEST_F(FileTransferTest, RefusesPathsThroughProcMagicLinks) {
  std::string path = Put("secret", "s");
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  auto via_fd = FileDownload::Open("/proc/self/fd/" + std::to_string(fd));
  ::close(fd);
  EXPECT_EQ(via_fd.status().code(), ErrorCode::kInvalidArgument) << via_fd.status().ToString();
  auto via_root = FileDownload::Open("/proc/self/root" + path);
  EXPECT_EQ(via_root.status().code(), ErrorCode::kInvalidArgument) << via_root.status().ToString();
}

TEST_F(FileTransferTest, WritingOverAFifoIsRefusedAndLeavesIt) {
  std::string fifo = dir_ + "/fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0666), 0);
  auto up = FileUpload::Begin(fifo, Self(), 0644, {});
  EXPECT_EQ(up.status().code(), ErrorCode::kInvalidArgument) << up.status().ToString();
  struct stat st {};
  ASSERT_EQ(::lstat(fifo.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
  EXPECT_EQ(DirNames(dir_), std::vector<std::string>{"fifo"});
}

TEST_F(FileTransferTest, AnUploadReplacesASymlinkInsteadOfWritingThroughIt) {
  std::string target = Put("target", "old");
  std::string link = dir_ + "/link";
  ASSERT_EQ(::symlink(target.c_str(), link.c_str()), 0);
  auto up = FileUpload::Begin(link, Self(), 0640, {});
  ASSERT_TRUE(up.ok()) << up.status().ToString();
  ASSERT_TRUE((*up)->Write("new").ok());
  ASSERT_TRUE((*up)->Commit().ok());
  EXPECT_EQ(*ReadFile(target), "old");
  struct stat st {};
  ASSERT_EQ(::lstat(link.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0640u);
  EXPECT_EQ(*ReadFile(link), "new");
}

TEST_F(FileTransferTest, AnAbandonedUploadLeavesNoTemporaryFile) {
  {
    auto up = FileUpload::Begin(dir_ + "/sub/f", Self(), 0644, {});
    ASSERT_TRUE(up.ok()) << up.status().ToString();
    ASSERT_TRUE((*up)->Write("partial").ok());
  }
  EXPECT_TRUE(DirNames(dir_ + "/sub").empty());
}

TEST_F(FileTransferTest, RemoveDeletesASymlinkToADirectoryButNotTheDirectory) {
  std::string kept = dir_ + "/kept";
  ASSERT_TRUE(MakeDirs(kept).ok());
  Put("kept/f", "x");
  ASSERT_EQ(::symlink(kept.c_str(), (dir_ + "/link").c_str()), 0);
  ASSERT_TRUE(RemovePath(dir_ + "/link").ok());
  EXPECT_FALSE(PathExists(dir_ + "/link"));
  EXPECT_TRUE(PathExists(kept + "/f"));
  ASSERT_TRUE(RemovePath(kept).ok());
  EXPECT_FALSE(PathExists(kept));
  EXPECT_EQ(RemovePath(kept).code(), ErrorCode::kNotFound);
}

TEST_F(FileTransferTest, MakeDirsRefusesAFileInTheWay) {
  Put("file", "x");
  EXPECT_EQ(MakeDirs(dir_ + "/file").status().code(), ErrorCode::kFailedPrecondition);
  EXPECT_EQ(*MakeDirs(dir_ + "/a/b"), true);
  EXPECT_EQ(*MakeDirs(dir_ + "/a/b"), false);
}

TEST(UploadTempName, NamesItsKindAndNothingElseParses) {
  auto c = ParseUploadTempName(".f.txt.moat-cabc12345");
  ASSERT_TRUE(c.has_value());
  EXPECT_FALSE(c->replaces);
  EXPECT_FALSE(c->has_metadata);
  auto n = ParseUploadTempName(".f.moat-n0000zzzz");
  ASSERT_TRUE(n.has_value());
  EXPECT_TRUE(n->replaces);
  EXPECT_TRUE(n->has_metadata);
  for (const char* other : {"f.moat-cabc12345", ".f.moat-xabc12345", ".f.moat-cABC12345",
                            ".f.moat-cabc1234", ".moat-cabc12345", ".f.moat-cabc12345~"}) {
    EXPECT_FALSE(ParseUploadTempName(other).has_value()) << other;
  }
}

Result<std::vector<std::string>> Upload(const std::string& path, const std::string& data,
                                        FileMetadata metadata = {}) {
  MOAT_ASSIGN_OR_RETURN(auto up, FileUpload::Begin(path, Self(), 0644, std::move(metadata)));
  std::vector<std::string> temps;  // the names beside it while it is in progress
  for (const auto& name : DirNames(ParentDir(path))) {
    if (ParseUploadTempName(name)) temps.push_back(name);
  }
  if (!data.empty()) MOAT_RETURN_IF_ERROR(up->Write(data));
  MOAT_RETURN_IF_ERROR(up->Commit());
  return temps;
}

TEST_F(FileTransferTest, MetadataIsSetOnTheFileAndGoesWithTheFileItReplaced) {
  std::string path = dir_ + "/m.txt";
  auto temps = Upload(path, "v1", {{"owner", "ann"}, {"stage", "raw"}});
  ASSERT_TRUE(temps.ok()) << temps.status().ToString();
  ASSERT_EQ(temps->size(), 1u);
  EXPECT_TRUE(ParseUploadTempName((*temps)[0])->has_metadata);
  EXPECT_FALSE(ParseUploadTempName((*temps)[0])->replaces);
  UniqueFd dir(::open(dir_.c_str(), O_PATH | O_CLOEXEC));
  EXPECT_EQ(ReadMetadata(dir.get(), "m.txt"), (Json{{"owner", "ann"}, {"stage", "raw"}}));
  // Set from inside the sandbox: shown if a header could carry it.
  ASSERT_EQ(::setxattr(path.c_str(), "user.e2b.extra", "x y", 3, 0), 0);
  ASSERT_EQ(::setxattr(path.c_str(), "user.e2b.bin", "\x01", 1, 0), 0);
  ASSERT_EQ(::setxattr(path.c_str(), "user.other", "z", 1, 0), 0);
  EXPECT_EQ(ReadMetadata(dir.get(), "m.txt"),
            (Json{{"owner", "ann"}, {"stage", "raw"}, {"extra", "x y"}}));
  // A rename keeps it (the same inode); an upload over it replaces the whole set.
  ASSERT_TRUE(MovePath(path, dir_ + "/n.txt").ok());
  EXPECT_EQ(ReadMetadata(dir.get(), "n.txt").size(), 3u);
  temps = Upload(dir_ + "/n.txt", "v2");
  ASSERT_TRUE(temps.ok()) << temps.status().ToString();
  EXPECT_TRUE(ParseUploadTempName((*temps)[0])->replaces);
  EXPECT_TRUE(ReadMetadata(dir.get(), "n.txt").empty());
  struct stat st {};
  ASSERT_EQ(::stat((dir_ + "/n.txt").c_str(), &st), 0);
  Json entry = EntryJson(dir_ + "/n.txt", st, UserTable::Load());
  EXPECT_FALSE(entry.contains("metadata"));
  ASSERT_TRUE(Upload(dir_ + "/n.txt", "v3", {{"k", "v"}}).ok());
  ASSERT_EQ(::stat((dir_ + "/n.txt").c_str(), &st), 0);
  EXPECT_EQ(EntryJson(dir_ + "/n.txt", st, UserTable::Load())["metadata"], (Json{{"k", "v"}}));
}

TEST(FileMetadata, KeysAreLowerCasedAndChecked) {
  auto m = NormalizeMetadata({{"Owner", "ann"}});
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(*m, (FileMetadata{{"owner", "ann"}}));
  EXPECT_NE(NormalizeMetadata({{"", "x"}}).status().message().find("empty"), std::string::npos);
  EXPECT_FALSE(NormalizeMetadata({{std::string(kMaxMetadataKey + 1, 'k'), "x"}}).ok());
  EXPECT_TRUE(NormalizeMetadata({{std::string(kMaxMetadataKey, 'k'), "x"}}).ok());
  auto bad = NormalizeMetadata({{"k", "caf\xc3\xa9"}});
  EXPECT_EQ(bad.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("\"k\""), std::string::npos) << bad.status().ToString();
  EXPECT_FALSE(NormalizeMetadata({{"a", std::string(kMaxMetadataBytes, 'v')}}).ok());
  EXPECT_TRUE(NormalizeMetadata({{"a", std::string(kMaxMetadataBytes - 10, 'v')}}).ok());
}

// The events a watch on dir_ sends while `act` runs (drained until quiet).
std::vector<Json> WatchWhile(const std::string& dir, WatchOptions options,
                             const std::function<void()>& act) {
  auto loop = EventLoop::Create();
  EXPECT_TRUE(loop.ok());
  std::vector<Json> events;
  auto watch = Watch::Start(
      **loop, dir, options, Self(), [&](const Json& e) { events.push_back(e); },
      [] { return true; });
  EXPECT_TRUE(watch.ok()) << watch.status().ToString();
  if (!watch.ok()) return events;
  act();
  for (int i = 0; i < 5; ++i) {
    (**loop).AddTimer(std::chrono::milliseconds(20), [] {});
    EXPECT_TRUE((**loop).RunOnce().ok());
  }
  return events;
}

std::vector<std::string> Types(const std::vector<Json>& events, const std::string& name) {
  std::vector<std::string> out;
  for (const auto& e : events) {
    if (e["name"] == name) out.push_back(e["type"]);
  }
  return out;
}

using Strings = std::vector<std::string>;

TEST_F(FileTransferTest, AWatchSeesAnUploadAsAWriteInPlace) {
  auto events = WatchWhile(dir_, {}, [&] {
    ASSERT_TRUE(Upload(dir_ + "/new.txt", "data").ok());
    ASSERT_TRUE(Upload(dir_ + "/empty.txt", "").ok());
    ASSERT_TRUE(Upload(dir_ + "/new.txt", "more").ok());
    ASSERT_TRUE(Upload(dir_ + "/meta.txt", "m", {{"k", "v"}}).ok());
  });
  for (const auto& e : events) {
    EXPECT_FALSE(ParseUploadTempName(e["name"].get<std::string>())) << e.dump();
  }
  EXPECT_EQ(Types(events, "new.txt"), (Strings{"create", "chmod", "write", "chmod", "write"}));
  EXPECT_EQ(Types(events, "empty.txt"), (Strings{"create", "chmod"}));
  EXPECT_EQ(Types(events, "meta.txt"), (Strings{"create", "chmod", "write", "chmod"}));
  // A plain rename is still rename + create.
  events =
      WatchWhile(dir_, {}, [&] { ASSERT_TRUE(MovePath(dir_ + "/new.txt", dir_ + "/b").ok()); });
  EXPECT_EQ(Types(events, "new.txt"), (Strings{"rename"}));
  EXPECT_EQ(Types(events, "b"), (Strings{"create"}));
}

TEST_F(FileTransferTest, AWatchIncludesTheEntryWhenAsked) {
  WatchOptions with_entry;
  with_entry.include_entry = true;
  auto events = WatchWhile(dir_, with_entry, [&] {
    ASSERT_TRUE(Upload(dir_ + "/e.txt", "12345", {{"k", "v"}}).ok());
    ASSERT_TRUE(RemovePath(dir_ + "/e.txt").ok());
  });
  ASSERT_FALSE(events.empty());
  for (const auto& e : events) {
    if (e["type"] == "remove") {
      EXPECT_FALSE(e.contains("entry")) << e.dump();
      continue;
    }
    // Stat'ed when the event was read: after the removal there is nothing to show.
    if (e.contains("entry")) {
      EXPECT_EQ(e["entry"]["path"], dir_ + "/e.txt") << e.dump();
    }
  }
  events = WatchWhile(dir_, with_entry, [&] {
    ASSERT_TRUE(Upload(dir_ + "/f.txt", "12345", {{"k", "v"}}).ok());
  });
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events[0]["entry"]["size"], 5);
  EXPECT_EQ(events[0]["entry"]["metadata"], (Json{{"k", "v"}}));
}

TEST(FsCredentials, ActingAsOneselfSwitchesNothing) {
  auto creds = FsCredentials::Assume(Self());
  ASSERT_TRUE(creds.ok()) << creds.status().ToString();
  EXPECT_FALSE(creds->switched());
}

TEST(FsCredentials, WithoutRootActingAsAnotherUserIsPermissionDenied) {
  if (::geteuid() == 0) GTEST_SKIP() << "runs as root";
  UserInfo other = Self();
  other.name = "other";
  other.uid += 1;
  EXPECT_EQ(FsCredentials::Assume(other).status().code(), ErrorCode::kPermissionDenied);
}

TEST_F(FileTransferTest, AsAnotherUserTheKernelChecksThatUsersAccessAndOwnsWhatTheyCreate) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to act as another user";
  std::string secret = Put("secret", "root only", 0600);
  std::string theirs = dir_ + "/theirs";
  ASSERT_EQ(::mkdir(theirs.c_str(), 0755), 0);
  ASSERT_EQ(::chown(theirs.c_str(), 65534, 65534), 0);
  {
    auto creds = FsCredentials::Assume(Nobody());
    ASSERT_TRUE(creds.ok()) << creds.status().ToString();
    EXPECT_TRUE(creds->switched());
    EXPECT_EQ(FileDownload::Open(secret).status().code(), ErrorCode::kPermissionDenied);
    EXPECT_EQ(FileUpload::Begin(dir_ + "/new", Nobody(), 0644, {}).status().code(),
              ErrorCode::kPermissionDenied);
    auto up = FileUpload::Begin(theirs + "/a/b/f", Nobody(), 0644, {});
    ASSERT_TRUE(up.ok()) << up.status().ToString();
    ASSERT_TRUE((*up)->Commit().ok());
  }
  // Root again once the credentials are gone.
  EXPECT_TRUE(FileDownload::Open(secret).ok());
  for (const std::string& p : {theirs + "/a", theirs + "/a/b", theirs + "/a/b/f"}) {
    struct stat st {};
    ASSERT_EQ(::lstat(p.c_str(), &st), 0) << p;
    EXPECT_EQ(st.st_uid, 65534u) << p;
    EXPECT_EQ(st.st_gid, 65534u) << p;
  }
}

}  // namespace
}  // namespace moat::guest
