#include "common/log.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <functional>
#include <nlohmann/json.hpp>

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

std::string CaptureLine(const std::function<void()>& log) {
  int p[2];
  EXPECT_EQ(pipe(p), 0);
  SetLogFd(p[1]);
  log();
  SetLogFd(STDERR_FILENO);
  char buf[1024] = {};
  ssize_t n = ::read(p[0], buf, sizeof buf - 1);
  ::close(p[0]);
  ::close(p[1]);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

TEST(Log, JsonLinesAreValidJsonAndCarryTheRequestContext) {
  SetLogFormat(LogFormat::kJson);
  std::string line;
  {
    ScopedLogContext ctx({"req-7", ""});
    ScopedLogContext::SetSandbox("sbx1");
    line = CaptureLine([] {
      LogWarn("api.x", {{"msg", "a \"q\"\n\x01\xff"}, {"n", 3}, {"who", "Zoë"}});
    });
  }
  std::string after = CaptureLine([] { LogInfo("api.y", {}); });
  SetLogFormat(LogFormat::kText);
  auto j = nlohmann::json::parse(line);
  EXPECT_EQ(j["level"], "warn");
  EXPECT_EQ(j["event"], "api.x");
  EXPECT_EQ(j["msg"], "a \"q\"\n\u0001\ufffd") << "invalid UTF-8 replaced";
  EXPECT_EQ(j["who"], "Zoë") << "valid UTF-8 kept as it is";
  EXPECT_NE(line.find("Zoë"), std::string::npos) << line;
  EXPECT_EQ(j["n"], "3");
  EXPECT_EQ(j["sandbox"], "sbx1");
  EXPECT_EQ(j["request_id"], "req-7");
  EXPECT_TRUE(j.contains("ts"));
  auto k = nlohmann::json::parse(after);
  EXPECT_FALSE(k.contains("request_id")) << "the context ends with its scope";
}

TEST(Log, TextLinesCarryTheContextUnlessTheLineNamesItsOwn) {
  ScopedLogContext ctx({"req-8", "sbx2"});
  std::string line = CaptureLine([] { LogInfo("e", {{"sandbox", "other"}}); });
  EXPECT_NE(line.find("sandbox=other request_id=req-8\n"), std::string::npos) << line;
  EXPECT_EQ(line.find("sbx2"), std::string::npos) << line;
}

TEST(RateLimiter, AllowsABurstThenSuppressesAndCounts) {
  RateLimiter rl(/*per_second=*/0.0001, /*burst=*/3);
  int allowed = 0;
  for (int i = 0; i < 10; ++i) allowed += rl.Allow() ? 1 : 0;
  EXPECT_EQ(allowed, 3);
}

}  // namespace
}  // namespace moat
