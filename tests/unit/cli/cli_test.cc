// The CLI's pure helpers: what it sends (Start request, KEY=VALUE), how it reads the stream
// (envelopes split anywhere, end events) and what it prints (tables, errors).
#include <gtest/gtest.h>
#include <pty.h>
#include <sys/ioctl.h>

#include <csignal>

#include "api/codec/connect.h"
#include "cli/api_client.h"
#include "cli/http_client.h"
#include "cli/output.h"
#include "cli/process_stream.h"
#include "cli/terminal.h"
#include "common/unique_fd.h"

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

TEST(StartRequest, AsksForAPtyOfTheGivenSizeAndOpenStdin) {
  json r = StartRequest({"bash"}, {}, "", /*stdin_open=*/true, PtySize{.cols = 120, .rows = 40});
  EXPECT_EQ(r["stdin"], true);
  EXPECT_EQ(r["pty"], json::parse(R"({"size":{"cols":120,"rows":40}})"));
  EXPECT_FALSE(StartRequest({"cat"}, {}, "", true).contains("pty"));
}

TEST(InteractiveRequests, CarryThePidAndBase64Input) {
  EXPECT_EQ(SendInputRequest(42, "hi\n", /*pty=*/true),
            json::parse(R"({"process":{"pid":42},"input":{"pty":"aGkK"}})"));
  EXPECT_EQ(SendInputRequest(7, "x", /*pty=*/false),
            json::parse(R"({"process":{"pid":7},"input":{"stdin":"eA=="}})"));
  EXPECT_EQ(ResizeRequest(42, {.cols = 100, .rows = 30}),
            json::parse(R"({"process":{"pid":42},"pty":{"size":{"cols":100,"rows":30}}})"));
  EXPECT_EQ(CloseStdinRequest(9), json::parse(R"({"process":{"pid":9}})"));
}

TEST(FormatKeyList, ShowsMasksNeverValues) {
  json keys = json::parse(R"([{"id":"k1","name":"ci","mask":"moat_1234…abcd","teamID":"t1",
      "createdAt":"2026-01-01T12:00:00Z"}])");
  EXPECT_EQ(FormatKeyList(keys),
            "KEY ID  NAME  KEY             TEAM ID  CREATED\n"
            "k1      ci    moat_1234…abcd  t1       2026-01-01T12:00:00Z\n")
      << "columns line up however many bytes the mask's ellipsis takes";
}

TEST(FormatSnapshotList, JoinsNamesShowsWhereEachLivesAndADashForNone) {
  json snaps = json::parse(R"([{"snapshotID":"snap1","names":["a","b"],"sandboxID":"s1",
      "hostID":"h1","storage":"uploaded","createdAt":"2026-01-01T12:00:00Z"},
      {"snapshotID":"snap2","names":[]}])");
  EXPECT_EQ(FormatSnapshotList(snaps),
            "SNAPSHOT ID  NAMES  FROM SANDBOX  HOST  STORAGE   CREATED\n"
            "snap1        a,b    s1            h1    uploaded  2026-01-01T12:00:00Z\n"
            "snap2        -      -             -     -         -\n");
}

TEST(FormatHostList, ShowsReservedOverTotalAndADashForWhatIsMissing) {
  json hosts = json::parse(R"([{"hostID":"h1","state":"draining","endpoint":"10.0.0.7:7070",
      "sandboxes":3,"vcpuTotal":16,"vcpuReserved":6,"memoryMBTotal":65536,
      "memoryMBReserved":3072,"lastHeartbeat":"2026-01-01T12:00:00.250Z"},{"hostID":"h2"}])");
  EXPECT_EQ(FormatHostList(hosts),
            "HOST  STATE     ENDPOINT       SANDBOXES  VCPU  MEM(MiB)    LAST-HEARTBEAT\n"
            "h1    draining  10.0.0.7:7070  3          6/16  3072/65536  2026-01-01T12:00:00.250Z\n"
            "h2    -         -              -          -/-   -/-         -\n");
  EXPECT_EQ(FormatHostList(json::array()),
            "HOST  STATE  ENDPOINT  SANDBOXES  VCPU  MEM(MiB)  LAST-HEARTBEAT\n")
      << "moatd serve registers no hosts";
}

TEST(FormatFields, PrintsOnlyPresentFieldsInOrder) {
  json k = json::parse(R"({"key":"moat_x","id":"k1","name":"ci"})");
  EXPECT_EQ(FormatFields(k, {"id", "name", "teamID", "key"}),
            "id:    k1\n"
            "name:  ci\n"
            "key:   moat_x\n");
}

// A pseudo-terminal stands in for the user's terminal.
class TerminalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int master = -1;
    int slave = -1;
    ASSERT_EQ(::openpty(&master, &slave, nullptr, nullptr, nullptr), 0);
    master_.Reset(master);
    slave_.Reset(slave);
  }
  tcflag_t LocalFlags() {
    struct termios t {};
    EXPECT_EQ(::tcgetattr(slave_.get(), &t), 0);
    return t.c_lflag;
  }
  UniqueFd master_, slave_;
};

TEST_F(TerminalTest, RawModeIsUndoneOnRestoreAndOnDestruction) {
  ASSERT_TRUE(LocalFlags() & ICANON);
  {
    RawTerminal raw;
    ASSERT_TRUE(raw.Enter(slave_.get()).ok());
    EXPECT_FALSE(LocalFlags() & (ICANON | ECHO | ISIG));
    EXPECT_FALSE(raw.Enter(slave_.get()).ok()) << "one at a time";
    raw.Restore();
    EXPECT_TRUE(LocalFlags() & ICANON);
    EXPECT_TRUE(LocalFlags() & ECHO);
    ASSERT_TRUE(raw.Enter(slave_.get()).ok());
  }
  EXPECT_TRUE(LocalFlags() & ICANON) << "the destructor restores";
  RawTerminal not_a_tty;
  EXPECT_FALSE(not_a_tty.Enter(master_.get() + 1000).ok());
}

TEST_F(TerminalTest, ReportsTheWindowSizeAndResizesArriveOnThePipe) {
  struct winsize ws {};
  ws.ws_col = 132;
  ws.ws_row = 43;
  ASSERT_EQ(::ioctl(master_.get(), TIOCSWINSZ, &ws), 0);
  auto size = TerminalSize(slave_.get());
  ASSERT_TRUE(size.has_value());
  EXPECT_EQ(size->cols, 132);
  EXPECT_EQ(size->rows, 43);
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  EXPECT_FALSE(TerminalSize(fds[0]).has_value()) << "a pipe is no terminal";
  ::close(fds[0]);
  ::close(fds[1]);

  auto winch = WinchPipe::Install();
  ASSERT_TRUE(winch.ok());
  EXPECT_FALSE((*winch)->Drain());
  ASSERT_EQ(::raise(SIGWINCH), 0);
  EXPECT_TRUE((*winch)->Drain());
  EXPECT_FALSE((*winch)->Drain()) << "drained";
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
