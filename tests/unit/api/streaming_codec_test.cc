// The decoders that read upload bodies as they arrive: GunzipStream (bounded output pieces, the
// expansion ratio and total) and MultipartReader (the same parts as ParseMultipart, however the
// body is split, holding no more than a piece of it).
#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "api/codec/gzip.h"
#include "api/codec/multipart.h"

namespace moat::api::codec {
namespace {

std::string Gzip(const std::string& plain) {
  GzipWriter writer(9);
  std::string out = *writer.Write(plain);
  out += *writer.Finish();
  return out;
}

// A body cut into pieces of `piece` bytes, as a BodySource would hand it out.
MultipartReader::Source Chunked(const std::string& body, size_t piece) {
  auto pos = std::make_shared<size_t>(0);
  return [&body, piece, pos](char* buf, size_t size) -> Result<size_t> {
    size_t n = std::min({size, piece, body.size() - *pos});
    std::copy_n(body.data() + *pos, n, buf);
    *pos += n;
    return n;
  };
}

struct ReadPart {
  std::string name, filename, content_type, data;
};

Result<std::vector<ReadPart>> ReadAll(MultipartReader& reader, size_t* largest_piece = nullptr) {
  std::vector<ReadPart> parts;
  for (;;) {
    MOAT_ASSIGN_OR_RETURN(auto ev, reader.Next());
    using Kind = MultipartReader::Event::Kind;
    if (ev.kind == Kind::kEnd) return parts;
    if (ev.kind == Kind::kPart) {
      parts.push_back({ev.part.name, ev.part.filename, ev.part.content_type, ""});
    } else if (ev.kind == Kind::kData) {
      parts.back().data.append(ev.data);
      if (largest_piece) *largest_piece = std::max(*largest_piece, ev.data.size());
    }
  }
}

TEST(GunzipStream, InflatesInBoundedPiecesWhateverTheInputSplit) {
  std::string plain;
  for (unsigned i = 0; i < 300000; ++i) plain += static_cast<char>('a' + (i * 7919u) % 26);
  std::string gz = Gzip(plain);
  for (size_t split : {1u, 7u, 4096u, 1u << 20}) {
    GunzipStream gunzip;
    std::string out;
    size_t largest = 0;
    for (size_t off = 0; off < gz.size(); off += split) {
      ASSERT_TRUE(gunzip
                      .Write(std::string_view(gz).substr(off, split),
                             [&](std::string_view piece) {
                               largest = std::max(largest, piece.size());
                               out.append(piece);
                               return Status::Ok();
                             })
                      .ok());
    }
    EXPECT_TRUE(gunzip.Finish().ok());
    EXPECT_TRUE(out == plain) << "split " << split;  // no diff of 300 KB strings
    EXPECT_LE(largest, GunzipStream::kPiece);
  }
}

TEST(GunzipStream, RefusesABombOnceItPassesTheRatioWithoutInflatingIt) {
  // 10 MB of gzip that would inflate to ~10 GB.
  std::string zeros(64u << 20, '\0');
  std::string gz64 = Gzip(zeros);  // ~64 KB
  std::string bomb;
  while (bomb.size() < (10u << 20)) bomb += gz64;  // concatenated members: the first one counts
  GunzipStream gunzip(InflateLimits{uint64_t{1} << 40, 1000, 1u << 20});
  uint64_t handed_out = 0;
  Status s = gunzip.Write(bomb, [&](std::string_view piece) {
    handed_out += piece.size();
    return Status::Ok();
  });
  EXPECT_EQ(s.code(), ErrorCode::kResourceExhausted) << s.ToString();
  EXPECT_NE(s.message().find("1000:1"), std::string::npos) << s.message();
  // Stopped just past the first MiB, not after 64 MiB (one member) or 10 GB.
  EXPECT_LE(handed_out, (1u << 20) + GunzipStream::kPiece);
}

TEST(GunzipStream, RefusesOutputPastTheTotal) {
  std::string plain;
  for (int i = 0; i < 400000; ++i) plain += static_cast<char>('a' + (i * 31) % 26);
  GunzipStream gunzip(InflateLimits{100000, 0, 0});
  uint64_t handed_out = 0;
  Status s = gunzip.Write(Gzip(plain), [&](std::string_view piece) {
    handed_out += piece.size();
    return Status::Ok();
  });
  EXPECT_EQ(s.code(), ErrorCode::kResourceExhausted);
  EXPECT_LE(handed_out, 100000u);
}

TEST(GunzipStream, ReportsTruncatedAndCorruptDataAndTheSinksOwnError) {
  std::string gz = Gzip(std::string(100000, 'q'));
  GunzipStream truncated;
  auto ignore = [](std::string_view) { return Status::Ok(); };
  ASSERT_TRUE(truncated.Write(gz.substr(0, gz.size() / 2), ignore).ok());
  EXPECT_EQ(truncated.Finish().code(), ErrorCode::kInvalidArgument);
  GunzipStream corrupt;
  EXPECT_EQ(corrupt.Write("definitely not gzip", ignore).code(), ErrorCode::kInvalidArgument);
  GunzipStream sink_fails;
  Status s = sink_fails.Write(gz, [](std::string_view) { return Unavailable("guest gone"); });
  EXPECT_EQ(s.code(), ErrorCode::kUnavailable);
}

TEST(GunzipStream, RefusesASecondMemberInsteadOfDroppingIt) {
  std::string a = Gzip("first member\n"), b = Gzip("second member\n");
  auto ignore = [](std::string_view) { return Status::Ok(); };
  GunzipStream together;  // both members in one write
  EXPECT_EQ(together.Write(a + b, ignore).code(), ErrorCode::kInvalidArgument);
  GunzipStream apart;  // the second member in a later write
  ASSERT_TRUE(apart.Write(a, ignore).ok());
  EXPECT_EQ(apart.Write(b, ignore).code(), ErrorCode::kInvalidArgument);
  EXPECT_FALSE(GunzipBounded(a + b, 1 << 20).ok());
  EXPECT_EQ(*GunzipBounded(a, 1 << 20), "first member\n");
}

TEST(MultipartReader, ReadsTheSamePartsAsParseMultipartHoweverTheBodyIsSplit) {
  std::string big(200000, 'x');
  for (size_t i = 0; i < big.size(); i += 97) big[i] = '\r';  // near-delimiters in the data
  std::string body =
      "preamble\r\n--XyZ\r\n"
      "Content-Disposition: form-data; name=\"file\"; filename=\"/home/user/a%22b.txt\"\r\n"
      "Content-Type: application/octet-stream\r\n\r\n"
      "hello\r\n--Xy not yet\r\n--XyZ\r\n"
      "Content-Disposition: form-data; name=\"file\"; filename=\"big\"\r\n\r\n" +
      big +
      "\r\n--XyZ\r\n"
      "Content-Disposition: form-data; name=\"other\"\r\n\r\n"
      "\r\n--XyZ--\r\nepilogue";
  auto expected = ParseMultipart(body, "XyZ");
  ASSERT_TRUE(expected.ok()) << expected.status().ToString();
  ASSERT_EQ(expected->size(), 3u);
  for (size_t piece : {1u, 2u, 5u, 13u, 4096u, 65536u, 1u << 20}) {
    MultipartReader reader(Chunked(body, piece), "XyZ");
    size_t largest = 0;
    auto parts = ReadAll(reader, &largest);
    ASSERT_TRUE(parts.ok()) << "piece " << piece << ": " << parts.status().ToString();
    ASSERT_EQ(parts->size(), expected->size()) << "piece " << piece;
    for (size_t i = 0; i < parts->size(); ++i) {
      EXPECT_EQ((*parts)[i].name, (*expected)[i].name);
      EXPECT_EQ((*parts)[i].filename, (*expected)[i].filename);
      EXPECT_EQ((*parts)[i].content_type, (*expected)[i].content_type);
      EXPECT_TRUE((*parts)[i].data == (*expected)[i].data) << "piece " << piece << " part " << i;
    }
    EXPECT_LE(largest, 64u * 1024 + 16) << "the reader holds a piece at a time";
  }
}

TEST(MultipartReader, AgreesWithParseMultipartOnRandomBodies) {
  std::mt19937 rng(7);
  const std::string alphabet = "ab-\r\n:;=\"";
  for (int round = 0; round < 2000; ++round) {
    std::string body;
    int n = rng() % 3;
    for (int i = 0; i < n; ++i) {
      body += "--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n";
      int len = rng() % 12;
      for (int j = 0; j < len; ++j) body += alphabet[rng() % alphabet.size()];
      body += "\r\n";
    }
    body += rng() % 4 == 0 ? "--b" : "--b--";
    if (rng() % 3 == 0) body.erase(rng() % body.size(), 1);
    auto expected = ParseMultipart(body, "b");
    MultipartReader reader(Chunked(body, 1 + rng() % 5), "b");
    auto parts = ReadAll(reader);
    ASSERT_EQ(parts.ok(), expected.ok()) << "body: " << body;
    if (!parts.ok()) continue;
    ASSERT_EQ(parts->size(), expected->size()) << "body: " << body;
    for (size_t i = 0; i < parts->size(); ++i) {
      EXPECT_EQ((*parts)[i].data, std::string((*expected)[i].data)) << "body: " << body;
    }
  }
}

TEST(MultipartReader, RefusesOversizedPartHeadersAndPassesOnTheSourcesError) {
  std::string body = "--b\r\nX-Long: " + std::string(100000, 'h') + "\r\n\r\nxx\r\n--b--";
  MultipartReader reader(Chunked(body, 4096), "b", 1024, 64 * 1024);
  auto first = reader.Next();
  ASSERT_FALSE(first.ok());
  EXPECT_NE(first.status().message().find("headers exceed"), std::string::npos);
  EXPECT_FALSE(reader.Next().ok()) << "the error sticks";

  MultipartReader failing(
      [](char*, size_t) -> Result<size_t> { return DeadlineExceeded("the body came too slowly"); },
      "b");
  EXPECT_EQ(failing.Next().status().code(), ErrorCode::kDeadlineExceeded);
}

}  // namespace
}  // namespace moat::api::codec
