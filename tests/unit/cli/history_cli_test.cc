// `moat audit`, `moat usage` and `moat history` as a user runs them: the built CLI against a
// loopback fake of moatd that answers from canned JSON. Checks each request's path and query,
// what is printed (table, --json, --csv), the paging, and the exit statuses: 0 shown, 1 the
// request failed, 2 the arguments are wrong (nothing is sent).
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "api/codec/protojson.h"
#include "api/codec/query.h"
#include "cli/history_output.h"
#include "common/child_process.h"
#include "common/unique_fd.h"
#include "support/raw_http.h"

namespace moat::cli {
namespace {

using nlohmann::json;
using test_support::Conn;
using test_support::LoopbackServer;
using test_support::ParseHead;
using test_support::SendAll;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

struct Canned {
  int status = 200;
  std::string body;
  std::string content_type = "application/json";
};

// moatd as far as these commands see it: each GET is answered by `answer(target)`; the targets
// and the API keys they came with are kept.
class FakeMoatd {
 public:
  using Answer = std::function<Canned(const std::string& target)>;
  explicit FakeMoatd(Answer answer) : answer_(std::move(answer)) {}

  uint16_t port() const { return server_.port(); }
  std::vector<std::string> targets() {
    std::lock_guard lock(mu_);
    return targets_;
  }
  std::vector<std::string> keys() {
    std::lock_guard lock(mu_);
    return keys_;
  }

 private:
  void Serve(Conn& c) {
    std::string raw = c.ReadUntil("\r\n\r\n");
    if (raw.empty()) return;
    auto head = ParseHead(raw);
    auto sp1 = head.first_line.find(' ');
    auto sp2 = head.first_line.find(' ', sp1 + 1);
    std::string method = head.first_line.substr(0, sp1);
    std::string target = head.first_line.substr(sp1 + 1, sp2 - sp1 - 1);
    Canned reply{.status = 405, .body = R"({"code":405,"message":"not a GET"})"};
    {
      std::lock_guard lock(mu_);
      targets_.push_back(target);
      keys_.push_back(head.Header("x-api-key"));
    }
    if (method == "GET") reply = answer_(target);
    SendAll(c.fd.get(), "HTTP/1.1 " + std::to_string(reply.status) +
                            " X\r\nContent-Type: " + reply.content_type +
                            "\r\nContent-Length: " + std::to_string(reply.body.size()) +
                            "\r\nConnection: close\r\n\r\n" + reply.body);
  }

  Answer answer_;
  std::mutex mu_;
  std::vector<std::string> targets_;
  std::vector<std::string> keys_;
  LoopbackServer server_{[this](Conn& c) { Serve(c); }};
};

Canned NotFound(const std::string& target) {
  return {.status = 404,
          .body = json{{"code", 404}, {"message", "no route " + target}}.dump(),
          .content_type = "application/json"};
}

struct CliRun {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// Runs `moat <args>` against `port` with stdin empty and collects its output.
CliRun RunCli(uint16_t port, const std::vector<std::string>& args) {
  CliRun run;
  int out[2], err[2];
  if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) {
    ADD_FAILURE() << "pipe2";
    return run;
  }
  UniqueFd out_r(out[0]), out_w(out[1]), err_r(err[0]), err_w(err[1]);
  UniqueFd null(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  SpawnOptions spawn;
  spawn.argv = {MOAT_CLI_BINARY};
  spawn.argv.insert(spawn.argv.end(), args.begin(), args.end());
  spawn.env = std::vector<std::string>{"MOAT_API_URL=http://127.0.0.1:" + std::to_string(port),
                                       "MOAT_API_KEY=secret-api-key", "PATH=/usr/bin:/bin"};
  spawn.fds = {{0, null.get()}, {1, out_w.get()}, {2, err_w.get()}};
  auto child = ChildProcess::Spawn(spawn);
  if (!child.ok()) {
    ADD_FAILURE() << child.status().ToString();
    return run;
  }
  out_w.Reset();
  err_w.Reset();
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
    }
  }
  auto status = child->Wait(std::chrono::seconds(30));
  if (!status.ok()) {
    ADD_FAILURE() << status.status().ToString();
    return run;
  }
  run.exit_code = WIFEXITED(*status) ? WEXITSTATUS(*status) : 128 + WTERMSIG(*status);
  return run;
}

// The decoded value of query parameter `name` in `target`.
std::string QueryParam(const std::string& target, const std::string& name) {
  size_t q = target.find('?');
  if (q == std::string::npos) return "";
  return api::codec::QueryValue(api::codec::ParseQuery(target.substr(q + 1)), name).value_or("");
}

json AuditEntry(int seq, const std::string& action, const std::string& target) {
  return {{"seq", seq},       {"at", "2026-01-02T10:00:0" + std::to_string(seq) + "Z"},
          {"teamID", "t1"},   {"keyID", "k1"},
          {"keyName", "ci"},  {"source", "10.0.0.9"},
          {"requestID", "r"}, {"action", action},
          {"target", target}, {"outcome", "ok"},
          {"status", 200},    {"detail", nullptr}};
}

// Three pages of the audit log: two entries, one, one (after tokens p2 and p3).
Canned AuditPages(const std::string& target) {
  if (target.rfind("/audit?", 0) != 0) return NotFound(target);
  std::string token = QueryParam(target, "nextToken");
  json items = json::array();
  std::string next;
  if (token.empty()) {
    items = {AuditEntry(9, "sandbox.kill", "s1"), AuditEntry(8, "sandbox.pause", "s1")};
    next = "p2";
  } else if (token == "p2") {
    items = {AuditEntry(7, "sandbox.create", "s1")};
    next = "p3";
  } else {
    items = {AuditEntry(6, "key.create", "k2")};
  }
  return {.status = 200, .body = json{{"items", items}, {"nextToken", next}}.dump()};
}

TEST(AuditCommand, FollowsPagesUntilTheLimitAndSaysThereAreMore) {
  FakeMoatd moatd(AuditPages);
  CliRun run =
      RunCli(moatd.port(), {"audit", "--from", "2026-01-01T00:00:00+01:00", "--to", "2026-01-03",
                            "--action", "sandbox.kill", "--target", "s 1/x", "--limit", "3"});
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_THAT(moatd.targets(),
              ElementsAre("/audit?from=2026-01-01T00%3A00%3A00%2B01%3A00&to=2026-01-03T00%3A00%3A"
                          "00Z&action=sandbox.kill&target=s%201%2Fx&limit=3",
                          "/audit?from=2026-01-01T00%3A00%3A00%2B01%3A00&to=2026-01-03T00%3A00%3A"
                          "00Z&action=sandbox.kill&target=s%201%2Fx&limit=1&nextToken=p2"));
  EXPECT_THAT(moatd.keys(), ElementsAre("secret-api-key", "secret-api-key"));
  EXPECT_EQ(run.out,
            "TIME                  ACTION          TARGET  OUTCOME   KEY  SOURCE\n"
            "2026-01-02T10:00:09Z  sandbox.kill    s1      ok (200)  ci   10.0.0.9\n"
            "2026-01-02T10:00:08Z  sandbox.pause   s1      ok (200)  ci   10.0.0.9\n"
            "2026-01-02T10:00:07Z  sandbox.create  s1      ok (200)  ci   10.0.0.9\n");
  EXPECT_THAT(run.err, HasSubstr("more entries: raise --limit"));
}

TEST(AuditCommand, PrintsEveryPagesItemsAsOneJsonPage) {
  FakeMoatd moatd(AuditPages);
  CliRun run = RunCli(moatd.port(), {"audit", "--all-teams", "--json"});
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_THAT(moatd.targets(), ElementsAre("/audit?allTeams=true&limit=100",
                                           "/audit?allTeams=true&limit=98&nextToken=p2",
                                           "/audit?allTeams=true&limit=97&nextToken=p3"));
  json printed = json::parse(run.out);
  EXPECT_EQ(printed["nextToken"], "");
  ASSERT_EQ(printed["items"].size(), 4u);
  EXPECT_EQ(printed["items"][3], AuditEntry(6, "key.create", "k2"));
  EXPECT_EQ(run.err, "");
}

TEST(AuditCommand, SendsARelativeTimeAsRfc3339ThatLongBeforeNow) {
  FakeMoatd moatd(AuditPages);
  auto now = std::chrono::duration_cast<std::chrono::seconds>(
                 std::chrono::system_clock::now().time_since_epoch())
                 .count();
  CliRun run = RunCli(moatd.port(), {"audit", "--from", "24h", "--to", "30m", "--limit", "1"});
  EXPECT_EQ(run.exit_code, 0) << run.err;
  ASSERT_EQ(moatd.targets().size(), 1u);
  std::string target = moatd.targets()[0];
  auto from = api::codec::ParseRfc3339(QueryParam(target, "from"));
  auto to = api::codec::ParseRfc3339(QueryParam(target, "to"));
  ASSERT_TRUE(from.ok() && to.ok()) << target;
  EXPECT_NEAR(static_cast<double>(*from), static_cast<double>(now - 86400), 60);
  EXPECT_NEAR(static_cast<double>(*to), static_cast<double>(now - 1800), 60);
  EXPECT_THAT(QueryParam(target, "from"), ::testing::EndsWith("Z"));
}

TEST(AuditCommand, RefusesABadTimeWithExitTwoBeforeAnyRequest) {
  FakeMoatd moatd(AuditPages);
  for (const char* bad : {"yesterday", "24", "2026-01-02T10:00:00"}) {
    CliRun run = RunCli(moatd.port(), {"audit", "--to", bad});
    EXPECT_EQ(run.exit_code, 2) << bad;
    EXPECT_EQ(run.out, "");
    EXPECT_THAT(run.err, HasSubstr("moat: --to: \"" + std::string(bad) + "\" is neither"));
  }
  EXPECT_TRUE(moatd.targets().empty());
}

TEST(AuditCommand, ReportsTheApisRefusalWithExitOne) {
  FakeMoatd moatd([](const std::string&) {
    return Canned{.status = 403,
                  .body = R"({"code":403,"message":"allTeams needs a key of the admin team"})"};
  });
  CliRun run = RunCli(moatd.port(), {"audit", "--all-teams"});
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_EQ(run.err, "moat: allTeams needs a key of the admin team\n");
  EXPECT_EQ(run.out, "");
}

const char* kUsageCsv =
    "bucket,templateID,runningSeconds,pausedSeconds,vcpuSeconds,gibSeconds,idleSeconds,creates,"
    "forks,egressBytes,ingressBytes,snapshotByteHours\n"
    "2026-01-01T00:00:00Z,\"base\",60.000,0.000,120.000,30.000,0.000,1,0,10,20,0.000\n";

json UsageJson() {
  return json::parse(R"({"from":"2026-01-01T00:00:00Z","to":"2026-01-03T00:00:00Z",
      "groupBy":["day","template"],
      "rows":[{"bucket":"2026-01-01T00:00:00Z","templateID":"base","runningSeconds":3600.0,
               "pausedSeconds":0.0,"vcpuSeconds":7200.0,"gibSeconds":1800.0,"idleSeconds":120.0,
               "creates":2,"forks":0,"egressBytes":2048,"ingressBytes":1048576,
               "snapshotByteHours":0.0}],
      "totals":{"runningSeconds":3600.0,"pausedSeconds":0.0,"vcpuSeconds":7200.0,
                "gibSeconds":1800.0,"idleSeconds":120.0,"creates":2,"forks":0,
                "egressBytes":2048,"ingressBytes":1048576,"snapshotByteHours":0.0}})");
}

Canned UsageAnswer(const std::string& target) {
  if (target.rfind("/usage", 0) != 0) return NotFound(target);
  if (QueryParam(target, "format") == "csv") {
    return {.status = 200, .body = kUsageCsv, .content_type = "text/csv; charset=utf-8"};
  }
  return {.status = 200, .body = UsageJson().dump()};
}

TEST(UsageCommand, AsksForTheRangeAndGroupingAndPrintsATableWithTotals) {
  FakeMoatd moatd(UsageAnswer);
  CliRun run = RunCli(moatd.port(), {"usage", "--from", "2026-01-01", "--to",
                                     "2026-01-03T00:00:00Z", "--group-by", "day,template"});
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_THAT(moatd.targets(), ElementsAre("/usage?from=2026-01-01T00%3A00%3A00Z&to=2026-01-03T"
                                           "00%3A00%3A00Z&groupBy=day%2Ctemplate"));
  EXPECT_EQ(run.out,
            "BUCKET                TEMPLATE  RUNNING  PAUSED  IDLE   VCPU-S  GIB-S  CREATES  "
            "FORKS  EGRESS   INGRESS  SNAPSHOT GiB-h\n"
            "2026-01-01T00:00:00Z  base      1h00m    0s      2m00s  7200    1800   2        "
            "0      2.0 KiB  1.0 MiB  0.0\n"
            "TOTAL                           1h00m    0s      2m00s  7200    1800   2        "
            "0      2.0 KiB  1.0 MiB  0.0\n");
  EXPECT_EQ(run.out, FormatUsage(UsageJson()));
}

TEST(UsageCommand, PrintsTheApisJsonOrCsvAsTheyCame) {
  FakeMoatd moatd(UsageAnswer);
  CliRun as_json = RunCli(moatd.port(), {"usage", "--json"});
  EXPECT_EQ(as_json.exit_code, 0) << as_json.err;
  EXPECT_EQ(json::parse(as_json.out), UsageJson());
  CliRun csv = RunCli(moatd.port(), {"usage", "--group-by", "hour", "--csv", "--from", "2d"});
  EXPECT_EQ(csv.exit_code, 0) << csv.err;
  EXPECT_EQ(csv.out, kUsageCsv);
  auto targets = moatd.targets();
  ASSERT_EQ(targets.size(), 2u);
  EXPECT_EQ(targets[0], "/usage");
  EXPECT_EQ(QueryParam(targets[1], "groupBy"), "hour");
  EXPECT_EQ(QueryParam(targets[1], "format"), "csv");
  EXPECT_TRUE(api::codec::ParseRfc3339(QueryParam(targets[1], "from")).ok()) << targets[1];
}

TEST(UsageCommand, RefusesABadGroupingOrTimeWithExitTwo) {
  FakeMoatd moatd(UsageAnswer);
  for (std::vector<std::string> args : {std::vector<std::string>{"usage", "--group-by", "week"},
                                        {"usage", "--group-by", "day,hour"},
                                        {"usage", "--from", "last week"}}) {
    CliRun run = RunCli(moatd.port(), args);
    EXPECT_EQ(run.exit_code, 2) << args.back();
    EXPECT_THAT(run.err, HasSubstr("moat: --")) << args.back();
  }
  CliRun both = RunCli(moatd.port(), {"usage", "--json", "--csv"});
  EXPECT_NE(both.exit_code, 0);
  EXPECT_TRUE(moatd.targets().empty());
}

json HistoryRecord(const std::string& id) {
  return {{"sandboxID", id},
          {"teamID", "t1"},
          {"templateID", "base"},
          {"createdBy", {{"keyID", "k1"}, {"keyName", "ci"}}},
          {"metadata", {{"env", "prod"}}},
          {"hostID", ""},
          {"cpuCount", 2},
          {"memoryMB", 512},
          {"parent", nullptr},
          {"createdAt", "2026-01-02T10:00:00Z"},
          {"endedAt", "2026-01-02T10:05:00Z"},
          {"state", "error"},
          {"endReason", "error"},
          {"endedBy", nullptr},
          {"endDetail", "guest agent stopped answering"},
          {"egressBytes", 0},
          {"ingressBytes", 0},
          {"durationMs", 300000}};
}

json Command(int id, const std::string& command, int exit_code) {
  return {
      {"id", id},
      {"kind", "command"},
      {"command", command},
      {"user", "user"},
      {"cwd", ""},
      {"startedAt", "2026-01-02T10:0" + std::to_string(id) + ":00Z"},
      {"endedAt", "2026-01-02T10:0" + std::to_string(id) + ":01Z"},
      {"durationMs", 1000},
      {"exitCode", exit_code},
      {"signal", nullptr},
      {"error", nullptr},
      {"stdout", {{"head", command + " said hi\n"}, {"tail", ""}, {"bytes", command.size() + 9}}},
      {"stderr", {{"head", ""}, {"tail", ""}, {"bytes", 0}}}};
}

// Sandbox sbx1's record, events and commands 4..1 (two a page, newest first).
Canned HistoryAnswer(const std::string& target) {
  if (target.rfind("/history?", 0) == 0) {
    return {.status = 200,
            .body = json{
                {"items", {HistoryRecord("sbx2"), HistoryRecord("sbx1")}},
                {"nextToken",
                 ""}}.dump()};
  }
  if (target == "/history/sbx1") {
    json h = HistoryRecord("sbx1");
    h["events"] = {{{"seq", 1},
                    {"at", "2026-01-02T10:00:00Z"},
                    {"kind", "created"},
                    {"durationMs", 200},
                    {"detail", {{"templateID", "base"}}}},
                   {{"seq", 2},
                    {"at", "2026-01-02T10:05:00Z"},
                    {"kind", "error"},
                    {"durationMs", 0},
                    {"detail", {{"detail", "guest agent stopped answering"}}}}};
    h["children"] = json::array();
    return {.status = 200, .body = h.dump()};
  }
  if (target.rfind("/history/sbx1/commands?", 0) == 0) {
    std::string before = QueryParam(target, "before");
    json page =
        before.empty()
            ? json{{"items", {Command(4, "make test", 2), Command(3, "make", 0)}},
                   {"nextBefore", 3}}
            : json{{"items", {Command(2, "ls", 0), Command(1, "pwd", 0)}}, {"nextBefore", 0}};
    return {.status = 200, .body = page.dump()};
  }
  if (target.rfind("/history/", 0) == 0) {
    return {.status = 404, .body = R"({"code":404,"message":"sandbox \"nope\" has no history"})"};
  }
  return NotFound(target);
}

TEST(HistoryCommand, ListsWithEveryFilterInTheQuery) {
  FakeMoatd moatd(HistoryAnswer);
  CliRun run = RunCli(moatd.port(), {"history", "--state", "ended", "--template", "base",
                                     "--metadata", "env=prod", "--metadata", "user=a&b", "--failed",
                                     "--from", "2026-01-01T00:00:00Z", "--limit", "5"});
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_THAT(moatd.targets(),
              ElementsAre("/history?state=ended&templateID=base&metadata=env%3Dprod%26user%3Da%"
                          "2526b&failed=true&from=2026-01-01T00%3A00%3A00Z&limit=5"));
  EXPECT_EQ(run.out,
            "SANDBOX  TEMPLATE  CREATED               DURATION  STATE/END                       "
            "      PARENT\n"
            "sbx2     base      2026-01-02T10:00:00Z  5m00s     error: guest agent stopped "
            "answering  -\n"
            "sbx1     base      2026-01-02T10:00:00Z  5m00s     error: guest agent stopped "
            "answering  -\n");
  EXPECT_EQ(run.err, "");
}

TEST(HistoryCommand, ShowsOneSandboxsTimelineAndCommandsAcrossPages) {
  FakeMoatd moatd(HistoryAnswer);
  CliRun run = RunCli(moatd.port(), {"history", "sbx1", "--limit", "3"});
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_THAT(moatd.targets(), ElementsAre("/history/sbx1", "/history/sbx1/commands?limit=3",
                                           "/history/sbx1/commands?limit=1&before=3"));
  EXPECT_THAT(run.out, HasSubstr("ended:     2026-01-02T10:05:00Z (error: guest agent stopped "
                                 "answering)\n"));
  EXPECT_THAT(run.out, HasSubstr("events:\n"
                                 "TIME                  EVENT    TOOK   DETAIL\n"
                                 "2026-01-02T10:00:00Z  created  200ms  templateID=base\n"));
  EXPECT_THAT(run.out, HasSubstr("commands:\n"
                                 "STARTED               EXIT  DURATION  COMMAND\n"
                                 "2026-01-02T10:02:00Z  0     1.0s      ls\n"
                                 "2026-01-02T10:03:00Z  0     1.0s      make\n"
                                 "2026-01-02T10:04:00Z  2     1.0s      make test\n"));
  EXPECT_THAT(run.out, ::testing::Not(HasSubstr("said hi"))) << "output only with --output";
}

TEST(HistoryCommand, WithOutputAndJson) {
  FakeMoatd moatd(HistoryAnswer);
  CliRun out = RunCli(moatd.port(), {"history", "sbx1", "--output"});
  EXPECT_EQ(out.exit_code, 0) << out.err;
  EXPECT_THAT(out.out, HasSubstr("2026-01-02T10:04:00Z  exit 2  1.0s  make test\n"
                                 "  stdout (18 B):\n"
                                 "    make test said hi\n"
                                 "  stderr: none\n"));
  CliRun as_json = RunCli(moatd.port(), {"history", "sbx1", "--json"});
  EXPECT_EQ(as_json.exit_code, 0) << as_json.err;
  json printed = json::parse(as_json.out);
  EXPECT_EQ(printed["sandboxID"], "sbx1");
  EXPECT_EQ(printed["events"].size(), 2u);
  ASSERT_EQ(printed["commands"].size(), 4u);
  EXPECT_EQ(printed["commands"][0], Command(4, "make test", 2)) << "as the API sends them";
}

TEST(HistoryCommand, RefusesListFiltersWithAnIdAndReportsAnUnknownOne) {
  FakeMoatd moatd(HistoryAnswer);
  CliRun filtered = RunCli(moatd.port(), {"history", "sbx1", "--failed"});
  EXPECT_EQ(filtered.exit_code, 2);
  EXPECT_THAT(filtered.err, HasSubstr("--failed filters the list"));
  CliRun output = RunCli(moatd.port(), {"history", "--output"});
  EXPECT_EQ(output.exit_code, 2);
  CliRun bad_meta = RunCli(moatd.port(), {"history", "--metadata", "novalue"});
  EXPECT_EQ(bad_meta.exit_code, 2);
  EXPECT_THAT(bad_meta.err, HasSubstr("--metadata wants KEY=VALUE"));
  EXPECT_TRUE(moatd.targets().empty());
  CliRun unknown = RunCli(moatd.port(), {"history", "nope"});
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_EQ(unknown.err, "moat: sandbox \"nope\" has no history\n");
}

}  // namespace
}  // namespace moat::cli
