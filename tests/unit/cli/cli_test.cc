// The CLI's pure helpers: what it sends (Start request, KEY=VALUE), how it reads the stream
// (envelopes split anywhere, end events) and what it prints (tables, errors).
#include <gtest/gtest.h>

#include <csignal>

#include "api/codec/connect.h"
#include "cli/api_client.h"
#include "cli/http_client.h"
#include "cli/output.h"
#include "cli/process_stream.h"

namespace moat::cli {
namespace {

using api::codec::EncodeEnvelope;
using api::codec::kEnvelopeEndStream;

TEST(ParseKeyValues, SplitsOnTheFirstEqualsSign) {
  auto r = ParseKeyValues({"A=1", "B=x=y", "C="}, "--env");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->at("A"), "1");
  EXPECT_EQ(r->at("B"), "x=y");
  EXPECT_EQ(r->at("C"), "");
}

TEST(ParseKeyValues, RejectsAMissingKeyNamingTheFlag) {
  for (const char* bad : {"novalue", "=v"}) {
    auto r = ParseKeyValues({bad}, "--metadata");
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("--metadata"), std::string::npos);
    EXPECT_NE(r.status().message().find(bad), std::string::npos);
  }
}

TEST(ParseCpEndpoint, ReadsSandboxIdColonPath) {
  CpEndpoint e = ParseCpEndpoint("k3v9q2m8x7:/home/user/a:b.txt");
  ASSERT_TRUE(e.sandbox_id.has_value());
  EXPECT_EQ(*e.sandbox_id, "k3v9q2m8x7");
  EXPECT_EQ(e.path, "/home/user/a:b.txt");
}

TEST(ParseCpEndpoint, TreatsDashPathsAndNonIdPrefixesAsLocal) {
  for (const char* local : {"-", "/tmp/a:b", "./x:y", "Upper:x", "file.txt", ":x"}) {
    CpEndpoint e = ParseCpEndpoint(local);
    EXPECT_FALSE(e.sandbox_id.has_value()) << local;
    EXPECT_EQ(e.path, local);
  }
}

TEST(ParseBaseUrl, SplitsHostPortAndPrefix) {
  auto u = ParseBaseUrl("http://127.0.0.1:3000/api/");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->host, "127.0.0.1");
  EXPECT_EQ(u->port, "3000");
  EXPECT_EQ(u->prefix, "/api");
  auto d = ParseBaseUrl("http://moat.local");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->port, "80");
  EXPECT_EQ(d->prefix, "");
}

TEST(ParseBaseUrl, RejectsHttpsAndBadPorts) {
  EXPECT_FALSE(ParseBaseUrl("https://x:443").ok());
  EXPECT_FALSE(ParseBaseUrl("http://x:port").ok());
  EXPECT_FALSE(ParseBaseUrl("http://:80").ok());
}

TEST(ResponseError, UsesTheApiMessageAndMapsTheStatus) {
  Status s = ResponseError({.status = 404,
                            .content_type = "application/json",
                            .next_token = "",
                            .body = R"({"code":404,"message":"sandbox abc not found"})"});
  EXPECT_EQ(s.code(), ErrorCode::kNotFound);
  EXPECT_EQ(s.message(), "sandbox abc not found");
  Status bare = ResponseError({.status = 502, .content_type = "", .next_token = "", .body = ""});
  EXPECT_EQ(bare.code(), ErrorCode::kUnavailable);
  EXPECT_EQ(bare.message(), "HTTP 502");
}

TEST(FormatTable, PadsColumnsToTheWidestCell) {
  EXPECT_EQ(FormatTable({"ID", "STATE"}, {{"abcdef", "running"}, {"x", "paused"}}),
            "ID      STATE\n"
            "abcdef  running\n"
            "x       paused\n");
}

TEST(FormatSandboxList, ShowsOneRowPerSandboxWithMetadata) {
  json list = json::parse(R"([{"sandboxID":"s1","templateID":"base","state":"running",
      "startedAt":"2026-01-01T12:00:00Z","endAt":"2026-01-01T12:05:00Z",
      "metadata":{"a":"1","b":"2"}}])");
  std::string out = FormatSandboxList(list);
  EXPECT_EQ(out.substr(0, out.find('\n')),
            "SANDBOX ID  TEMPLATE  STATE    STARTED               ENDS                  METADATA");
  EXPECT_NE(out.find("s1          base      running  2026-01-01T12:00:00Z"), std::string::npos);
  EXPECT_NE(out.find("a=1,b=2"), std::string::npos);
}

TEST(FormatSandboxFields, ListsKnownFieldsAndNeverTheAccessToken) {
  json s = json::parse(
      R"({"sandboxID":"s1","templateID":"base","envdVersion":"0.5.7","envdAccessToken":"secret",
          "domain":null,"cpuCount":2})");
  std::string out = FormatSandboxFields(s);
  EXPECT_NE(out.find("sandboxID:    s1\n"), std::string::npos) << out;
  EXPECT_NE(out.find("cpuCount:     2\n"), std::string::npos) << out;
  EXPECT_NE(out.find("domain:       -\n"), std::string::npos) << out;
  EXPECT_EQ(out.find("secret"), std::string::npos);
}

TEST(FormatForks, ShowsForkErrorsInTheirRow) {
  json forks = json::parse(
      R"([{"sandbox":{"sandboxID":"f1","templateID":"base"}},
          {"error":{"code":507,"message":"no space"}}])");
  EXPECT_EQ(FormatForks(forks),
            "SANDBOX ID  TEMPLATE  ERROR\n"
            "f1          base      -\n"
            "-           -         no space\n");
}

TEST(StartRequest, PutsArgvZeroInCmdAndOmitsUnsetFields) {
  json r = StartRequest({"echo", "hi"}, {}, "");
  EXPECT_EQ(r, json::parse(R"({"process":{"cmd":"echo","args":["hi"]},"stdin":false})"));
  json full = StartRequest({"ls"}, {{"A", "1"}}, "/tmp");
  EXPECT_EQ(full["process"]["envs"], json::parse(R"({"A":"1"})"));
  EXPECT_EQ(full["process"]["cwd"], "/tmp");
  EXPECT_EQ(full["process"]["args"], json::array());
}

TEST(EnvelopeReader, YieldsEnvelopesHoweverTheBytesAreSplit) {
  std::string stream = EncodeEnvelope(0, R"({"event":{"start":{"pid":1}}})") +
                       EncodeEnvelope(0, R"({"event":{"data":{"stdout":"aGkK"}}})") +
                       EncodeEnvelope(kEnvelopeEndStream, "{}");
  for (size_t step : {size_t{1}, size_t{3}, size_t{7}, stream.size()}) {
    EnvelopeReader reader;
    std::vector<api::codec::Envelope> got;
    for (size_t i = 0; i < stream.size(); i += step) {
      reader.Append(std::string_view(stream).substr(i, step));
      while (true) {
        auto next = reader.Next();
        ASSERT_TRUE(next.ok());
        if (!next->has_value()) break;
        got.push_back(std::move(**next));
      }
    }
    ASSERT_EQ(got.size(), 3u) << "step " << step;
    EXPECT_EQ(got[1].message, R"({"event":{"data":{"stdout":"aGkK"}}})");
    EXPECT_EQ(got[2].flags, kEnvelopeEndStream);
    EXPECT_EQ(reader.pending(), 0u);
  }
}

TEST(EnvelopeReader, RejectsACompressedEnvelope) {
  EnvelopeReader reader;
  reader.Append(EncodeEnvelope(api::codec::kEnvelopeCompressed, "{}"));
  EXPECT_FALSE(reader.Next().ok());
}

TEST(ExitCodeFromEnd, FollowsTheShellsConvention) {
  EXPECT_EQ(ExitCodeFromEnd(json::parse(R"({"exited":true,"status":"exit status 0"})")), 0);
  EXPECT_EQ(ExitCodeFromEnd(json::parse(R"({"exitCode":3,"exited":true})")), 3);
  EXPECT_EQ(ExitCodeFromEnd(json::parse(R"({"exitCode":-1,"status":"signal: killed"})")),
            128 + SIGKILL);
  EXPECT_EQ(ExitCodeFromEnd(json::parse(R"({"exitCode":-1,"status":"weird"})")), 255);
  EXPECT_EQ(ExitCodeFromEnd(json::parse(R"({"exited":"yes","status":7})")), 255);
}

TEST(EndStreamStatus, IsOkForAnEmptyMessageAndCarriesTheErrorOtherwise) {
  EXPECT_TRUE(EndStreamStatus(json::object()).ok());
  Status s = EndStreamStatus(
      json::parse(R"({"error":{"code":"invalid_argument","message":"exec nope: not found"}})"));
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "exec nope: not found");
}

}  // namespace
}  // namespace moat::cli
