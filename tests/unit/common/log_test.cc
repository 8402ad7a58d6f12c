#include "common/log.h"

#include <gtest/gtest.h>
#include <unistd.h>

namespace moat {
namespace {

TEST(Log, WritesOneStructuredLineWithQuotedValues) {
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  SetLogFd(p[1]);
  LogInfo("vmm.started", {{"sandbox", "abc"}, {"pid", 42}, {"reason", "no kvm here"}});
  SetLogFd(STDERR_FILENO);
  char buf[512] = {};
  ssize_t n = ::read(p[0], buf, sizeof buf - 1);
  ::close(p[0]);
  ::close(p[1]);
  ASSERT_GT(n, 0);
  std::string line(buf, static_cast<size_t>(n));
  EXPECT_NE(line.find("level=info event=vmm.started sandbox=abc pid=42 reason=\"no kvm here\"\n"),
            std::string::npos)
      << line;
  EXPECT_EQ(line.rfind("ts=", 0), 0u);
}

TEST(RateLimiter, AllowsABurstThenSuppressesAndCounts) {
  RateLimiter rl(/*per_second=*/0.0001, /*burst=*/3);
  int allowed = 0;
  for (int i = 0; i < 10; ++i) allowed += rl.Allow() ? 1 : 0;
  EXPECT_EQ(allowed, 3);
}

}  // namespace
}  // namespace moat
