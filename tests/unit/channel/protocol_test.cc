// The typed guest protocol: requests encode to what api/guest-channel.md specifies, and every
// reply decoder turns a hostile reply — wrong types, out-of-range numbers, missing fields,
// oversized strings and lists — into an error value naming the op and the field, never an
// exception.
#include "channel/protocol.h"

#include <gtest/gtest.h>

#include <functional>

#include "common/guarded.h"

namespace moat::channel::proto {
namespace {

using nlohmann::json;

TEST(GuestProtocol, RequestsEncodeAsTheSpecSays) {
  ExecOp exec;
  exec.argv = {"ls", "-l"};
  exec.env = {{"A", "1"}};
  exec.user = "user";
  exec.stdin_open = true;
  exec.pty = PtySize{100, 30};
  exec.timeout_ms = 5000;
  EXPECT_EQ(Encode(exec), json({{"op", "exec"},
                                {"argv", {"ls", "-l"}},
                                {"env", {{"A", "1"}}},
                                {"user", "user"},
                                {"stdin", true},
                                {"pty", {{"cols", 100}, {"rows", 30}}},
                                {"timeout_ms", 5000}}));
  ExecOp shell;
  shell.cmd = "echo hi";
  EXPECT_EQ(Encode(shell), json({{"op", "exec"}, {"cmd", "echo hi"}}));
  EXPECT_EQ(Encode(AttachOp{std::nullopt, "t"}), json({{"op", "attach"}, {"tag", "t"}}));
  EXPECT_EQ(Encode(AttachOp{7, ""}), json({{"op", "attach"}, {"pid", 7}}));
  EXPECT_EQ(Encode(SignalOp{7, 9}), json({{"op", "signal"}, {"pid", 7}, {"signal", 9}}));
  EXPECT_EQ(Encode(ResizeOp{7, {80, 24}}),
            json({{"op", "resize"}, {"pid", 7}, {"cols", 80}, {"rows", 24}}));
  EXPECT_EQ(Encode(ListOp{"/tmp", "root", 3}),
            json({{"op", "list"}, {"path", "/tmp"}, {"depth", 3}, {"user", "root"}}));
  EXPECT_EQ(Encode(MoveOp{"a", "b", ""}), json({{"op", "move"}, {"from", "a"}, {"to", "b"}}));
  EXPECT_EQ(Encode(WriteFileOp{"/x", "user", 0600}),
            json({{"op", "write_file"}, {"path", "/x"}, {"user", "user"}, {"mode", 0600}}));
  EXPECT_EQ(Encode(WatchOp{"/d", "u", true}),
            json({{"op", "watch"}, {"path", "/d"}, {"recursive", true}, {"user", "u"}}));
  EXPECT_EQ(Encode(WatchOp{"/d", "", false, true, true}), json({{"op", "watch"},
                                                                {"path", "/d"},
                                                                {"recursive", false},
                                                                {"include_entry", true},
                                                                {"allow_network_mounts", true}}));
  EXPECT_EQ(Encode(WriteFileOp{"/x", "", std::nullopt, {{"k", "v"}}}),
            json({{"op", "write_file"}, {"path", "/x"}, {"metadata", {{"k", "v"}}}}));
  NetworkOp net{"eth0", "169.254.0.21/30", "169.254.0.22", "06:00:ac:10:00:02", {}};
  EXPECT_EQ(Encode(net)["dns"], json::array());
  IdentityOp id;
  id.unix_ns = 1;
  id.entropy_hex = "ab";
  EXPECT_EQ(Encode(id), json({{"op", "identity"}, {"unix_ns", 1}, {"entropy", "ab"}}));
  EXPECT_EQ(OpName(Request(HealthOp{})), "health");
  EXPECT_EQ(OpName(Request(CloseStdinOp{1})), "close_stdin");
}

TEST(GuestProtocol, GoodRepliesDecode) {
  auto start = DecodeExecEvent({{"type", "start"}, {"pid", 42}});
  ASSERT_TRUE(start.ok());
  EXPECT_EQ(std::get<ExecStarted>(*start).pid, 42);
  auto exit = DecodeExecEvent({{"type", "exit"}, {"signal", 9}, {"timed_out", true}});
  ASSERT_TRUE(exit.ok());
  EXPECT_EQ(std::get<ExecExited>(*exit).signal, 9);
  EXPECT_FALSE(std::get<ExecExited>(*exit).exit_code);
  EXPECT_TRUE(std::get<ExecExited>(*exit).timed_out);

  auto procs = DecodeProcesses({{"processes",
                                 {{{"pid", 3},
                                   {"tag", "t"},
                                   {"argv", {"a", "b"}},
                                   {"cmd", ""},
                                   {"cwd", "/"},
                                   {"pty", true}}}}});
  ASSERT_TRUE(procs.ok()) << procs.status().ToString();
  ASSERT_EQ(procs->size(), 1u);
  EXPECT_EQ((*procs)[0].argv, (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE((*procs)[0].pty);

  json entry = {{"name", "f"},     {"path", "/f"},  {"type", "symlink"},
                {"size", 12},      {"mode", 0644},  {"owner", "user"},
                {"group", "user"}, {"mtime_ns", 5}, {"symlink_target", "/t"}};
  auto e = DecodeFileEntry(entry, "stat");
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  EXPECT_EQ(e->type, FileType::kSymlink);
  EXPECT_EQ(e->size, 12u);
  EXPECT_EQ(e->symlink_target, "/t");
  auto list = DecodeEntries({{"entries", {entry, entry}}});
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->size(), 2u);

  EXPECT_EQ(DecodeReadFileHeader({{"size", 10}})->size, 10u);
  EXPECT_EQ(*DecodeMkdirCreated({{"created", false}}), false);
  EXPECT_EQ(DecodeWatchEvent({{"type", "write"}, {"name", "a/b"}})->name, "a/b");
  auto with_entry = DecodeWatchEvent(
      {{"type", "create"},
       {"name", "f"},
       {"entry", {{"name", "f"}, {"path", "/d/f"}, {"type", "file"}, {"metadata", {{"k", "v"}}}}}});
  ASSERT_TRUE(with_entry.ok()) << with_entry.status().ToString();
  ASSERT_TRUE(with_entry->entry.has_value());
  EXPECT_EQ(with_entry->entry->path, "/d/f");
  EXPECT_EQ(with_entry->entry->metadata.at("k"), "v");
  auto link = DecodeFileEntry({{"name", "l"},
                               {"path", "/l"},
                               {"type", "symlink"},
                               {"symlink_target", "t"},
                               {"target", {{"type", "dir"}, {"mode", 0755}, {"path", "/t"}}}},
                              "stat");
  ASSERT_TRUE(link.ok()) << link.status().ToString();
  ASSERT_TRUE(link->target.has_value());
  EXPECT_EQ(link->target->type, FileType::kDir);
  EXPECT_EQ(link->target->path, "/t");
  EXPECT_EQ(DecodeWatchEvent({{"type", "start"}})->type, WatchEvent::Type::kStart);
  EXPECT_TRUE(DecodeHealth({{"ok", true}, {"uptime_ms", 5}})->ok);
  auto m = DecodeMetrics({{"cpu_count", 2},
                          {"cpu_used_pct", 12.5},
                          {"mem_total", 100},
                          {"mem_used", 50},
                          {"disk_total", 10},
                          {"disk_used", 1}});
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->mem_used, 50u);

  auto hello = DecodeHello(R"({"version":1,"min_version":1,"boot_id":"x","pid1":true})");
  ASSERT_TRUE(hello.ok());
  EXPECT_TRUE(hello->pid1);
  auto end = DecodeEnd(R"({"error":{"code":"not_found","message":"no such file"}})");
  ASSERT_TRUE(end.ok());
  EXPECT_EQ(end->result.code(), ErrorCode::kNotFound);
  EXPECT_TRUE(DecodeEnd("{}")->result.ok());
}

// One hostile reply and the decoder it goes to.
struct Hostile {
  std::string name;
  std::function<Status()> decode;
};

template <class T>
Status StatusOf(const Result<T>& r) {
  return r.status();
}

TEST(GuestProtocol, HostileRepliesAreErrorsNamingTheOpNeverExceptions) {
  const std::string huge(kMaxStringBytes + 1, 'x');
  json many_entries = json::array();
  for (size_t i = 0; i <= kMaxListEntries; ++i) many_entries.push_back(0);
  std::vector<Hostile> cases = {
      // The reproduction of the finding: a start event whose pid is a string.
      {"exec start pid string",
       [] {
         return StatusOf(DecodeExecEvent({{"type", "start"}, {"pid", "x"}}));
       }},
      {"exec type number",
       [] {
         return StatusOf(DecodeExecEvent({{"type", 5}}));
       }},
      {"exec not object", [] { return StatusOf(DecodeExecEvent(json::array())); }},
      {"exec unknown type",
       [] {
         return StatusOf(DecodeExecEvent({{"type", "boom"}}));
       }},
      {"exec exit code huge",
       [] {
         return StatusOf(DecodeExecEvent({{"type", "exit"}, {"exit_code", 1e300}}));
       }},
      {"exec exit code out of range",
       [] {
         return StatusOf(DecodeExecEvent({{"type", "exit"}, {"exit_code", 1LL << 40}}));
       }},
      {"exec exit nothing",
       [] {
         return StatusOf(DecodeExecEvent({{"type", "exit"}}));
       }},
      {"exec timed_out string",
       [] {
         return StatusOf(
             DecodeExecEvent({{"type", "exit"}, {"exit_code", 0}, {"timed_out", "yes"}}));
       }},
      {"exec pid zero",
       [] {
         return StatusOf(DecodeExecEvent({{"type", "start"}, {"pid", 0}}));
       }},
      {"exec signal zero",
       [] {
         return StatusOf(DecodeExecEvent({{"type", "exit"}, {"signal", 0}}));
       }},
      {"exec pid negative",
       [] {
         return StatusOf(DecodeExecEvent({{"type", "start"}, {"pid", -1}}));
       }},
      {"processes not array",
       [] {
         return StatusOf(DecodeProcesses({{"processes", "x"}}));
       }},
      {"processes missing", [] { return StatusOf(DecodeProcesses(json::object())); }},
      {"processes item not object",
       [] {
         return StatusOf(DecodeProcesses({{"processes", {1}}}));
       }},
      {"processes pid string",
       [] {
         return StatusOf(DecodeProcesses({{"processes", {{{"pid", "1"}}}}}));
       }},
      {"processes argv numbers",
       [] {
         return StatusOf(DecodeProcesses({{"processes", {{{"pid", 1}, {"argv", {1, 2}}}}}}));
       }},
      {"processes tag object",
       [] {
         return StatusOf(DecodeProcesses({{"processes", {{{"pid", 1}, {"tag", json::object()}}}}}));
       }},
      {"processes pty string",
       [] {
         return StatusOf(DecodeProcesses({{"processes", {{{"pid", 1}, {"pty", "yes"}}}}}));
       }},
      {"processes too many",
       [&] {
         return StatusOf(DecodeProcesses({{"processes", many_entries}}));
       }},
      {"stat name number",
       [] {
         return StatusOf(DecodeFileEntry({{"name", 1}, {"path", "/"}, {"type", "dir"}}, "stat"));
       }},
      {"stat type unknown",
       [] {
         return StatusOf(DecodeFileEntry({{"name", "a"}, {"path", "/"}, {"type", "door"}}, "stat"));
       }},
      {"stat size negative",
       [] {
         return StatusOf(DecodeFileEntry(
             {{"name", "a"}, {"path", "/a"}, {"type", "file"}, {"size", -1}}, "stat"));
       }},
      {"stat mode too big",
       [] {
         return StatusOf(DecodeFileEntry(
             {{"name", "a"}, {"path", "/a"}, {"type", "file"}, {"mode", 1 << 20}}, "stat"));
       }},
      {"stat mtime string",
       [] {
         return StatusOf(DecodeFileEntry(
             {{"name", "a"}, {"path", "/a"}, {"type", "file"}, {"mtime_ns", "now"}}, "stat"));
       }},
      {"stat path huge",
       [&] {
         return StatusOf(
             DecodeFileEntry({{"name", "a"}, {"path", huge}, {"type", "file"}}, "stat"));
       }},
      {"stat path missing",
       [] {
         return StatusOf(DecodeFileEntry({{"name", "a"}, {"type", "file"}}, "stat"));
       }},
      {"stat metadata not strings",
       [] {
         return StatusOf(DecodeFileEntry(
             {{"name", "a"}, {"path", "/a"}, {"type", "file"}, {"metadata", {{"k", 1}}}}, "stat"));
       }},
      {"stat metadata too large",
       [&] {
         return StatusOf(DecodeFileEntry(
             {{"name", "a"}, {"path", "/a"}, {"type", "file"}, {"metadata", {{"k", huge}}}},
             "stat"));
       }},
      {"stat symlink target without path",
       [] {
         return StatusOf(DecodeFileEntry(
             {{"name", "a"}, {"path", "/a"}, {"type", "symlink"}, {"target", {{"type", "file"}}}},
             "stat"));
       }},
      {"watch entry bad",
       [] {
         return StatusOf(
             DecodeWatchEvent({{"type", "create"}, {"name", "f"}, {"entry", {{"name", 1}}}}));
       }},
      {"stat symlink target array",
       [] {
         return StatusOf(DecodeFileEntry(
             {{"name", "a"}, {"path", "/a"}, {"type", "symlink"}, {"symlink_target", {1}}},
             "stat"));
       }},
      {"list entries object",
       [] {
         return StatusOf(DecodeEntries({{"entries", json::object()}}));
       }},
      {"list entry wrong",
       [] {
         return StatusOf(DecodeEntries({{"entries", {{{"name", 1}}}}}));
       }},
      {"read_file size string",
       [] {
         return StatusOf(DecodeReadFileHeader({{"size", "10"}}));
       }},
      {"read_file size missing", [] { return StatusOf(DecodeReadFileHeader(json::object())); }},
      {"mkdir created string",
       [] {
         return StatusOf(DecodeMkdirCreated({{"created", "yes"}}));
       }},
      {"mkdir created missing", [] { return StatusOf(DecodeMkdirCreated(json::object())); }},
      {"watch type number",
       [] {
         return StatusOf(DecodeWatchEvent({{"type", 7}}));
       }},
      {"watch name missing",
       [] {
         return StatusOf(DecodeWatchEvent({{"type", "create"}}));
       }},
      {"watch name number",
       [] {
         return StatusOf(DecodeWatchEvent({{"type", "create"}, {"name", 3}}));
       }},
      {"health ok string",
       [] {
         return StatusOf(DecodeHealth({{"ok", "yes"}}));
       }},
      {"metrics missing",
       [] {
         return StatusOf(DecodeMetrics({{"cpu_count", 1}}));
       }},
      {"metrics cpu pct nan-ish",
       [] {
         return StatusOf(DecodeMetrics({{"cpu_count", 1},
                                        {"cpu_used_pct", -5},
                                        {"mem_total", 1},
                                        {"mem_used", 1},
                                        {"disk_total", 1},
                                        {"disk_used", 1}}));
       }},
      {"hello not json", [] { return StatusOf(DecodeHello("{")); }},
      {"hello version string", [] { return StatusOf(DecodeHello(R"({"version":"1"})")); }},
      {"hello version negative", [] { return StatusOf(DecodeHello(R"({"version":-1})")); }},
      {"end not object", [] { return StatusOf(DecodeEnd("[1]")); }},
  };
  uint64_t caught_before = CaughtExceptions();
  for (const auto& c : cases) {
    Status s;
    Status thrown = CatchAll("decode", [&] { s = c.decode(); });
    EXPECT_TRUE(thrown.ok()) << c.name << ": threw: " << thrown.message();
    EXPECT_FALSE(s.ok()) << c.name << ": decoded";
    EXPECT_NE(s.message().find("invalid reply"), std::string::npos)
        << c.name << ": " << s.message();
  }
  EXPECT_EQ(CaughtExceptions(), caught_before);
}

TEST(GuestProtocol, AMalformedEndErrorIsStillAnError) {
  for (const char* end : {R"({"error":5})", R"({"error":{"code":7,"message":[1]}})",
                          R"({"error":{"code":"ok","message":"x"}})", R"({"error":"x"})"}) {
    auto r = DecodeEnd(end);
    ASSERT_TRUE(r.ok()) << end;
    EXPECT_FALSE(r->result.ok()) << end;
  }
  std::string long_message(5000, 'm');
  auto r = DecodeEnd(json({{"error", {{"code", "internal"}, {"message", long_message}}}}).dump());
  ASSERT_TRUE(r.ok());
  EXPECT_LE(r->result.message().size(), 1024u);
}

TEST(GuestProtocol, AnErrorCodeNameMapsBackAndUnknownOnesAreInternal) {
  EXPECT_EQ(ErrorCodeFromName("permission_denied"), ErrorCode::kPermissionDenied);
  EXPECT_EQ(ErrorCodeFromName("teapot"), ErrorCode::kInternal);
}

}  // namespace
}  // namespace moat::channel::proto
