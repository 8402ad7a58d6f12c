// Parsers of untrusted client bytes: Connect envelopes, multipart uploads, query strings and
// the metadata filter, protobuf-JSON conventions, gzip.
#include <gtest/gtest.h>
#include <zlib.h>

#include "api/codec/connect.h"
#include "api/codec/gzip.h"
#include "api/codec/multipart.h"
#include "api/codec/protojson.h"
#include "api/codec/query.h"

namespace moat::api::codec {
namespace {

TEST(ConnectEnvelope, EncodesFlagsAndBigEndianLength) {
  std::string e = EncodeEnvelope(kEnvelopeEndStream, "{}");
  ASSERT_EQ(e.size(), 7u);
  EXPECT_EQ(e[0], 0x02);
  EXPECT_EQ(e.substr(1, 4), std::string("\0\0\0\x02", 4));
  EXPECT_EQ(e.substr(5), "{}");
}

TEST(ConnectEnvelope, DecodesSeveralAndRejectsTruncatedOrCompressed) {
  std::string body = EncodeEnvelope(0, R"({"a":1})") + EncodeEnvelope(2, "{}");
  auto envs = DecodeEnvelopes(body, 1024);
  ASSERT_TRUE(envs.ok());
  ASSERT_EQ(envs->size(), 2u);
  EXPECT_EQ((*envs)[0].message, R"({"a":1})");
  EXPECT_EQ((*envs)[1].flags, kEnvelopeEndStream);
  EXPECT_FALSE(DecodeEnvelopes(body.substr(0, body.size() - 1), 1024).ok());
  EXPECT_FALSE(DecodeEnvelopes(std::string("\0\0\0", 3), 1024).ok());
  EXPECT_FALSE(DecodeEnvelopes(EncodeEnvelope(kEnvelopeCompressed, "x"), 1024).ok());
  EXPECT_EQ(DecodeEnvelopes(EncodeEnvelope(0, std::string(2000, 'x')), 1024).status().code(),
            ErrorCode::kInvalidArgument);
}

TEST(ConnectEnvelope, EndStreamCarriesTheErrorCodeName) {
  EXPECT_EQ(EndStreamMessage(Status::Ok()), "{}");
  auto j = nlohmann::json::parse(EndStreamMessage(DeadlineExceeded("too slow")));
  EXPECT_EQ(j["error"]["code"], "deadline_exceeded");
  EXPECT_EQ(j["error"]["message"], "too slow");
  EXPECT_EQ(ConnectCodeName(ErrorCode::kCancelled), "canceled");
  EXPECT_EQ(ConnectHttpStatus(ErrorCode::kNotFound), 404);
  EXPECT_EQ(ConnectHttpStatus(ErrorCode::kUnavailable), 503);
}

TEST(Multipart, SplitsPartsAndUnescapesFullPathFilenames) {
  std::string body =
      "preamble\r\n--XyZ\r\n"
      "Content-Disposition: form-data; name=\"file\"; filename=\"/home/user/a %22q%22.txt\"\r\n"
      "Content-Type: application/octet-stream\r\n\r\n"
      "line1\r\nline2\r\n"
      "--XyZ\r\n"
      "Content-Disposition: form-data; name=\"file\"; filename=\"b%0Ac\"\r\n\r\n"
      "\r\n--XyZ--\r\n";
  auto boundary = MultipartBoundary("multipart/form-data; boundary=XyZ");
  ASSERT_TRUE(boundary.ok());
  auto parts = ParseMultipart(body, *boundary);
  ASSERT_TRUE(parts.ok()) << parts.status().ToString();
  ASSERT_EQ(parts->size(), 2u);
  EXPECT_EQ((*parts)[0].name, "file");
  EXPECT_EQ((*parts)[0].filename, "/home/user/a \"q\".txt");
  EXPECT_EQ((*parts)[0].content_type, "application/octet-stream");
  EXPECT_EQ((*parts)[0].data, "line1\r\nline2");
  EXPECT_EQ((*parts)[1].filename, "b\nc");
  EXPECT_EQ((*parts)[1].data, "");
}

TEST(Multipart, RejectsMissingBoundaryTruncationAndTooManyParts) {
  EXPECT_FALSE(MultipartBoundary("application/json").ok());
  EXPECT_FALSE(MultipartBoundary("multipart/form-data").ok());
  EXPECT_FALSE(ParseMultipart("--b\r\nContent-Disposition: form-data\r\n\r\nxx", "b").ok());
  EXPECT_FALSE(ParseMultipart("no boundary at all", "b").ok());
  std::string many;
  for (int i = 0; i < 5; ++i) many += "--b\r\nX: y\r\n\r\nd\r\n";
  many += "--b--";
  EXPECT_FALSE(ParseMultipart(many, "b", 4).ok());
  EXPECT_TRUE(ParseMultipart(many, "b", 5).ok());
}

TEST(Query, DecodesNamesValuesAndKeepsOrder) {
  auto q = ParseQuery("path=%2Fhome%2Fuser%2Fa+b.txt&username=root&flag&empty=");
  ASSERT_EQ(q.size(), 4u);
  EXPECT_EQ(QueryValue(q, "path"), "/home/user/a b.txt");
  EXPECT_EQ(QueryValue(q, "username"), "root");
  EXPECT_EQ(QueryValue(q, "flag"), "");
  EXPECT_FALSE(QueryValue(q, "missing").has_value());
  EXPECT_EQ(PercentDecode("%zz%4", false), "%zz%4") << "malformed escapes stay as they are";
}

TEST(Query, MetadataFilterIsDecodedTwice) {
  // What the SDK sends for {"user id": "a&b", k: "v=1"}: the form string, percent-encoded once
  // more as a query value.
  std::string inner =
      PercentEncode("user id") + "=" + PercentEncode("a&b") + "&k=" + PercentEncode("v=1");
  auto q = ParseQuery("metadata=" + PercentEncode(inner));
  auto m = ParseMetadataFilter(*QueryValue(q, "metadata"));
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(*m, (std::map<std::string, std::string>{{"user id", "a&b"}, {"k", "v=1"}}));
  EXPECT_EQ(ParseMetadataFilter("novalue").status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(ParseMetadataFilter("=v").status().code(), ErrorCode::kInvalidArgument);
}

TEST(ProtoJson, Base64AcceptsStandardUrlSafeAndUnpadded) {
  EXPECT_EQ(Base64Encode("hello\n"), "aGVsbG8K");
  EXPECT_EQ(Base64Encode("hi"), "aGk=");
  EXPECT_EQ(Base64Encode(std::string("\xfb\xff", 2)), "+/8=");
  EXPECT_EQ(*Base64Decode("+/8="), std::string("\xfb\xff", 2));
  EXPECT_EQ(*Base64Decode("-_8"), std::string("\xfb\xff", 2));
  EXPECT_EQ(*Base64Decode("aGk"), "hi");
  EXPECT_FALSE(Base64Decode("a").ok());
  EXPECT_FALSE(Base64Decode("a*b=").ok());
}

TEST(ProtoJson, Int64AsStringOrNumberSnakeCaseAccepted) {
  auto j = nlohmann::json::parse(R"({"size":"123","exit_code":-1,"big":"99999999999999999999"})");
  EXPECT_EQ(IntField(j, "size", 0, INT64_MAX)->value(), 123);
  EXPECT_EQ(IntField(j, "exitCode", -255, 255, "exit_code")->value(), -1);
  EXPECT_FALSE(IntField(j, "big", 0, INT64_MAX).ok());
  EXPECT_FALSE(IntField(j, "size", 0, 100).ok()) << "out of range";
  EXPECT_FALSE(IntField(j, "absent", 0, 1)->has_value());
  EXPECT_FALSE(StringField(j, "exit_code").ok()) << "wrong type names the field";
}

TEST(ProtoJson, EnumsByNameOrNumber) {
  std::map<std::string, int64_t> names{{"SIGNAL_SIGKILL", 9}, {"SIGNAL_SIGTERM", 15}};
  EXPECT_EQ(EnumField(nlohmann::json{{"signal", "SIGNAL_SIGKILL"}}, "signal", names)->value(), 9);
  EXPECT_EQ(EnumField(nlohmann::json{{"signal", 15}}, "signal", names)->value(), 15);
  EXPECT_FALSE(EnumField(nlohmann::json{{"signal", "SIGNAL_NOPE"}}, "signal", names).ok());
}

TEST(ProtoJson, TimestampsAreRfc3339WithTrimmedFractions) {
  EXPECT_EQ(Rfc3339(0), "1970-01-01T00:00:00Z");
  EXPECT_EQ(Rfc3339(1767268800000000000), "2026-01-01T12:00:00Z");
  EXPECT_EQ(Rfc3339(1767268800123000000), "2026-01-01T12:00:00.123Z");
  EXPECT_EQ(Rfc3339(1767268800123456000), "2026-01-01T12:00:00.123456Z");
  EXPECT_EQ(Rfc3339(1767268800000000001), "2026-01-01T12:00:00.000000001Z");
  EXPECT_EQ(*ParseRfc3339("2026-01-01T12:00:00Z"), 1767268800);
  EXPECT_EQ(*ParseRfc3339("2026-01-01T13:00:00.5+01:00"), 1767268800);
  EXPECT_FALSE(ParseRfc3339("2026-01-01").ok());
}

// Found by api_json_fuzz: a float past int64's range was cast to int64 (undefined behaviour).
TEST(ProtoJson, IntFieldRefusesFloatsOutsideInt64) {
  for (const char* text :
       {R"({"timeout": 6e74})", R"({"timeout": -6e74})", R"({"timeout": 9223372036854775808.0})"}) {
    auto msg = ParseMessage(text);
    ASSERT_TRUE(msg.ok());
    auto v = IntField(*msg, "timeout", INT64_MIN, INT64_MAX);
    EXPECT_EQ(v.status().code(), ErrorCode::kInvalidArgument) << text;
  }
  auto ok = IntField(*ParseMessage(R"({"timeout": 3.0e2})"), "timeout", 0, 1000);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(**ok, 300);
}

// Found by connect_fuzz: a short offset ("+1:2") made the parser step past the end of the
// string (an ASan heap-buffer-overflow).
TEST(ProtoJson, Rfc3339OffsetsMustBeTwoDigitHoursAndMinutes) {
  EXPECT_FALSE(ParseRfc3339("2026-01-01T00:00:00+1:2").ok());
  EXPECT_FALSE(ParseRfc3339("2026-01-01T00:00:00-").ok());
  EXPECT_FALSE(ParseRfc3339("2026-01-01T00:00:00+01:0").ok());
  EXPECT_FALSE(ParseRfc3339("2026-01-01T00:00:00+0100").ok());
  EXPECT_EQ(*ParseRfc3339("2026-01-01T12:30:00+00:30"), 1767268800);
  EXPECT_EQ(*ParseRfc3339("2026-01-01T11:00:00-01:00"), 1767268800);
}

TEST(Gzip, InflatesAndBoundsTheOutput) {
  std::string plain(100000, 'a');
  z_stream zs{};
  deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
  std::string gz(deflateBound(&zs, plain.size()) + 32, '\0');
  zs.next_in = reinterpret_cast<Bytef*>(plain.data());
  zs.avail_in = static_cast<uInt>(plain.size());
  zs.next_out = reinterpret_cast<Bytef*>(gz.data());
  zs.avail_out = static_cast<uInt>(gz.size());
  ASSERT_EQ(deflate(&zs, Z_FINISH), Z_STREAM_END);
  gz.resize(zs.total_out);
  deflateEnd(&zs);
  EXPECT_EQ(*GunzipBounded(gz, 1 << 20), plain);
  EXPECT_EQ(GunzipBounded(gz, 1000).status().code(), ErrorCode::kResourceExhausted);
  EXPECT_EQ(GunzipBounded(gz.substr(0, gz.size() / 2), 1 << 20).status().code(),
            ErrorCode::kInvalidArgument);
  EXPECT_FALSE(GunzipBounded("not gzip", 1 << 20).ok());
}

TEST(Gzip, CompressesAStreamChunkByChunkIntoOneMember) {
  std::string plain;
  for (int i = 0; i < 200000; ++i) plain += static_cast<char>('a' + (i * 7919) % 26);
  GzipWriter writer;
  std::string gz;
  for (size_t off = 0; off < plain.size(); off += 65536) {
    auto part = writer.Write(std::string_view(plain).substr(off, 65536));
    ASSERT_TRUE(part.ok()) << part.status().ToString();
    gz += *part;
  }
  auto tail = writer.Finish();
  ASSERT_TRUE(tail.ok());
  gz += *tail;
  ASSERT_GE(gz.size(), 2u);
  EXPECT_EQ(static_cast<unsigned char>(gz[0]), 0x1f) << "a gzip header, not zlib's";
  EXPECT_EQ(static_cast<unsigned char>(gz[1]), 0x8b);
  EXPECT_LT(gz.size(), plain.size());
  EXPECT_EQ(*GunzipBounded(gz, 1 << 20), plain);
  EXPECT_FALSE(writer.Write("more").ok()) << "nothing after Finish";

  GzipWriter empty;
  auto only_tail = empty.Finish();
  ASSERT_TRUE(only_tail.ok());
  EXPECT_EQ(*GunzipBounded(*only_tail, 10), "");
}

TEST(Gzip, AcceptEncodingAllowsGzipOnlyWithAPositiveQValue) {
  EXPECT_TRUE(AcceptsGzip("gzip"));
  EXPECT_TRUE(AcceptsGzip("gzip, deflate"));  // Node's fetch sends this on every request
  EXPECT_TRUE(AcceptsGzip("br;q=1.0, GZIP;q=0.5"));
  EXPECT_TRUE(AcceptsGzip("x-gzip"));
  EXPECT_TRUE(AcceptsGzip("*"));
  EXPECT_FALSE(AcceptsGzip(""));
  EXPECT_FALSE(AcceptsGzip("identity"));
  EXPECT_FALSE(AcceptsGzip("deflate, br"));
  EXPECT_FALSE(AcceptsGzip("gzip;q=0"));
  EXPECT_FALSE(AcceptsGzip("*, gzip;q=0")) << "refused by name beats the wildcard";
  EXPECT_FALSE(AcceptsGzip("*;q=0"));
  EXPECT_FALSE(AcceptsGzip("gzip;q=abc")) << "a malformed element is ignored";
}

}  // namespace
}  // namespace moat::api::codec
