// API key administration: the rules (key_admin.h) and the /keys routes over a real SQLite
// store, driven as the server drives them. No VM: the key routes never touch the controller.
#include "api/key_admin.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "api/api_server.h"
#include "api/auth.h"
#include "api/store/sqlite_store.h"
#include "common/fs.h"
#include "host/local_data_plane.h"

namespace moat::api {
namespace {

using nlohmann::json;

class KeyAdminTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = MakeTempDir("/tmp", "moat-keys-test.");
    ASSERT_TRUE(d.ok());
    dir_ = *d;
    auto s = store::SqliteStore::Open(dir_ + "/moat.db");
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(*s);
    // The first start's admin team and key, as moatd makes them.
    auto boot = BootstrapApiKey(*store_, dir_, std::string("moat_admin_key"));
    ASSERT_TRUE(boot.ok() && boot->created);
    admin_ = **store_->TeamByKeyHash(Sha256Hex("moat_admin_key"));
    routes::ControlContext cc{nullptr, store_.get(), nullptr, kEnvdVersion};
    cc_ = cc;
    RegisterAllRoutes(control_, envd_, cc_, ec_);
  }
  void TearDown() override {
    store_.reset();
    EXPECT_TRUE(RemoveTree(dir_).ok());
  }

  // One control request through the router, as ApiServer::Handle routes it.
  http::RecordingWriter Call(const std::string& method, const std::string& target,
                             const std::string& key, const std::string& body = "") {
    http::Request req;
    req.method = method;
    size_t q = target.find('?');
    req.path = target.substr(0, q);
    if (q != std::string::npos) req.raw_query = target.substr(q + 1);
    if (!key.empty()) req.headers["X-API-KEY"] = key;
    req.body = body;
    http::RecordingWriter w;
    auto match = control_.Find(req.method, req.path);
    EXPECT_NE(match.route, nullptr) << method << " " << target;
    if (match.route == nullptr) return w;
    req.params = match.params;
    match.route->handler(req, w);
    return w;
  }

  std::string dir_;
  std::unique_ptr<store::SqliteStore> store_;
  store::TeamRecord admin_;
  routes::ControlContext cc_{};
  routes::EnvdContext ec_{nullptr, nullptr};  // the envd routes are registered, never called
  http::Router control_, envd_;
};

TEST_F(KeyAdminTest, ParsesCreateRequestsAndNamesWhatIsWrong) {
  auto a = ParseCreateKey(R"({"name":"ci","team":"acme"})");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->name, "ci");
  EXPECT_EQ(a->new_team, "acme");
  EXPECT_FALSE(a->team_id.has_value());
  EXPECT_NE(ParseCreateKey("{}").status().message().find("\"name\""), std::string::npos);
  EXPECT_NE(ParseCreateKey(R"({"name":"a\nb"})").status().message().find("control"),
            std::string::npos);
  EXPECT_NE(ParseCreateKey(R"({"name":"x","team":"a b"})").status().message().find("\"team\""),
            std::string::npos);
  EXPECT_NE(
      ParseCreateKey(R"({"name":"x","team":"a","teamID":"b"})").status().message().find("not both"),
      std::string::npos);
  EXPECT_EQ(ParseCreateKey("[1]").status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(ParseCreateKey(R"({"name":7})").status().code(), ErrorCode::kInvalidArgument);
}

TEST_F(KeyAdminTest, OnlyTheAdminCreatesTeamsAndManagesOtherTeamsKeys) {
  auto acme = CreateKey(*store_, admin_, {.name = "first", .new_team = "acme", .team_id = {}});
  ASSERT_TRUE(acme.ok()) << acme.status().ToString();
  EXPECT_EQ(acme->team.name, "acme");
  EXPECT_FALSE(acme->team.admin);
  EXPECT_EQ(acme->key.rfind("e2b_", 0), 0u);
  auto team = **store_->TeamByKeyHash(Sha256Hex(acme->key));
  EXPECT_EQ(team.id, acme->team.id) << "the new key authenticates as the new team";

  EXPECT_EQ(CreateKey(*store_, admin_, {.name = "again", .new_team = "acme", .team_id = {}})
                .status()
                .code(),
            ErrorCode::kAlreadyExists);
  EXPECT_EQ(
      CreateKey(*store_, team, {.name = "x", .new_team = "evil", .team_id = {}}).status().code(),
      ErrorCode::kPermissionDenied);
  EXPECT_EQ(
      CreateKey(*store_, team, {.name = "x", .new_team = {}, .team_id = admin_.id}).status().code(),
      ErrorCode::kPermissionDenied);
  EXPECT_EQ(ListKeys(*store_, team, admin_.id).status().code(), ErrorCode::kPermissionDenied);
  EXPECT_EQ(ListKeys(*store_, admin_, "nope").status().code(), ErrorCode::kNotFound);

  // A team manages its own keys; the admin may manage them too.
  auto second = CreateKey(*store_, team, {.name = "second", .new_team = {}, .team_id = {}});
  ASSERT_TRUE(second.ok());
  auto by_admin = CreateKey(*store_, admin_, {.name = "third", .new_team = {}, .team_id = team.id});
  ASSERT_TRUE(by_admin.ok());
  EXPECT_EQ(by_admin->team.id, team.id);
  EXPECT_EQ(ListKeys(*store_, team, "")->size(), 3u);
  EXPECT_EQ(ListKeys(*store_, admin_, team.id)->size(), 3u);
  EXPECT_EQ(ListKeys(*store_, admin_, "")->size(), 1u);

  // Another team's key is invisible to a non-admin.
  auto admin_keys = *ListKeys(*store_, admin_, "");
  EXPECT_EQ(RevokeKey(*store_, team, admin_keys[0].id).code(), ErrorCode::kNotFound);
  EXPECT_TRUE(RevokeKey(*store_, admin_, by_admin->record.id).ok());
  EXPECT_TRUE(RevokeKey(*store_, team, second->record.id).ok());
  EXPECT_FALSE(store_->TeamByKeyHash(Sha256Hex(second->key))->has_value());
  EXPECT_EQ(RevokeKey(*store_, admin_, admin_keys[0].id).code(), ErrorCode::kFailedPrecondition)
      << "the last admin key stays";
}

TEST_F(KeyAdminTest, KeyRoutesShowTheKeyOnceAndARevokedKeyIsRejectedAtOnce) {
  auto created = Call("POST", "/keys", "moat_admin_key", R"({"name":"ci","team":"acme"})");
  ASSERT_EQ(created.status(), 201) << created.body();
  json body = json::parse(created.body());
  std::string key = body.at("key");
  std::string id = body.at("id");
  EXPECT_EQ(body.at("name"), "ci");
  EXPECT_EQ(body.at("teamName"), "acme");
  EXPECT_EQ(body.at("mask"), MaskApiKey(key));

  auto listed = Call("GET", "/keys", key);
  ASSERT_EQ(listed.status(), 200) << listed.body();
  json keys = json::parse(listed.body());
  ASSERT_EQ(keys.size(), 1u);
  EXPECT_EQ(keys[0].at("id"), id);
  EXPECT_FALSE(keys[0].contains("key")) << "a listed key has no value";
  EXPECT_EQ(listed.body().find(key), std::string::npos);

  auto forbidden = Call("POST", "/keys", key, R"({"name":"x","team":"other"})");
  EXPECT_EQ(forbidden.status(), 403);
  EXPECT_EQ(json::parse(forbidden.body()).at("code"), 403);
  auto bad = Call("POST", "/keys", key, R"({"team":"x"})");
  EXPECT_EQ(bad.status(), 400);
  EXPECT_NE(bad.body().find("name"), std::string::npos);
  auto unknown = Call("DELETE", "/keys/nope", key);
  EXPECT_EQ(unknown.status(), 404);
  EXPECT_EQ(json::parse(unknown.body()).at("code"), 404);

  auto last = Call("DELETE", "/keys/" + id, key);
  EXPECT_EQ(last.status(), 409) << "the team's last key stays: " << last.body();
  EXPECT_EQ(json::parse(last.body()).at("code"), 409);
  ASSERT_EQ(Call("POST", "/keys", key, R"({"name":"next"})").status(), 201);
  EXPECT_EQ(Call("DELETE", "/keys/" + id, key).status(), 204) << "a key may revoke itself";
  auto after = Call("GET", "/keys", key);
  EXPECT_EQ(after.status(), 401);
  EXPECT_EQ(json::parse(after.body()).at("code"), 401);
  EXPECT_EQ(Call("GET", "/keys", "").status(), 401);
  EXPECT_EQ(Call("GET", "/keys", "moat_admin_key").status(), 200) << "bootstrap key unaffected";
}

}  // namespace
}  // namespace moat::api
