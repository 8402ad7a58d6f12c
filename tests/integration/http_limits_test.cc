// moatd's HTTP limits on loopback (docs/security.md, "HTTP limits"): a real ApiServer (its agent
// has no sandboxes, and no VM is booted) with small limits, and raw-socket clients that trickle,
// hold connections, and announce bodies they never send. Plus a bare HttpServer whose handler
// reads a streamed body, to see that a large upload does not sit in moatd's memory.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>
#include <fstream>
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

namespace moat::api {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using std::chrono::steady_clock;
using test_support::Conn;
using test_support::Dial;
using test_support::ReadReply;
using test_support::Reply;
using test_support::SendAll;

constexpr const char* kKey = "moat_0123456789abcdef0123456789abcdef01234567";

// A connection whose every read gives up after `t` (so that a test fails rather than hangs).
Conn DialWithin(uint16_t port, seconds t) {
  Conn c = Dial(port);
  test_support::SetSocketTimeouts(c.fd.get(), t);
  return c;
}

double SecondsSince(steady_clock::time_point t) {
  return std::chrono::duration<double>(steady_clock::now() - t).count();
}

class HttpLimitsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/moat-http-limits-XXXXXX";
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
    ASSERT_TRUE(BootstrapApiKey(*store_, dir_, std::string(kKey)).ok());
    host_ = std::make_unique<host::InProcessHostAgent>("local", *agent_);
    auto controller = SandboxController::Start(*host_, *store_, metrics_, {});
    ASSERT_TRUE(controller.ok()) << controller.status().ToString();
    controller_ = std::move(*controller);
  }

  void TearDown() override {
    server_.reset();
    controller_.reset();
    agent_.reset();
    store_.reset();
    (void)RemoveTree(dir_);
  }

  void Start(http::ServerOptions options) {
    server_.reset();
    options.host = "127.0.0.1";
    options.port = 0;
    auto server = StartWithLocalDataPlane(options, *controller_, *store_, metrics_,
                                          host::GuestLookupOf(*agent_));
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(*server);
    port_ = server_->port();
  }

  // Connections that have sent part of a request head and trickle the rest: each holds a slot
  // for as long as the server lets it.
  std::vector<Conn> TrickleHeads(size_t n) {
    std::vector<Conn> conns;
    for (size_t i = 0; i < n; ++i) {
      conns.push_back(DialWithin(port_, seconds(30)));
      EXPECT_TRUE(SendAll(conns.back().fd.get(), "GET /sandboxes HTTP/1.1\r\nHost: x\r\n"));
    }
    std::this_thread::sleep_for(milliseconds(300));  // the server has read every one of them
    return conns;
  }

  Reply Get(const std::string& path, bool with_key) {
    Conn c = DialWithin(port_, seconds(10));
    std::string req = "GET " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n";
    if (with_key) req += std::string("X-API-Key: ") + kKey + "\r\n";
    if (!SendAll(c.fd.get(), req + "\r\n")) return {};
    return ReadReply(c);
  }

  std::string dir_;
  Metrics metrics_;
  std::unique_ptr<agent::Agent> agent_;
  std::unique_ptr<host::InProcessHostAgent> host_;
  std::unique_ptr<store::SqliteStore> store_;
  std::unique_ptr<SandboxController> controller_;
  std::unique_ptr<ApiServer> server_;
  uint16_t port_ = 0;
};

TEST_F(HttpLimitsTest, ABodyIsNotReadBeforeItsRequestIsAuthenticated) {
  Start({});
  // 200 MB announced, none sent: the answer must not wait for any of it.
  auto started = steady_clock::now();
  Conn c = DialWithin(port_, seconds(5));
  ASSERT_TRUE(SendAll(c.fd.get(),
                      "POST /sandboxes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      "Content-Length: 200000000\r\n\r\n"));
  Reply r = ReadReply(c);
  EXPECT_EQ(r.status, 401) << r.body;
  EXPECT_LT(SecondsSince(started), 3.0);

  // The same for a wrong key, and for envd's upload to a sandbox that does not run.
  Conn wrong = DialWithin(port_, seconds(5));
  ASSERT_TRUE(SendAll(wrong.fd.get(),
                      "POST /sandboxes HTTP/1.1\r\nHost: x\r\nX-API-Key: moat_nope\r\n"
                      "Content-Length: 200000000\r\n\r\n"));
  EXPECT_EQ(ReadReply(wrong).status, 401);
  Conn envd = DialWithin(port_, seconds(5));
  ASSERT_TRUE(
      SendAll(envd.fd.get(),
              "POST /files?path=/tmp/x HTTP/1.1\r\nHost: x\r\n"
              "E2b-Sandbox-Id: nosuchsandbox0000001\r\nX-Access-Token: t\r\n"
              "Content-Type: application/octet-stream\r\nContent-Length: 200000000\r\n\r\n"));
  EXPECT_EQ(ReadReply(envd).status, 502);
}

TEST_F(HttpLimitsTest, ControlJsonBodiesPastOneMebibyteAreRefusedAt413) {
  Start({});
  Conn c = DialWithin(port_, seconds(5));
  ASSERT_TRUE(
      SendAll(c.fd.get(), std::string("POST /sandboxes HTTP/1.1\r\nHost: x\r\nX-API-Key: ") + kKey +
                              "\r\nContent-Length: 2000000\r\n\r\n"));
  Reply r = ReadReply(c);
  EXPECT_EQ(r.status, 413) << r.body;
}

TEST_F(HttpLimitsTest, AHeadThatTricklesIsCutOffAtTheHeaderDeadline) {
  http::ServerOptions o;
  o.header_timeout = milliseconds(1000);
  Start(o);
  auto started = steady_clock::now();
  Conn c = DialWithin(port_, seconds(10));
  ASSERT_TRUE(SendAll(c.fd.get(), "GET /healthz HTTP/1.1\r\n"));
  // A header line every 200 ms: never idle for long, but never done either.
  std::atomic<bool> stop = false;
  std::thread trickle([&] {
    for (int i = 0; i < 40 && !stop; ++i) {
      std::this_thread::sleep_for(milliseconds(200));
      if (!SendAll(c.fd.get(), "X-Slow: 1\r\n")) return;
    }
  });
  Reply r = ReadReply(c);
  double took = SecondsSince(started);
  stop = true;
  trickle.join();
  EXPECT_EQ(r.status, 408);
  EXPECT_LT(took, 4.0);
}

TEST_F(HttpLimitsTest, ABodyBelowTheMinimumRateIsCutOff) {
  http::ServerOptions o;
  o.body_grace = milliseconds(1000);
  o.body_min_rate = 1024 * 1024;
  Start(o);
  auto started = steady_clock::now();
  Conn c = DialWithin(port_, seconds(10));
  ASSERT_TRUE(
      SendAll(c.fd.get(), std::string("POST /sandboxes HTTP/1.1\r\nHost: x\r\nX-API-Key: ") + kKey +
                              "\r\nContent-Length: 1000\r\n\r\n"));
  std::atomic<bool> stop = false;
  std::thread trickle([&] {
    for (int i = 0; i < 50 && !stop; ++i) {
      std::this_thread::sleep_for(milliseconds(100));
      if (!SendAll(c.fd.get(), "x")) return;
    }
  });
  Reply r = ReadReply(c);
  double took = SecondsSince(started);
  stop = true;
  trickle.join();
  EXPECT_EQ(r.status, 408) << r.body;
  EXPECT_LT(took, 4.0);
}

TEST_F(HttpLimitsTest, TricklingConnectionsCannotStarveAnAuthenticatedClient) {
  http::ServerOptions o;
  o.max_connections = 16;
  o.reserved_connections = 4;
  o.max_connections_per_client = 64;  // all of this test is one address: see the next test
  o.header_timeout = seconds(20);
  o.probation_header_timeout = seconds(20);
  Start(o);
  // More tricklers than there are slots.
  auto tricklers = TrickleHeads(20);
  Reply authed = Get("/sandboxes", true);
  EXPECT_EQ(authed.status, 200) << authed.body;
  Reply anonymous = Get("/healthz", false);
  EXPECT_EQ(anonymous.status, 503) << anonymous.body;
  // Still served again and again, while the tricklers hold on.
  for (int i = 0; i < 5; ++i) {
    Reply again = Get("/sandboxes", true);
    EXPECT_EQ(again.status, 200) << again.body;
  }
}

TEST_F(HttpLimitsTest, OneAddressHoldsNoMoreThanItsShareOfUnauthenticatedConnections) {
  http::ServerOptions o;
  o.max_connections = 64;
  o.reserved_connections = 4;
  o.max_connections_per_client = 4;
  o.header_timeout = seconds(20);
  Start(o);
  auto tricklers = TrickleHeads(4);
  Reply anonymous = Get("/healthz", false);
  EXPECT_EQ(anonymous.status, 503) << anonymous.body;
  EXPECT_EQ(Get("/sandboxes", true).status, 200) << "authenticated requests still get through";
  tricklers.clear();
  std::this_thread::sleep_for(milliseconds(300));
  EXPECT_EQ(Get("/healthz", false).status, 200) << "a share frees as its connections close";
}

TEST_F(HttpLimitsTest, WhenFullTheLongestIdleKeepAliveConnectionIsClosedFirst) {
  http::ServerOptions o;
  o.max_connections = 4;
  o.reserved_connections = 1;
  o.max_connections_per_client = 64;
  Start(o);
  std::vector<Conn> idle;
  for (int i = 0; i < 4; ++i) {
    idle.push_back(DialWithin(port_, seconds(5)));
    ASSERT_TRUE(SendAll(idle.back().fd.get(), "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
    ASSERT_EQ(ReadReply(idle.back()).status, 200);
    std::this_thread::sleep_for(milliseconds(50));
  }
  EXPECT_EQ(Get("/healthz", false).status, 200) << "a new client is served";
  // The first connection (idle longest) was closed; the last one still serves.
  EXPECT_EQ(idle[0].ReadToEof(), "");
  ASSERT_TRUE(SendAll(idle[3].fd.get(), "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_EQ(ReadReply(idle[3]).status, 200);
}

// A bare server whose handler counts a streamed body: what a large upload costs moatd.
TEST(HttpServerBodies, AStreamedUploadIsNotHeldInMemory) {
  std::atomic<size_t> counted = 0;
  auto server = http::HttpServer::Start(
      {},
      [&](http::Request& req, http::ResponseWriter& w) {
        char buf[65536];
        size_t total = 0;
        for (;;) {
          auto n = req.body_stream->Read(buf, sizeof buf);
          if (!n.ok()) {
            (void)w.Send(http::BodyErrorHttpStatus(n.status()), {}, n.status().ToString());
            return;
          }
          if (*n == 0) break;
          total += *n;
        }
        counted = total;
        (void)w.Send(200, {}, std::to_string(total));
      },
      [](const Status& s, int code, http::ResponseWriter& w) {
        (void)w.Send(code, {}, s.ToString());
      },
      [](http::Request&, bool, http::ResponseWriter&) {
        http::Admission a;
        a.body = http::Admission::Body::kStream;
        a.body_limit = 200u << 20;
        return a;
      });
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  uint16_t port = (*server)->port();

  auto rss_kb = [] {
    std::ifstream in("/proc/self/status");
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("VmRSS:", 0) == 0) return std::strtol(line.c_str() + 6, nullptr, 10);
    }
    return 0L;
  };
  long baseline = rss_kb();
  std::atomic<long> peak = baseline;
  std::atomic<bool> done = false;
  std::thread sampler([&] {
    while (!done) {
      long now = rss_kb();
      if (now > peak) peak = now;
      std::this_thread::sleep_for(milliseconds(5));
    }
  });

  constexpr size_t kUpload = 128u << 20;
  Conn c = DialWithin(port, seconds(30));
  ASSERT_TRUE(SendAll(c.fd.get(),
                      "POST /upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                      "Content-Length: " +
                          std::to_string(kUpload) + "\r\n\r\n"));
  EXPECT_EQ(c.ReadUntil("\r\n\r\n"), "HTTP/1.1 100 Continue\r\n\r\n");
  std::string piece(1u << 20, 'u');
  for (size_t sent = 0; sent < kUpload; sent += piece.size()) {
    ASSERT_TRUE(SendAll(c.fd.get(), piece));
  }
  Reply r = ReadReply(c);
  done = true;
  sampler.join();
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(counted.load(), kUpload);
  EXPECT_LT(peak - baseline, 32 * 1024) << "KiB of RSS growth for a 128 MiB upload";

  // Past the limit, a chunked body is cut off with 413.
  Conn big = DialWithin(port, seconds(30));
  ASSERT_TRUE(SendAll(big.fd.get(),
                      "POST /upload HTTP/1.1\r\nHost: x\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n"));
  std::string chunk = "100000\r\n" + std::string(1u << 20, 'c') + "\r\n";
  for (int i = 0; i < 201; ++i) {
    if (!SendAll(big.fd.get(), chunk)) break;  // the server may close once it answered
  }
  EXPECT_EQ(ReadReply(big).status, 413);
}

}  // namespace
}  // namespace moat::api
