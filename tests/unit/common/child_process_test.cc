#include "common/child_process.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>

#include "common/unique_fd.h"

namespace moat {
namespace {

TEST(ChildProcess, ReportsTheExitCode) {
  auto child = ChildProcess::Spawn({.argv = {"/bin/sh", "-c", "exit 3"}});
  ASSERT_TRUE(child.ok()) << child.status().ToString();
  auto st = child->Wait(std::chrono::milliseconds(5000));
  ASSERT_TRUE(st.ok());
  EXPECT_TRUE(WIFEXITED(*st));
  EXPECT_EQ(WEXITSTATUS(*st), 3);
  EXPECT_EQ(DescribeWaitStatus(*st), "exited with 3");
}

TEST(ChildProcess, ProcessStartTimeIsFixedForALiveProcessAndNotFoundOnceReaped) {
  auto self = ProcessStartTime(::getpid());
  ASSERT_TRUE(self.ok()) << self.status().ToString();
  auto child = ChildProcess::Spawn({.argv = {"/bin/sleep", "30"}});
  ASSERT_TRUE(child.ok());
  pid_t pid = child->pid();
  auto started = ProcessStartTime(pid);
  ASSERT_TRUE(started.ok());
  EXPECT_GE(*started, *self);
  EXPECT_EQ(ProcessStartTime(pid).value(), *started);
  child->Kill();
  EXPECT_EQ(ProcessStartTime(pid).status().code(), ErrorCode::kNotFound);
}

TEST(ChildProcess, ProcessTimesCountCpuAndAgreeOnTheStartTime) {
  auto before = ReadProcessTimes(::getpid());
  ASSERT_TRUE(before.ok()) << before.status().ToString();
  EXPECT_EQ(before->start_time, ProcessStartTime(::getpid()).value());
  // Burn a few clock ticks of CPU.
  volatile uint64_t x = 0;
  for (auto t0 = std::chrono::steady_clock::now();
       std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(100);) {
    for (int i = 0; i < 100000; ++i) x = x + i;
  }
  auto after = ReadProcessTimes(::getpid());
  ASSERT_TRUE(after.ok());
  EXPECT_GT(after->user + after->system, before->user + before->system);
  EXPECT_EQ(after->start_time, before->start_time);
}

TEST(ChildProcess, AZombieHasNoStartTime) {
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) ::_exit(0);
  // Not reaped yet: a zombie until waitpid below.
  for (int i = 0; i < 500 && ProcessStartTime(pid).ok(); ++i) ::usleep(10000);
  EXPECT_EQ(ProcessStartTime(pid).status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(::waitpid(pid, nullptr, 0), pid);
}

TEST(ChildProcess, FailsSpawnWhenTheProgramIsMissing) {
  auto child = ChildProcess::Spawn({.argv = {"/nonexistent/program"}});
  ASSERT_FALSE(child.ok());
  EXPECT_EQ(child.status().code(), ErrorCode::kNotFound);
  EXPECT_NE(child.status().message().find("/nonexistent/program"), std::string::npos);
}

TEST(ChildProcess, MapsFdsAndClosesEverythingElse) {
  int p[2];
  ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
  UniqueFd r(p[0]), w(p[1]);
  // The child sees the pipe as fd 1 and must not see the parent's stray fd 7-ish copies.
  UniqueFd stray(::open("/dev/null", O_RDONLY));  // not close-on-exec on purpose
  auto child = ChildProcess::Spawn(
      {.argv = {"/bin/sh", "-c", "ls /proc/self/fd | wc -l"}, .fds = {{1, w.get()}}});
  ASSERT_TRUE(child.ok()) << child.status().ToString();
  w.Reset();
  char buf[64] = {};
  ssize_t n = ::read(r.get(), buf, sizeof buf - 1);
  ASSERT_GT(n, 0);
  // 0, 1, 2 and the fd `ls` opens for /proc/self/fd.
  EXPECT_EQ(std::atoi(buf), 4) << buf;
  ASSERT_TRUE(child->Wait().ok());
}

TEST(ChildProcess, DestructorKillsAndReapsARunningChild) {
  pid_t pid;
  {
    auto child = ChildProcess::Spawn({.argv = {"/bin/sleep", "60"}});
    ASSERT_TRUE(child.ok());
    pid = child->pid();
    EXPECT_FALSE(child->Exited());
  }
  // Reaped: the pid no longer exists as our child.
  EXPECT_EQ(::waitpid(pid, nullptr, WNOHANG), -1);
  EXPECT_EQ(errno, ECHILD);
}

TEST(ChildProcess, WaitTimesOutOnARunningChild) {
  auto child = ChildProcess::Spawn({.argv = {"/bin/sleep", "60"}});
  ASSERT_TRUE(child.ok());
  auto st = child->Wait(std::chrono::milliseconds(50));
  EXPECT_EQ(st.status().code(), ErrorCode::kDeadlineExceeded);
  ASSERT_TRUE(child->Signal(SIGTERM).ok());
  auto st2 = child->Wait(std::chrono::milliseconds(5000));
  ASSERT_TRUE(st2.ok());
  EXPECT_EQ(DescribeWaitStatus(*st2), "killed by SIGTERM");
}

TEST(ChildProcess, PreExecErrorFailsTheSpawn) {
  auto child = ChildProcess::Spawn({.argv = {"/bin/true"}, .pre_exec = [] { return EPERM; }});
  ASSERT_FALSE(child.ok());
  EXPECT_EQ(child.status().code(), ErrorCode::kPermissionDenied);
}

}  // namespace
}  // namespace moat
