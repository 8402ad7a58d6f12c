// The control routes of quotas and keys, driven as the server drives them, over a real SQLite
// store and a real controller whose agent never boots a VM: every request here is answered
// before one would be (quota refusals come first), or needs none.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "agent/agent.h"
#include "api/api_server.h"
#include "api/auth.h"
#include "api/sandbox_controller.h"
#include "api/store/sqlite_store.h"
#include "common/fs.h"
#include "host/in_process_host_agent.h"
#include "host/local_data_plane.h"

namespace moat::api {
namespace {

using nlohmann::json;

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

class QuotaRoutesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = MakeTempDir("/tmp", "moat-quota-routes.");
    ASSERT_TRUE(d.ok());
    dir_ = *d;
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
    auto s = store::SqliteStore::Open(dir_ + "/moat.db");
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(*s);
    ASSERT_TRUE(BootstrapApiKey(*store_, dir_, std::string(kAdminKey)).ok());
    admin_ = **store_->TeamByKeyHash(Sha256Hex(kAdminKey));
    host_ = std::make_unique<host::InProcessHostAgent>("local", *agent_);
    auto controller = SandboxController::Start(*host_, *store_, metrics_, {});
    ASSERT_TRUE(controller.ok()) << controller.status().ToString();
    controller_ = std::move(*controller);
    cc_ = routes::ControlContext{controller_.get(), store_.get(), &metrics_, kEnvdVersion};
    RegisterAllRoutes(control_, envd_, cc_, ec_);
    // A second team with one key.
    auto acme = Call("POST", "/keys", kAdminKey, R"({"name":"first","team":"acme"})");
    ASSERT_EQ(acme.status(), 201) << acme.body();
    auto j = json::parse(acme.body());
    acme_key_ = j["key"];
    acme_id_ = j["teamID"];
    acme_key_id_ = j["id"];
  }
  void TearDown() override {
    controller_.reset();
    agent_.reset();
    store_.reset();
    EXPECT_TRUE(RemoveTree(dir_).ok());
  }

  http::RecordingWriter Call(const std::string& method, const std::string& path,
                             const std::string& key, const std::string& body = "",
                             http::Headers headers = {}) {
    http::Request req;
    req.method = method;
    req.path = path;
    req.headers = std::move(headers);
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

  static constexpr const char* kAdminKey = "moat_quota_routes_admin";
  std::string dir_;
  Metrics metrics_;
  std::unique_ptr<agent::Agent> agent_;
  std::unique_ptr<host::InProcessHostAgent> host_;
  std::unique_ptr<store::SqliteStore> store_;
  std::unique_ptr<SandboxController> controller_;
  store::TeamRecord admin_;
  routes::ControlContext cc_{};
  routes::EnvdContext ec_{nullptr, nullptr};
  http::Router control_, envd_;
  std::string acme_key_, acme_id_, acme_key_id_;
};

TEST_F(QuotaRoutesTest, AnAdminSetsATeamsQuotasWhichTheTeamCanReadButNotChange) {
  std::string path = "/teams/" + acme_id_ + "/quotas";
  auto r = Call("GET", path, acme_key_);
  ASSERT_EQ(r.status(), 200) << r.body();
  auto j = json::parse(r.body());
  EXPECT_EQ(j["teamID"], acme_id_);
  EXPECT_EQ(j["teamName"], "acme");
  EXPECT_EQ(j["quotas"]["maxSandboxes"], 100);
  EXPECT_EQ(j["quotas"]["maxMemoryMiB"], 400 * 1024);
  EXPECT_EQ(j["set"], json::object());
  EXPECT_EQ(j["usage"],
            json({{"sandboxes", 0}, {"vcpus", 0}, {"memoryMiB", 0}, {"createsLastMinute", 0}}));

  r = Call("PUT", path, kAdminKey, R"({"maxSandboxes": 3, "maxVcpus": 4})");
  ASSERT_EQ(r.status(), 200) << r.body();
  j = json::parse(r.body());
  EXPECT_EQ(j["quotas"]["maxSandboxes"], 3);
  EXPECT_EQ(j["set"], json({{"maxSandboxes", 3}, {"maxVcpus", 4}}));
  r = Call("PUT", path, kAdminKey, R"({"maxVcpus": null})");
  ASSERT_EQ(r.status(), 200) << r.body();
  EXPECT_EQ(json::parse(r.body())["set"], json({{"maxSandboxes", 3}}));
  EXPECT_EQ(json::parse(Call("GET", path, acme_key_).body())["quotas"]["maxVcpus"], 200);

  EXPECT_EQ(Call("PUT", path, acme_key_, R"({"maxSandboxes": 1000})").status(), 403);
  EXPECT_EQ(Call("GET", "/teams/" + admin_.id + "/quotas", acme_key_).status(), 403);
  EXPECT_EQ(Call("GET", "/teams/" + admin_.id + "/quotas", kAdminKey).status(), 200);
  EXPECT_EQ(Call("GET", "/teams/nosuchteam/quotas", kAdminKey).status(), 404);
  EXPECT_EQ(Call("PUT", path, kAdminKey, R"({"maxDisks": 1})").status(), 400);
  EXPECT_EQ(Call("GET", path, "").status(), 401);
}

TEST_F(QuotaRoutesTest, ACreateOverTheTeamsQuotaIs429NamingTheLimit) {
  ASSERT_EQ(
      Call("PUT", "/teams/" + acme_id_ + "/quotas", kAdminKey, R"({"maxSandboxes": 0})").status(),
      200);
  for (const char* route : {"/v2/sandboxes", "/sandboxes"}) {
    auto r = Call("POST", route, acme_key_, R"({"templateID":"base"})");
    EXPECT_EQ(r.status(), 429) << r.body();
    auto j = json::parse(r.body());
    EXPECT_EQ(j["code"], 429) << "the SDK reads the code from the body";
    EXPECT_TRUE(Contains(j["message"], "maxSandboxes")) << r.body();
    EXPECT_TRUE(Contains(j["message"], "limit is 0")) << r.body();
  }
  // Metadata past the size limit (the default 64 KiB) is refused too, before any VM.
  ASSERT_EQ(Call("PUT", "/teams/" + acme_id_ + "/quotas", kAdminKey, R"({"maxSandboxes": null})")
                .status(),
            200);
  json body = {{"metadata", {{"blob", std::string(70 * 1024, 'x')}}}};
  auto r = Call("POST", "/v2/sandboxes", acme_key_, body.dump());
  EXPECT_EQ(r.status(), 429) << r.body();
  EXPECT_TRUE(Contains(r.body(), "maxMetadataBytes")) << r.body();
  EXPECT_TRUE(Contains(r.body(), "65536")) << r.body();
}

TEST_F(QuotaRoutesTest, ATeamCannotRevokeItsLastKeyNorCanAnAdminForIt) {
  auto r = Call("DELETE", "/keys/" + acme_key_id_, acme_key_);
  EXPECT_EQ(r.status(), 409) << r.body();
  EXPECT_TRUE(Contains(r.body(), "last key of team \\\"acme\\\"")) << r.body();
  r = Call("DELETE", "/keys/" + acme_key_id_, kAdminKey);
  EXPECT_EQ(r.status(), 409) << "an admin cannot orphan the team either: " << r.body();
  auto second = Call("POST", "/keys", acme_key_, R"({"name":"second"})");
  ASSERT_EQ(second.status(), 201);
  EXPECT_EQ(Call("DELETE", "/keys/" + acme_key_id_, kAdminKey).status(), 204)
      << "the team keeps a key";
  std::string second_id = json::parse(second.body())["id"];
  EXPECT_EQ(Call("DELETE", "/keys/" + second_id, acme_key_).status(), 401) << "the first is gone";
  std::string second_key = json::parse(second.body())["key"];
  EXPECT_EQ(Call("DELETE", "/keys/" + second_id, second_key).status(), 409);
}

TEST_F(QuotaRoutesTest, MetricsNeedAValidKeyAsXApiKeyOrBearer) {
  auto r = Call("GET", "/metrics", "");
  EXPECT_EQ(r.status(), 401);
  EXPECT_TRUE(Contains(r.body(), "Authorization: Bearer")) << r.body();
  EXPECT_EQ(Call("GET", "/metrics", "", "", {{"Authorization", "Bearer moat_wrong"}}).status(),
            401);
  EXPECT_EQ(Call("GET", "/metrics", "", "", {{"Authorization", "Basic dXNlcjo="}}).status(), 401);
  r = Call("GET", "/metrics", "", "", {{"Authorization", "Bearer " + acme_key_}});
  EXPECT_EQ(r.status(), 200);
  EXPECT_TRUE(Contains(r.body(), "moat_sandboxes{state=\"running\"}")) << r.body();
  EXPECT_EQ(Call("GET", "/metrics", acme_key_).status(), 200);
  EXPECT_EQ(Call("GET", "/healthz", "").status(), 200) << "health stays open";
}

}  // namespace
}  // namespace moat::api
