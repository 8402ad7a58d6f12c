// The fleet's data plane, both ends on loopback without VMs: a replica's RelayDataPlane (behind a
// real HttpServer, as ApiServer drives it) → a real AgentServer → a data plane that echoes what
// reached it. The relay streams bodies both ways, keeps what the host needs and drops what it
// must not see, signs each request for one sandbox and port, and refuses what it can before any
// body crosses; the agent refuses data-plane requests not signed for exactly that sandbox.
#include "api/fleet/relay_data_plane.h"

#include <gtest/gtest.h>

#include <atomic>
#include <nlohmann/json.hpp>

#include "api/fleet/agent_wire.h"
#include "api/http/server.h"
#include "api/store/sqlite_store.h"
#include "common/fs.h"
#include "host/agent_server.h"
#include "support/fake_host_agent.h"
#include "support/raw_http.h"

namespace moat::api::fleet {
namespace {

using nlohmann::json;
using test_support::Exchange;
using test_support::Reply;

constexpr std::string_view kSecret = "fleet-token-for-tests-0123456789abcdef";
constexpr const char* kHost = "host-a";
constexpr const char* kSandbox = "sbx00000000000000001";
constexpr const char* kStopped = "sbx00000000000000002";
constexpr const char* kToken = "access-token-1";

FleetToken Token() {
  return std::move(FleetToken::FromSecret(std::string(kSecret))).value();
}

// The host's data plane, standing in for LocalDataPlane: answers with what reached it (method,
// target, the headers that matter, the body's size and a checksum), streamed in two chunks.
class EchoDataPlane : public DataPlane {
 public:
  std::atomic<int> seen{0};
  http::Admission Admit(http::Request&, const routes::EnvdTarget&, bool, http::ResponseWriter&,
                        DataPlaneAnswer*) override {
    http::Admission a;
    a.body = http::Admission::Body::kStream;
    a.body_limit = 64 * 1024 * 1024;
    return a;
  }
  DataPlaneAnswer Handle(http::Request& req, const routes::EnvdTarget& target,
                         http::ResponseWriter& w) override {
    ++seen;
    http::StringBodySource fallback(req.body);
    http::BodySource& body = req.Body(fallback);
    size_t size = 0;
    uint64_t sum = 0;
    char buf[8192];
    for (;;) {
      auto n = body.Read(buf, sizeof buf);
      if (!n.ok() || *n == 0) break;
      for (size_t i = 0; i < *n; ++i) sum = sum * 31 + static_cast<unsigned char>(buf[i]);
      size += *n;
    }
    json echo = {{"method", req.method},
                 {"path", req.path},
                 {"query", req.raw_query},
                 {"sandbox", target.sandbox_id},
                 {"port", target.port},
                 {"accessToken", req.Header("X-Access-Token")},
                 {"apiKey", req.Header("X-API-Key")},
                 {"forwardedFor", req.Header("X-Forwarded-For")},
                 {"size", size},
                 {"sum", sum}};
    (void)w.BeginStream(200, {{"Content-Type", "application/json"}});
    std::string text = echo.dump();
    (void)w.WriteChunk(text.substr(0, 10));
    (void)w.WriteChunk(text.substr(10));
    (void)w.EndStream();
    return {"echo", 200, false};
  }
  void Shutdown() override {}
};

class RelayDataPlaneTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = MakeTempDir("/tmp", "moat-relay-test.");
    ASSERT_TRUE(d.ok());
    dir_ = *d;
    auto store = store::SqliteStore::Open(dir_ + "/moat.db");
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(store).value();
    auto agent = host::AgentServer::Start(fake_host_, Token(), http::ServerOptions{}, &echo_);
    ASSERT_TRUE(agent.ok()) << agent.status().ToString();
    agent_ = std::move(agent).value();
    store::HostRegistration reg{.id = kHost,
                                .endpoint = "http://127.0.0.1:" + std::to_string(agent_->port()),
                                .vcpu_total = 8,
                                .mem_total_mb = 8192};
    ASSERT_TRUE(store_->RegisterHost(reg).ok());
    auto team = store_->CreateTeam("t", false);
    ASSERT_TRUE(team.ok());
    for (const char* id : {kSandbox, kStopped}) {
      store::SandboxRecord r;
      r.id = id;
      r.team_id = team->id;
      r.template_id = "base";
      r.host_id = kHost;
      r.access_token = kToken;
      r.state = SandboxState::kCreating;
      ASSERT_TRUE(store_->InsertSandbox(r).ok());
    }
    ASSERT_TRUE(*store_->TransitionSandbox(kSandbox, {SandboxState::kCreating, {}, {}},
                                           {SandboxState::kRunning, {}, false}));
    directory_ = std::make_unique<FleetHostDirectory>(*store_, Token());
    RelayDataPlaneOptions options;
    options.max_body_bytes = 64 * 1024 * 1024;
    relay_ = std::make_unique<RelayDataPlane>(*store_, *directory_, Token(), metrics_, options);
    http::ServerOptions front;
    front.body_limit = options.max_body_bytes;
    auto server = http::HttpServer::Start(
        front,
        [this](http::Request& req, http::ResponseWriter& w) {
          (void)relay_->Handle(req, *routes::EnvdTargetOf(req), w);
        },
        [](const Status&, int code, http::ResponseWriter& w) { (void)w.Send(code, {}, ""); },
        [this](http::Request& req, bool has_body, http::ResponseWriter& w) {
          DataPlaneAnswer answer;
          return relay_->Admit(req, *routes::EnvdTargetOf(req), has_body, w, &answer);
        });
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    front_ = std::move(server).value();
  }
  void TearDown() override {
    front_.reset();
    relay_.reset();
    agent_.reset();
    (void)RemoveTree(dir_);
  }

  Reply Send(const std::string& sandbox, const std::string& method, const std::string& target,
             const std::string& extra_headers, const std::string& body) {
    std::string req = method + " " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\n";
    req += "E2b-Sandbox-Id: " + sandbox + "\r\nConnection: close\r\n" + extra_headers;
    return Exchange(front_->port(), req + "\r\n" + body);
  }

  std::string dir_;
  std::unique_ptr<store::Store> store_;
  test_support::FakeHostAgent fake_host_{kHost};
  EchoDataPlane echo_;
  std::unique_ptr<host::AgentServer> agent_;
  Metrics metrics_;
  std::unique_ptr<FleetHostDirectory> directory_;
  std::unique_ptr<RelayDataPlane> relay_;
  std::unique_ptr<http::HttpServer> front_;
};

TEST_F(RelayDataPlaneTest, StreamsABodyToTheHostAndItsAnswerBack) {
  std::string body(3 * 1024 * 1024 + 7, '\0');
  for (size_t i = 0; i < body.size(); ++i) body[i] = static_cast<char>(i * 7 + i / 4096);
  uint64_t sum = 0;
  for (char c : body) sum = sum * 31 + static_cast<unsigned char>(c);
  Reply r =
      Send(kSandbox, "POST", "/files?path=%2Ftmp%2Fx",
           std::string("X-Access-Token: ") + kToken +
               "\r\nX-API-Key: must-not-cross\r\nContent-Length: " + std::to_string(body.size()) +
               "\r\n",
           body);
  ASSERT_EQ(r.status, 200) << r.body;
  json echo = json::parse(r.body);
  EXPECT_EQ(echo["method"], "POST");
  EXPECT_EQ(echo["path"], "/files");
  EXPECT_EQ(echo["query"], "path=%2Ftmp%2Fx");
  EXPECT_EQ(echo["sandbox"], kSandbox);
  EXPECT_EQ(echo["port"], routes::kEnvdPort);
  EXPECT_EQ(echo["accessToken"], kToken);
  EXPECT_EQ(echo["apiKey"], "") << "the API key crossed to the host";
  EXPECT_EQ(echo["forwardedFor"], "127.0.0.1");
  EXPECT_EQ(echo["size"], body.size());
  EXPECT_EQ(echo["sum"], sum);
  EXPECT_EQ(r.head.Header("connection"), "close");
}

TEST_F(RelayDataPlaneTest, RelaysAChunkedBodyAndPortTraffic) {
  std::string chunked = "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
  Reply r = Send(kSandbox, "POST", "/anything",
                 "E2b-Sandbox-Port: 8080\r\nTransfer-Encoding: chunked\r\n", chunked);
  ASSERT_EQ(r.status, 200) << r.body;
  json echo = json::parse(r.body);
  EXPECT_EQ(echo["port"], 8080);
  EXPECT_EQ(echo["size"], 11);
}

TEST_F(RelayDataPlaneTest, RefusesWhatItCanBeforeTheHostSeesIt) {
  // Not running: 502 for envd and ports alike, as E2B answers.
  EXPECT_EQ(Send(kStopped, "GET", "/health", "", "").status, 502);
  EXPECT_EQ(Send(kStopped, "GET", "/", "E2b-Sandbox-Port: 8080\r\n", "").status, 502);
  EXPECT_EQ(Send("sbx00000000000000009", "GET", "/health", "", "").status, 502);
  // A body without the access token is refused before it is read.
  Reply r = Send(kSandbox, "POST", "/filesystem.Filesystem/Stat",
                 "Content-Type: application/json\r\nContent-Length: 2\r\n", "{}");
  EXPECT_EQ(r.status, 401) << r.body;
  Reply wrong =
      Send(kSandbox, "POST", "/files", "X-Access-Token: wrong\r\nContent-Length: 3\r\n", "abc");
  EXPECT_EQ(wrong.status, 401) << wrong.body;
  EXPECT_EQ(Send(kSandbox, "GET", "/", "E2b-Sandbox-Port: 70000\r\n", "").status, 400);
  EXPECT_EQ(echo_.seen, 0);
}

TEST_F(RelayDataPlaneTest, TheAgentTakesDataPlaneRequestsSignedForThatSandboxOnly) {
  auto raw = [&](const std::string& sandbox, const std::string& fleet) {
    std::string req =
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nE2b-Sandbox-Id: " + sandbox +
        "\r\n";
    if (!fleet.empty()) req += "X-Moat-Fleet: " + fleet + "\r\n";
    return Exchange(agent_->port(), req + "\r\n");
  };
  FleetToken token = Token();
  EXPECT_EQ(raw(kSandbox, "").status, 401);
  // A control call's signature (the host alone) is not a data-plane one.
  EXPECT_EQ(raw(kSandbox, token.Header(UnixNow(), "GET", "/health", kHost)).status, 401);
  // Signed for another sandbox, or another port.
  EXPECT_EQ(raw(kSandbox, token.Header(UnixNow(), "GET", "/health",
                                       DataPlaneSubject(kHost, kStopped, routes::kEnvdPort)))
                .status,
            401);
  EXPECT_EQ(raw(kSandbox,
                token.Header(UnixNow(), "GET", "/health", DataPlaneSubject(kHost, kSandbox, 8080)))
                .status,
            401);
  EXPECT_EQ(echo_.seen, 0);
  EXPECT_EQ(raw(kSandbox, token.Header(UnixNow(), "GET", "/health",
                                       DataPlaneSubject(kHost, kSandbox, routes::kEnvdPort)))
                .status,
            200);
  EXPECT_EQ(echo_.seen, 1);
}

TEST_F(RelayDataPlaneTest, AnUnreachableHostIs502NamingTheSandbox) {
  agent_.reset();
  Reply r = Send(kSandbox, "GET", "/health", "", "");
  EXPECT_EQ(r.status, 502);
  EXPECT_NE(r.body.find(kSandbox), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("not reachable"), std::string::npos) << r.body;
}

}  // namespace
}  // namespace moat::api::fleet
