// End to end: a hostile guest cannot crash, confuse or starve moatd (issue 12, finding 1).
// A tenant who is root in its VM can stop moat-guest and answer on the channel itself. Here a
// real moatd API (in process: agent, store, controller, HTTP server) runs two real sandboxes;
// one's channel is taken over by a scripted fake guest (its guest.sock replaced, the host made
// to reconnect), which answers every envd route with malformed, wrong-typed, oversized,
// out-of-order and flooding replies. moatd must answer every request cleanly, keep serving,
// leave the other sandbox untouched, report the hostile one as `error` after repeated
// violations, and still kill it and release everything.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <nlohmann/json.hpp>
#include <thread>

#include "agent/agent.h"
#include "api/api_server.h"
#include "api/auth.h"
#include "api/codec/connect.h"
#include "api/codec/protojson.h"
#include "api/metrics.h"
#include "api/sandbox_controller.h"
#include "api/store/sqlite_store.h"
#include "common/fs.h"
#include "common/guarded.h"
#include "host/in_process_host_agent.h"
#include "host/local_data_plane.h"
#include "support/agent_config.h"
#include "support/fake_guest.h"
#include "support/raw_http.h"
#include "support/test_util.h"

namespace moat::api {
namespace {

using nlohmann::json;
using test_support::FakeGuestPeer;
using namespace std::chrono_literals;

constexpr char kApiKey[] = "moat_0123456789abcdef0123456789abcdef01234567";

// How the fake guest misbehaves; the test walks through all of them.
enum class Mode { kWrongTypes, kNotJson, kOutOfOrder, kFlood, kOversized, kEndIsGarbage };

const char* ModeName(Mode m) {
  switch (m) {
    case Mode::kWrongTypes: return "wrong types";
    case Mode::kNotJson: return "not json";
    case Mode::kOutOfOrder: return "out of order";
    case Mode::kFlood: return "flood";
    case Mode::kOversized: return "oversized";
    case Mode::kEndIsGarbage: return "END garbage";
  }
  return "?";
}

// The wrong-typed reply for each op: the shapes the finding reproduced, and more.
std::string WrongTyped(const std::string& op) {
  if (op == "exec" || op == "attach") return R"({"type":"start","pid":"x"})";
  if (op == "processes") return R"({"processes":[{"pid":"1","tag":5,"argv":"sh","pty":"yes"}]})";
  if (op == "stat" || op == "move") return R"({"name":7,"path":["/"],"type":{},"size":"big"})";
  if (op == "write_file") return R"({"path":1,"name":2})";
  if (op == "list") return R"({"entries":[{"name":1},"x",null]})";
  if (op == "mkdir") return R"({"created":"yes"})";
  if (op == "read_file") return R"({"size":"huge"})";
  if (op == "watch") return R"({"type":7,"name":[]})";
  if (op == "health") return R"({"ok":"yes","uptime_ms":"x"})";
  return R"({"type":[],"pid":{}})";
}

void Misbehave(Mode mode, FakeGuestPeer& g, uint32_t id, const json& request) {
  std::string op = request.is_object() && request.contains("op") && request["op"].is_string()
                       ? request["op"].get<std::string>()
                       : "";
  switch (mode) {
    case Mode::kWrongTypes:
      g.Message(id, WrongTyped(op));
      g.Message(id, R"({"type":"exit","exit_code":"zero","timed_out":"no"})");
      g.End(id);
      return;
    case Mode::kNotJson:
      g.Message(id, "{not json");
      g.Message(id, "[1,2,3]");
      g.End(id);
      return;
    case Mode::kOutOfOrder:
      // An exit before any start, DATA before anything, END, then more after the END.
      g.Message(id, R"({"type":"exit","exit_code":0})");
      g.Send(channel::EncodeFrame(channel::FrameType::kData, 1, id, "early"));
      g.End(id);
      g.Message(id, R"({"type":"start","pid":1})");
      g.End(id);
      // A frame for a stream the host never opened: a protocol error, the connection closes.
      g.Send(channel::EncodeFrame(channel::FrameType::kMessage, 0, id + 1000, "{}"));
      return;
    case Mode::kFlood:
      for (int i = 0; i < 6000; ++i) {
        if (!g.Message(id, R"({"type":"noise","i":1})")) return;
      }
      g.End(id);
      return;
    case Mode::kOversized: {
      std::string frame = channel::EncodeFrame(channel::FrameType::kMessage, 0, id, "{}");
      uint32_t huge = 0x7fffffff;
      std::memcpy(frame.data(), &huge, 4);
      g.Send(frame);
      return;
    }
    case Mode::kEndIsGarbage: g.End(id, "\xff\xfe not json"); return;
  }
}

class HostileGuestE2eTest : public ::testing::Test {
 public:
  static void SetUpTestSuite() {
    dir_ = test_support::NewSuiteDir("moat-hostile.");
    ASSERT_NE(dir_, nullptr);
    auto agent = agent::Agent::Start(test_support::E2eAgentConfig(*dir_));
    ASSERT_TRUE(agent.ok()) << agent.status().ToString();
    agent_ = agent->release();
    auto store = store::SqliteStore::Open(*dir_ + "/moat.db");
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = store->release();
    ASSERT_TRUE(BootstrapApiKey(*store_, *dir_, std::string(kApiKey)).ok());
    metrics_ = new Metrics();
    host_ = new host::InProcessHostAgent("local", *agent_);
    auto controller = SandboxController::Start(*host_, *store_, *metrics_, {});
    ASSERT_TRUE(controller.ok()) << controller.status().ToString();
    controller_ = controller->release();
    http::ServerOptions options;
    options.port = 0;
    auto server = StartWithLocalDataPlane(
        options, *controller_, *store_, *metrics_, host::GuestLookupOf(*agent_),
        [](const std::string& id, uint16_t port) { return controller_->ResolvePort(id, port); },
        PortProxyOptions{});
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = server->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    delete controller_;
    delete host_;
    delete agent_;
    delete store_;
    delete metrics_;
    if (dir_ != nullptr) {
      EXPECT_EQ(test_support::CountProcessesMentioning(*dir_), 0) << "VMM processes left";
      (void)RemoveTree(*dir_);
      delete dir_;
    }
  }

  static test_support::Reply Http(const std::string& method, const std::string& target,
                                  const std::string& headers, const std::string& body) {
    std::string req = method + " " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers +
                      "Content-Length: " + std::to_string(body.size()) +
                      "\r\nConnection: close\r\n\r\n" + body;
    return test_support::Exchange(server_->port(), req);
  }
  static test_support::Reply Control(const std::string& method, const std::string& target,
                                     const std::string& body = "") {
    return Http(method, target,
                std::string("X-API-Key: ") + kApiKey + "\r\nContent-Type: application/json\r\n",
                body);
  }
  static std::string EnvdHeaders(const json& sandbox) {
    return "E2b-Sandbox-Id: " + sandbox["sandboxID"].get<std::string>() +
           "\r\nX-Access-Token: " + sandbox["envdAccessToken"].get<std::string>() + "\r\n";
  }
  static test_support::Reply Unary(const json& sandbox, const std::string& route,
                                   const json& message) {
    return Http("POST", route, EnvdHeaders(sandbox) + "Content-Type: application/json\r\n",
                message.dump());
  }
  static test_support::Reply Stream(const json& sandbox, const std::string& route,
                                    const json& message) {
    return Http("POST", route,
                EnvdHeaders(sandbox) +
                    "Content-Type: application/connect+json\r\nConnect-Timeout-Ms: 20000\r\n",
                codec::EncodeEnvelope(0, message.dump()));
  }
  static json CreateSandbox() {
    auto r = Control("POST", "/sandboxes", R"({"templateID":"base","timeout":600})");
    EXPECT_EQ(r.status, 201) << r.body;
    auto j = json::parse(r.body, nullptr, false);
    return j.is_object() ? j : json();
  }
  // Runs `cmd` through the API and returns its stdout (decoded), or "" on any failure.
  static std::string Exec(const json& sandbox, const std::string& cmd) {
    auto r = Stream(sandbox, "/process.Process/Start",
                    {{"process", {{"cmd", "/bin/bash"}, {"args", {"-c", cmd}}}}});
    if (r.status != 200) return "";
    auto envelopes = codec::DecodeEnvelopes(r.body, 1 << 20);
    if (!envelopes.ok()) return "";
    std::string out;
    for (const auto& e : *envelopes) {
      auto m = json::parse(e.message, nullptr, false);
      if (!m.is_object() || !m.contains("event")) continue;
      const auto& ev = m["event"];
      if (ev.contains("data") && ev["data"].contains("stdout")) {
        auto bytes = codec::Base64Decode(ev["data"]["stdout"].get<std::string>());
        if (bytes.ok()) out += *bytes;
      }
    }
    return out;
  }

  static inline std::string* dir_ = nullptr;
  static inline agent::Agent* agent_ = nullptr;
  static inline host::InProcessHostAgent* host_ = nullptr;
  static inline store::SqliteStore* store_ = nullptr;
  static inline Metrics* metrics_ = nullptr;
  static inline SandboxController* controller_ = nullptr;
  static inline ApiServer* server_ = nullptr;
};

// Every envd route against the hostile guest; what each answered.
std::vector<std::pair<std::string, test_support::Reply>> HitEveryRoute(const json& hostile);

TEST_F(HostileGuestE2eTest, EveryRouteSurvivesEveryMisbehaviourAndOthersAreUnaffected) {
  json bystander = CreateSandbox();
  ASSERT_TRUE(bystander.is_object());
  ASSERT_EQ(Exec(bystander, "echo ok"), "ok\n");
  const uint64_t caught_before = CaughtExceptions();
  for (Mode m : {Mode::kWrongTypes, Mode::kNotJson, Mode::kOutOfOrder, Mode::kFlood,
                 Mode::kOversized, Mode::kEndIsGarbage}) {
    SCOPED_TRACE(ModeName(m));
    // A fresh sandbox per misbehaviour: each ends faulted.
    json hostile = CreateSandbox();
    ASSERT_TRUE(hostile.is_object());
    const std::string hostile_id = hostile["sandboxID"];
    ASSERT_EQ(Exec(hostile, "echo ok"), "ok\n");

    // Take its channel over: the VMM's socket moves aside, the fake guest listens in its
    // place, and the host reconnects to it.
    auto sb = agent_->Get(hostile_id);
    ASSERT_TRUE(sb.ok());
    const std::string sock = (*sb)->paths().guest_socket;
    ASSERT_EQ(::rename(sock.c_str(), (sock + ".real").c_str()), 0);
    test_support::FakeGuestServer fake(
        sock, [m](FakeGuestPeer& g, uint32_t id, const json& req) { Misbehave(m, g, id, req); });
    ASSERT_TRUE(fake.ok());
    ASSERT_TRUE((*sb)->ReconnectGuest().ok());

    auto started = std::chrono::steady_clock::now();
    for (const auto& [route, reply] : HitEveryRoute(hostile)) {
      // Answered (not a dropped connection), and never a success carrying the guest's garbage.
      EXPECT_GT(reply.status, 0) << route << ": no answer";
      EXPECT_EQ(reply.body.find("\"pid\":\"x\""), std::string::npos) << route << ": " << reply.body;
    }
    EXPECT_LT(std::chrono::steady_clock::now() - started, 120s);
    // moatd is up and the other sandbox works.
    EXPECT_EQ(Control("GET", "/healthz").status, 200);
    EXPECT_EQ(Exec(bystander, "echo still-ok"), "still-ok\n");

    // Past the violation limit the sandbox is reported as `error`; its envd routes are refused
    // without reaching the guest; it can still be killed, and everything is released.
    EXPECT_TRUE((*sb)->Fault().has_value());
    auto health = Http("GET", "/health", EnvdHeaders(hostile), "");
    EXPECT_EQ(health.status, 502) << health.body;
    auto info = Control("GET", "/sandboxes/" + hostile_id);
    EXPECT_EQ(info.status, 200) << info.body;
    EXPECT_NE(info.body.find("\"state\":\"error\""), std::string::npos) << info.body;
    sb->reset();
    EXPECT_EQ(Control("DELETE", "/sandboxes/" + hostile_id).status, 204);
  }
  // No exception reached even the last-resort catch: the decoders refused everything.
  EXPECT_EQ(CaughtExceptions(), caught_before);
  EXPECT_EQ(Exec(bystander, "echo done"), "done\n");
  EXPECT_EQ(Control("DELETE", "/sandboxes/" + bystander["sandboxID"].get<std::string>()).status,
            204);
  EXPECT_EQ(test_support::CountProcessesMentioning(*dir_ + "/sandboxes"), 0);
}

std::vector<std::pair<std::string, test_support::Reply>> HitEveryRoute(const json& hostile) {
  using T = HostileGuestE2eTest;
  return {
      {"Start",
       T::Stream(hostile, "/process.Process/Start", {{"process", {{"cmd", "/bin/true"}}}})},
      {"Connect", T::Stream(hostile, "/process.Process/Connect", {{"process", {{"pid", 1}}}})},
      {"List", T::Unary(hostile, "/process.Process/List", json::object())},
      {"SendInput", T::Unary(hostile, "/process.Process/SendInput",
                             {{"process", {{"tag", "t"}}}, {"input", {{"stdin", "aGk="}}}})},
      {"SendSignal", T::Unary(hostile, "/process.Process/SendSignal",
                              {{"process", {{"pid", 1}}}, {"signal", "SIGNAL_SIGKILL"}})},
      {"CloseStdin", T::Unary(hostile, "/process.Process/CloseStdin", {{"process", {{"pid", 1}}}})},
      {"Update",
       T::Unary(hostile, "/process.Process/Update",
                {{"process", {{"pid", 1}}}, {"pty", {{"size", {{"cols", 80}, {"rows", 24}}}}}})},
      {"Stat", T::Unary(hostile, "/filesystem.Filesystem/Stat", {{"path", "/x"}})},
      {"ListDir", T::Unary(hostile, "/filesystem.Filesystem/ListDir", {{"path", "/"}})},
      {"MakeDir", T::Unary(hostile, "/filesystem.Filesystem/MakeDir", {{"path", "/d"}})},
      {"Move",
       T::Unary(hostile, "/filesystem.Filesystem/Move", {{"source", "/a"}, {"destination", "/b"}})},
      {"Remove", T::Unary(hostile, "/filesystem.Filesystem/Remove", {{"path", "/a"}})},
      {"WatchDir", T::Stream(hostile, "/filesystem.Filesystem/WatchDir", {{"path", "/"}})},
      {"GET /files", T::Http("GET", "/files?path=/x", T::EnvdHeaders(hostile), "")},
      {"POST /files",
       T::Http("POST", "/files?path=/x",
               T::EnvdHeaders(hostile) + "Content-Type: application/octet-stream\r\n", "data")},
  };
}

}  // namespace
}  // namespace moat::api
