// What `moat audit`, `usage` and `history` print for the API's answers. No server.
#include "cli/history_output.h"

#include <gtest/gtest.h>

namespace moat::cli {
namespace {

using nlohmann::json;

TEST(HumanDuration, ReadsAsMillisecondsSecondsMinutesOrHours) {
  EXPECT_EQ(HumanDuration(0), "0s");
  EXPECT_EQ(HumanDuration(-3), "0s");
  EXPECT_EQ(HumanDuration(0.35), "350ms");
  EXPECT_EQ(HumanDuration(1.25), "1.2s");
  EXPECT_EQ(HumanDuration(42.9), "42s");
  EXPECT_EQ(HumanDuration(725), "12m05s");
  EXPECT_EQ(HumanDuration(12000), "3h20m");
  EXPECT_EQ(HumanDuration(7 * 86400 + 59), "168h00m") << "hours are not rolled into days";
}

TEST(HumanBytes, UsesPowersOf1024) {
  EXPECT_EQ(HumanBytes(0), "0 B");
  EXPECT_EQ(HumanBytes(1023), "1023 B");
  EXPECT_EQ(HumanBytes(1536), "1.5 KiB");
  EXPECT_EQ(HumanBytes(12.0 * 1024 * 1024), "12.0 MiB");
  EXPECT_EQ(HumanBytes(3.25 * 1024 * 1024 * 1024), "3.2 GiB");
}

TEST(OneLine, BlanksControlCharactersAndCutsAtACodePoint) {
  EXPECT_EQ(OneLine("echo a\nb\t\x1b[31m", 80), "echo a b  [31m");
  EXPECT_EQ(OneLine("abcdef", 6), "abcdef");
  EXPECT_EQ(OneLine("abcdefg", 6), "abcde…");
  EXPECT_EQ(OneLine("ééééééé", 4), "ééé…") << "never half a UTF-8 sequence";
}

TEST(FormatAuditList, ShowsOutcomeWithStatusAndTheKeysName) {
  json page = json::parse(R"({"items":[
      {"seq":2,"at":"2026-01-02T10:00:01.250Z","teamID":"t1","keyID":"k1","keyName":"ci",
       "source":"10.0.0.9","requestID":"r2","action":"sandbox.kill","target":"sbx1",
       "outcome":"error","status":404,"detail":{"message":"not found"}},
      {"seq":1,"at":"2026-01-02T10:00:00Z","teamID":"t1","keyID":null,"keyName":null,
       "source":"127.0.0.1","requestID":"r1","action":"sandbox.create","target":"",
       "outcome":"ok","status":201,"detail":null}],"nextToken":""})");
  EXPECT_EQ(FormatAuditList(page, false),
            "TIME                  ACTION          TARGET  OUTCOME      KEY  SOURCE\n"
            "2026-01-02T10:00:01Z  sandbox.kill    sbx1    error (404)  ci   10.0.0.9\n"
            "2026-01-02T10:00:00Z  sandbox.create  -       ok (201)     -    127.0.0.1\n");
  EXPECT_EQ(FormatAuditList(page, true).substr(0, 30), "TIME                  TEAM  AC");
  EXPECT_EQ(FormatAuditList(json::parse(R"({"items":[]})"), false),
            "TIME  ACTION  TARGET  OUTCOME  KEY  SOURCE\n");
}

json UsageReport(bool by_template) {
  json row1 = {{"bucket", "2026-01-01T00:00:00Z"},
               {"runningSeconds", 5400.0},
               {"pausedSeconds", 600.0},
               {"vcpuSeconds", 10800.0},
               {"gibSeconds", 2700.5},
               {"idleSeconds", 45.0},
               {"creates", 3},
               {"forks", 1},
               {"egressBytes", 1536},
               {"ingressBytes", 10485760},
               {"snapshotByteHours", 3221225472.0}};
  json row2 = row1;
  row2["bucket"] = "2026-01-02T00:00:00Z";
  row2["runningSeconds"] = 0.0;
  row2["creates"] = 0;
  if (by_template) {
    row1["templateID"] = "base";
    row2["templateID"] = "code-interpreter-v1";
  }
  json totals = row1;
  totals.erase("bucket");
  totals.erase("templateID");
  totals["creates"] = 3;
  totals["runningSeconds"] = 5400.0;
  totals["egressBytes"] = 3072;
  return {{"from", "2026-01-01T00:00:00Z"},
          {"to", "2026-01-03T00:00:00Z"},
          {"groupBy", by_template ? json{"day", "template"} : json{"day"}},
          {"rows", {row1, row2}},
          {"totals", totals}};
}

TEST(FormatUsage, ShowsARowPerBucketWithDurationsAndUnitsThenTheTotal) {
  EXPECT_EQ(FormatUsage(UsageReport(false)),
            "BUCKET                RUNNING  PAUSED  IDLE  VCPU-S  GIB-S  CREATES  FORKS  EGRESS   "
            "INGRESS   SNAPSHOT GiB-h\n"
            "2026-01-01T00:00:00Z  1h30m    10m00s  45s   10800   2700   3        1      1.5 KiB  "
            "10.0 MiB  3.0\n"
            "2026-01-02T00:00:00Z  0s       10m00s  45s   10800   2700   0        1      1.5 KiB  "
            "10.0 MiB  3.0\n"
            "TOTAL                 1h30m    10m00s  45s   10800   2700   3        1      3.0 KiB  "
            "10.0 MiB  3.0\n");
}

TEST(FormatUsage, AddsATemplateColumnWhenGroupedByTemplate) {
  std::string out = FormatUsage(UsageReport(true));
  EXPECT_EQ(out.substr(0, out.find('\n')),
            "BUCKET                TEMPLATE             RUNNING  PAUSED  IDLE  VCPU-S  GIB-S  "
            "CREATES  FORKS  EGRESS   INGRESS   SNAPSHOT GiB-h");
  EXPECT_NE(out.find("\n2026-01-02T00:00:00Z  code-interpreter-v1  0s "), std::string::npos) << out;
  EXPECT_NE(out.find("\nTOTAL                                      1h30m "), std::string::npos)
      << out;
}

TEST(FormatUsage, ShowsADashForWhatIsMissing) {
  EXPECT_EQ(FormatUsage(json::parse(R"({"groupBy":["hour"],"rows":[],"totals":{}})")),
            "BUCKET  RUNNING  PAUSED  IDLE  VCPU-S  GIB-S  CREATES  FORKS  EGRESS  INGRESS  "
            "SNAPSHOT GiB-h\n"
            "TOTAL   -        -       -     -       -      -        -      -       -        -\n");
}

json History(const std::string& id) {
  return {{"sandboxID", id},
          {"teamID", "t1"},
          {"templateID", "base"},
          {"createdBy", {{"keyID", "k1"}, {"keyName", "ci"}}},
          {"metadata", {{"env", "prod"}}},
          {"hostID", ""},
          {"cpuCount", 2},
          {"memoryMB", 512},
          {"parent", nullptr},
          {"createdAt", "2026-01-02T10:00:00.500Z"},
          {"endedAt", nullptr},
          {"state", "running"},
          {"endReason", nullptr},
          {"endedBy", nullptr},
          {"endDetail", nullptr},
          {"egressBytes", 2048},
          {"ingressBytes", 100},
          {"durationMs", 65000}};
}

TEST(HistoryOutcome, NamesWhoKilledItOrWhyItEnded) {
  json h = History("s1");
  EXPECT_EQ(HistoryOutcome(h), "running");
  h["endedAt"] = "2026-01-02T11:00:00Z";
  h["state"] = "killed";
  h["endReason"] = "killed";
  h["endedBy"] = "admin";
  EXPECT_EQ(HistoryOutcome(h), "killed by admin");
  h["endedBy"] = nullptr;
  EXPECT_EQ(HistoryOutcome(h), "killed");
  h["endReason"] = "timeout";
  EXPECT_EQ(HistoryOutcome(h), "timeout");
  h["endReason"] = "error";
  h["endDetail"] = "qemu exited: status 1\n";
  EXPECT_EQ(HistoryOutcome(h), "error: qemu exited: status 1 ");
  h["endReason"] = "host_lost";
  EXPECT_EQ(HistoryOutcome(h), "host lost");
}

TEST(FormatHistoryList, ShowsDurationStateOrEndAndParent) {
  json ended = History("s2");
  ended["endedAt"] = "2026-01-02T11:00:00Z";
  ended["endReason"] = "timeout";
  ended["state"] = "killed";
  ended["durationMs"] = 3600000;
  ended["parent"] = {{"kind", "fork"}, {"id", "s1"}};
  json snap = History("s3");
  snap["parent"] = {{"kind", "snapshot"}, {"id", "ready"}};
  snap["state"] = "paused";
  json page = {{"items", {History("s1"), ended, snap}}, {"nextToken", ""}};
  EXPECT_EQ(FormatHistoryList(page),
            "SANDBOX  TEMPLATE  CREATED               DURATION  STATE/END  PARENT\n"
            "s1       base      2026-01-02T10:00:00Z  1m05s     running    -\n"
            "s2       base      2026-01-02T10:00:00Z  1h00m     timeout    fork of s1\n"
            "s3       base      2026-01-02T10:00:00Z  1m05s     paused     snapshot ready\n");
}

json DetailRecord() {
  json h = History("s1");
  h["endedAt"] = "2026-01-02T10:01:05Z";
  h["state"] = "killed";
  h["endReason"] = "killed";
  h["endedBy"] = "ops";
  h["events"] = json::parse(R"([
      {"seq":1,"at":"2026-01-02T10:00:00.500Z","kind":"created","durationMs":180,
       "detail":{"templateID":"base"}},
      {"seq":2,"at":"2026-01-02T10:00:30Z","kind":"forked","durationMs":0,
       "detail":{"children":["s9"]}},
      {"seq":3,"at":"2026-01-02T10:01:05Z","kind":"killed","durationMs":0,"detail":null}])");
  h["children"] = json::array({History("s9")});
  return h;
}

json CommandList() {
  // Newest first, as GET /history/{id}/commands sends them.
  return json::parse(R"json([
      {"id":2,"kind":"code","command":"import sys\nsys.exit(3)","user":"user","cwd":"",
       "startedAt":"2026-01-02T10:00:40Z","endedAt":"2026-01-02T10:00:41Z","durationMs":1250,
       "exitCode":null,"signal":null,"error":"SystemExit: 3",
       "stdout":{"head":"","tail":"","bytes":0},
       "stderr":{
  "head" : "Traceback\n", "tail" : "SystemExit: 3\n", "bytes" : 9000}},
      {"id":1,"kind":"command","command":"echo hi","user":"user","cwd":"/home/user",
       "startedAt":"2026-01-02T10:00:10Z","endedAt":"2026-01-02T10:00:10.020Z","durationMs":20,
       "exitCode":0,"signal":null,"error":null,
       "stdout":{"head":"hi\n","tail":"","bytes":3},"stderr":{"head":"","tail":"","bytes":0}}])json");
}

TEST(FormatHistoryDetail, ShowsTheSummaryTimelineAndCommandsOldestFirst) {
  EXPECT_EQ(FormatHistoryDetail(DetailRecord(), CommandList(), false),
            "sandbox:   s1\n"
            "template:  base\n"
            "ended:     2026-01-02T10:01:05Z (killed by ops)\n"
            "created:   2026-01-02T10:00:00Z by key ci\n"
            "duration:  1m05s\n"
            "size:      2 vCPU, 512 MiB\n"
            "metadata:  env=prod\n"
            "network:   egress 2.0 KiB, ingress 100 B\n"
            "forks:     s9\n"
            "\n"
            "events:\n"
            "TIME                  EVENT    TOOK   DETAIL\n"
            "2026-01-02T10:00:00Z  created  180ms  templateID=base\n"
            "2026-01-02T10:00:30Z  forked   -      children=[\"s9\"]\n"
            "2026-01-02T10:01:05Z  killed   -      -\n"
            "\n"
            "commands:\n"
            "STARTED               EXIT   DURATION  COMMAND\n"
            "2026-01-02T10:00:10Z  0      20ms      echo hi\n"
            "2026-01-02T10:00:40Z  error  1.2s      (code) import sys sys.exit(3)\n");
}

TEST(FormatHistoryDetail, WithOutputShowsEachStreamsHeadAndTail) {
  json live = History("s1");
  live["events"] = json::array();
  std::string out = FormatHistoryDetail(live, CommandList(), true);
  EXPECT_NE(out.find("state:     running\n"), std::string::npos) << out;
  EXPECT_NE(out.find("duration:  1m05s so far\n"), std::string::npos) << out;
  std::string commands = out.substr(out.find("commands:\n"));
  EXPECT_EQ(commands,
            "commands:\n"
            "\n"
            "2026-01-02T10:00:10Z  exit 0  20ms  echo hi\n"
            "  stdout (3 B):\n"
            "    hi\n"
            "  stderr: none\n"
            "\n"
            "2026-01-02T10:00:40Z  exit error  1.2s  (code) import sys sys.exit(3)\n"
            "  error: SystemExit: 3\n"
            "  stdout: none\n"
            "  stderr (8.8 KiB):\n"
            "    Traceback\n"
            "    … 8.8 KiB not kept …\n"
            "    SystemExit: 3\n");
}

TEST(FormatHistoryDetail, KeepsEscapesInCommandOutputOffTheTerminal) {
  json c = CommandList()[1];
  c["stdout"] = {{"head", "\x1b]0;pwned\x07ok\n"}, {"tail", ""}, {"bytes", 12}};
  std::string out = FormatHistoryDetail(History("s1"), json::array({c}), true);
  EXPECT_EQ(out.find('\x1b'), std::string::npos);
  EXPECT_NE(out.find("    ?]0;pwned?ok\n"), std::string::npos) << out;
  EXPECT_NE(FormatHistoryDetail(History("s1"), json::array(), false).find("\ncommands: none\n"),
            std::string::npos);
}

}  // namespace
}  // namespace moat::cli
