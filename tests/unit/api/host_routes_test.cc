// The fleet's admin routes (GET /hosts, POST /hosts/{hostID}/drain|undrain) and the host a
// sandbox's JSON names, driven as the server drives them over a real SQLite store and a
// controller whose one host is a fake (no VMs). Hosts are registered in the store directly, as a
// fleet's agents would.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <thread>

#include "api/api_server.h"
#include "api/auth.h"
#include "api/codec/protojson.h"
#include "api/sandbox_controller.h"
#include "api/store/sqlite_store.h"
#include "common/fs.h"
#include "host/local_data_plane.h"
#include "support/fake_host_agent.h"

namespace moat::api {
namespace {

using nlohmann::json;

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

store::HostRegistration Host(const std::string& id, int64_t vcpus, int64_t mem_mb) {
  return {.id = id,
          .endpoint = "10.0.0.7:7070",
          .vcpu_total = vcpus,
          .mem_total_mb = mem_mb,
          .accel = "kvm",
          .cpu_model = "test",
          .qemu_build = "test",
          .labels = {}};
}

class HostRoutesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = MakeTempDir("/tmp", "moat-host-routes.");
    ASSERT_TRUE(d.ok());
    dir_ = *d;
    auto s = store::SqliteStore::Open(dir_ + "/moat.db");
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(*s);
    ASSERT_TRUE(BootstrapApiKey(*store_, dir_, std::string(kAdminKey)).ok());
    // The reaper never runs on its own here: nothing is reaped behind a test's back.
    auto controller = SandboxController::Start(host_, *store_, metrics_,
                                               {.reap_interval = std::chrono::hours(1)});
    ASSERT_TRUE(controller.ok()) << controller.status().ToString();
    controller_ = std::move(*controller);
    cc_ = routes::ControlContext{controller_.get(), store_.get(), &metrics_, kEnvdVersion};
    RegisterAllRoutes(control_, envd_, cc_, ec_);
    auto acme = Call("POST", "/keys", kAdminKey, R"({"name":"first","team":"acme"})");
    ASSERT_EQ(acme.status(), 201) << acme.body();
    acme_key_ = json::parse(acme.body())["key"];
  }
  void TearDown() override {
    controller_.reset();
    store_.reset();
    EXPECT_TRUE(RemoveTree(dir_).ok());
  }

  http::RecordingWriter Call(const std::string& method, const std::string& path,
                             const std::string& key, const std::string& body = "") {
    http::Request req;
    req.method = method;
    size_t q = path.find('?');
    req.path = path.substr(0, q);
    if (q != std::string::npos) req.raw_query = path.substr(q + 1);
    if (!key.empty()) req.headers["X-API-KEY"] = key;
    req.body = body;
    http::RecordingWriter w;
    auto match = control_.Find(req.method, req.path);
    EXPECT_NE(match.route, nullptr) << method << " " << path;
    if (match.route == nullptr) return w;
    req.params = match.params;
    match.route->handler(req, w);
    return w;
  }
  json CallJson(const std::string& method, const std::string& path, int want_status) {
    auto r = Call(method, path, kAdminKey);
    EXPECT_EQ(r.status(), want_status) << method << " " << path << ": " << r.body();
    json j = json::parse(r.body(), nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(j.is_discarded()) << r.body();
    return j;
  }
  // A sandbox made through the API, by the admin team: on the fake host "h1".
  std::string CreateSandbox() {
    auto r = Call("POST", "/v2/sandboxes", kAdminKey, R"({"templateID":"base"})");
    EXPECT_EQ(r.status(), 201) << r.body();
    return json::parse(r.body()).value("sandboxID", "");
  }

  static constexpr const char* kAdminKey = "moat_host_routes_admin";
  std::string dir_;
  Metrics metrics_;
  test_support::FakeHostAgent host_{"h1"};
  std::unique_ptr<store::SqliteStore> store_;
  std::unique_ptr<SandboxController> controller_;
  routes::ControlContext cc_{};
  routes::EnvdContext ec_{nullptr, nullptr};
  http::Router control_, envd_;
  std::string acme_key_;
};

TEST_F(HostRoutesTest, AreForAdminKeysOnly) {
  ASSERT_TRUE(store_->RegisterHost(Host("h1", 8, 16384)).ok());
  for (const auto& [method, path] :
       {std::pair{"GET", "/hosts"}, {"POST", "/hosts/h1/drain"}, {"POST", "/hosts/h1/undrain"}}) {
    EXPECT_EQ(Call(method, path, "").status(), 401) << method << " " << path;
    EXPECT_EQ(Call(method, path, "moat_not_a_key").status(), 401) << method << " " << path;
    auto r = Call(method, path, acme_key_);
    EXPECT_EQ(r.status(), 403) << method << " " << path;
    EXPECT_TRUE(Contains(r.body(), "only an admin key")) << r.body();
  }
  EXPECT_EQ((*store_->GetHost("h1"))->state, store::HostState::kActive)
      << "a refused drain changes nothing";
  EXPECT_EQ(Call("GET", "/hosts", kAdminKey).status(), 200);
}

TEST_F(HostRoutesTest, ListIsEmptyWithoutRegisteredHostsAsOnServe) {
  CreateSandbox();  // the single host places it, and never registers
  EXPECT_EQ(CallJson("GET", "/hosts", 200), json::array());
}

TEST_F(HostRoutesTest, ListsEachHostWithItsCapacityAndTheSandboxesHoldingResourcesThere) {
  ASSERT_TRUE(store_->RegisterHost(Host("h2", 4, 8192)).ok());
  ASSERT_TRUE(store_->RegisterHost(Host("h1", 8, 16384)).ok());
  ASSERT_TRUE(store_->ReserveOnHost("h1", 4, 1024, 1.0, 1.0)->has_value());
  std::string running = CreateSandbox(), paused = CreateSandbox();
  ASSERT_EQ(Call("POST", "/sandboxes/" + paused + "/pause", kAdminKey).status(), 204);

  json hosts = CallJson("GET", "/hosts", 200);
  ASSERT_TRUE(hosts.is_array());
  ASSERT_EQ(hosts.size(), 2u) << hosts.dump();
  const json& h1 = hosts[0];
  EXPECT_EQ(h1["hostID"], "h1") << "by id";
  EXPECT_EQ(h1["state"], "active");
  EXPECT_EQ(h1["endpoint"], "10.0.0.7:7070");
  EXPECT_EQ(h1["sandboxes"], 1) << "the paused one holds no resources: " << h1.dump();
  EXPECT_EQ(h1["vcpuTotal"], 8);
  EXPECT_EQ(h1["vcpuReserved"], 4);
  EXPECT_EQ(h1["memoryMBTotal"], 16384);
  EXPECT_EQ(h1["memoryMBReserved"], 1024);
  std::string beat = h1["lastHeartbeat"];
  EXPECT_EQ(beat, codec::Rfc3339((*store_->GetHost("h1"))->heartbeat_at_ms * 1000000));
  EXPECT_EQ(beat.back(), 'Z') << "UTC";
  EXPECT_TRUE(codec::ParseRfc3339(beat).ok()) << beat;
  EXPECT_EQ(hosts[1]["hostID"], "h2");
  EXPECT_EQ(hosts[1]["sandboxes"], 0);
  EXPECT_EQ(hosts[1]["vcpuReserved"], 0);
  EXPECT_EQ(h1.size(), 9u) << "exactly the documented fields: " << h1.dump();
}

TEST_F(HostRoutesTest, MetricsCarryEachHostsSandboxesCapacityStateAndHeartbeat) {
  ASSERT_TRUE(store_->RegisterHost(Host("h1", 8, 16384)).ok());
  ASSERT_TRUE(store_->RegisterHost(Host("h2", 4, 8192)).ok());
  ASSERT_TRUE(store_->ReserveOnHost("h1", 2, 1024, 1.0, 1.0)->has_value());
  ASSERT_TRUE(store_->SetHostDraining("h2", true).ok());
  std::string running = CreateSandbox(), paused = CreateSandbox();
  ASSERT_EQ(Call("POST", "/sandboxes/" + paused + "/pause", kAdminKey).status(), 204);

  auto r = Call("GET", "/metrics", kAdminKey);
  ASSERT_EQ(r.status(), 200) << r.body();
  const std::string& m = r.body();
  for (const char* line : {
           "moat_host_sandboxes{host=\"h1\",state=\"running\"} 1\n",
           "moat_host_sandboxes{host=\"h1\",state=\"paused\"} 1\n",
           "moat_host_sandboxes{host=\"h2\",state=\"running\"} 0\n",
           "moat_host_state{host=\"h1\",state=\"active\"} 1\n",
           "moat_host_state{host=\"h2\",state=\"draining\"} 1\n",
           "moat_host_state{host=\"h2\",state=\"active\"} 0\n",
           "moat_host_vcpus{host=\"h1\"} 8\n",
           "moat_host_vcpus_reserved{host=\"h1\"} 2\n",
           "moat_host_memory_bytes{host=\"h2\"} 8589934592\n",
           "moat_host_memory_reserved_bytes{host=\"h1\"} 1073741824\n",
           "# TYPE moat_host_last_heartbeat_timestamp_seconds gauge\n",
       }) {
    EXPECT_TRUE(Contains(m, line)) << "missing " << line << " in\n" << m;
  }
  char beat[64];
  std::snprintf(beat, sizeof beat, "moat_host_last_heartbeat_timestamp_seconds{host=\"h1\"} %.3f\n",
                static_cast<double>((*store_->GetHost("h1"))->heartbeat_at_ms) / 1000);
  EXPECT_TRUE(Contains(m, beat)) << beat << m;
}

TEST_F(HostRoutesTest, MetricsOnServeCountTheLocalHostsSandboxesWithoutCapacityGauges) {
  CreateSandbox();  // on the fake host "h1", which never registers (as serve's "local")
  auto r = Call("GET", "/metrics", kAdminKey);
  ASSERT_EQ(r.status(), 200) << r.body();
  EXPECT_TRUE(Contains(r.body(), "moat_host_sandboxes{host=\"h1\",state=\"running\"} 1\n"))
      << r.body();
  EXPECT_FALSE(Contains(r.body(), "moat_host_vcpus{")) << r.body();
  EXPECT_FALSE(Contains(r.body(), "moat_host_state{")) << r.body();
}

TEST_F(HostRoutesTest, DrainAndUndrainAnswerTheHostAfterTheChange) {
  ASSERT_TRUE(store_->RegisterHost(Host("h1", 8, 16384)).ok());
  json j = CallJson("POST", "/hosts/h1/drain", 200);
  EXPECT_EQ(j["hostID"], "h1");
  EXPECT_EQ(j["state"], "draining");
  EXPECT_EQ((*store_->GetHost("h1"))->state, store::HostState::kDraining);
  EXPECT_FALSE(store_->ReserveOnHost("h1", 1, 1, 1.0, 1.0)->has_value()) << "takes nothing new";
  EXPECT_EQ(CallJson("POST", "/hosts/h1/drain", 200)["state"], "draining") << "idempotent";
  EXPECT_EQ(CallJson("GET", "/hosts", 200)[0]["state"], "draining");

  j = CallJson("POST", "/hosts/h1/undrain", 200);
  EXPECT_EQ(j["state"], "active");
  EXPECT_EQ(CallJson("POST", "/hosts/h1/undrain", 200)["state"], "active") << "idempotent";
  EXPECT_EQ(CallJson("GET", "/hosts", 200)[0]["state"], "active");
  EXPECT_TRUE(store_->ReserveOnHost("h1", 1, 1, 1.0, 1.0)->has_value());
}

TEST_F(HostRoutesTest, AnUnknownHostIs404NamingIt) {
  for (const char* verb : {"drain", "undrain"}) {
    json j = CallJson("POST", std::string("/hosts/nosuchhost/") + verb, 404);
    EXPECT_EQ(j["code"], 404);
    EXPECT_TRUE(Contains(j["message"], "\"nosuchhost\"")) << j.dump();
  }
}

TEST_F(HostRoutesTest, ALostHostIs409AndStaysLost) {
  ASSERT_TRUE(store_->RegisterHost(Host("gone", 8, 16384)).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_EQ(*store_->SweepLostHosts(0), std::vector<std::string>{"gone"});
  for (const char* verb : {"drain", "undrain"}) {
    json j = CallJson("POST", std::string("/hosts/gone/") + verb, 409);
    EXPECT_EQ(j["code"], 409);
    EXPECT_TRUE(Contains(j["message"], "\"gone\" is lost")) << j.dump();
  }
  json hosts = CallJson("GET", "/hosts", 200);
  ASSERT_EQ(hosts.size(), 1u);
  EXPECT_EQ(hosts[0]["state"], "lost");
}

TEST_F(HostRoutesTest, ASandboxsJsonNamesItsHostOrNull) {
  std::string id = CreateSandbox();
  EXPECT_EQ(CallJson("GET", "/sandboxes/" + id, 200)["hostID"], "h1");
  for (const char* list : {"/v2/sandboxes", "/sandboxes"}) {
    json all = CallJson("GET", list, 200);
    ASSERT_EQ(all.size(), 1u) << list;
    EXPECT_EQ(all[0]["hostID"], "h1") << list;
  }
  // A record that names no host (made before hosts had ids).
  store::SandboxRecord old;
  old.id = "oldsandbox";
  old.team_id = (*store_->TeamByKeyHash(Sha256Hex(kAdminKey)))->id;
  old.template_id = "base";
  old.access_token = "token";
  old.state = SandboxState::kPaused;
  old.started_at_ms = 1000;
  old.end_at_ms = 2000;
  ASSERT_TRUE(store_->InsertSandbox(old).ok());
  json j = CallJson("GET", "/sandboxes/oldsandbox", 200);
  ASSERT_TRUE(j.contains("hostID")) << j.dump();
  EXPECT_TRUE(j["hostID"].is_null()) << j.dump();
}

}  // namespace
}  // namespace moat::api
