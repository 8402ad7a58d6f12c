// The port proxy's record of code-interpreter runs: ExecuteStreamReader over every way the relay
// may cut the interpreter's answer, bounded against hostile streams, and CodeRunCapture's records
// in a real SQLite store.
#include "host/code_run_capture.h"

#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <vector>

#include "api/store/sqlite_store.h"
#include "common/fs.h"

namespace moat::api {
namespace {

// What a reader fills in, comparable as a whole.
struct Outcome {
  std::optional<int32_t> exit_code;
  std::string error;
  std::string stdout_head, stdout_tail, stderr_head, stderr_tail;
  int64_t stdout_bytes = 0, stderr_bytes = 0;
  bool settled = false;
  bool operator==(const Outcome&) const = default;
};

Outcome Of(const ExecuteStreamReader& r) {
  store::CommandRecord c;
  r.Fill(&c);
  return {c.exit_code,   c.error,        c.stdout_head,  c.stdout_tail, c.stderr_head,
          c.stderr_tail, c.stdout_bytes, c.stderr_bytes, r.settled()};
}

Outcome Read(const std::vector<std::string_view>& pieces, bool complete = true,
             size_t max_line = kMaxExecuteLine) {
  ExecuteStreamReader r(max_line);
  for (auto p : pieces) r.Feed(p);
  r.Close(complete);
  return Of(r);
}

std::string Chunked(const std::vector<std::string>& chunks) {
  std::string out =
      "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
      "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
  for (const auto& c : chunks) {
    char size[32];
    std::snprintf(size, sizeof size, "%zx", c.size());
    out += std::string(size) + "\r\n" + c + "\r\n";
  }
  return out + "0\r\n\r\n";
}

const std::string kRun =  // a line split across chunks, and one chunk holding two lines
    Chunked({R"({"type": "number_of_executions", "execution_count": 3})"
             "\n",
             R"({"type": "stdout", "text": "hello )",
             R"(world\n", "timestamp": "x"})"
             "\n",
             R"({"type": "stderr", "text": "warn\n"})"
             "\n"
             R"({"type": "result", "text": "2", "is_main_result": true, "extra": {}})"
             "\n",
             R"({"type": "keepalive"})"
             "\n",
             R"({"type": "stdout", "text": "\u00e9\n"})"
             "\n"
             R"({"type": "end_of_execution"})"
             "\n"});

TEST(ExecuteStreamReader, MapsStdoutStderrAndTheEndOfARun) {
  Outcome o = Read({kRun});
  EXPECT_TRUE(o.settled);
  EXPECT_EQ(o.exit_code, 0);
  EXPECT_EQ(o.error, "");
  EXPECT_EQ(o.stdout_head, "hello world\n\xc3\xa9\n");
  EXPECT_EQ(o.stdout_bytes, 15);
  EXPECT_EQ(o.stderr_head, "warn\n");
}

TEST(ExecuteStreamReader, GivesTheSameRecordWhereverTheBytesAreCut) {
  Outcome whole = Read({kRun});
  std::string_view run = kRun;
  for (size_t cut = 0; cut <= run.size(); ++cut) {
    ASSERT_EQ(Read({run.substr(0, cut), run.substr(cut)}), whole) << "cut at " << cut;
  }
  ExecuteStreamReader bytewise;
  for (char c : run) bytewise.Feed(std::string_view(&c, 1));
  bytewise.Close(true);
  EXPECT_EQ(Of(bytewise), whole);
}

TEST(ExecuteStreamReader, AnErrorLineIsTheErrorWithExitCodeOne) {
  std::string run = Chunked(
      {R"({"type": "error", "name": "NameError", "value": "x", "traceback": "t"})"
       "\n"
       R"({"type": "error", "name": "ZeroDivisionError", "value": "division by zero", "traceback": "t"})"
       "\n"
       R"({"type": "end_of_execution"})"
       "\n"});
  Outcome o = Read({run});
  EXPECT_EQ(o.error, "ZeroDivisionError: division by zero") << "the last one wins";
  EXPECT_EQ(o.exit_code, 1);
  EXPECT_TRUE(o.settled);

  // ContextError: an error line, then the stream ends without end_of_execution.
  o = Read({Chunked({R"({"type": "error", "name": "ContextError", "value": "no kernel"})"
                     "\n"})});
  EXPECT_EQ(o.error, "ContextError: no kernel");
  EXPECT_EQ(o.exit_code, 1);
  EXPECT_TRUE(o.settled);
}

TEST(ExecuteStreamReader, AnErrorIsKeptToItsBound) {
  std::string value(2 * kMaxExecuteError, 'v');
  Outcome o = Read({Chunked({R"({"type": "error", "name": "E", "value": ")" + value + "\"}\n"})});
  EXPECT_EQ(o.error.size(), kMaxExecuteError);
  EXPECT_EQ(o.error.rfind("E: vvv", 0), 0u);
}

TEST(ExecuteStreamReader, ANon200AnswerIsHttpStatusWithoutExitCode) {
  Outcome o = Read({"HTTP/1.1 400 Bad Request\r\nContent-Length: 52\r\n\r\n",
                    R"({"message": "Field 'code' is required", "code": 400})"});
  EXPECT_EQ(o.error, "HTTP 400");
  EXPECT_EQ(o.exit_code, std::nullopt);
  EXPECT_TRUE(o.settled);
}

TEST(ExecuteStreamReader, SkipsInterimHeads) {
  Outcome o = Read({"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + kRun});
  EXPECT_EQ(o, Read({kRun}));
}

TEST(ExecuteStreamReader, ReadsAContentLengthBodyAndAClosedOneToTheirLastLine) {
  std::string body = R"({"type": "stdout", "text": "a"})"
                     "\n"
                     R"({"type": "end_of_execution"})";  // no final newline: still a line
  Outcome o = Read({"HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(body.size()) +
                    "\r\n\r\n" + body + "trailing bytes past the length"});
  EXPECT_EQ(o.stdout_head, "a");
  EXPECT_EQ(o.exit_code, 0);

  o = Read({"HTTP/1.0 200 OK\r\n\r\n" + body}, /*complete=*/true);
  EXPECT_EQ(o.stdout_head, "a");
  EXPECT_EQ(o.exit_code, 0);
  // Cut short: the partial line is not read, and nothing says how the run ended.
  o = Read({"HTTP/1.0 200 OK\r\n\r\n" + body}, /*complete=*/false);
  EXPECT_EQ(o.stdout_head, "a");
  EXPECT_EQ(o.exit_code, std::nullopt);
  EXPECT_FALSE(o.settled);
}

TEST(ExecuteStreamReader, IgnoresWhatFollowsTheEndOfExecution) {
  std::string run = Chunked({R"({"type": "end_of_execution"})"
                             "\nnot json at all\n"});
  Outcome o = Read({run});
  EXPECT_EQ(o.exit_code, 0);
  EXPECT_EQ(o.error, "");
}

TEST(ExecuteStreamReader, GarbageIsAnUnparsableStream) {
  for (const std::string& bad : std::vector<std::string>{
           Chunked({"not json\n"}),
           Chunked({"[1, 2]\n"}),
           Chunked({"\n"}),  // a blank line
           Chunked({R"({"type": "stdout", "text": 7})"
                    "\n"}),                          // a wrong-typed field
           Chunked({std::string(600, '[') + "\n"}),  // nested past the bound
           "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n",
           "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX",
           "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
           "SSH-2.0-OpenSSH\r\n\r\n",
       }) {
    ExecuteStreamReader r;
    r.Feed(bad);
    r.Close(true);
    EXPECT_TRUE(r.unparsable()) << bad;
    Outcome o = Of(r);
    EXPECT_EQ(o.error, kUnparsableStream) << bad;
    EXPECT_EQ(o.exit_code, std::nullopt);
    EXPECT_TRUE(o.settled);
  }
}

TEST(ExecuteStreamReader, AHostileStreamIsDroppedWithBoundedMemory) {
  std::string block(64 * 1024, 'x');
  {  // a head that never ends
    ExecuteStreamReader r;
    r.Feed("HTTP/1.1 200 OK\r\n");
    for (int i = 0; i < 160 && !r.unparsable(); ++i) {
      r.Feed(block);
      EXPECT_LE(r.buffered_bytes(), kMaxExecuteHead);
    }
    EXPECT_TRUE(r.unparsable());
    EXPECT_EQ(r.buffered_bytes(), 0u);
  }
  {  // a chunk-size line that never ends
    ExecuteStreamReader r;
    r.Feed("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    r.Feed(std::string(kMaxChunkSizeLine + 1, '0'));
    EXPECT_TRUE(r.unparsable());
  }
  {  // 10 MiB of body without a newline
    ExecuteStreamReader r;
    r.Feed("HTTP/1.1 200 OK\r\n\r\n");
    for (int i = 0; i < 160; ++i) {
      r.Feed(block);
      EXPECT_LE(r.buffered_bytes(), kMaxExecuteLine);
    }
    EXPECT_TRUE(r.unparsable());
    EXPECT_EQ(r.buffered_bytes(), 0u);
  }
}

TEST(ExecuteStreamReader, SkipsAnObjectLineLongerThanTheBoundAndReadsOn) {
  constexpr size_t kBound = 64;
  std::string image = R"({"type": "result", "png": ")" + std::string(1000, 'A') + "\"}\n";
  std::string run = Chunked({R"({"type": "stdout", "text": "before"})"
                             "\n",
                             image.substr(0, 500), image.substr(500),
                             R"({"type": "stdout", "text": "after"})"
                             "\n"
                             R"({"type": "end_of_execution"})"
                             "\n"});
  ExecuteStreamReader r(kBound);
  size_t body = run.find("\r\n\r\n") + 4;
  r.Feed(std::string_view(run).substr(0, body));
  for (size_t i = body; i < run.size(); i += 7) {
    r.Feed(std::string_view(run).substr(i, 7));
    EXPECT_LE(r.buffered_bytes(), kBound + 8) << "a line, and a chunk-size line";
  }
  r.Close(true);
  EXPECT_EQ(r.skipped_lines(), 1u);
  Outcome o = Of(r);
  EXPECT_EQ(o.stdout_head, "beforeafter");
  EXPECT_EQ(o.exit_code, 0);

  // Anything else that long is no line of the interpreter's.
  EXPECT_EQ(Read({Chunked({std::string(100, 'x') + "\n"})}, true, kBound).error, kUnparsableStream);
}

TEST(ExecuteStreamReader, KeepsTheFirstAndLastOutputOfALongRun) {
  std::vector<std::string> chunks;
  for (int i = 0; i < 1000; ++i) {
    chunks.push_back(R"({"type": "stdout", "text": "line )" + std::to_string(i) + "\\n\"}\n");
  }
  chunks.push_back(R"({"type": "end_of_execution"})"
                   "\n");
  Outcome o = Read({Chunked(chunks)});
  EXPECT_EQ(o.stdout_head.rfind("line 0\n", 0), 0u);
  EXPECT_EQ(o.stdout_head.size(), OutputTail::kOutputKeep);
  EXPECT_TRUE(o.stdout_tail.ends_with("line 999\n"));
  EXPECT_EQ(o.stdout_tail.size(), OutputTail::kOutputKeep);
}

class CodeRunCaptureTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = MakeTempDir("/tmp", "moat-code-run-test.");
    ASSERT_TRUE(d.ok());
    dir_ = *d;
    auto s = store::SqliteStore::Open(dir_ + "/moat.db");
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(*s);
    log_.emplace(store_.get(), true);
  }
  void TearDown() override {
    log_.reset();
    store_.reset();
    EXPECT_TRUE(RemoveTree(dir_).ok());
  }
  std::vector<store::CommandRecord> Commands() {
    auto list = store_->ListCommands("sbx", 0, 10);
    EXPECT_TRUE(list.ok()) << list.status().ToString();
    return list.ok() ? *list : std::vector<store::CommandRecord>{};
  }

  std::string dir_;
  std::unique_ptr<store::SqliteStore> store_;
  std::optional<HistoryLog> log_;
};

TEST_F(CodeRunCaptureTest, RecordsNothingForABodyWithoutCode) {
  for (std::string_view body : {"", "not json", "[]", R"({"code": 1})", R"({"language": "r"})",
                                R"({"code": {"a": [[[[[[[[[[1]]]]]]]]]]}})"}) {
    EXPECT_EQ(CodeRunCapture::Start(*log_, "sbx", "team", body), nullptr) << body;
  }
  HistoryLog off(store_.get(), false);
  EXPECT_EQ(CodeRunCapture::Start(off, "sbx", "team", R"({"code": "1"})"), nullptr);
  EXPECT_TRUE(Commands().empty());
}

TEST_F(CodeRunCaptureTest, RecordsTheRunAsACodeCommand) {
  auto run = CodeRunCapture::Start(*log_, "sbx", "team",
                                   R"j({"code": "print(6*7)", "language": "python"})j");
  ASSERT_NE(run, nullptr);
  auto open = Commands();
  ASSERT_EQ(open.size(), 1u);
  EXPECT_EQ(open[0].kind, "code");
  EXPECT_EQ(open[0].command, "print(6*7)");
  EXPECT_EQ(open[0].team_id, "team");
  EXPECT_EQ(open[0].ended_at_ms, 0);
  run->Downstream(Chunked({R"({"type": "stdout", "text": "42\n"})"
                           "\n"
                           R"({"type": "end_of_execution"})"
                           "\n"}));
  run->Finish(RelayEnd::kUpstreamClosed, 200);
  run.reset();
  auto done = Commands();
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].command, "print(6*7)") << "the end does not rewrite it";
  EXPECT_EQ(done[0].stdout_head, "42\n");
  EXPECT_EQ(done[0].exit_code, 0);
  EXPECT_EQ(done[0].error, "");
  EXPECT_GE(done[0].ended_at_ms, done[0].started_at_ms);
}

TEST_F(CodeRunCaptureTest, SaysHowARunWithoutAnEndWasLeft) {
  struct Case {
    RelayEnd end;
    int status;
    std::string downstream;
    std::string error;
  };
  std::string partial = Chunked({R"({"type": "stdout", "text": "1"})"
                                 "\n"});
  partial.resize(partial.size() - 5);  // no last chunk
  for (const Case& c : std::vector<Case>{
           {RelayEnd::kClientGone, 200, partial, "the client left before the run ended"},
           {RelayEnd::kUpstreamClosed, 200, partial,
            "the interpreter's stream ended before the run did"},
           {RelayEnd::kUpstreamError, 200, partial,
            "the connection to the interpreter failed before the run ended"},
           {RelayEnd::kIdleTimeout, 504, "", "HTTP 504"},
           {RelayEnd::kBadResponse, 502, "", "HTTP 502"},
       }) {
    auto run = CodeRunCapture::Start(*log_, "sbx", "team", R"({"code": "x"})");
    ASSERT_NE(run, nullptr);
    run->Downstream(c.downstream);
    run->Finish(c.end, c.status);
    auto newest = Commands().front();
    EXPECT_EQ(newest.error, c.error);
    EXPECT_EQ(newest.exit_code, std::nullopt) << c.error;
    EXPECT_GT(newest.ended_at_ms, 0) << c.error;
  }
  // Never finished by its caller: the destructor records the client's leaving.
  CodeRunCapture::Start(*log_, "sbx", "team", R"({"code": "y"})").reset();
  EXPECT_EQ(Commands().front().error, "the client left before the run ended");
}

}  // namespace
}  // namespace moat::api
