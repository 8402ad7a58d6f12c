// The HTTP server's last line of defence (docs/errors.md): an exception escaping a handler — a
// bug — fails that one request with 500 (or closes its connection once the response began) and
// the server goes on serving everyone else.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <stdexcept>

#include "api/http/server.h"
#include "common/guarded.h"
#include "support/raw_http.h"

namespace moat::api {
namespace {

using test_support::Exchange;

TEST(HttpServerGuard, AnExceptionInAHandlerIsA500AndTheServerServesOn) {
  auto server = http::HttpServer::Start(
      {},
      [](http::Request& req, http::ResponseWriter& w) {
        if (req.path == "/boom") throw std::runtime_error("a handler bug");
        if (req.path == "/json") {
          // What nlohmann does on a wrong type: the crash of finding 1, in miniature.
          nlohmann::json j = {{"pid", "x"}};
          (void)w.Send(200, {}, std::to_string(j["pid"].get<int>()));
          return;
        }
        if (req.path == "/midway") {
          (void)w.BeginStream(200, {});
          (void)w.WriteChunk("partial");
          throw std::logic_error("after the head");
        }
        (void)w.Send(200, {}, "ok");
      },
      [](const Status& s, int code, http::ResponseWriter& w) {
        (void)w.Send(code, {}, s.message());
      });
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  uint16_t port = (*server)->port();
  uint64_t before = CaughtExceptions();
  auto get = [&](const std::string& path) {
    return Exchange(port, "GET " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  };
  auto boom = get("/boom");
  EXPECT_EQ(boom.status, 500);
  EXPECT_NE(boom.body.find("a handler bug"), std::string::npos) << boom.body;
  EXPECT_EQ(get("/json").status, 500);
  // Once the head went out, the connection is closed: the client sees a truncated body.
  auto midway = get("/midway");
  EXPECT_EQ(midway.status, 200);
  EXPECT_EQ(CaughtExceptions(), before + 3);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(get("/ok").status, 200);
}

}  // namespace
}  // namespace moat::api
