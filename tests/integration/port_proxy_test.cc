// moatd's port proxy end to end on loopback: a real ApiServer (its agent has no sandboxes, and
// no VM is booted) whose resolver maps the ports of made-up sandboxes to servers in this test —
// an HTTP server and a WebSocket echo server speaking over plain sockets — and raw-socket
// clients, so that every byte on the wire is the test's own.
#include <gtest/gtest.h>
#include <poll.h>
#include <stdlib.h>

#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "agent/agent.h"
#include "api/api_server.h"
#include "api/auth.h"
#include "api/sandbox_controller.h"
#include "api/store/sqlite_store.h"
#include "common/fs.h"
#include "host/in_process_host_agent.h"
#include "host/local_data_plane.h"
#include "support/raw_http.h"
#include "support/test_util.h"

namespace moat::api {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;
using std::chrono::steady_clock;
using test_support::Conn;
using test_support::Dial;
using test_support::Exchange;
using test_support::Head;
using test_support::ParseHead;
using test_support::ParseReply;
using test_support::ReadReply;
using test_support::ReadWebSocketFrame;
using test_support::Reply;
using test_support::SendAll;
using test_support::WebSocketAccept;
using test_support::WebSocketFrame;
using test_support::WebSocketMessage;

constexpr const char* kSandbox = "proxysbx000000000001";
constexpr const char* kNoNetSandbox = "proxynonet0000000001";
// Created with allowPublicTraffic: false: its ports need this token.
constexpr const char* kPrivateSandbox = "proxyprivate00000001";
constexpr const char* kTrafficToken = "traffic-token-0123456789";
constexpr const char* kApiKey = "moat_port_proxy_test_key";
constexpr uint16_t kHttpPort = 8080;  // the sandbox ports the resolver knows
constexpr uint16_t kWsPort = 9000;
constexpr uint16_t kRefusedPort = 7000;
constexpr uint16_t kBlackholePort = 7001;  // an address that never answers, or is unreachable

class PortProxyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/moat-port-proxy-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    // The agent checks that the base template's files exist; nothing here boots them.
    std::ofstream(dir_ + "/vmlinux").put('\0');
    std::ofstream(dir_ + "/rootfs.ext4").put('\0');
    agent::AgentConfig ac;
    ac.data_dir = dir_ + "/data";
    ac.base.kernel_path = dir_ + "/vmlinux";
    ac.base.rootfs_path = dir_ + "/rootfs.ext4";
    ac.jail = false;
    auto agent = agent::Agent::Start(ac);
    ASSERT_TRUE(agent.ok()) << agent.status().ToString();
    agent_ = std::move(*agent);
    auto store = store::SqliteStore::Open(dir_ + "/moat.db");
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(*store);
    ASSERT_TRUE(BootstrapApiKey(*store_, dir_, std::string(kApiKey)).ok());
    host_ = std::make_unique<host::InProcessHostAgent>("local", *agent_);
    auto controller = SandboxController::Start(*host_, *store_, metrics_, {});
    ASSERT_TRUE(controller.ok()) << controller.status().ToString();
    controller_ = std::move(*controller);
    refused_port_ = test_support::RefusedLoopbackPort();
    PortProxyOptions options;
    options.connect_timeout = milliseconds(500);
    options.max_connections = 64;
    StartServer(options);
  }

  void TearDown() override {
    server_.reset();
    controller_.reset();
    agent_.reset();
    store_.reset();
    (void)RemoveTree(dir_);
  }

  void StartServer(PortProxyOptions options) {
    server_.reset();
    http::ServerOptions http_options;
    http_options.host = "127.0.0.1";
    http_options.port = 0;
    auto server = StartWithLocalDataPlane(
        http_options, *controller_, *store_, metrics_, host::GuestLookupOf(*agent_),
        [this](const std::string& id, uint16_t port) { return Resolve(id, port); }, options);
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(*server);
    port_ = server_->port();
  }

  Result<SandboxEndpoint> Resolve(const std::string& id, uint16_t port) {
    if (id == kNoNetSandbox) return FailedPrecondition("sandbox " + id + " has no network");
    if (id == kPrivateSandbox) return SandboxEndpoint{"127.0.0.1", http_.port(), kTrafficToken};
    if (id != kSandbox) return NotFound("no sandbox " + id);
    switch (port) {
      case kHttpPort: return SandboxEndpoint{"127.0.0.1", http_.port()};
      case kWsPort: return SandboxEndpoint{"127.0.0.1", ws_.port()};
      case kRefusedPort: return SandboxEndpoint{"127.0.0.1", refused_port_};
      case kBlackholePort: return SandboxEndpoint{"192.0.2.1", 9};  // TEST-NET-1
      default: return SandboxEndpoint{"127.0.0.1", refused_port_};
    }
  }

  static std::string HostOf(uint16_t sandbox_port, const std::string& id = kSandbox) {
    return std::to_string(sandbox_port) + "-" + id + ".moat.test";
  }

  // The HTTP upstream: echoes the request as JSON; /stream answers in two chunks, the second
  // once the test saw the first; /close hangs up without an answer.
  void ServeHttp(Conn& c) {
    std::string raw = c.ReadUntil("\r\n\r\n");
    if (raw.empty()) return;
    Head head = ParseHead(raw);
    std::string body;
    size_t length = std::strtoul(head.Header("content-length").c_str(), nullptr, 10);
    if (length > 0 && !c.ReadN(length, &body)) return;
    std::string target = head.first_line.substr(head.first_line.find(' ') + 1);
    target = target.substr(0, target.find(' '));
    if (target == "/close") return;
    if (target == "/not-http") {
      SendAll(c.fd.get(), "hello, this is no HTTP\r\n\r\n");
      return;
    }
    if (target == "/keepalive") {
      // A server that would keep the connection: what else reaches it within 1 s?
      SendAll(c.fd.get(),
              "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=60\r\n"
              "Content-Length: 2\r\n\r\nok");
      auto deadline = steady_clock::now() + seconds(1);
      for (pollfd p{c.fd.get(), POLLIN, 0}; steady_clock::now() < deadline;) {
        if (::poll(&p, 1, 50) > 0 && !c.Fill()) break;
      }
      after_keepalive_answer_.set_value(c.buf);
      return;
    }
    if (target == "/stream") {
      SendAll(c.fd.get(),
              "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
              "6\r\nfirst\n\r\n");
      if (first_chunk_seen_.wait_for(seconds(20)) != std::future_status::ready) return;
      SendAll(c.fd.get(), "7\r\nsecond\n\r\n0\r\n\r\n");
      return;
    }
    json j = {{"method", head.first_line.substr(0, head.first_line.find(' '))},
              {"target", target},
              {"version", head.first_line.substr(head.first_line.rfind(' ') + 1)},
              {"headers", head.headers},
              {"body", body}};
    std::string out = j.dump();
    SendAll(c.fd.get(), "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " +
                            std::to_string(out.size()) + "\r\n\r\n" + out);
    // Like many servers, it honours Connection: close by closing now; otherwise it waits for
    // the client to close, so a proxy that forgot the header would hang the test.
    if (head.Header("connection") != "close") c.ReadToEof();
  }

  // The WebSocket upstream: the handshake, then every data frame echoed until a close frame.
  static void ServeWebSocket(Conn& c) {
    Head head = ParseHead(c.ReadUntil("\r\n\r\n"));
    std::string key = head.Header("sec-websocket-key");
    if (key.empty() || head.Header("upgrade") != "websocket") {
      SendAll(c.fd.get(), "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
      return;
    }
    SendAll(c.fd.get(),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Accept: " +
                WebSocketAccept(key) + "\r\n\r\n");
    WebSocketMessage f;
    while (ReadWebSocketFrame(c, &f)) {
      SendAll(c.fd.get(), WebSocketFrame(f.opcode, f.payload, false));
      if (f.opcode == 0x8) return;
    }
  }

  // A WebSocket through the proxy, by host name; `eager` goes out with the handshake (a client
  // may send its first frame before it has the 101).
  Conn OpenWebSocket(const std::string& eager = "") {
    Conn c = Dial(port_);
    std::string key = "dGhlIHNhbXBsZSBub25jZQ==";
    EXPECT_TRUE(SendAll(c.fd.get(), "GET /chat?room=1 HTTP/1.1\r\nHost: " + HostOf(kWsPort) +
                                        "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                        "Sec-WebSocket-Key: " +
                                        key + "\r\nSec-WebSocket-Version: 13\r\n\r\n" + eager));
    Head head = ParseHead(c.ReadUntil("\r\n\r\n"));
    EXPECT_EQ(head.first_line, "HTTP/1.1 101 Switching Protocols");
    EXPECT_EQ(head.Header("sec-websocket-accept"), WebSocketAccept(key));
    return c;
  }

  // /metrics needs a key; Prometheus sends it as a bearer token.
  std::string ScrapeMetrics() {
    return Exchange(port_, "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                               std::string(kApiKey) + "\r\nConnection: close\r\n\r\n")
        .body;
  }

  std::string dir_;
  Metrics metrics_;
  std::unique_ptr<agent::Agent> agent_;
  std::unique_ptr<host::InProcessHostAgent> host_;
  std::unique_ptr<store::SqliteStore> store_;
  std::unique_ptr<SandboxController> controller_;
  std::promise<std::string> after_keepalive_answer_;
  std::promise<void> first_chunk_seen_signal_;
  std::shared_future<void> first_chunk_seen_ = first_chunk_seen_signal_.get_future().share();
  test_support::LoopbackServer http_{[this](Conn& c) { ServeHttp(c); }};
  test_support::LoopbackServer ws_{[](Conn& c) { ServeWebSocket(c); }};
  uint16_t refused_port_ = 0;
  std::unique_ptr<ApiServer> server_;  // last: gone before the upstreams and the fixture state
  uint16_t port_ = 0;
};

// The fd count once connections closing in the background (a server thread's lingering close,
// an upstream's thread) are done: the same count twice, 300 ms apart.
int SettledFdCount() {
  int count = test_support::OpenFdCount();
  for (int i = 0; i < 30; ++i) {
    std::this_thread::sleep_for(milliseconds(300));
    int now = test_support::OpenFdCount();
    if (now == count) break;
    count = now;
  }
  return count;
}

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

TEST_F(PortProxyTest, HttpByHostNameReachesTheSandboxPortWithForwardedHeaders) {
  Conn c = Dial(port_);
  ASSERT_TRUE(SendAll(c.fd.get(), "GET /hello?x=1 HTTP/1.1\r\nHost: " + HostOf(kHttpPort) +
                                      "\r\nX-API-Key: moat_must_not_leak\r\nAccept: */*\r\n\r\n"));
  Reply r = ReadReply(c);
  EXPECT_EQ(c.ReadToEof(), "") << "the connection ends with the proxied exchange";
  ASSERT_EQ(r.status, 200) << r.body;
  json j = json::parse(r.body);
  EXPECT_EQ(j["method"], "GET");
  EXPECT_EQ(j["target"], "/hello?x=1");
  EXPECT_EQ(j["version"], "HTTP/1.1");
  auto& h = j["headers"];
  EXPECT_EQ(h["host"], HostOf(kHttpPort));
  EXPECT_EQ(h["accept"], "*/*");
  EXPECT_EQ(h["x-forwarded-for"], "127.0.0.1");
  EXPECT_EQ(h["x-forwarded-host"], HostOf(kHttpPort));
  EXPECT_EQ(h["x-forwarded-proto"], "http");
  EXPECT_EQ(h["connection"], "close");
  EXPECT_FALSE(h.contains("x-api-key")) << "the API key never goes into a sandbox";
}

TEST_F(PortProxyTest, APrivateSandboxsPortsNeedItsTrafficTokenWhichIsNotPassedOn) {
  const std::string host = HostOf(kHttpPort, kPrivateSandbox);
  Reply none = Exchange(port_, "GET / HTTP/1.1\r\nHost: " + host + "\r\n\r\n");
  EXPECT_EQ(none.status, 403);
  EXPECT_NE(none.body.find("e2b-traffic-access-token"), std::string::npos) << none.body;
  Reply wrong =
      Exchange(port_, "GET / HTTP/1.1\r\nHost: " + host +
                          "\r\ne2b-traffic-access-token: traffic-token-0123456788\r\n\r\n");
  EXPECT_EQ(wrong.status, 403);
  Reply right = Exchange(port_, "GET / HTTP/1.1\r\nHost: " + host +
                                    "\r\nE2B-Traffic-Access-Token: " + kTrafficToken + "\r\n\r\n");
  ASSERT_EQ(right.status, 200) << right.body;
  json j = json::parse(right.body);
  EXPECT_FALSE(j["headers"].contains("e2b-traffic-access-token")) << "the token stays with moatd";
  // A public sandbox ignores the header (and does not pass it on either).
  Reply open = Exchange(port_, "GET / HTTP/1.1\r\nHost: " + HostOf(kHttpPort) +
                                   "\r\ne2b-traffic-access-token: x\r\n\r\n");
  ASSERT_EQ(open.status, 200);
  EXPECT_FALSE(json::parse(open.body)["headers"].contains("e2b-traffic-access-token"));
}

TEST_F(PortProxyTest, HttpBySandboxHeadersCarriesAChunkedBody) {
  Reply r = Exchange(
      port_, "POST /items HTTP/1.1\r\nHost: 127.0.0.1\r\nE2b-Sandbox-Id: " + std::string(kSandbox) +
                 "\r\nE2b-Sandbox-Port: 8080\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
  ASSERT_EQ(r.status, 200) << r.body;
  json j = json::parse(r.body);
  EXPECT_EQ(j["method"], "POST");
  EXPECT_EQ(j["body"], "hello world");
  EXPECT_EQ(j["headers"]["content-length"], "11");
  EXPECT_FALSE(j["headers"].contains("transfer-encoding"));
}

TEST_F(PortProxyTest, StreamsTheResponseAsTheUpstreamSendsIt) {
  Conn c = Dial(port_);
  ASSERT_TRUE(
      SendAll(c.fd.get(), "GET /stream HTTP/1.1\r\nHost: " + HostOf(kHttpPort) + "\r\n\r\n"));
  // The upstream holds the rest back until the first chunk has reached this client.
  std::string part = c.ReadUntil("first\n");
  EXPECT_FALSE(part.empty());
  first_chunk_seen_signal_.set_value();
  Reply r = ParseReply(part + c.ReadToEof());
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "first\nsecond\n");
}

TEST_F(PortProxyTest, WebSocketEchoesMaskedFramesBothWays) {
  Conn c = OpenWebSocket(WebSocketFrame(0x1, "eager hello", true));
  WebSocketMessage f;
  ASSERT_TRUE(ReadWebSocketFrame(c, &f));
  EXPECT_EQ(f.opcode, 0x1);
  EXPECT_EQ(f.payload, "eager hello");
  ASSERT_TRUE(SendAll(c.fd.get(), WebSocketFrame(0x1, "hello moat", true)));
  ASSERT_TRUE(ReadWebSocketFrame(c, &f));
  EXPECT_EQ(f.payload, "hello moat");
  std::string big(300 * 1024, 'x');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>('a' + i % 26);
  ASSERT_TRUE(SendAll(c.fd.get(), WebSocketFrame(0x2, big, true)));
  ASSERT_TRUE(ReadWebSocketFrame(c, &f));
  EXPECT_EQ(f.opcode, 0x2);
  EXPECT_EQ(f.payload, big);
  ASSERT_TRUE(SendAll(c.fd.get(), WebSocketFrame(0x8, "", true)));
  ASSERT_TRUE(ReadWebSocketFrame(c, &f));
  EXPECT_EQ(f.opcode, 0x8);
  EXPECT_EQ(c.ReadToEof(), "") << "the proxy closes once the upstream has";
  EXPECT_TRUE(Contains(ScrapeMetrics(), "moat_port_proxy_requests_total{outcome=\"relayed\"} 1"));
}

TEST_F(PortProxyTest, ErrorsNameTheSandboxAndPort) {
  auto get = [&](const std::string& headers) {
    return Exchange(port_, "GET / HTTP/1.1\r\n" + headers + "\r\n\r\n");
  };
  Reply r = get("Host: " + HostOf(kHttpPort, "nosuchsandbox0000001"));
  EXPECT_EQ(r.status, 502);
  EXPECT_EQ(json::parse(r.body)["code"], 502);
  EXPECT_TRUE(Contains(r.body, "nosuchsandbox0000001")) << r.body;

  r = get("Host: " + HostOf(kHttpPort, kNoNetSandbox));
  EXPECT_EQ(r.status, 502);
  EXPECT_TRUE(Contains(r.body, "has no network")) << r.body;

  r = get("Host: " + HostOf(kRefusedPort));
  EXPECT_EQ(r.status, 502);
  EXPECT_EQ(json::parse(r.body)["code"], 502);
  EXPECT_TRUE(Contains(r.body, "port 7000 of sandbox " + std::string(kSandbox))) << r.body;
  EXPECT_TRUE(Contains(r.body, "refused")) << r.body;

  auto started = steady_clock::now();
  r = get("Host: " + HostOf(kBlackholePort));
  EXPECT_EQ(r.status, 502) << r.body;
  EXPECT_LT(steady_clock::now() - started, seconds(5)) << "the connect timeout is 500 ms";

  for (const char* bad : {"0", "65536", "http", "80x"}) {
    r = get("Host: x\r\nE2b-Sandbox-Id: " + std::string(kSandbox) + "\r\nE2b-Sandbox-Port: " + bad);
    EXPECT_EQ(r.status, 400) << bad;
    EXPECT_TRUE(Contains(r.body, "1..65535")) << r.body;
  }
  EXPECT_EQ(get("Host: " + HostOf(0)).status, 400);
  EXPECT_EQ(get("Host: 99999-" + std::string(kSandbox) + ".moat.test").status, 400);

  r = get("Host: " + HostOf(kHttpPort) + "\r\nX-Ignored: 1\r\nConnection: keep-alive");
  EXPECT_EQ(r.status, 200) << "a keep-alive client still gets its answer, then EOF";

  std::string m = ScrapeMetrics();
  for (const char* line : {"{outcome=\"sandbox_not_found\"} 1", "{outcome=\"no_network\"} 1",
                           "{outcome=\"upstream_unreachable\"} 2", "{outcome=\"bad_port\"} 6"}) {
    EXPECT_TRUE(Contains(m, std::string("moat_port_proxy_requests_total") + line)) << line << "\n"
                                                                                   << m;
  }

  // The slot addresses behind a sandbox's ports are moatd's own: no error names them.
  for (uint16_t p : {kRefusedPort, kBlackholePort}) {
    std::string body = get("Host: " + HostOf(p)).body;
    for (const std::string& internal : {std::string("127.0.0.1"), std::string("192.0.2.1"),
                                        ":" + std::to_string(refused_port_)}) {
      EXPECT_FALSE(Contains(body, internal)) << internal << " in " << body;
    }
  }
}

TEST_F(PortProxyTest, TheClientConnectionCarriesOneExchangeWhateverTheUpstreamSays) {
  auto leftover = after_keepalive_answer_.get_future();
  Conn c = Dial(port_);
  // A second request in the same packet, and a third once the answer is in: on a shared
  // keep-alive pool these could be control API calls with the key.
  ASSERT_TRUE(SendAll(c.fd.get(), "GET /keepalive HTTP/1.1\r\nHost: " + HostOf(kHttpPort) +
                                      "\r\n\r\nGET /pipelined HTTP/1.1\r\nHost: x\r\n"
                                      "X-API-Key: moat_secret1\r\n\r\n"));
  Reply r = ReadReply(c);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "ok");
  EXPECT_EQ(r.head.Header("connection"), "close") << "the client is told not to reuse it";
  EXPECT_EQ(r.head.Header("keep-alive"), "");
  SendAll(c.fd.get(), "GET /sandboxes HTTP/1.1\r\nHost: x\r\nX-API-Key: moat_secret2\r\n\r\n");
  EXPECT_EQ(c.ReadToEof(), "");
  ASSERT_EQ(leftover.wait_for(seconds(10)), std::future_status::ready);
  EXPECT_EQ(leftover.get(), "") << "nothing after the first request reaches the sandbox";
}

TEST_F(PortProxyTest, AnUpstreamThatHangsUpWithoutAnswerIsA502) {
  Reply r = Exchange(port_, "GET /close HTTP/1.1\r\nHost: " + HostOf(kHttpPort) + "\r\n\r\n");
  EXPECT_EQ(r.status, 502);
  EXPECT_TRUE(Contains(r.body, "without a response")) << r.body;
  r = Exchange(port_, "GET /not-http HTTP/1.1\r\nHost: " + HostOf(kHttpPort) + "\r\n\r\n");
  EXPECT_EQ(r.status, 502);
  EXPECT_TRUE(Contains(r.body, "did not answer in HTTP/1.x")) << r.body;
  EXPECT_TRUE(
      Contains(ScrapeMetrics(), "moat_port_proxy_requests_total{outcome=\"no_response\"} 1"));
}

TEST_F(PortProxyTest, TheApiAnswersWhileManyProxiedConnectionsStayOpen) {
  std::vector<Conn> sockets;
  for (int i = 0; i < 64; ++i) sockets.push_back(OpenWebSocket());
  auto started = steady_clock::now();
  Reply health = Exchange(port_, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(health.status, 200);
  EXPECT_LT(steady_clock::now() - started, seconds(1));
  EXPECT_EQ(Exchange(port_, "GET /sandboxes HTTP/1.1\r\nHost: x\r\n\r\n").status, 401)
      << "the control API still wants its key";

  Reply over = Exchange(port_, "GET / HTTP/1.1\r\nHost: " + HostOf(kHttpPort) + "\r\n\r\n");
  EXPECT_EQ(over.status, 503) << "64 is this server's cap";
  EXPECT_TRUE(Contains(over.body, "too many proxied connections")) << over.body;
  EXPECT_TRUE(Contains(ScrapeMetrics(), "moat_port_proxy_connections 64"));

  for (size_t i = 0; i < sockets.size(); i += 9) {
    std::string text = "still here " + std::to_string(i);
    ASSERT_TRUE(SendAll(sockets[i].fd.get(), WebSocketFrame(0x1, text, true)));
    WebSocketMessage f;
    ASSERT_TRUE(ReadWebSocketFrame(sockets[i], &f));
    EXPECT_EQ(f.payload, text);
  }
  sockets.clear();  // the clients hang up: each relay half-closes its upstream, which closes
  auto deadline = steady_clock::now() + seconds(10);
  while (steady_clock::now() < deadline &&
         !Contains(ScrapeMetrics(), "moat_port_proxy_connections 0")) {
    std::this_thread::sleep_for(milliseconds(50));
  }
  EXPECT_TRUE(Contains(ScrapeMetrics(), "moat_port_proxy_connections 0"));
  EXPECT_EQ(Exchange(port_, "GET / HTTP/1.1\r\nHost: " + HostOf(kHttpPort) + "\r\n\r\n").status,
            200);
}

TEST_F(PortProxyTest, AnIdleProxiedConnectionIsClosed) {
  PortProxyOptions options;
  options.idle_timeout = milliseconds(500);
  StartServer(options);
  Conn c = OpenWebSocket();
  ASSERT_TRUE(SendAll(c.fd.get(), WebSocketFrame(0x1, "hi", true)));
  WebSocketMessage f;
  ASSERT_TRUE(ReadWebSocketFrame(c, &f));
  auto started = steady_clock::now();
  EXPECT_EQ(c.ReadToEof(), "");
  EXPECT_GE(steady_clock::now() - started, milliseconds(400));
  EXPECT_LT(steady_clock::now() - started, seconds(5));
  EXPECT_TRUE(
      Contains(ScrapeMetrics(), "moat_port_proxy_requests_total{outcome=\"idle_timeout\"} 1"));
}

TEST_F(PortProxyTest, ShutdownEndsProxiedConnectionsAndLeavesNoFds) {
  // Warm up whatever opens fds once (the store, the logger), then count.
  EXPECT_EQ(Exchange(port_, "GET / HTTP/1.1\r\nHost: " + HostOf(kHttpPort) + "\r\n\r\n").status,
            200);
  int fds_before = SettledFdCount();
  {
    std::vector<Conn> sockets;
    for (int i = 0; i < 8; ++i) sockets.push_back(OpenWebSocket());
    for (int i = 0; i < 8; ++i) {
      EXPECT_EQ(Exchange(port_, "GET / HTTP/1.1\r\nHost: " + HostOf(kHttpPort) + "\r\n\r\n").status,
                200);
      EXPECT_EQ(
          Exchange(port_, "GET / HTTP/1.1\r\nHost: " + HostOf(kRefusedPort) + "\r\n\r\n").status,
          502);
    }
    auto started = steady_clock::now();
    server_->Shutdown();
    server_->Wait();
    EXPECT_LT(steady_clock::now() - started, seconds(5))
        << "open WebSockets must not hold the shutdown up";
    for (auto& s : sockets) EXPECT_EQ(s.ReadToEof(), "");
  }
  // Every connection's fds are gone on both sides, and so is the listening socket (the server's
  // event loop keeps its own until it is destroyed).
  EXPECT_EQ(SettledFdCount(), fds_before - 1);
}

}  // namespace
}  // namespace moat::api
