// End to end: real microVMs booted by the agent (jailed QEMU microvm, the real guest kernel and
// rootfs with moat-guest as PID 1), driven over the virtio-serial channel. One VM is shared by
// the tests of the suite; the lifecycle tests boot their own.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <set>
#include <thread>

#include "agent/agent.h"
#include "common/fs.h"
#include "support/agent_config.h"
#include "support/test_util.h"

namespace moat::agent {
namespace {

using channel::ExecRequest;
using channel::GuestClient;
using channel::StreamEvent;
using channel::SubChannel;
using nlohmann::json;
using namespace std::chrono_literals;

GuestClient::Deadline In(std::chrono::milliseconds d) {
  return GuestClient::Clock::now() + d;
}

class SandboxE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string guest = moat::test_support::BuildDir() + "/guest";
    ASSERT_TRUE(PathExists(guest + "/vmlinux") && PathExists(guest + "/rootfs.ext4"))
        << "guest artifacts missing in " << guest << " (run `make guest`)";
    auto dir = MakeTempDir("/tmp", "moat-e2e.");
    ASSERT_TRUE(dir.ok());
    data_dir_ = new std::string(*dir);
    fds_before_ = moat::test_support::OpenFdCount();
    auto agent = Agent::Start(moat::test_support::E2eAgentConfig(*data_dir_));
    ASSERT_TRUE(agent.ok()) << agent.status().ToString();
    agent_ = agent->release();
    auto sb = agent_->Create("base", {.env = {{"MOAT_TEST", "yes"}}});
    ASSERT_TRUE(sb.ok()) << sb.status().ToString();
    sandbox_ = new std::shared_ptr<Sandbox>(*sb);
  }

  static void TearDownTestSuite() {
    delete sandbox_;
    delete agent_;  // kills every sandbox
    if (data_dir_ != nullptr) {
      // Nothing of any sandbox is left: directories, VMM processes, fds of the agent.
      std::string left = *data_dir_ + "/sandboxes";
      EXPECT_TRUE(!PathExists(left) || ::rmdir(left.c_str()) == 0) << "sandbox dirs left behind";
      EXPECT_EQ(moat::test_support::CountProcessesMentioning(*data_dir_), 0);
      EXPECT_EQ(moat::test_support::OpenFdCount(), fds_before_) << "fds leaked by the agent";
      EXPECT_TRUE(RemoveTree(*data_dir_).ok());
    }
    delete data_dir_;
  }

  static std::shared_ptr<GuestClient> Guest() {
    auto g = (*sandbox_)->Guest();
    EXPECT_TRUE(g.ok()) << g.status().ToString();
    return g.ok() ? *g : nullptr;
  }

  static channel::ExecResult Run(ExecRequest req, std::chrono::milliseconds timeout = 30s) {
    auto r = Guest()->Run(req, In(timeout));
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : channel::ExecResult{};
  }

  static std::string* data_dir_;
  static Agent* agent_;
  static std::shared_ptr<Sandbox>* sandbox_;
  static int fds_before_;
};

std::string* SandboxE2eTest::data_dir_ = nullptr;
Agent* SandboxE2eTest::agent_ = nullptr;
std::shared_ptr<Sandbox>* SandboxE2eTest::sandbox_ = nullptr;
int SandboxE2eTest::fds_before_ = 0;

TEST_F(SandboxE2eTest, CreateRestoresTheBakedTemplateAndKeepsAConsoleLog) {
  auto& sb = *sandbox_;
  EXPECT_EQ(sb->origin().kind, "template");
  EXPECT_LT(sb->boot_time(), 30s);
  std::printf("create (restore) to moat-guest ready: %ld ms\n",
              static_cast<long>(sb->boot_time().count()));
  EXPECT_TRUE(PathExists(sb->paths().console_log));
  auto hello = Guest()->guest_hello();
  EXPECT_TRUE(hello.pid1) << hello.boot_id;
}

TEST_F(SandboxE2eTest, PythonRunsAndStreamsAreSeparate) {
  auto r = Run({.argv = {"python3", "-c", "print(2**10)"}});
  EXPECT_EQ(r.stdout_data, "1024\n");
  EXPECT_EQ(r.exit_code, 0);
  auto r2 = Run({.cmd = "echo out; echo err >&2; exit 3"});
  EXPECT_EQ(r2.stdout_data, "out\n");
  EXPECT_EQ(r2.stderr_data, "err\n");
  EXPECT_EQ(r2.exit_code, 3);
}

TEST_F(SandboxE2eTest, AProcessKilledBySigkillIsReportedAsSuch) {
  auto r = Run({.cmd = "kill -9 $$"});
  EXPECT_FALSE(r.exit_code.has_value());
  EXPECT_EQ(r.signal, SIGKILL);
}

TEST_F(SandboxE2eTest, StdinIsEchoedByCatUntilClosed) {
  auto stream = Guest()->Open({{"op", "exec"}, {"argv", {"cat"}}, {"stdin", true}});
  ASSERT_TRUE(stream.ok()) << stream.status().ToString();
  auto& s = **stream;
  ASSERT_TRUE(s.Write(SubChannel::kStdin, "hello moat\n").ok());
  ASSERT_TRUE(s.CloseWrite(SubChannel::kStdin).ok());
  std::string out;
  std::optional<int> code;
  for (;;) {
    auto ev = s.Next(In(30s));
    ASSERT_TRUE(ev.ok()) << ev.status().ToString();
    if (ev->kind == StreamEvent::Kind::kData) out += ev->data;
    if (ev->kind == StreamEvent::Kind::kMessage && ev->message.value("type", "") == "exit") {
      code = ev->message.value("exit_code", -1);
    }
    if (ev->kind == StreamEvent::Kind::kEnd) {
      EXPECT_TRUE(ev->status.ok()) << ev->status.ToString();
      break;
    }
  }
  EXPECT_EQ(out, "hello moat\n");
  EXPECT_EQ(code, 0);
}

TEST_F(SandboxE2eTest, EnvCwdAndUserApply) {
  auto r =
      Run({.cmd = "echo $MOAT_TEST $FOO; pwd; id -un", .env = {{"FOO", "bar"}}, .cwd = "/tmp"});
  EXPECT_EQ(r.stdout_data, "yes bar\n/tmp\nuser\n");
  auto root = Run({.argv = {"id", "-un"}, .user = "root"});
  EXPECT_EQ(root.stdout_data, "root\n");
  auto home = Run({.argv = {"pwd"}});
  EXPECT_EQ(home.stdout_data, "/home/user\n");
}

TEST_F(SandboxE2eTest, HundredMibOfStdoutArrivesIntactWithBoundedHostMemory) {
  // 100 MiB of a known pattern; the host checks it chunk by chunk without keeping it.
  auto stream = Guest()->Open({{"op", "exec"},
                               {"argv",
                                {"python3", "-c",
                                 "import sys\nb=bytes(range(256))*4096\nfor _ in range(100): "
                                 "sys.stdout.buffer.write(b)"}}});
  ASSERT_TRUE(stream.ok());
  long rss_before = moat::test_support::VmRssKiB();
  long rss_peak = rss_before;
  std::string expected_block;
  for (int i = 0; i < 4096; ++i)
    for (int b = 0; b < 256; ++b) expected_block.push_back(static_cast<char>(b));
  size_t total = 0;
  bool intact = true;
  std::optional<int> code;
  for (;;) {
    auto ev = (*stream)->Next(In(300s));
    ASSERT_TRUE(ev.ok()) << ev.status().ToString();
    if (ev->kind == StreamEvent::Kind::kData) {
      for (size_t i = 0; i < ev->data.size() && intact; i += 4096) {
        size_t n = std::min<size_t>(4096, ev->data.size() - i);
        intact = std::memcmp(ev->data.data() + i,
                             expected_block.data() + ((total + i) % expected_block.size()), n) == 0;
      }
      total += ev->data.size();
      if (total % (8 << 20) < ev->data.size()) {
        rss_peak = std::max(rss_peak, moat::test_support::VmRssKiB());
        // A slow consumer: the guest must wait rather than the host buffering.
        std::this_thread::sleep_for(20ms);
      }
    }
    if (ev->kind == StreamEvent::Kind::kMessage && ev->message.value("type", "") == "exit") {
      code = ev->message.value("exit_code", -1);
    }
    if (ev->kind == StreamEvent::Kind::kEnd) break;
  }
  EXPECT_TRUE(intact);
  EXPECT_EQ(total, 100u << 20);
  EXPECT_EQ(code, 0);
  std::printf("100 MiB stdout: host RSS before %ld KiB, peak %ld KiB\n", rss_before, rss_peak);
  EXPECT_LT(rss_peak - rss_before, 32 * 1024) << "host memory grew with the output";
}

TEST_F(SandboxE2eTest, FiftyMibFileRoundTripsAndFileOpsBehave) {
  std::string data(50 << 20, '\0');
  uint64_t x = 88172645463325252ull;
  for (size_t i = 0; i < data.size(); i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(&data[i], &x, 8);
  }
  auto g = Guest();
  auto up = g->Open({{"op", "write_file"}, {"path", "/home/user/dir/blob.bin"}});
  ASSERT_TRUE(up.ok());
  ASSERT_TRUE((*up)->Write(SubChannel::kStdin, data, In(300s)).ok());
  ASSERT_TRUE((*up)->CloseWrite(SubChannel::kStdin).ok());
  for (;;) {
    auto ev = (*up)->Next(In(300s));
    ASSERT_TRUE(ev.ok());
    if (ev->kind == StreamEvent::Kind::kEnd) {
      ASSERT_TRUE(ev->status.ok()) << ev->status.ToString();
      break;
    }
  }
  auto sum = Run({.argv = {"sha256sum", "/home/user/dir/blob.bin"}}, 120s);
  EXPECT_EQ(sum.stdout_data.substr(0, 64), moat::test_support::Sha256Hex(data));
  auto down = g->Open({{"op", "read_file"}, {"path", "dir/blob.bin"}});
  ASSERT_TRUE(down.ok());
  std::string back;
  for (;;) {
    auto ev = (*down)->Next(In(300s));
    ASSERT_TRUE(ev.ok());
    if (ev->kind == StreamEvent::Kind::kData) back += ev->data;
    if (ev->kind == StreamEvent::Kind::kEnd) break;
  }
  EXPECT_EQ(back.size(), data.size());
  EXPECT_EQ(moat::test_support::Sha256Hex(back), moat::test_support::Sha256Hex(data));

  auto stat = g->Call({{"op", "stat"}, {"path", "/home/user/dir/blob.bin"}}, In(10s));
  ASSERT_TRUE(stat.ok()) << stat.status().ToString();
  EXPECT_EQ((*stat)["size"], data.size());
  EXPECT_EQ((*stat)["owner"], "user");
  ASSERT_TRUE(g->Call({{"op", "mkdir"}, {"path", "/home/user/a/b/c"}}, In(10s)).ok());
  ASSERT_TRUE(
      g->Call({{"op", "move"}, {"from", "/home/user/dir/blob.bin"}, {"to", "/home/user/a/b/c/x"}},
              In(10s))
          .ok());
  auto list = g->Call({{"op", "list"}, {"path", "/home/user/a"}, {"depth", 3}}, In(10s));
  ASSERT_TRUE(list.ok());
  std::string names;
  for (auto& e : (*list)["entries"]) names += e["path"].get<std::string>() + " ";
  EXPECT_NE(names.find("/home/user/a/b/c/x"), std::string::npos) << names;
  ASSERT_TRUE(g->Call({{"op", "remove"}, {"path", "/home/user/a"}}, In(10s)).ok());
  auto gone = g->Call({{"op", "stat"}, {"path", "/home/user/a"}}, In(10s));
  EXPECT_EQ(gone.status().code(), ErrorCode::kNotFound);
}

TEST_F(SandboxE2eTest, WatchSeesCreateWriteAndRemove) {
  auto g = Guest();
  ASSERT_TRUE(g->Call({{"op", "mkdir"}, {"path", "/tmp/watched"}}, In(10s)).ok());
  auto w = g->Open({{"op", "watch"}, {"path", "/tmp/watched"}, {"recursive", false}});
  ASSERT_TRUE(w.ok());
  auto first = (*w)->Next(In(10s));
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->message.value("type", ""), "start");
  Run({.cmd = "echo hi > /tmp/watched/f; rm /tmp/watched/f"});
  std::set<std::string> seen;
  auto deadline = In(15s);
  while (seen.size() < 3) {
    auto ev = (*w)->Next(deadline);
    ASSERT_TRUE(ev.ok()) << "saw only " << seen.size() << " kinds: " << ev.status().ToString();
    if (ev->kind == StreamEvent::Kind::kMessage && ev->message.value("name", "") == "f") {
      seen.insert(ev->message.value("type", ""));
    }
  }
  EXPECT_TRUE(seen.count("create") && seen.count("write") && seen.count("remove"));
  (*w)->Cancel();
}

TEST_F(SandboxE2eTest, FiftyConcurrentExecsAllComplete) {
  auto g = Guest();
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 50; ++i) {
    threads.emplace_back([&, i] {
      auto r = g->Run({.cmd = "echo " + std::to_string(i) + "; exit " + std::to_string(i % 7)},
                      In(120s));
      if (r.ok() && r->stdout_data == std::to_string(i) + "\n" && r->exit_code == i % 7) ++ok;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 50);
}

TEST_F(SandboxE2eTest, TimeoutsKillAndUnknownTargetsGiveTypedErrors) {
  auto t0 = std::chrono::steady_clock::now();
  auto r = Run({.argv = {"sleep", "30"}, .timeout_ms = 500});
  EXPECT_TRUE(r.timed_out);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);
  auto g = Guest();
  auto sig = g->Call({{"op", "signal"}, {"pid", 999999}, {"signal", 9}}, In(10s));
  EXPECT_EQ(sig.status().code(), ErrorCode::kNotFound);
  auto missing = g->Open({{"op", "read_file"}, {"path", "/nope/missing"}});
  ASSERT_TRUE(missing.ok());
  auto ev = (*missing)->Next(In(10s));
  while (ev.ok() && ev->kind != StreamEvent::Kind::kEnd) ev = (*missing)->Next(In(10s));
  ASSERT_TRUE(ev.ok());
  EXPECT_EQ(ev->status.code(), ErrorCode::kNotFound);
}

TEST_F(SandboxE2eTest, TheChannelSurvivesTheHostReconnecting) {
  auto g = Guest();
  auto bg = g->Open({{"op", "exec"}, {"cmd", "sleep 60"}, {"tag", "bg-sleeper"}});
  ASSERT_TRUE(bg.ok());
  auto start = (*bg)->Next(In(10s));
  ASSERT_TRUE(start.ok());
  int pid = start->message.value("pid", -1);
  (*bg)->Cancel();
  // Drop the connection and connect anew (HELLO, fresh streams), as after a restore.
  g.reset();
  ASSERT_TRUE((*sandbox_)->ReconnectGuest().ok());
  auto reconnected = Guest();
  auto procs = reconnected->Call({{"op", "processes"}}, In(10s));
  ASSERT_TRUE(procs.ok());
  bool found = false;
  for (auto& p : (*procs)["processes"]) found = found || p.value("pid", -2) == pid;
  EXPECT_TRUE(found) << procs->dump();
  EXPECT_TRUE(reconnected->Call({{"op", "signal"}, {"pid", pid}, {"signal", 9}}, In(10s)).ok());
}

}  // namespace
}  // namespace moat::agent

namespace moat::agent {
namespace {

TEST_F(SandboxE2eTest, APtyProcessSeesItsTerminalResized) {
  auto g = Guest();
  auto s = g->Open({{"op", "exec"},
                    {"cmd", "stty size; read line; stty size"},
                    {"stdin", true},
                    {"pty", {{"cols", 80}, {"rows", 24}}}});
  ASSERT_TRUE(s.ok());
  auto start = (*s)->Next(In(10s));
  ASSERT_TRUE(start.ok());
  int pid = start->message.value("pid", -1);
  std::string out;
  auto read_until = [&](const std::string& want) {
    while (out.find(want) == std::string::npos) {
      auto ev = (*s)->Next(In(20s));
      if (!ev.ok() || ev->kind == StreamEvent::Kind::kEnd) return false;
      if (ev->kind == StreamEvent::Kind::kData) out += ev->data;
    }
    return true;
  };
  ASSERT_TRUE(read_until("24 80")) << out;
  auto resized = g->Call({{"op", "resize"}, {"pid", pid}, {"cols", 132}, {"rows", 50}}, In(10s));
  ASSERT_TRUE(resized.ok()) << resized.status().ToString();
  ASSERT_TRUE((*s)->Write(SubChannel::kStdin, "go\n").ok());
  EXPECT_TRUE(read_until("50 132")) << out;
}

TEST_F(SandboxE2eTest, TheGuestClockMatchesTheHost) {
  auto r = Run({.argv = {"date", "+%s%N"}});
  ASSERT_EQ(r.exit_code, 0);
  int64_t guest_ns = std::stoll(r.stdout_data);
  timespec now{};
  ::clock_gettime(CLOCK_REALTIME, &now);
  int64_t host_ns = static_cast<int64_t>(now.tv_sec) * 1000000000 + now.tv_nsec;
  EXPECT_LT(std::llabs(host_ns - guest_ns), 2'000'000'000LL) << "guest clock is off";
}

}  // namespace
}  // namespace moat::agent
