// moat-guest on the host (--listen-unix) driven through GuestClient: the real binary, real
// processes and files, the real protocol. No VM and no root-only system changes.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <thread>

#include "channel/guest_client.h"
#include "common/child_process.h"
#include "common/fs.h"
#include "common/socket.h"
#include "support/test_util.h"

namespace moat::channel {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

GuestClient::Deadline In(std::chrono::milliseconds d) {
  return GuestClient::Clock::now() + d;
}

bool UserExists(const std::string& name) {
  auto passwd = ReadFile("/etc/passwd");
  return passwd.ok() && (passwd->rfind(name + ":", 0) == 0 ||
                         passwd->find("\n" + name + ":") != std::string::npos);
}

class GuestAgentTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const char* build = std::getenv("MOAT_BUILD_DIR");
    std::string binary = std::string(build ? build : "build") + "/bin/moat-guest";
    auto dir = MakeTempDir("/tmp", "moat-guest-test-");
    ASSERT_TRUE(dir.ok()) << dir.status().ToString();
    dir_ = new std::string(*dir);
    socket_ = new std::string(*dir_ + "/g.sock");
    SpawnOptions opts;
    opts.argv = {binary, "--listen-unix", *socket_, "--log-level", "warn"};
    if (::geteuid() == 0) {
      // A `cmd` runs `bash -l -c`, which reads root's login scripts: on a host those are the
      // host's (a pyenv's `rehash`, killed mid-way by a test, leaves a lock that makes every
      // later login shell wait a minute). The guest under test gets an empty /root of its own,
      // as in the real rootfs: a private mount namespace with a tmpfs over it.
      opts.argv.insert(opts.argv.begin(),
                       {"unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
                        "mount -t tmpfs -o mode=0700 moat-test-root /root && exec \"$0\" \"$@\""});
    }
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
    delete socket_;
  }

  void SetUp() override {
    ASSERT_NE(guest_, nullptr);
    client_ = Connect();
    ASSERT_NE(client_, nullptr);
    auto work = MakeTempDir(*dir_, "work-");
    ASSERT_TRUE(work.ok());
    work_ = *work;
  }

  static std::unique_ptr<GuestClient> Connect() {
    auto fd = ConnectUnix(*socket_, 5s);
    EXPECT_TRUE(fd.ok()) << fd.status().ToString();
    if (!fd.ok()) return nullptr;
    auto client = GuestClient::Connect(std::move(*fd), 5s);
    EXPECT_TRUE(client.ok()) << client.status().ToString();
    return client.ok() ? std::move(*client) : nullptr;
  }

  ExecResult MustRun(ExecRequest req) {
    auto r = client_->Run(req, In(20s));
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : ExecResult{};
  }

  // Reads a stream to its END; returns the END status, collecting DATA and MESSAGEs.
  static Status Drain(GuestClient::Stream& s, std::string* out, std::vector<json>* messages,
                      std::chrono::milliseconds timeout = 20s) {
    auto deadline = In(timeout);
    for (;;) {
      auto ev = s.Next(deadline);
      if (!ev.ok()) return ev.status();
      if (ev->kind == StreamEvent::Kind::kData && out != nullptr) out->append(ev->data);
      if (ev->kind == StreamEvent::Kind::kMessage && messages != nullptr) {
        messages->push_back(ev->message);
      }
      if (ev->kind == StreamEvent::Kind::kEnd) return ev->status;
    }
  }

  static inline ChildProcess* guest_ = nullptr;
  static inline std::string* dir_ = nullptr;
  static inline std::string* socket_ = nullptr;
  std::unique_ptr<GuestClient> client_;
  std::string work_;
};

TEST_F(GuestAgentTest, HandshakeReportsVersionAndNotPid1) {
  EXPECT_EQ(client_->guest_hello().version, 1u);
  EXPECT_FALSE(client_->guest_hello().pid1);
  auto health = client_->Call({{"op", "health"}}, In(5s));
  ASSERT_TRUE(health.ok()) << health.status().ToString();
  EXPECT_EQ((*health)["ok"], true);
}

TEST_F(GuestAgentTest, RunsPythonAndReturnsItsOutput) {
  ExecRequest req;
  req.argv = {"python3", "-c", "print(2**10)"};
  ExecResult r = MustRun(req);
  EXPECT_EQ(r.stdout_data, "1024\n");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_GT(r.pid, 0);
}

TEST_F(GuestAgentTest, KeepsStdoutAndStderrApartAndReportsExitCodes) {
  ExecRequest req;
  req.cmd = "echo out; echo err >&2; exit 3";
  ExecResult r = MustRun(req);
  EXPECT_EQ(r.stdout_data, "out\n");
  EXPECT_EQ(r.stderr_data, "err\n");
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_FALSE(r.signal.has_value());
  req.cmd = "true";
  EXPECT_EQ(MustRun(req).exit_code, 0);
}

TEST_F(GuestAgentTest, ReportsTheSignalThatKilledAProcess) {
  auto stream = client_->Open({{"op", "exec"}, {"argv", {"sleep", "30"}}});
  ASSERT_TRUE(stream.ok());
  auto start = (*stream)->Next(In(5s));
  ASSERT_TRUE(start.ok());
  ASSERT_EQ(start->kind, StreamEvent::Kind::kMessage);
  int pid = start->message["pid"];
  auto sig = client_->Call({{"op", "signal"}, {"pid", pid}, {"signal", 9}}, In(5s));
  ASSERT_TRUE(sig.ok()) << sig.status().ToString();
  std::vector<json> messages;
  ASSERT_TRUE(Drain(**stream, nullptr, &messages).ok());
  ASSERT_EQ(messages.size(), 1u);
  EXPECT_EQ(messages[0]["type"], "exit");
  EXPECT_EQ(messages[0]["signal"], 9);
}

TEST_F(GuestAgentTest, EchoesStdinThroughCatUntilEof) {
  ExecRequest req;
  req.argv = {"cat"};
  req.stdin_data = std::string("hello\nworld\n");
  ExecResult r = MustRun(req);
  EXPECT_EQ(r.stdout_data, "hello\nworld\n");
  EXPECT_EQ(r.exit_code, 0);
}

TEST_F(GuestAgentTest, FeedsStdinOfAProcessThroughAStdinStream) {
  auto exec = client_->Open({{"op", "exec"}, {"argv", {"cat"}}, {"stdin", true}});
  ASSERT_TRUE(exec.ok());
  auto start = (*exec)->Next(In(5s));
  ASSERT_TRUE(start.ok());
  int pid = start->message["pid"];
  auto in = client_->Open({{"op", "stdin"}, {"pid", pid}});
  ASSERT_TRUE(in.ok());
  ASSERT_TRUE((*in)->Write(SubChannel::kStdin, "via stdin op").ok());
  ASSERT_TRUE((*in)->CloseWrite(SubChannel::kStdin).ok());
  EXPECT_TRUE(Drain(**in, nullptr, nullptr).ok());
  std::string out;
  EXPECT_TRUE(Drain(**exec, &out, nullptr).ok());
  EXPECT_EQ(out, "via stdin op");
}

TEST_F(GuestAgentTest, AppliesEnvironmentAndWorkingDirectory) {
  ExecRequest req;
  req.cmd = "printf '%s|' \"$FOO\"; pwd";
  req.env = {{"FOO", "bar baz"}};
  req.cwd = work_;
  ExecResult r = MustRun(req);
  EXPECT_EQ(r.stdout_data, "bar baz|" + work_ + "\n");
}

TEST_F(GuestAgentTest, RunsAsRootAndAsAnotherUser) {
  ExecRequest req;
  req.argv = {"id", "-un"};
  req.user = "root";
  EXPECT_EQ(MustRun(req).stdout_data, "root\n");
  if (!UserExists("nobody")) GTEST_SKIP() << "no user nobody on this host";
  req.user = "nobody";
  ExecResult r = MustRun(req);
  EXPECT_EQ(r.stdout_data, "nobody\n");
  req.argv = {"sh", "-c", "echo $HOME $USER"};
  EXPECT_NE(MustRun(req).stdout_data.find("nobody"), std::string::npos);
}

TEST_F(GuestAgentTest, RunsInATerminalOfTheRequestedSize) {
  auto stream = client_->Open(
      {{"op", "exec"}, {"argv", {"stty", "size"}}, {"pty", {{"cols", 101}, {"rows", 33}}}});
  ASSERT_TRUE(stream.ok());
  std::string out;
  ASSERT_TRUE(Drain(**stream, &out, nullptr).ok());
  EXPECT_NE(out.find("33 101"), std::string::npos) << out;
}

TEST_F(GuestAgentTest, Streams100MiBOfStdoutIntactWithBoundedHostMemory) {
  // 63 characters and a newline: byte i of the output is kLine[i % 64].
  const std::string kLine = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_\n";
  ASSERT_EQ(kLine.size(), 64u);
  constexpr size_t kTotal = 100 * 1024 * 1024;
  auto stream = client_->Open(
      {{"op", "exec"},
       {"cmd", "yes " + kLine.substr(0, 63) + " | head -c " + std::to_string(kTotal)}});
  ASSERT_TRUE(stream.ok());
  long rss_before = moat::test_support::VmRssKiB();
  long rss_peak = rss_before;
  size_t received = 0;
  size_t mismatches = 0;
  std::optional<json> exit;
  auto deadline = In(50s);
  for (int i = 0;; ++i) {
    auto ev = (*stream)->Next(deadline);
    ASSERT_TRUE(ev.ok()) << ev.status().ToString();
    if (ev->kind == StreamEvent::Kind::kData) {
      ASSERT_EQ(ev->channel, SubChannel::kStdout);
      for (char c : ev->data) mismatches += (c != kLine[received++ % 64]);
    } else if (ev->kind == StreamEvent::Kind::kMessage && ev->message["type"] == "exit") {
      exit = ev->message;
    } else if (ev->kind == StreamEvent::Kind::kEnd) {
      ASSERT_TRUE(ev->status.ok()) << ev->status.ToString();
      break;
    }
    if (i % 64 == 0) rss_peak = std::max(rss_peak, moat::test_support::VmRssKiB());
  }
  EXPECT_EQ(received, kTotal);
  EXPECT_EQ(mismatches, 0u);
  ASSERT_TRUE(exit.has_value());
  EXPECT_EQ((*exit)["exit_code"], 0);
  EXPECT_LT(rss_peak - rss_before, 64 * 1024)
      << "host RSS grew by " << (rss_peak - rss_before) << " KiB";
}

TEST_F(GuestAgentTest, ASlowConsumerBlocksTheProcessOnItsPipe) {
  std::string marker = work_ + "/finished";
  auto stream =
      client_->Open({{"op", "exec"}, {"cmd", "head -c 20000000 /dev/zero; touch " + marker}});
  ASSERT_TRUE(stream.ok());
  // Nobody reads: the guest may send one window (1 MiB), the pipe holds a little more, and
  // then the process must be stuck in write(2).
  std::this_thread::sleep_for(1500ms);
  EXPECT_FALSE(PathExists(marker)) << "the process ran ahead of the consumer";
  std::string out;
  std::vector<json> messages;
  ASSERT_TRUE(Drain(**stream, &out, &messages, 30s).ok());
  EXPECT_EQ(out.size(), 20000000u);
  EXPECT_TRUE(PathExists(marker));
}

TEST_F(GuestAgentTest, WritesA50MiBFileAndReadsBackTheSameBytes) {
  std::string data(50 * 1024 * 1024, '\0');
  std::mt19937_64 rng(42);
  for (size_t i = 0; i + 8 <= data.size(); i += 8) {
    uint64_t v = rng();
    std::memcpy(&data[i], &v, 8);
  }
  std::string path = work_ + "/sub/dir/big.bin";
  auto up = client_->Open({{"op", "write_file"}, {"path", path}, {"mode", 0600}});
  ASSERT_TRUE(up.ok());
  ASSERT_TRUE((*up)->Write(SubChannel::kStdin, data, In(40s)).ok());
  ASSERT_TRUE((*up)->CloseWrite(SubChannel::kStdin).ok());
  std::vector<json> messages;
  Status st = Drain(**up, nullptr, &messages, 40s);
  ASSERT_TRUE(st.ok()) << st.ToString();
  ASSERT_EQ(messages.size(), 1u);
  EXPECT_EQ(messages[0]["size"], data.size());
  EXPECT_EQ(messages[0]["mode"], 0600);
  EXPECT_EQ(messages[0]["type"], "file");

  auto down = client_->Open({{"op", "read_file"}, {"path", path}});
  ASSERT_TRUE(down.ok());
  std::string back;
  messages.clear();
  st = Drain(**down, &back, &messages, 40s);
  ASSERT_TRUE(st.ok()) << st.ToString();
  ASSERT_FALSE(messages.empty());
  EXPECT_EQ(messages[0]["size"], data.size());
  std::string want = moat::test_support::Sha256Hex(data);
  EXPECT_EQ(moat::test_support::Sha256Hex(back), want);

  ExecRequest sum;
  sum.argv = {"sha256sum", path};
  EXPECT_EQ(MustRun(sum).stdout_data.substr(0, 64), want);
}

TEST_F(GuestAgentTest, ListsStatsMakesMovesAndRemovesFiles) {
  auto mk = client_->Call({{"op", "mkdir"}, {"path", work_ + "/a/b"}}, In(5s));
  ASSERT_TRUE(mk.ok()) << mk.status().ToString();
  EXPECT_EQ((*mk)["created"], true);
  mk = client_->Call({{"op", "mkdir"}, {"path", work_ + "/a/b"}}, In(5s));
  ASSERT_TRUE(mk.ok());
  EXPECT_EQ((*mk)["created"], false);

  auto up = client_->Open({{"op", "write_file"}, {"path", work_ + "/a/f.txt"}});
  ASSERT_TRUE(up.ok());
  ASSERT_TRUE((*up)->Write(SubChannel::kStdin, "hello").ok());
  ASSERT_TRUE((*up)->CloseWrite(SubChannel::kStdin).ok());
  ASSERT_TRUE(Drain(**up, nullptr, nullptr).ok());

  auto st = client_->Call({{"op", "stat"}, {"path", work_ + "/a/f.txt"}}, In(5s));
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  EXPECT_EQ((*st)["size"], 5);
  EXPECT_EQ((*st)["name"], "f.txt");
  EXPECT_EQ((*st)["permissions"], "-rw-r--r--");
  EXPECT_EQ((*st)["owner"], "root");

  auto list = client_->Call({{"op", "list"}, {"path", work_}, {"depth", 3}}, In(5s));
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  std::set<std::string> paths;
  for (const auto& e : (*list)["entries"]) paths.insert(e["path"].get<std::string>());
  EXPECT_EQ(paths, (std::set<std::string>{work_ + "/a", work_ + "/a/b", work_ + "/a/f.txt"}));
  list = client_->Call({{"op", "list"}, {"path", work_}}, In(5s));
  ASSERT_TRUE(list.ok());
  EXPECT_EQ((*list)["entries"].size(), 1u);

  auto mv = client_->Call(
      {{"op", "move"}, {"from", work_ + "/a/f.txt"}, {"to", work_ + "/c/g.txt"}}, In(5s));
  ASSERT_TRUE(mv.ok()) << mv.status().ToString();
  EXPECT_EQ((*mv)["path"], work_ + "/c/g.txt");
  EXPECT_FALSE(PathExists(work_ + "/a/f.txt"));
  EXPECT_EQ(*ReadFile(work_ + "/c/g.txt"), "hello");

  auto rm = client_->Call({{"op", "remove"}, {"path", work_ + "/a"}}, In(5s));
  ASSERT_TRUE(rm.ok()) << rm.status().ToString();
  EXPECT_FALSE(PathExists(work_ + "/a"));
  rm = client_->Call({{"op", "remove"}, {"path", work_ + "/a"}}, In(5s));
  EXPECT_EQ(rm.status().code(), ErrorCode::kNotFound);
}

TEST_F(GuestAgentTest, WatchSeesCreateWriteAndRemove) {
  auto w = client_->Open({{"op", "watch"}, {"path", work_}, {"recursive", true}});
  ASSERT_TRUE(w.ok());
  auto start = (*w)->Next(In(5s));
  ASSERT_TRUE(start.ok());
  ASSERT_EQ(start->kind, StreamEvent::Kind::kMessage);
  EXPECT_EQ(start->message["type"], "start");
  ExecRequest req;
  req.cmd = "cd " + work_ + " && mkdir d && touch d/x && echo hi >> d/x && rm d/x";
  ASSERT_EQ(MustRun(req).exit_code, 0);
  std::vector<std::string> seen;
  auto deadline = In(5s);
  while (seen.empty() || seen.back() != "remove d/x") {
    auto ev = (*w)->Next(deadline);
    ASSERT_TRUE(ev.ok()) << "saw so far: " << testing::PrintToString(seen);
    ASSERT_EQ(ev->kind, StreamEvent::Kind::kMessage);
    seen.push_back(ev->message["type"].get<std::string>() + " " +
                   ev->message["name"].get<std::string>());
  }
  auto has = [&](const std::string& s) {
    return std::find(seen.begin(), seen.end(), s) != seen.end();
  };
  EXPECT_TRUE(has("create d"));
  EXPECT_TRUE(has("create d/x"));
  EXPECT_TRUE(has("write d/x"));
  (*w)->Cancel();
  auto end = (*w)->Next(In(1s));
  ASSERT_TRUE(end.ok());
  EXPECT_EQ(end->kind, StreamEvent::Kind::kEnd);
}

TEST_F(GuestAgentTest, Runs50ExecsConcurrently) {
  std::vector<std::unique_ptr<GuestClient::Stream>> streams;
  for (int i = 0; i < 50; ++i) {
    auto s = client_->Open({{"op", "exec"}, {"argv", {"echo", std::to_string(i)}}});
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    streams.push_back(std::move(*s));
  }
  for (int i = 0; i < 50; ++i) {
    std::string out;
    std::vector<json> messages;
    ASSERT_TRUE(Drain(*streams[i], &out, &messages).ok());
    EXPECT_EQ(out, std::to_string(i) + "\n");
    ASSERT_EQ(messages.size(), 2u);
    EXPECT_EQ(messages[1]["exit_code"], 0);
  }
}

TEST_F(GuestAgentTest, TimeoutKillsTheProcessGroupAndSaysSo) {
  ExecRequest req;
  req.cmd = "sleep 30 & sleep 30";
  req.timeout_ms = 300;
  auto t0 = std::chrono::steady_clock::now();
  ExecResult r = MustRun(req);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);
  EXPECT_EQ(r.signal, 9);
  EXPECT_TRUE(r.timed_out);
}

TEST_F(GuestAgentTest, UnknownProcessesAndMissingFilesAreNotFound) {
  auto sig = client_->Call({{"op", "signal"}, {"pid", 4000000}, {"signal", 15}}, In(5s));
  EXPECT_EQ(sig.status().code(), ErrorCode::kNotFound) << sig.status().ToString();
  auto attach = client_->Call({{"op", "attach"}, {"tag", "no-such-tag"}}, In(5s));
  EXPECT_EQ(attach.status().code(), ErrorCode::kNotFound);
  auto read = client_->Call({{"op", "read_file"}, {"path", work_ + "/missing"}}, In(5s));
  EXPECT_EQ(read.status().code(), ErrorCode::kNotFound) << read.status().ToString();
  auto st = client_->Call({{"op", "stat"}, {"path", work_ + "/missing"}}, In(5s));
  EXPECT_EQ(st.status().code(), ErrorCode::kNotFound);
  ExecRequest req;
  req.argv = {"no-such-program-moat"};
  auto r = client_->Run(req, In(5s));
  EXPECT_EQ(r.status().code(), ErrorCode::kNotFound) << r.status().ToString();
}

TEST_F(GuestAgentTest, AnExecThatFailsAfterTheForkEndsTheStreamWithoutAStartOrAnExit) {
  // An executable script whose interpreter does not exist: the program is found, and only the
  // child's execve fails (ENOENT) after the fork, so the failure arrives on the exec status.
  std::string bogus = work_ + "/not-a-program";
  ASSERT_TRUE(WriteFileAtomic(bogus, "#!/no/such/interpreter\n", 0755).ok());
  auto s = client_->Open({{"op", "exec"}, {"argv", {bogus}}});
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  auto first = (*s)->Next(In(10s));
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  ASSERT_EQ(first->kind, StreamEvent::Kind::kEnd)
      << "before the failure: " << first->message.dump();
  EXPECT_NE(first->status.message().find("exec " + bogus), std::string::npos)
      << first->status.ToString();
  EXPECT_NE(first->status.message().find("No such file"), std::string::npos)
      << first->status.ToString();
  // Nothing of it is left, and the guest goes on.
  auto list = client_->Call({{"op", "processes"}}, In(5s));
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->dump().find("not-a-program"), std::string::npos) << list->dump();
  EXPECT_EQ(MustRun({.argv = {"echo", "still here"}}).stdout_data, "still here\n");
}

TEST_F(GuestAgentTest, FieldsOfTheWrongTypeAreInvalidArgumentsNamingTheField) {
  auto r = client_->Call({{"op", "exec"}, {"argv", "ls"}}, In(5s));
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("argv"), std::string::npos);
  r = client_->Call({{"op", "signal"}, {"pid", "12"}, {"signal", 9}}, In(5s));
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("pid"), std::string::npos);
  r = client_->Call({{"op", "nope"}}, In(5s));
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_TRUE(client_->alive());
}

TEST_F(GuestAgentTest, DetachedOutputIsDrainedSoTheProcessFinishes) {
  std::string marker = work_ + "/done";
  auto s = client_->Open({{"op", "exec"}, {"cmd", "head -c 30000000 /dev/zero; touch " + marker}});
  ASSERT_TRUE(s.ok());
  (*s)->Cancel();
  auto deadline = std::chrono::steady_clock::now() + 15s;
  while (!PathExists(marker) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_TRUE(PathExists(marker));
}

TEST_F(GuestAgentTest, ABackgroundChildNeitherHoldsUpTheExitNorDiesOfEpipe) {
  std::string marker = work_ + "/late";
  ExecRequest req;
  req.cmd = "(sleep 2; echo late; touch " + marker + ") & echo now";
  auto t0 = std::chrono::steady_clock::now();
  ExecResult r = MustRun(req);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1800ms);  // did not wait for the child
  EXPECT_EQ(r.stdout_data, "now\n");
  EXPECT_EQ(r.exit_code, 0);
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!PathExists(marker) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_TRUE(PathExists(marker)) << "the background child did not survive writing its output";
}

TEST_F(GuestAgentTest, BackgroundProcessSurvivesAReconnectAndCanBeAttached) {
  std::string tag = "bg-" + std::to_string(::getpid());
  auto s = client_->Open({{"op", "exec"}, {"argv", {"sleep", "30"}}, {"tag", tag}});
  ASSERT_TRUE(s.ok());
  auto start = (*s)->Next(In(5s));
  ASSERT_TRUE(start.ok());
  int pid = start->message["pid"];
  s->reset();
  client_.reset();  // the host goes away

  client_ = Connect();
  ASSERT_NE(client_, nullptr);
  auto procs = client_->Call({{"op", "processes"}}, In(5s));
  ASSERT_TRUE(procs.ok()) << procs.status().ToString();
  bool listed = false;
  for (const auto& p : (*procs)["processes"])
    listed = listed || (p["pid"] == pid && p["tag"] == tag);
  EXPECT_TRUE(listed) << procs->dump();

  auto attached = client_->Open({{"op", "attach"}, {"tag", tag}});
  ASSERT_TRUE(attached.ok());
  auto again = (*attached)->Next(In(5s));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->message["pid"], pid);
  ASSERT_TRUE(client_->Call({{"op", "signal"}, {"pid", pid}, {"signal", 9}}, In(5s)).ok());
  std::vector<json> messages;
  ASSERT_TRUE(Drain(**attached, nullptr, &messages).ok());
  ASSERT_EQ(messages.size(), 1u);
  EXPECT_EQ(messages[0]["signal"], 9);
}

TEST_F(GuestAgentTest, SurvivesGarbageBeforeTheHello) {
  client_.reset();
  auto fd = ConnectUnix(*socket_, 5s);
  ASSERT_TRUE(fd.ok());
  std::string garbage;
  std::mt19937 rng(7);
  for (int i = 0; i < 100000; ++i) garbage.push_back(static_cast<char>(rng()));
  garbage += "MOATCHAN";  // a magic without a valid header in front of it
  // A valid-looking header of a small frame, then a truncated HELLO header.
  garbage += EncodeFrame(FrameType::kData, 1, 7, "xyz");
  garbage += std::string("\x10\x00\x00\x00\x01\x00", 6);
  ASSERT_TRUE(WriteAll(fd->get(), garbage).ok());
  auto client = GuestClient::Connect(std::move(*fd), 10s);
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  auto health = (*client)->Call({{"op", "health"}}, In(5s));
  ASSERT_TRUE(health.ok()) << health.status().ToString();
  EXPECT_EQ((*health)["ok"], true);
}

TEST_F(GuestAgentTest, ReportsMetrics) {
  auto m = client_->Call({{"op", "metrics"}}, In(5s));
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_GT((*m)["cpu_count"].get<int>(), 0);
  EXPECT_GT((*m)["mem_total"].get<uint64_t>(), (*m)["mem_used"].get<uint64_t>());
  EXPECT_GT((*m)["disk_total"].get<uint64_t>(), 0u);
}

}  // namespace
}  // namespace moat::channel
