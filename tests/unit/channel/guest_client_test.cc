// GuestClient against a scripted fake guest on a socketpair: the limits a hostile guest meets.
#include "channel/guest_client.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <thread>

#include "common/socket.h"

namespace moat::channel {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

GuestClient::Deadline In(std::chrono::milliseconds d) {
  return GuestClient::Clock::now() + d;
}

// The guest end of the socketpair: reads host frames, writes whatever the test scripts.
class FakeGuest {
 public:
  explicit FakeGuest(UniqueFd fd) : fd_(std::move(fd)) {}
  Frame Read() {
    for (;;) {
      auto f = decoder_.Next();
      if (f.ok() && f->has_value()) return std::move(**f);
      char buf[65536];
      ssize_t n = ::read(fd_.get(), buf, sizeof buf);
      if (n <= 0) return Frame{FrameType::kCancel, 0, 0xffffffff, "closed"};
      decoder_.Feed(std::string_view(buf, static_cast<size_t>(n)));
    }
  }
  // Reads until a frame of `type` (skipping repeated HELLOs and the like).
  Frame ReadUntil(FrameType type) {
    for (;;) {
      Frame f = Read();
      if (f.type == type || f.stream == 0xffffffff) return f;
    }
  }
  void Send(std::string_view bytes) { ASSERT_TRUE(WriteAll(fd_.get(), bytes).ok()); }
  void SendHello() { Send(EncodeHello(R"({"version":1,"boot_id":"b","pid1":true})")); }
  int fd() const { return fd_.get(); }
  void Close() { fd_.Reset(); }

 private:
  UniqueFd fd_;
  FrameDecoder decoder_{FrameDecoder::Mode::kResync};
};

struct Pair {
  std::unique_ptr<GuestClient> client;
  std::unique_ptr<FakeGuest> guest;
};

Pair Connected() {
  int sv[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  Pair p;
  p.guest = std::make_unique<FakeGuest>(UniqueFd(sv[1]));
  p.guest->Send("garbage before the hello MOATCHAN");
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

TEST(GuestClient, HandshakeSkipsGarbageAndKeepsTheGuestHello) {
  Pair p = Connected();
  ASSERT_NE(p.client, nullptr);
  EXPECT_EQ(p.client->guest_hello().boot_id, "b");
  EXPECT_TRUE(p.client->alive());
}

TEST(GuestClient, HandshakeTimesOutWithoutAGuestHello) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd guest(sv[1]);
  auto client = GuestClient::Connect(UniqueFd(sv[0]), 300ms);
  EXPECT_EQ(client.status().code(), ErrorCode::kDeadlineExceeded);
}

TEST(GuestClient, HandshakeRejectsAGuestThatNeedsANewerVersion) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  FakeGuest guest{UniqueFd(sv[1])};
  guest.Send(EncodeHello(R"({"version":3,"min_version":2})"));
  auto client = GuestClient::Connect(UniqueFd(sv[0]), 2s);
  EXPECT_EQ(client.status().code(), ErrorCode::kFailedPrecondition);
}

TEST(GuestClient, ReturnsCreditOnlyAsTheCallerConsumesData) {
  Pair p = Connected();
  auto s = p.client->Open({{"op", "read_file"}});
  ASSERT_TRUE(s.ok());
  Frame req = p.guest->ReadUntil(FrameType::kRequest);
  std::string chunk(100000, 'x');
  p.guest->Send(EncodeFrame(FrameType::kData, 1, req.stream, chunk));
  p.guest->Send(EncodeFrame(FrameType::kData, 1, req.stream, chunk));
  // Nothing consumed: no WINDOW may arrive.
  pollfd pfd{p.guest->fd(), POLLIN, 0};
  EXPECT_EQ(::poll(&pfd, 1, 200), 0);
  auto ev = (*s)->Next(In(2s));
  ASSERT_TRUE(ev.ok());
  EXPECT_EQ(ev->data.size(), chunk.size());
  Frame window = p.guest->ReadUntil(FrameType::kWindow);
  EXPECT_EQ(window.stream, req.stream);
  EXPECT_EQ(*DecodeWindowCredit(window.payload), chunk.size());
}

TEST(GuestClient, DisconnectsAGuestThatOverrunsTheWindow) {
  Pair p = Connected();
  auto s = p.client->Open({{"op", "exec"}});
  ASSERT_TRUE(s.ok());
  Frame req = p.guest->ReadUntil(FrameType::kRequest);
  std::string chunk(kMaxPayload, 'x');
  for (uint32_t sent = 0; sent <= kInitialWindow; sent += kMaxPayload) {
    p.guest->Send(EncodeFrame(FrameType::kData, 1, req.stream, chunk));
  }
  // Nothing consumed, so no credit went back: the last frame broke the window.
  for (int i = 0; i < 200 && p.client->alive(); ++i) std::this_thread::sleep_for(10ms);
  EXPECT_FALSE(p.client->alive());
  Status end;
  for (;;) {
    auto ev = (*s)->Next(In(5s));
    ASSERT_TRUE(ev.ok());
    if (ev->kind == StreamEvent::Kind::kEnd) {
      end = ev->status;
      break;
    }
  }
  EXPECT_EQ(end.code(), ErrorCode::kUnavailable);
  EXPECT_FALSE(p.client->alive());
}

TEST(GuestClient, EndsOnlyTheFloodingStreamWhenMessagesPileUp) {
  Pair p = Connected();
  auto flood = p.client->Open({{"op", "watch"}});
  ASSERT_TRUE(flood.ok());
  Frame req = p.guest->ReadUntil(FrameType::kRequest);
  std::string batch;
  for (int i = 0; i < 5000; ++i) {
    AppendFrame(batch, FrameType::kMessage, 0, req.stream, R"({"type":"write","name":"f"})");
  }
  p.guest->Send(batch);
  Frame cancel = p.guest->ReadUntil(FrameType::kCancel);
  EXPECT_EQ(cancel.stream, req.stream);
  Status end;
  for (;;) {
    auto ev = (*flood)->Next(In(5s));
    ASSERT_TRUE(ev.ok());
    if (ev->kind == StreamEvent::Kind::kEnd) {
      end = ev->status;
      break;
    }
  }
  EXPECT_EQ(end.code(), ErrorCode::kResourceExhausted);
  EXPECT_TRUE(p.client->alive());
}

TEST(GuestClient, MapsAnErrorEndBackToAStatus) {
  Pair p = Connected();
  std::thread guest([&] {
    Frame req = p.guest->ReadUntil(FrameType::kRequest);
    p.guest->Send(EncodeFrame(FrameType::kEnd, 0, req.stream,
                              R"({"error":{"code":"not_found","message":"no process 9"}})"));
  });
  auto r = p.client->Call({{"op", "signal"}, {"pid", 9}, {"signal", 9}}, In(5s));
  guest.join();
  EXPECT_EQ(r.status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(r.status().message(), "no process 9");
}

TEST(GuestClient, ConcatenatesListEntriesSplitOverMessages) {
  Pair p = Connected();
  std::thread guest([&] {
    Frame req = p.guest->ReadUntil(FrameType::kRequest);
    p.guest->Send(EncodeFrame(FrameType::kMessage, 0, req.stream, R"({"entries":[{"n":1}]})"));
    p.guest->Send(EncodeFrame(FrameType::kMessage, 0, req.stream, R"({"entries":[{"n":2}]})"));
    p.guest->Send(EncodeFrame(FrameType::kEnd, 0, req.stream, "{}"));
  });
  auto r = p.client->Call({{"op", "list"}}, In(5s));
  guest.join();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)["entries"].size(), 2u);
}

TEST(GuestClient, ConnectionLossEndsEveryOpenStreamWithUnavailable) {
  Pair p = Connected();
  auto a = p.client->Open({{"op", "watch"}});
  auto b = p.client->Open({{"op", "watch"}});
  ASSERT_TRUE(a.ok() && b.ok());
  p.guest->Close();
  for (auto* s : {a->get(), b->get()}) {
    auto ev = s->Next(In(5s));
    ASSERT_TRUE(ev.ok());
    EXPECT_EQ(ev->kind, StreamEvent::Kind::kEnd);
    EXPECT_EQ(ev->status.code(), ErrorCode::kUnavailable);
  }
  EXPECT_FALSE(p.client->alive());
  EXPECT_EQ(p.client->Open({{"op", "health"}}).status().code(), ErrorCode::kUnavailable);
}

TEST(GuestClient, DisconnectsOnAProtocolError) {
  Pair p = Connected();
  auto s = p.client->Open({{"op", "health"}});
  ASSERT_TRUE(s.ok());
  p.guest->Send(std::string(12, '\xff'));
  auto ev = (*s)->Next(In(5s));
  ASSERT_TRUE(ev.ok());
  EXPECT_EQ(ev->status.code(), ErrorCode::kUnavailable);
  EXPECT_FALSE(p.client->alive());
}

TEST(GuestClient, WriteWaitsForCreditFromTheGuest) {
  Pair p = Connected();
  auto s = p.client->Open({{"op", "write_file"}});
  ASSERT_TRUE(s.ok());
  std::string big(kInitialWindow + 1000, 'y');
  std::atomic<bool> done{false};
  std::thread writer([&] {
    EXPECT_TRUE((*s)->Write(SubChannel::kStdin, big).ok());
    done = true;
  });
  size_t got = 0;
  while (got < kInitialWindow) {
    Frame f = p.guest->Read();
    if (f.type == FrameType::kData) got += f.payload.size();
  }
  std::this_thread::sleep_for(100ms);
  EXPECT_FALSE(done) << "wrote past the window";
  p.guest->Send(EncodeWindow(1, 1000));
  while (got < big.size()) {
    Frame f = p.guest->Read();
    if (f.type == FrameType::kData) got += f.payload.size();
  }
  writer.join();
  EXPECT_TRUE(done);
}

}  // namespace
}  // namespace moat::channel
