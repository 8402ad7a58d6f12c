#include "channel/frame.h"

#include <gtest/gtest.h>

namespace moat::channel {
namespace {

Frame MustNext(FrameDecoder& d) {
  auto r = d.Next();
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->has_value());
  return r->has_value() ? **r : Frame{};
}

TEST(FrameDecoder, RoundTripsFramesFedOneByteAtATime) {
  std::string wire = EncodeHello(R"({"version":1})");
  AppendFrame(wire, FrameType::kData, 2, 7, std::string("\0\1\2binary", 9));
  wire += EncodeWindow(7, 4096);
  FrameDecoder d(FrameDecoder::Mode::kStrict);
  std::vector<Frame> got;
  for (char c : wire) {
    d.Feed(std::string_view(&c, 1));
    auto r = d.Next();
    ASSERT_TRUE(r.ok());
    if (r->has_value()) got.push_back(**r);
  }
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].type, FrameType::kHello);
  EXPECT_EQ(got[0].payload, R"({"version":1})");
  EXPECT_EQ(got[1].type, FrameType::kData);
  EXPECT_EQ(got[1].flags, 2);
  EXPECT_EQ(got[1].stream, 7u);
  EXPECT_EQ(got[1].payload, std::string("\0\1\2binary", 9));
  EXPECT_EQ(*DecodeWindowCredit(got[2].payload), 4096u);
}

TEST(FrameDecoder, StrictModeRejectsAnOversizedLengthBeforeBufferingIt) {
  std::string wire = EncodeFrame(FrameType::kData, 1, 3, "x");
  wire[0] = '\xff';
  wire[1] = '\xff';
  wire[2] = '\xff';
  wire[3] = '\x7f';
  FrameDecoder d(FrameDecoder::Mode::kStrict);
  d.Feed(wire);
  auto r = d.Next();
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("exceeds the limit"), std::string::npos);
}

TEST(FrameDecoder, StrictModeRejectsStreamFramesOnStreamZeroAndUnknownTypes) {
  FrameDecoder a(FrameDecoder::Mode::kStrict);
  a.Feed(EncodeFrame(FrameType::kData, 1, 0, "x"));
  EXPECT_FALSE(a.Next().ok());
  FrameDecoder b(FrameDecoder::Mode::kStrict);
  std::string w = EncodeFrame(FrameType::kEnd, 0, 1, "{}");
  w[4] = 42;
  b.Feed(w);
  EXPECT_FALSE(b.Next().ok());
}

TEST(FrameDecoder, ResyncModeSkipsGarbageUpToTheNextHello) {
  FrameDecoder d(FrameDecoder::Mode::kResync);
  // The tail of a frame from an earlier connection, then a fresh HELLO and a request.
  std::string wire = "\x05garbage from before MOATCHAN but not a hello";
  wire += EncodeHello(R"({"version":1})");
  wire += EncodeFrame(FrameType::kRequest, 0, 1, R"({"op":"health"})");
  d.Feed(wire);
  Frame hello = MustNext(d);
  EXPECT_EQ(hello.type, FrameType::kHello);
  Frame req = MustNext(d);
  EXPECT_EQ(req.type, FrameType::kRequest);
  EXPECT_EQ(req.payload, R"({"op":"health"})");
  EXPECT_GT(d.discarded(), 0u);
}

TEST(FrameDecoder, ResyncModeWaitsForMoreBytesWhenNoHelloIsBufferedYet) {
  FrameDecoder d(FrameDecoder::Mode::kResync);
  d.Feed(std::string(1000, '\x7f'));
  auto r = d.Next();
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->has_value());
  EXPECT_LT(d.buffered(), 64u);  // garbage is not kept around
  d.Feed(EncodeHello("{}"));
  EXPECT_EQ(MustNext(d).type, FrameType::kHello);
}

TEST(FrameDecoder, HelloWithoutMagicIsAProtocolError) {
  FrameDecoder d(FrameDecoder::Mode::kStrict);
  d.Feed(EncodeFrame(FrameType::kHello, 0, 0, "NOTMAGIC{}"));
  EXPECT_FALSE(d.Next().ok());
}

}  // namespace
}  // namespace moat::channel
