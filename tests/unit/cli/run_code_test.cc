// `moat run-code` as a user runs it: the built CLI against a loopback fake of moatd that answers
// GET /sandboxes/{id} and plays the interpreter's POST /execute (chunked NDJSON, paced by the
// test). Checks what reaches the "guest" (headers, body, no API key), what the CLI prints and
// saves, and its exit status: 0 ran, 1 raised, 2 moat could not run or show it.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <pthread.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/child_process.h"
#include "common/fs.h"
#include "common/unique_fd.h"
#include "support/raw_http.h"

namespace moat::cli {
namespace {

using nlohmann::json;
using test_support::Conn;
using test_support::Head;
using test_support::LoopbackServer;
using test_support::ParseHead;
using test_support::SendAll;
using ::testing::HasSubstr;
using ::testing::Not;

struct Request {
  std::string method;
  std::string target;
  Head head;
  std::string body;
};

// Writes a chunked 200 response one chunk at a time.
class ChunkedWriter {
 public:
  explicit ChunkedWriter(Conn& c) : c_(c) {
    SendAll(c_.fd.get(), "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
  }
  void Chunk(std::string_view data) {
    char size[32];
    std::snprintf(size, sizeof size, "%zx\r\n", data.size());
    SendAll(c_.fd.get(), std::string(size) + std::string(data) + "\r\n");
  }
  void End() { SendAll(c_.fd.get(), "0\r\n\r\n"); }

 private:
  Conn& c_;
};

void SendPlain(Conn& c, int status, const std::string& reason, const std::string& body) {
  SendAll(c.fd.get(), "HTTP/1.1 " + std::to_string(status) + " " + reason +
                          "\r\nContent-Type: text/plain\r\nContent-Length: " +
                          std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body);
}

// moatd as far as run-code sees it: sandbox "sbx1" (both tokens) exists, anything else is 404;
// POST /execute is served by `execute`.
class FakeMoatd {
 public:
  using Execute = std::function<void(Conn&)>;
  explicit FakeMoatd(Execute execute) : execute_(std::move(execute)) {}

  uint16_t port() const { return server_.port(); }
  std::vector<Request> requests() {
    std::lock_guard lock(mu_);
    return requests_;
  }
  // The first request with `method`.
  std::optional<Request> Find(const std::string& method) {
    std::lock_guard lock(mu_);
    for (const auto& r : requests_) {
      if (r.method == method) return r;
    }
    return std::nullopt;
  }

 private:
  void Serve(Conn& c) {
    std::string raw = c.ReadUntil("\r\n\r\n");
    if (raw.empty()) return;
    Request req;
    req.head = ParseHead(raw);
    auto sp1 = req.head.first_line.find(' ');
    auto sp2 = req.head.first_line.find(' ', sp1 + 1);
    req.method = req.head.first_line.substr(0, sp1);
    req.target = req.head.first_line.substr(sp1 + 1, sp2 - sp1 - 1);
    std::string length = req.head.Header("content-length");
    if (!length.empty()) c.ReadN(std::stoul(length), &req.body);
    {
      std::lock_guard lock(mu_);
      requests_.push_back(req);
    }
    if (req.method == "GET" && req.target == "/sandboxes/sbx1") {
      std::string body = json{
          {"sandboxID", "sbx1"},
          {"envdAccessToken", "envd-token"},
          {"trafficAccessToken",
           "traffic-token"}}.dump();
      SendAll(c.fd.get(), "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " +
                              std::to_string(body.size()) + "\r\n\r\n" + body);
    } else if (req.method == "GET") {
      std::string body = R"({"code":404,"message":"sandbox not found"})";
      SendAll(c.fd.get(),
              "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
              "Content-Length: " +
                  std::to_string(body.size()) + "\r\n\r\n" + body);
    } else if (req.method == "POST" && req.target == "/execute") {
      execute_(c);
    } else {
      SendPlain(c, 500, "Internal Server Error", "unexpected " + req.method + " " + req.target);
    }
  }

  Execute execute_;
  std::mutex mu_;
  std::vector<Request> requests_;
  LoopbackServer server_{[this](Conn& c) { Serve(c); }};
};

struct CliRun {
  int exit_code = -1;
  std::string out;
  std::string err;
  std::chrono::milliseconds took{0};
};

// Runs `moat run-code <args>` against `port` and collects its output. `on_stdout` sees stdout as
// it grows (to observe streaming).
CliRun RunCli(uint16_t port, const std::vector<std::string>& args, const std::string& stdin_data,
              const std::function<void(const std::string&)>& on_stdout = nullptr) {
  CliRun run;
  int in[2], out[2], err[2];
  if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) {
    ADD_FAILURE() << "pipe2";
    return run;
  }
  UniqueFd in_r(in[0]), in_w(in[1]), out_r(out[0]), out_w(out[1]), err_r(err[0]), err_w(err[1]);
  SpawnOptions spawn;
  spawn.argv = {MOAT_CLI_BINARY, "run-code"};
  spawn.argv.insert(spawn.argv.end(), args.begin(), args.end());
  spawn.env = std::vector<std::string>{"MOAT_API_URL=http://127.0.0.1:" + std::to_string(port),
                                       "MOAT_API_KEY=secret-api-key", "PATH=/usr/bin:/bin"};
  spawn.fds = {{0, in_r.get()}, {1, out_w.get()}, {2, err_w.get()}};
  auto start = std::chrono::steady_clock::now();
  auto child = ChildProcess::Spawn(spawn);
  if (!child.ok()) {
    ADD_FAILURE() << child.status().ToString();
    return run;
  }
  in_r.Reset();
  out_w.Reset();
  err_w.Reset();
  // Small: fits the pipe. The CLI may already have exited (a usage error reads no stdin), so the
  // write must not raise SIGPIPE in the test process: EPIPE is expected and ignored.
  {
    sigset_t pipe_set, old_set;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    ::pthread_sigmask(SIG_BLOCK, &pipe_set, &old_set);
    (void)!::write(in_w.get(), stdin_data.data(), stdin_data.size());
    // Consume the SIGPIPE the write raised, if any, before unblocking.
    timespec zero{};
    while (::sigtimedwait(&pipe_set, nullptr, &zero) == SIGPIPE) {
    }
    ::pthread_sigmask(SIG_SETMASK, &old_set, nullptr);
  }
  in_w.Reset();
  bool out_open = true, err_open = true;
  while (out_open || err_open) {
    pollfd fds[2] = {{out_open ? out_r.get() : -1, POLLIN, 0},
                     {err_open ? err_r.get() : -1, POLLIN, 0}};
    if (::poll(fds, 2, 30000) <= 0) {
      ADD_FAILURE() << "the CLI produced nothing for 30 s";
      break;
    }
    char buf[4096];
    for (int i = 0; i < 2; ++i) {
      if (fds[i].revents == 0) continue;
      ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
      if (n <= 0) {
        (i == 0 ? out_open : err_open) = false;
        continue;
      }
      (i == 0 ? run.out : run.err).append(buf, static_cast<size_t>(n));
      if (i == 0 && on_stdout) on_stdout(run.out);
    }
  }
  auto status = child->Wait(std::chrono::seconds(30));
  run.took = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - start);
  if (!status.ok()) {
    ADD_FAILURE() << status.status().ToString();
    return run;
  }
  run.exit_code = WIFEXITED(*status) ? WEXITSTATUS(*status) : 128 + WTERMSIG(*status);
  return run;
}

class RunCode : public ::testing::Test {
 protected:
  void SetUp() override {
    auto tmp = MakeTempDir(::testing::TempDir(), "run-code-");
    ASSERT_TRUE(tmp.ok()) << tmp.status().ToString();
    dir_ = *tmp;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string WriteFile(const std::string& name, const std::string& content) {
    std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << content;
    return path;
  }

  std::string dir_;
};

TEST_F(RunCode, StreamsOutputSavesImagesAndSendsWhatTheClientSends) {
  std::promise<void> seen_first;
  auto seen = seen_first.get_future();
  FakeMoatd moatd([&seen](Conn& c) {
    ChunkedWriter w(c);
    w.Chunk(R"({"type":"number_of_executions","execution_count":1})"
            "\n"
            R"({"type":"stdout","text":"first\n"})"
            "\n");
    // The rest waits until the CLI has shown the first line: output must not wait for the end.
    seen.wait_for(std::chrono::seconds(10));
    const std::string rest =
        R"({"type":"keepalive"})"
        "\n"
        R"({"type":"stderr","text":"warning\n"})"
        "\n"
        R"({"type":"result","text":"<Figure>","png":"aGVsbG8=\n","is_main_result":false})"
        "\n"
        R"({"type":"result","text":"2","is_main_result":true,"extra":{}})"
        "\n"
        R"({"type": "end_of_execution"})"
        "\n";
    for (size_t i = 0; i < rest.size(); i += 7) w.Chunk(rest.substr(i, 7));  // lines split
    w.End();
  });
  std::string code = WriteFile("main.py", "print('first')\nx = 1\nx + 1\n");
  bool signalled = false;
  CliRun run = RunCli(moatd.port(),
                      {"sbx1", "--language", "python", "--env", "A=1", "--output-dir", dir_, code},
                      "", [&](const std::string& out) {
                        if (!signalled && out.find("first\n") != std::string::npos) {
                          signalled = true;
                          seen_first.set_value();
                        }
                      });
  EXPECT_TRUE(signalled) << "stdout was not streamed";
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.out, "first\nsaved image/png to " + dir_ + "/result-1.png\n2\n");
  EXPECT_EQ(run.err, "warning\n");
  std::ifstream png(dir_ + "/result-1.png");
  std::string saved((std::istreambuf_iterator<char>(png)), std::istreambuf_iterator<char>());
  EXPECT_EQ(saved, "hello");

  auto get = moatd.Find("GET");
  ASSERT_TRUE(get.has_value());
  EXPECT_EQ(get->target, "/sandboxes/sbx1");
  EXPECT_EQ(get->head.Header("x-api-key"), "secret-api-key");
  auto exec = moatd.Find("POST");
  ASSERT_TRUE(exec.has_value());
  EXPECT_EQ(exec->target, "/execute");
  EXPECT_EQ(exec->head.Header("e2b-sandbox-id"), "sbx1");
  EXPECT_EQ(exec->head.Header("e2b-sandbox-port"), "49999");
  EXPECT_EQ(exec->head.Header("content-type"), "application/json");
  EXPECT_EQ(exec->head.Header("x-access-token"), "");  // nor the envd token: no use for it there
  EXPECT_EQ(exec->head.Header("e2b-traffic-access-token"), "traffic-token");
  EXPECT_EQ(exec->head.Header("x-api-key"), "");  // the guest must never see the API key
  EXPECT_EQ(json::parse(exec->body), json({{"code", "print('first')\nx = 1\nx + 1\n"},
                                           {"language", "python"},
                                           {"env_vars", {{"A", "1"}}}}));
}

TEST_F(RunCode, ReadsTheCodeFromStdinAndExitsOneWhenItRaises) {
  FakeMoatd moatd([](Conn& c) {
    ChunkedWriter w(c);
    w.Chunk(
        R"({"type":"error","name":"NameError","value":"name 'y' is not defined",)"
        R"("traceback":"Traceback (most recent call last):\nNameError: name 'y' is not defined"})"
        "\n"
        R"({"type":"end_of_execution"})"
        "\n");
    w.End();
  });
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"sbx1", "--context", "ctx-1"},
        std::vector<std::string>{"sbx1", "--context", "ctx-1", "-"}}) {
    CliRun run = RunCli(moatd.port(), args, "y\n");
    EXPECT_EQ(run.exit_code, 1) << run.err;
    EXPECT_EQ(run.out, "");
    EXPECT_EQ(run.err, "Traceback (most recent call last):\nNameError: name 'y' is not defined\n");
  }
  auto exec = moatd.Find("POST");
  ASSERT_TRUE(exec.has_value());
  EXPECT_EQ(json::parse(exec->body), json({{"code", "y\n"}, {"context_id", "ctx-1"}}));
}

TEST_F(RunCode, JsonPrintsEachLineAsReceived) {
  const std::string lines =
      R"({"type":"stdout","text":"hi\n","timestamp":"2026-08-22T10:00:00.123456+00:00"})"
      "\n"
      R"({"type":"result","png":"aGk=","is_main_result":true})"
      "\n";
  FakeMoatd moatd([&lines](Conn& c) {
    ChunkedWriter w(c);
    w.Chunk(lines);
    w.End();
  });
  CliRun run = RunCli(moatd.port(), {"sbx1", "--json", "--output-dir", dir_}, "1");
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.out, lines);
  EXPECT_TRUE(std::filesystem::is_empty(dir_));
}

TEST_F(RunCode, ShowsTheInterpretersErrorTextAndExitsTwo) {
  FakeMoatd moatd([](Conn& c) { SendPlain(c, 404, "Not Found", "Context ctx-9 not found"); });
  CliRun run = RunCli(moatd.port(), {"sbx1", "--context", "ctx-9"}, "1");
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_EQ(run.err, "moat: POST /execute: HTTP 404: Context ctx-9 not found\n");

  FakeMoatd no_kernel(
      [](Conn& c) { SendPlain(c, 500, "Internal Server Error", "No such kernel 'cobol'\n"); });
  run = RunCli(no_kernel.port(), {"sbx1", "--language", "cobol"}, "1");
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_EQ(run.err, "moat: POST /execute: HTTP 500: No such kernel 'cobol'\n");
}

TEST_F(RunCode, RefusesAMalformedStreamNamingTheLine) {
  FakeMoatd moatd([](Conn& c) {
    ChunkedWriter w(c);
    w.Chunk(R"({"type":"stdout","text":"ok\n"})"
            "\n"
            "{\"type\":\"stdout\",\x1b[2J\n");
    w.End();
  });
  CliRun run = RunCli(moatd.port(), {"sbx1"}, "1");
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_EQ(run.out, "ok\n");
  EXPECT_THAT(run.err, HasSubstr("moat: interpreter stream line 2: not valid JSON"));
  EXPECT_THAT(run.err, Not(HasSubstr("\x1b")));  // guest bytes are quoted, not replayed
}

TEST_F(RunCode, FailsWhenTheStreamIsCutOff) {
  FakeMoatd moatd([](Conn& c) {
    ChunkedWriter w(c);
    w.Chunk(R"({"type":"stdout","text":"partial\n"})"
            "\n");
    // no final chunk: the connection just closes, as when the sandbox is killed
  });
  CliRun run = RunCli(moatd.port(), {"sbx1"}, "1");
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_EQ(run.out, "partial\n");
  EXPECT_THAT(run.err, HasSubstr("moat: "));
}

TEST_F(RunCode, TimeoutDropsTheConnectionSoTheRunIsInterrupted) {
  std::promise<bool> closed_promise;
  auto closed = closed_promise.get_future();
  FakeMoatd moatd([&closed_promise](Conn& c) {
    ChunkedWriter w(c);
    w.Chunk(R"({"type":"keepalive"})"
            "\n");
    // The run goes on; the server learns of the client's end by its closing the connection.
    auto start = std::chrono::steady_clock::now();
    bool eof = !c.Fill();
    closed_promise.set_value(eof &&
                             std::chrono::steady_clock::now() - start < std::chrono::seconds(20));
  });
  CliRun run = RunCli(moatd.port(), {"sbx1", "--timeout", "1"}, "import time; time.sleep(60)");
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_THAT(run.err, HasSubstr("--timeout 1 s"));
  EXPECT_LT(run.took, std::chrono::seconds(10));
  ASSERT_EQ(closed.wait_for(std::chrono::seconds(20)), std::future_status::ready);
  EXPECT_TRUE(closed.get());
}

TEST_F(RunCode, UsageErrorsExitTwoBeforeAnythingIsSent) {
  FakeMoatd moatd([](Conn& c) { SendPlain(c, 500, "Internal Server Error", "must not run"); });
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  for (const Case& c : {
           Case{{"sbx1", "--language", "python", "--context", "ctx-1"}, "mutually exclusive"},
           Case{{"sbx1", "--env", "NOEQUALS"}, "--env"},
           Case{{"sbx1", "--output-dir", dir_ + "/missing"}, "--output-dir"},
           Case{{"sbx1", dir_ + "/missing.py"}, "missing.py"},
           Case{{"sbx1", "--timeout", "-1"}, "--timeout"},
           Case{{}, "id"},
           Case{{"sbx1", "--no-such-flag"}, "--no-such-flag"},
       }) {
    CliRun run = RunCli(moatd.port(), c.args, "1");
    EXPECT_EQ(run.exit_code, 2) << ::testing::PrintToString(c.args) << ": " << run.err;
    EXPECT_THAT(run.err, HasSubstr(c.message)) << ::testing::PrintToString(c.args);
  }
  EXPECT_TRUE(moatd.requests().empty());
}

TEST_F(RunCode, AnUnknownSandboxExitsTwoWithoutExecuting) {
  FakeMoatd moatd([](Conn& c) { SendPlain(c, 500, "Internal Server Error", "must not run"); });
  CliRun run = RunCli(moatd.port(), {"nosuch"}, "1");
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_EQ(run.err, "moat: sandbox not found\n");
  EXPECT_FALSE(moatd.Find("POST").has_value());
}

}  // namespace
}  // namespace moat::cli
