#include "api/http/router.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <set>

#include "api/api_server.h"
#include "api/http/server.h"
#include "api/openapi.h"
#include "api/sandbox_actions.h"
#include "host/envd/envd_call.h"
#include "host/local_data_plane.h"

namespace moat::api {
namespace {

using http::Request;
using http::Router;

http::Handler Named(std::string* out, std::string name) {
  return [out, name](Request&, http::ResponseWriter&) { *out = name; };
}

TEST(Router, MatchesParametersAndPrefersLiteralSegments) {
  Router r;
  std::string hit;
  r.Add("GET", "/sandboxes/{sandboxID}", Named(&hit, "get"));
  r.Add("POST", "/sandboxes/{sandboxID}/timeout", Named(&hit, "timeout"));
  r.Add("GET", "/sandboxes/special", Named(&hit, "special"));
  auto m = r.Find("GET", "/sandboxes/abc%20d");
  ASSERT_NE(m.route, nullptr);
  EXPECT_EQ(m.params["sandboxID"], "abc d");
  EXPECT_EQ(r.Find("GET", "/sandboxes/special").route->pattern, "/sandboxes/special");
  EXPECT_EQ(r.Find("POST", "/sandboxes/x/timeout").params["sandboxID"], "x");
  auto wrong_method = r.Find("DELETE", "/sandboxes/x");
  EXPECT_EQ(wrong_method.route, nullptr);
  EXPECT_TRUE(wrong_method.path_known);
  EXPECT_FALSE(r.Find("GET", "/sandboxes/").path_known) << "an empty segment is no parameter";
  EXPECT_FALSE(r.Find("GET", "/other").path_known);
}

TEST(EnvdRouting, ByHeaderOrByHostName) {
  Request by_header;
  by_header.headers["e2b-sandbox-id"] = "abc123";
  by_header.headers["E2b-Sandbox-Port"] = "49983";
  auto t = routes::EnvdTargetOf(by_header);
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->sandbox_id, "abc123");
  EXPECT_EQ(t->port, 49983);

  Request by_host;
  by_host.headers["Host"] = "49983-k3v9q2m8x7c1b5n4z6p0.moat.local:3000";
  t = routes::EnvdTargetOf(by_host);
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->sandbox_id, "k3v9q2m8x7c1b5n4z6p0");

  Request control;
  control.headers["Host"] = "127.0.0.1:3000";
  EXPECT_FALSE(routes::EnvdTargetOf(control).has_value());
  control.headers["Host"] = "api.example.com";
  EXPECT_FALSE(routes::EnvdTargetOf(control).has_value());
  control.headers["Host"] = "8080-UPPER.example.com";
  EXPECT_FALSE(routes::EnvdTargetOf(control).has_value());
}

TEST(EnvdRouting, BasicAuthNamesTheUser) {
  Request r;
  EXPECT_EQ(*routes::BasicAuthUser(r), "");
  r.headers["Authorization"] = "Basic cm9vdDo=";  // "root:"
  EXPECT_EQ(*routes::BasicAuthUser(r), "root");
  r.headers["Authorization"] = "Bearer x";
  EXPECT_FALSE(routes::BasicAuthUser(r).ok());
}

TEST(ControlRequests, CreateBodyDefaultsAndErrorsNameTheProblem) {
  auto a = ParseCreateSandbox("", 300);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->template_id, "base");
  EXPECT_EQ(a->timeout_s, 300);
  a = ParseCreateSandbox(
      R"({"templateID":"t","timeout":120,"metadata":{"k":"v"},"envVars":{"A":"1"}})", 15);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->timeout_s, 120);
  EXPECT_EQ(a->metadata.at("k"), "v");
  auto bad = ParseCreateSandbox("{bad", 300);
  EXPECT_EQ(bad.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("malformed JSON"), std::string::npos);
  EXPECT_NE(ParseCreateSandbox(R"({"timeout":0})", 300).status().message().find("timeout"),
            std::string::npos);
  EXPECT_NE(ParseCreateSandbox(R"({"metadata":{"k":1}})", 300).status().message().find("metadata"),
            std::string::npos);
  EXPECT_FALSE(ParseCreateSandbox("[]", 300).ok());
  EXPECT_TRUE(ParseCreateSandbox("{}", 300)->allow_public_traffic);
  EXPECT_FALSE(
      ParseCreateSandbox(R"({"network":{"allowPublicTraffic":false}})", 300)->allow_public_traffic);
  EXPECT_NE(ParseCreateSandbox(R"({"network":{"allowPublicTraffic":"no"}})", 300)
                .status()
                .message()
                .find("allowPublicTraffic"),
            std::string::npos);
  EXPECT_FALSE(ParseSeconds("{}", "timeout", std::nullopt).ok()) << "required";
  EXPECT_EQ(*ParseSeconds("{}", "duration", 60), 60);
}

TEST(ControlRequests, LifecycleAndProxyOptionsOfACreateAndAPause) {
  auto a = ParseCreateSandbox("{}", 300);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->options, store::SandboxOptions{});
  a = ParseCreateSandbox(R"({"autoPause":true,"autoResume":{"enabled":true},)"
                         R"("network":{"maskRequestHost":"custom-host.example.com:${PORT}"}})",
                         300);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_TRUE(a->options.auto_resume);
  EXPECT_TRUE(a->options.auto_pause_memory);
  EXPECT_EQ(a->options.mask_request_host, "custom-host.example.com:${PORT}");
  EXPECT_EQ(MaskedHost(a->options.mask_request_host, 8080), "custom-host.example.com:8080");
  a = ParseCreateSandbox(R"({"autoPause":true,"autoPauseMemory":false})", 300);
  ASSERT_TRUE(a.ok());
  EXPECT_FALSE(a->options.auto_pause_memory);
  // What E2B's client refuses, moatd refuses too.
  for (const char* bad :
       {R"({"autoResume":{"enabled":true}})",
        R"({"autoPause":true,"autoPauseMemory":false,"autoResume":{"enabled":true}})",
        R"({"autoPause":true,"autoResume":{"on":true}})",
        R"({"network":{"maskRequestHost":"a b"}})"}) {
    EXPECT_EQ(ParseCreateSandbox(bad, 300).status().code(), ErrorCode::kInvalidArgument) << bad;
  }
  // Stored as JSON; what a newer moatd may add is ignored.
  auto round = store::SandboxOptionsFromJson(store::SandboxOptionsToJson(a->options));
  EXPECT_EQ(round, a->options);
  EXPECT_EQ(store::SandboxOptionsToJson(store::SandboxOptions{}), "{}");
  EXPECT_EQ(store::SandboxOptionsFromJson(R"({"autoResume":true,"future":1})").auto_resume, true);
  EXPECT_EQ(store::SandboxOptionsFromJson("not json"), store::SandboxOptions{});

  EXPECT_TRUE(*ParsePauseKeepsMemory(""));
  EXPECT_FALSE(*ParsePauseKeepsMemory(R"({"memory":false})"));
  EXPECT_FALSE(ParsePauseKeepsMemory(R"({"memory":"no"})").ok());
}

TEST(ControlRequests, ListQueryStatesOrderLimitAndMetadata) {
  auto f = ParseListQuery(
      codec::ParseQuery("state=running%2Cpaused&order=asc&limit=5&metadata=a%3D1"), true);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  // Each wire state stands for the lifecycle states clients see as it (api/lifecycle.h).
  std::vector<SandboxState> both = StatesShownAs("running");
  for (SandboxState s : StatesShownAs("paused")) both.push_back(s);
  EXPECT_EQ(f->states, both);
  EXPECT_TRUE(f->ascending);
  EXPECT_EQ(f->limit, 5);
  EXPECT_EQ(f->metadata.at("a"), "1");
  EXPECT_FALSE(ParseListQuery(codec::ParseQuery("state=dead"), true).ok());
  EXPECT_FALSE(ParseListQuery(codec::ParseQuery("limit=101"), true).ok());
  auto old = ParseListQuery(codec::ParseQuery(""), false);
  EXPECT_EQ(old->states, StatesShownAs("running"));
}

TEST(ControlRequests, MetricsRange) {
  auto r = ParseMetricsQuery(codec::ParseQuery("start=10&end=20"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r->start_s, 10);
  EXPECT_EQ(*r->end_s, 20);
  r = ParseMetricsQuery(codec::ParseQuery(""));
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->start_s || r->end_s);
  EXPECT_NE(ParseMetricsQuery(codec::ParseQuery("start=abc")).status().message().find("start"),
            std::string::npos);
  EXPECT_FALSE(ParseMetricsQuery(codec::ParseQuery("end=-1")).ok());
  EXPECT_FALSE(ParseMetricsQuery(codec::ParseQuery("end=99999999999999999999")).ok());
  EXPECT_EQ(ParseMetricsQuery(codec::ParseQuery("start=20&end=10")).status().code(),
            ErrorCode::kInvalidArgument);
}

TEST(ControlRequests, SnapshotNamesAndListQueries) {
  EXPECT_EQ(ParseCreateSnapshot("")->name, "") << "unnamed";
  EXPECT_EQ(ParseCreateSnapshot("{}")->name, "");
  EXPECT_EQ(ParseCreateSnapshot(R"({"name":"team/my-snap:v2"})")->name, "team/my-snap:v2");
  EXPECT_NE(ParseCreateSnapshot(R"({"name":"a b"})").status().message().find("\"name\""),
            std::string::npos);
  EXPECT_FALSE(ParseCreateSnapshot(R"({"name":""})").ok());
  EXPECT_FALSE(ParseCreateSnapshot(R"({"name":"base"})").ok()) << "base is the built-in template";
  EXPECT_FALSE(ParseCreateSnapshot(R"({"name":1})").ok());
  EXPECT_FALSE(
      ParseCreateSnapshot(std::string(R"({"name":")") + std::string(129, 'a') + "\"}").ok());
  auto f = ParseSnapshotListQuery(codec::ParseQuery("sandboxID=abc&name=n&limit=3&nextToken=5.x"));
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->sandbox_id, "abc");
  EXPECT_EQ(f->name, "n");
  EXPECT_EQ(f->limit, 3);
  EXPECT_EQ(f->next_token, "5.x");
  EXPECT_EQ(ParseSnapshotListQuery(codec::ParseQuery(""))->limit, 100);
  EXPECT_NE(ParseSnapshotListQuery(codec::ParseQuery("limit=0")).status().message().find("limit"),
            std::string::npos);
}

// Every REST route moatd registers is in api/openapi.json, and every operation there is a
// registered route.
TEST(OpenApi, DescribesExactlyTheRegisteredControlRoutes) {
  Router control, envd;
  // Handlers are never called here, so the contexts need no live objects.
  routes::ControlContext cc{nullptr, nullptr, nullptr, kEnvdVersion};
  routes::EnvdContext ec{nullptr, nullptr};
  RegisterAllRoutes(control, envd, cc, ec);
  std::set<std::string> registered;
  for (const auto& r : control.routes()) registered.insert(r.method + " " + r.pattern);
  auto doc = nlohmann::json::parse(OpenApiDocument());
  std::set<std::string> documented;
  for (const auto& [path, ops] : doc.at("paths").items()) {
    for (const auto& [method, op] : ops.items()) {
      std::string m = method;
      for (auto& c : m) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      documented.insert(m + " " + path);
    }
  }
  EXPECT_EQ(registered, documented);
  EXPECT_FALSE(envd.routes().empty());
}

}  // namespace
}  // namespace moat::api

namespace moat::api::http {
namespace {

TEST(ClientOf, CountsIpv4ByAddressAndIpv6ByItsSlash64) {
  EXPECT_EQ(ClientOf("10.0.0.1:5000"), "10.0.0.1");
  EXPECT_EQ(ClientOf("2001:db8:1:2:a:b:c:d:5000"), "2001:db8:1:2::/64");
  // Every address of one /64 is one client.
  EXPECT_EQ(ClientOf("2001:db8:1:2:ffff:0:0:1:443"), ClientOf("2001:db8:1:2::9:80"));
  EXPECT_NE(ClientOf("2001:db8:1:3::1:80"), ClientOf("2001:db8:1:2::1:80"));
  EXPECT_EQ(ClientOf("::1:8080"), "::/64");
  EXPECT_EQ(ClientOf("::ffff:192.0.2.7:1234"), "192.0.2.7");
  EXPECT_EQ(ClientOf("?"), "?");
}

}  // namespace
}  // namespace moat::api::http
