// The typed guest calls against a hostile fake guest on a socketpair: every op's wrong-typed,
// missing, repeated, oversized and flooding replies fail that one call with a clear error and
// count as violations; the connection carries the next call; nothing throws.
#include "channel/guest_ops.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <cstring>
#include <functional>
#include <thread>

#include "common/guarded.h"
#include "support/fake_guest.h"

namespace moat::channel {
namespace {

using nlohmann::json;
using test_support::FakeGuestPeer;
using namespace std::chrono_literals;

struct Pair {
  std::unique_ptr<GuestClient> client;
  std::unique_ptr<FakeGuestPeer> guest;
};

Pair Connected() {
  int sv[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  Pair p;
  p.guest = std::make_unique<FakeGuestPeer>(UniqueFd(sv[1]));
  std::thread answer([&] {
    p.guest->ReadUntil(FrameType::kHello);
    p.guest->SendHello();
  });
  auto client = GuestClient::Connect(UniqueFd(sv[0]), 5s);
  answer.join();
  EXPECT_TRUE(client.ok()) << client.status().ToString();
  if (client.ok()) p.client = std::move(*client);
  return p;
}

GuestClient::Deadline Soon() {
  return GuestClient::Clock::now() + 5s;
}

// One scripted exchange: `call` runs on the host side while the fake guest answers the REQUEST
// it sends with `reply`; the call's status comes back.
Status Exchange(Pair& p, const std::function<Status()>& call,
                const std::function<void(FakeGuestPeer&, uint32_t)>& reply) {
  std::thread guest([&] {
    Frame req = p.guest->ReadUntil(FrameType::kRequest);
    if (req.stream != FakeGuestPeer::kClosedStream) reply(*p.guest, req.stream);
  });
  Status s;
  Status thrown = CatchAll("call", [&] { s = call(); });
  guest.join();
  EXPECT_TRUE(thrown.ok()) << "threw: " << thrown.message();
  return s;
}

// A reply of one MESSAGE then END {}.
std::function<void(FakeGuestPeer&, uint32_t)> Replies(std::string message) {
  return [message](FakeGuestPeer& g, uint32_t id) {
    g.Message(id, message);
    g.End(id);
  };
}

struct OpCase {
  std::string name;
  std::function<Status(GuestClient&)> call;
  std::vector<std::string> hostile_messages;  // each one a MESSAGE that must fail the call
};

std::vector<OpCase> Cases() {
  return {
      {"processes",
       [](GuestClient& g) { return ops::Processes(g, Soon()).status(); },
       {R"({"processes":"x"})", R"({"processes":[{"pid":"x"}]})", R"({"processes":[7]})",
        R"({"nothing":1})", R"([1,2])"}},
      {"stat",
       [](GuestClient& g) {
         return ops::Stat(g, {"/x", "user"}, Soon()).status();
       },
       {R"({"name":1,"path":"/x","type":"file"})", R"({"name":"x","path":"/x","type":5})",
        R"({"name":"x","path":"/x","type":"file","size":"big"})", R"("entry")"}},
      {"list",
       [](GuestClient& g) {
         return ops::List(g, {"/", "user", 1}, Soon()).status();
       },
       {R"({"entries":{}})", R"({"entries":[{"name":[]}]})", R"({"entries":null})"}},
      {"mkdir",
       [](GuestClient& g) {
         return ops::Mkdir(g, {"/d", "user"}, Soon()).status();
       },
       {R"({"created":"yes"})", R"({})"}},
      {"move",
       [](GuestClient& g) {
         return ops::Move(g, {"/a", "/b", "user"}, Soon()).status();
       },
       {R"({"name":"b","path":{},"type":"file"})"}},
      {"health",
       [](GuestClient& g) { return ops::Health(g, Soon()).status(); },
       {R"({"ok":"yes"})", R"({"ok":true,"uptime_ms":"1"})"}},
      {"metrics",
       [](GuestClient& g) { return ops::Metrics(g, Soon()).status(); },
       {R"({"cpu_count":"2"})"}},
  };
}

TEST(GuestOpsHostile, WrongTypedRepliesFailTheCallCountAndLeaveTheConnectionUp) {
  Pair p = Connected();
  ASSERT_NE(p.client, nullptr);
  uint64_t violations = 0;
  for (const auto& c : Cases()) {
    for (const auto& bad : c.hostile_messages) {
      Status s = Exchange(
          p, [&] { return c.call(*p.client); }, Replies(bad));
      EXPECT_FALSE(s.ok()) << c.name << " accepted " << bad;
      EXPECT_NE(s.message().find("invalid reply to `" + c.name + "`"), std::string::npos)
          << c.name << " / " << bad << ": " << s.message();
      EXPECT_EQ(p.client->violations(), ++violations) << c.name << " / " << bad;
      EXPECT_TRUE(p.client->alive()) << c.name;
    }
  }
  // The same connection still carries a well-formed call.
  Status ok = Exchange(
      p, [&] { return ops::Health(*p.client, Soon()).status(); },
      Replies(R"({"ok":true,"uptime_ms":1})"));
  EXPECT_TRUE(ok.ok()) << ok.ToString();
}

TEST(GuestOpsHostile, AMissingOrRepeatedResultIsAViolation) {
  Pair p = Connected();
  ASSERT_NE(p.client, nullptr);
  Status none = Exchange(
      p,
      [&] {
        return ops::Stat(*p.client, {"/x", ""}, Soon()).status();
      },
      [](FakeGuestPeer& g, uint32_t id) { g.End(id); });
  EXPECT_NE(none.message().find("no result message"), std::string::npos) << none.ToString();
  Status twice = Exchange(
      p,
      [&] {
        return ops::Mkdir(*p.client, {"/x", ""}, Soon()).status();
      },
      [](FakeGuestPeer& g, uint32_t id) {
        g.Message(id, R"({"created":true})");
        g.Message(id, R"({"created":false})");
        g.End(id);
      });
  EXPECT_NE(twice.message().find("more than one result"), std::string::npos) << twice.ToString();
  EXPECT_EQ(p.client->violations(), 2u);
}

TEST(GuestOpsHostile, ExecEventsThatBreakTheProtocolFailTheRun) {
  Pair p = Connected();
  ASSERT_NE(p.client, nullptr);
  for (const char* bad : {R"({"type":"start","pid":"x"})", R"({"type":"exit"})",
                          R"({"type":"exit","exit_code":"0"})", R"({"type":17})"}) {
    Status s = Exchange(
        p, [&] { return p.client->Run(ExecRequest{.argv = {"true"}}, Soon()).status(); },
        Replies(bad));
    EXPECT_FALSE(s.ok()) << bad;
    EXPECT_NE(s.message().find("invalid reply to `exec`"), std::string::npos) << s.ToString();
  }
  EXPECT_EQ(p.client->violations(), 4u);
}

TEST(GuestOpsHostile, AFloodOfMessagesEndsTheStreamNotTheHost) {
  Pair p = Connected();
  ASSERT_NE(p.client, nullptr);
  Status s = Exchange(
      p,
      [&] {
        return ops::List(*p.client, {"/", "", 1}, GuestClient::Clock::now() + 2s).status();
      },
      [](FakeGuestPeer& g, uint32_t id) {
        // Valid parts, but far more of them than one listing may hold.
        std::string part = R"({"entries":[)";
        for (int i = 0; i < 200; ++i) {
          part += std::string(i ? "," : "") + R"({"name":"f","path":"/f","type":"file"})";
        }
        part += "]}";
        for (int i = 0; i < 1000; ++i) {
          if (!g.Message(id, part)) return;
        }
        g.End(id);
      });
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(s.code() == ErrorCode::kInternal || s.code() == ErrorCode::kResourceExhausted)
      << s.ToString();
}

TEST(GuestOpsHostile, AListingIsBoundedInBytesNotOnlyInEntries) {
  Pair p = Connected();
  ASSERT_NE(p.client, nullptr);
  Status s = Exchange(
      p,
      [&] {
        return ops::List(*p.client, {"/", "", 1}, GuestClient::Clock::now() + 20s).status();
      },
      [](FakeGuestPeer& g, uint32_t id) {
        // One entry per MESSAGE, each with a 60 KiB path: few entries, many bytes.
        json entry = {{"name", "f"}, {"path", std::string(60 * 1024, 'p')}, {"type", "file"}};
        std::string part = json({{"entries", {entry}}}).dump();
        for (int i = 0; i < 700; ++i) {
          if (!g.Message(id, part)) return;
        }
        g.End(id);
      });
  // Either the decoded bytes pass the limit (a violation), or — when the reader queues faster
  // than the call decodes — the stream's queue does first (resource_exhausted). Never more.
  if (s.code() == ErrorCode::kInternal) {
    EXPECT_NE(s.message().find("more entries or bytes than the limit"), std::string::npos)
        << s.ToString();
    EXPECT_EQ(p.client->violations(), 1u);
  } else {
    EXPECT_EQ(s.code(), ErrorCode::kResourceExhausted) << s.ToString();
  }
}

TEST(GuestOpsHostile, AnOversizedOrUndecodableFrameClosesTheConnectionAndCounts) {
  Pair p = Connected();
  ASSERT_NE(p.client, nullptr);
  Status s = Exchange(
      p, [&] { return ops::Health(*p.client, Soon()).status(); },
      [](FakeGuestPeer& g, uint32_t id) {
        // A header announcing a payload past the 128 KiB frame limit.
        std::string frame = EncodeFrame(FrameType::kMessage, 0, id, "{}");
        uint32_t huge = 1u << 30;
        std::memcpy(frame.data(), &huge, 4);
        g.Send(frame);
      });
  EXPECT_EQ(s.code(), ErrorCode::kUnavailable) << s.ToString();
  EXPECT_FALSE(p.client->alive());
  EXPECT_EQ(p.client->violations(), 1u);
}

TEST(GuestOpsHostile, AnEndThatIsNotJsonIsAProtocolError) {
  Pair p = Connected();
  ASSERT_NE(p.client, nullptr);
  Status s = Exchange(
      p,
      [&] {
        return ops::Unary(*p.client, proto::SignalOp{1, 9}, Soon());
      },
      [](FakeGuestPeer& g, uint32_t id) { g.End(id, "not json"); });
  EXPECT_EQ(s.code(), ErrorCode::kUnavailable) << s.ToString();
  EXPECT_EQ(p.client->violations(), 1u);
}

TEST(GuestOpsHostile, TheViolationHandlerSeesEveryViolation) {
  Pair p = Connected();
  ASSERT_NE(p.client, nullptr);
  std::atomic<int> seen{0};
  p.client->SetViolationHandler([&](const Status&) { ++seen; });
  for (int i = 0; i < 3; ++i) {
    (void)Exchange(
        p, [&] { return ops::Health(*p.client, Soon()).status(); }, Replies(R"({"ok":1})"));
  }
  EXPECT_EQ(seen.load(), 3);
}

}  // namespace
}  // namespace moat::channel
