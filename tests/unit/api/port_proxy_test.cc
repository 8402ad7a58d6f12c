#include "host/port_proxy.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "api/history.h"
#include "api/store/sqlite_store.h"
#include "common/builtin_templates.h"
#include "common/fs.h"
#include "common/relay.h"
#include "common/unique_fd.h"
#include "host/envd/envd_call.h"
#include "support/raw_http.h"

namespace moat::api {
namespace {

using http::Request;

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

TEST(UpstreamRequest, KeepsTheRequestDropsHopByHopAndAddsForwardedHeaders) {
  Request req;
  req.method = "POST";
  req.path = "/api/items";
  req.raw_query = "a=1&b=2";
  req.headers["Host"] = "8080-abc.moat.test";
  req.headers["Content-Type"] = "text/plain";
  req.headers["Connection"] = "keep-alive, X-Secret-Hop";
  req.headers["X-Secret-Hop"] = "1";
  req.headers["Keep-Alive"] = "timeout=5";
  req.headers["Transfer-Encoding"] = "chunked";
  req.headers["X-API-Key"] = "moat_secret";
  req.headers["X-Forwarded-For"] = "203.0.113.9";
  req.headers["Expect"] = "100-continue";
  req.body = "hello";
  std::string out = UpstreamRequest(req, "127.0.0.1");
  EXPECT_EQ(out.rfind("POST /api/items?a=1&b=2 HTTP/1.1\r\n", 0), 0u) << out;
  EXPECT_TRUE(Contains(out, "\r\nHost: 8080-abc.moat.test\r\n"));
  EXPECT_TRUE(Contains(out, "\r\nContent-Type: text/plain\r\n"));
  EXPECT_TRUE(Contains(out, "\r\nX-Forwarded-For: 203.0.113.9, 127.0.0.1\r\n"));
  EXPECT_TRUE(Contains(out, "\r\nX-Forwarded-Host: 8080-abc.moat.test\r\n"));
  EXPECT_TRUE(Contains(out, "\r\nX-Forwarded-Proto: http\r\n"));
  EXPECT_TRUE(Contains(out, "\r\nConnection: close\r\n"));
  EXPECT_TRUE(Contains(out, "\r\nContent-Length: 5\r\n\r\nhello"));
  for (const char* gone : {"keep-alive", "X-Secret-Hop", "Keep-Alive", "Transfer-Encoding",
                           "moat_secret", "Expect", "Upgrade"}) {
    EXPECT_FALSE(Contains(out, gone)) << gone << " in\n" << out;
  }
  EXPECT_EQ(out.size() - out.find("\r\n\r\n"), 4u + 5u) << "the body once, at the end";
}

TEST(UpstreamRequest, AMaskedHostReplacesTheClientsWhichGoesInXForwardedHost) {
  Request req;
  req.method = "GET";
  req.path = "/";
  req.headers["Host"] = "8080-abc.moat.test";
  std::string out = UpstreamRequest(req, "10.1.2.3", "custom-host.example.com:8080");
  EXPECT_TRUE(Contains(out, "\r\nHost: custom-host.example.com:8080\r\n")) << out;
  EXPECT_FALSE(Contains(out, "\r\nHost: 8080-abc.moat.test\r\n")) << out;
  EXPECT_TRUE(Contains(out, "\r\nX-Forwarded-Host: 8080-abc.moat.test\r\n")) << out;
}

TEST(UpstreamRequest, KeepsAWebSocketUpgrade) {
  Request req;
  req.method = "GET";
  req.path = "/ws";
  req.headers["Host"] = "127.0.0.1:3000";
  req.headers["Connection"] = "keep-alive, Upgrade";
  req.headers["Upgrade"] = "websocket";
  req.headers["Sec-WebSocket-Key"] = "dGhlIHNhbXBsZSBub25jZQ==";
  req.headers["Sec-WebSocket-Version"] = "13";
  req.headers["X-Forwarded-Proto"] = "https";
  std::string out = UpstreamRequest(req, "10.1.2.3");
  EXPECT_EQ(out.rfind("GET /ws HTTP/1.1\r\n", 0), 0u);
  EXPECT_TRUE(Contains(out, "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"));
  EXPECT_TRUE(Contains(out, "\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"));
  EXPECT_TRUE(Contains(out, "\r\nX-Forwarded-Proto: https\r\n")) << "a front proxy's value stays";
  EXPECT_FALSE(Contains(out, "close"));
  EXPECT_FALSE(Contains(out, "Content-Length")) << "no body, none announced";
  EXPECT_TRUE(out.ends_with("\r\n\r\n"));
}

TEST(SandboxPortRouting, PortsOutside1To65535AreZero) {
  auto port_of = [](const std::string& header_port) {
    Request r;
    r.headers["E2b-Sandbox-Id"] = "abc";
    r.headers["E2b-Sandbox-Port"] = header_port;
    return routes::EnvdTargetOf(r)->port;
  };
  EXPECT_EQ(port_of("8080"), 8080);
  EXPECT_EQ(port_of("65535"), 65535);
  EXPECT_EQ(port_of("0"), 0);
  EXPECT_EQ(port_of("65536"), 0);
  EXPECT_EQ(port_of("abc"), 0);
  EXPECT_EQ(port_of("80x"), 0);
  EXPECT_EQ(port_of("-1"), 0);
  EXPECT_EQ(port_of("123456"), 0);
  Request by_host;
  by_host.headers["Host"] = "99999-abc.moat.test";
  EXPECT_EQ(routes::EnvdTargetOf(by_host)->port, 0);
  by_host.headers["Host"] = "3000-abc.moat.test:8000";
  EXPECT_EQ(routes::EnvdTargetOf(by_host)->port, 3000);
}

// A connected pair of stream sockets: [0] is ours, [1] the relay's.
struct SocketPair {
  SocketPair() {
    int fds[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    ours.Reset(fds[0]);
    theirs.Reset(fds[1]);
  }
  UniqueFd ours;
  UniqueFd theirs;
};

bool Put(int fd, std::string_view data) {
  return ::write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size());
}

std::string ReadToEof(int fd) {
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) return out;
    out.append(buf, static_cast<size_t>(n));
  }
}

TEST(Relay, SendsTheRequestFirstAndEndsWhenTheUpstreamClosesAfterItsAnswer) {
  SocketPair client, upstream;
  RelayStats st;
  std::thread relay(
      [&] { st = Relay(client.theirs.get(), upstream.theirs.get(), "REQUEST;", {}); });
  ASSERT_TRUE(Put(client.ours.get(), "more"));
  char buf[12] = {};
  size_t got = 0;
  while (got < 12) {
    ssize_t n = ::read(upstream.ours.get(), buf + got, sizeof buf - got);
    ASSERT_GT(n, 0);
    got += static_cast<size_t>(n);
  }
  EXPECT_EQ(std::string(buf, 12), "REQUEST;more");
  ASSERT_TRUE(Put(upstream.ours.get(), "HTTP/1.1 200 OK\r\n\r\nbye"));
  upstream.ours.Reset();
  relay.join();
  EXPECT_EQ(st.end, RelayEnd::kUpstreamClosed);
  EXPECT_EQ(st.to_upstream, 12u);
  EXPECT_EQ(st.to_client, 22u);
  ::shutdown(client.theirs.get(), SHUT_WR);  // as the server does once the handler returns
  EXPECT_EQ(ReadToEof(client.ours.get()), "HTTP/1.1 200 OK\r\n\r\nbye");
}

TEST(Relay, AClientHalfCloseReachesTheUpstreamWhichMayStillAnswer) {
  SocketPair client, upstream;
  RelayStats st;
  std::thread relay([&] { st = Relay(client.theirs.get(), upstream.theirs.get(), "", {}); });
  ASSERT_TRUE(Put(client.ours.get(), "ping"));
  ::shutdown(client.ours.get(), SHUT_WR);
  EXPECT_EQ(ReadToEof(upstream.ours.get()), "ping");
  ASSERT_TRUE(Put(upstream.ours.get(), "pong"));
  upstream.ours.Reset();
  relay.join();
  EXPECT_EQ(st.end, RelayEnd::kUpstreamClosed);
  ::shutdown(client.theirs.get(), SHUT_WR);
  EXPECT_EQ(ReadToEof(client.ours.get()), "pong");
}

TEST(Relay, EndsAfterTheIdleTimeout) {
  SocketPair client, upstream;
  RelayOptions options;
  options.idle_timeout = std::chrono::milliseconds(200);
  auto started = std::chrono::steady_clock::now();
  auto st = Relay(client.theirs.get(), upstream.theirs.get(), "x", options);
  auto waited = std::chrono::steady_clock::now() - started;
  EXPECT_EQ(st.end, RelayEnd::kIdleTimeout);
  EXPECT_GE(waited, std::chrono::milliseconds(200));
  EXPECT_LT(waited, std::chrono::seconds(5));
}

TEST(Relay, EndsWhenTheClientGoesAway) {
  SocketPair client, upstream;
  std::thread closer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    client.ours.Reset();  // a unix socket's close is a hang-up both ways, like a TCP reset
  });
  auto st = Relay(client.theirs.get(), upstream.theirs.get(), "", {});
  closer.join();
  // EOF first (the upstream is half-closed), then the hang-up ends it.
  EXPECT_EQ(st.end, RelayEnd::kClientGone);
}

TEST(Relay, FiltersResponseHeadsAndForwardsNothingFromAMutedClient) {
  SocketPair client, upstream;
  RelayOptions options;
  options.forward_client = false;
  std::vector<std::string> heads;
  options.head_filter = [&heads](std::string_view head) -> Result<HeadDecision> {
    heads.emplace_back(head);
    bool interim = head.substr(9, 3) == "103";
    return HeadDecision{interim ? std::string(head) : "HTTP/1.1 200 Rewritten\r\n\r\n", interim,
                        false};
  };
  RelayStats st;
  std::thread relay(
      [&] { st = Relay(client.theirs.get(), upstream.theirs.get(), "REQ", options); });
  ASSERT_TRUE(Put(client.ours.get(), "GET /second"));
  char req[3];
  ASSERT_EQ(::read(upstream.ours.get(), req, 3), 3);
  std::string answer = "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n";
  ASSERT_TRUE(Put(upstream.ours.get(), answer));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // a head split across reads
  ASSERT_TRUE(Put(upstream.ours.get(), "X: 1\r\n\r\nbody"));
  upstream.ours.Reset();
  relay.join();
  EXPECT_EQ(st.end, RelayEnd::kUpstreamClosed);
  EXPECT_EQ(st.to_upstream, 3u) << "the muted client's bytes stay with the relay";
  ASSERT_EQ(heads.size(), 2u);
  EXPECT_EQ(heads[1], "HTTP/1.1 200 OK\r\nX: 1\r\n\r\n");
  ::shutdown(client.theirs.get(), SHUT_WR);
  EXPECT_EQ(ReadToEof(client.ours.get()),
            "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 Rewritten\r\n\r\nbody");
}

TEST(Relay, ShowsAnObserverEveryByteTheClientGetsInOrder) {
  SocketPair client, upstream;
  RelayOptions options;
  options.head_filter = [](std::string_view) -> Result<HeadDecision> {
    return HeadDecision{"HTTP/1.1 200 Filtered\r\n\r\n", false, false};
  };
  std::string seen;
  options.on_client_bytes = [&seen](std::string_view bytes) { seen.append(bytes); };
  std::thread relay([&] { Relay(client.theirs.get(), upstream.theirs.get(), "", options); });
  ASSERT_TRUE(Put(upstream.ours.get(), "HTTP/1.1 200 OK\r\n\r\nfirst,"));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_TRUE(Put(upstream.ours.get(), "second"));
  upstream.ours.Reset();
  relay.join();
  ::shutdown(client.theirs.get(), SHUT_WR);
  std::string got = ReadToEof(client.ours.get());
  EXPECT_EQ(got, "HTTP/1.1 200 Filtered\r\n\r\nfirst,second");
  EXPECT_EQ(seen, got);
}

TEST(Relay, ARefusedResponseHeadEndsItBeforeTheClientSeesAnything) {
  SocketPair client, upstream;
  RelayOptions options;
  options.head_filter = [](std::string_view) -> Result<HeadDecision> {
    return Unavailable("no HTTP/1.x status line");
  };
  ASSERT_TRUE(Put(upstream.ours.get(), "SSH-2.0-x\r\n\r\n"));
  auto st = Relay(client.theirs.get(), upstream.theirs.get(), "", options);
  EXPECT_EQ(st.end, RelayEnd::kBadResponse);
  EXPECT_EQ(st.to_client, 0u);
  EXPECT_EQ(st.error.message(), "no HTTP/1.x status line");
}

// Errors are answered before the connection is taken over, as {"code","message"}.
class PortProxyErrors : public ::testing::Test {
 protected:
  Metrics metrics_;
  static Result<SandboxEndpoint> Resolve(const std::string& id, uint16_t port) {
    if (id == "nonet") return FailedPrecondition("sandbox nonet has no network");
    if (id != "known") return NotFound("no sandbox " + id);
    // A loopback port nothing listens on: bound and closed again.
    UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    // sockaddr_in is the AF_INET form of sockaddr.
    (void)::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a);
    (void)::getsockname(s.get(), reinterpret_cast<sockaddr*>(&a), &len);
    (void)port;
    return SandboxEndpoint{"127.0.0.1", ntohs(a.sin_port)};
  }
  http::RecordingWriter Serve(const std::string& id, int port, PortResolver resolver = Resolve,
                              PortProxyOptions options = {}) {
    PortProxy proxy(options, std::move(resolver), metrics_);
    Request req;
    req.method = "GET";
    req.path = "/";
    http::RecordingWriter w;
    int status = proxy.Serve(req, id, port, w);
    EXPECT_EQ(status, w.status());
    EXPECT_EQ(proxy.active(), 0u);
    return w;
  }
};

TEST_F(PortProxyErrors, NameTheProblemAndAreCountedByOutcome) {
  auto w = Serve("known", 0);
  EXPECT_EQ(w.status(), 400);
  EXPECT_TRUE(Contains(w.body(), "1..65535"));
  auto j = nlohmann::json::parse(w.body());
  EXPECT_EQ(j["code"], 400);

  w = Serve("missing", 8080);
  EXPECT_EQ(w.status(), 502);
  j = nlohmann::json::parse(w.body());
  EXPECT_EQ(j["message"], "The sandbox was not found") << w.body();
  EXPECT_EQ(j["sandboxId"], "missing") << w.body();

  w = Serve("nonet", 8080);
  EXPECT_EQ(w.status(), 502);
  EXPECT_TRUE(Contains(w.body(), "port 8080 of sandbox nonet")) << w.body();

  w = Serve("known", 8080, nullptr);
  EXPECT_EQ(w.status(), 502);
  EXPECT_TRUE(Contains(w.body(), "without networking")) << w.body();

  w = Serve("known", 8080);
  EXPECT_EQ(w.status(), 502);
  EXPECT_TRUE(Contains(w.body(), "port 8080 of sandbox known is not reachable")) << w.body();
  EXPECT_TRUE(Contains(w.body(), "refused")) << w.body();

  std::string m = metrics_.Render(StoreGauges{});
  for (const char* line : {"moat_port_proxy_requests_total{outcome=\"bad_port\"} 1",
                           "moat_port_proxy_requests_total{outcome=\"sandbox_not_found\"} 1",
                           "moat_port_proxy_requests_total{outcome=\"no_network\"} 2",
                           "moat_port_proxy_requests_total{outcome=\"upstream_unreachable\"} 1",
                           "moat_port_proxy_connections 0"}) {
    EXPECT_TRUE(Contains(m, line)) << line << " in\n" << m;
  }
}

// Slot addresses are moatd's internal layout: no error a client can provoke names one, whatever
// the resolver or the connect said (they go to the log).
TEST_F(PortProxyErrors, NeverNameAnInternalAddress) {
  uint16_t refused = 0;
  auto resolve = [&refused](const std::string& id, uint16_t port) -> Result<SandboxEndpoint> {
    if (id == "nonet") return FailedPrecondition("slot 10.200.0.4/30 of nonet has no tap");
    if (id == "broken") return Internal("slot 10.200.0.8: netns /run/netns/moat-7 is gone");
    if (id == "notipv4") return SandboxEndpoint{"fd00::10:200:0:6", port};
    if (id == "blackhole") return SandboxEndpoint{"192.0.2.1", 9};  // TEST-NET-1: no answer
    auto r = Resolve(id, port);
    if (r.ok()) refused = r->port;
    return r;
  };
  PortProxyOptions fast;
  fast.connect_timeout = std::chrono::milliseconds(200);
  std::vector<std::pair<std::string, http::RecordingWriter>> answers;
  for (const char* id : {"known", "nonet", "broken", "notipv4", "blackhole", "missing"}) {
    answers.emplace_back(id, Serve(id, 8080, resolve, fast));
  }
  ASSERT_NE(refused, 0);
  for (const auto& [id, w] : answers) {
    EXPECT_GE(w.status(), 400) << id;
    EXPECT_TRUE(Contains(w.body(), id)) << "names the sandbox: " << w.body();
    for (const std::string& internal :
         {std::string("127.0.0.1"), std::string("10.200."), std::string("192.0.2.1"),
          std::string("fd00:"), std::string("netns"), ":" + std::to_string(refused)}) {
      EXPECT_FALSE(Contains(w.body(), internal)) << id << ": " << internal << " in " << w.body();
    }
  }
  EXPECT_TRUE(Contains(answers[0].second.body(), "port 8080 of sandbox known is not reachable"))
      << answers[0].second.body();
  EXPECT_TRUE(Contains(answers[1].second.body(), "has no network"));
}

// A writer whose connection the proxy can take over: the relay's end of a socket pair.
class HijackableWriter : public http::RecordingWriter {
 public:
  explicit HijackableWriter(int fd) : fd_(fd) {}
  Result<http::HijackedConnection> Hijack() override { return http::HijackedConnection{fd_, ""}; }

 private:
  int fd_;
};

// POST /execute to the interpreter's port is recorded in the history from what the client gets:
// the code, then the stream's stdout and error (a fake interpreter on loopback, real SQLite).
TEST(PortProxyHistory, RecordsACodeInterpreterRunAsACodeCommand) {
  auto dir = MakeTempDir("/tmp", "moat-port-proxy-test.");
  ASSERT_TRUE(dir.ok());
  auto store = store::SqliteStore::Open(*dir + "/moat.db");
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  HistoryLog history(store->get(), true);

  std::string request_seen;
  test_support::LoopbackServer interpreter([&request_seen](test_support::Conn& c) {
    std::string head = c.ReadUntil("\r\n\r\n");
    auto parsed = test_support::ParseHead(head);
    std::string body;
    c.ReadN(std::stoul(parsed.Header("content-length")), &body);
    request_seen = head + body;
    // The stream in pieces, as the interpreter flushes it: a chunk a line.
    test_support::SendAll(c.fd.get(),
                          "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                          "Transfer-Encoding: chunked\r\n\r\n");
    for (std::string line : {
             R"({"type": "number_of_executions", "execution_count": 1})",
             R"({"type": "stdout", "text": "42\n"})",
             R"({"type": "error", "name": "ZeroDivisionError", "value": "division by zero"})",
             R"({"type": "end_of_execution"})",
         }) {
      line += "\n";
      char size[16];
      std::snprintf(size, sizeof size, "%zx\r\n", line.size());
      test_support::SendAll(c.fd.get(), size + line + "\r\n");
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    test_support::SendAll(c.fd.get(), "0\r\n\r\n");
  });
  Metrics metrics;
  uint16_t upstream_port = interpreter.port();
  PortProxy proxy(
      {},
      [upstream_port](const std::string&, uint16_t) -> Result<SandboxEndpoint> {
        return SandboxEndpoint{"127.0.0.1", upstream_port, "", "", "team-1"};
      },
      metrics, &history);

  SocketPair client;
  HijackableWriter w(client.theirs.get());
  Request req;
  req.method = "POST";
  req.path = "/execute";
  req.headers["Host"] = "49999-sbx1.moat.test";
  req.body = R"j({"code": "print(6*7)\n1/0", "language": "python"})j";
  int status = proxy.Serve(req, "sbx1", kCodeInterpreterPort, w);
  EXPECT_EQ(status, 200);
  EXPECT_TRUE(Contains(request_seen, "print(6*7)")) << request_seen;
  ::shutdown(client.theirs.get(), SHUT_WR);
  EXPECT_TRUE(Contains(ReadToEof(client.ours.get()), "end_of_execution"));

  auto commands = (*store)->ListCommands("sbx1", 0, 10);
  ASSERT_TRUE(commands.ok()) << commands.status().ToString();
  ASSERT_EQ(commands->size(), 1u);
  const store::CommandRecord& c = commands->front();
  EXPECT_EQ(c.kind, "code");
  EXPECT_EQ(c.command, "print(6*7)\n1/0");
  EXPECT_EQ(c.team_id, "team-1");
  EXPECT_EQ(c.stdout_head, "42\n");
  EXPECT_EQ(c.error, "ZeroDivisionError: division by zero");
  EXPECT_EQ(c.exit_code, 1);
  EXPECT_GT(c.ended_at_ms, 0);

  // Another port, or another route, is not a code run.
  req.path = "/contexts";
  SocketPair other;
  HijackableWriter w2(other.theirs.get());
  proxy.Serve(req, "sbx1", kCodeInterpreterPort, w2);
  EXPECT_EQ((*store)->ListCommands("sbx1", 0, 10)->size(), 1u);

  store->reset();
  EXPECT_TRUE(RemoveTree(*dir).ok());
}

}  // namespace
}  // namespace moat::api
