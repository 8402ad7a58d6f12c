// Custom templates through their routes, as the official SDK's Template.build() calls them
// (shared/E2B-TEMPLATES.md): register, negotiate and upload COPY files through the
// self-authenticating URL, start, poll the status with its paged log, then aliases, list, info,
// tags, creates from a template's name and delete. Over a real SQLite store and ApiServer (its
// admission hook and its routing, called in-process; a few exchanges go over loopback to see the
// bytes), with a fake host whose builds are scripted (no VMs).
#include <gtest/gtest.h>
#include <openssl/hmac.h>

#include <chrono>
#include <cstring>
#include <ctime>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "api/api_server.h"
#include "api/auth.h"
#include "api/codec/gzip.h"
#include "api/codec/protojson.h"
#include "api/codec/query.h"
#include "api/sandbox_controller.h"
#include "api/store/sqlite_store.h"
#include "common/fs.h"
#include "host/local_data_plane.h"
#include "support/fake_host_agent.h"
#include "support/raw_http.h"

namespace moat::api {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;

constexpr const char* kSecret = "template-routes-upload-secret";
constexpr const char* kHost = "moat.test";

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

bool IsUuidV4(const std::string& s) {
  if (s.size() != 36 || s[14] != '4') return false;
  for (size_t i = 0; i < s.size(); ++i) {
    bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? s[i] != '-' : !std::isxdigit(static_cast<unsigned char>(s[i]))) return false;
  }
  return true;
}

std::string Hex(const unsigned char* p, size_t n) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    out.push_back(kHex[p[i] >> 4]);
    out.push_back(kHex[p[i] & 15]);
  }
  return out;
}

// The upload URL's token, computed as the test knows the secret: HMAC-SHA256 over
// "team\nhash\nexpires".
std::string UploadToken(const std::string& team, const std::string& hash, int64_t expires) {
  std::string message = team + "\n" + hash + "\n" + std::to_string(expires);
  unsigned char out[32];
  unsigned int len = sizeof out;
  HMAC(EVP_sha256(), kSecret, static_cast<int>(std::strlen(kSecret)),
       reinterpret_cast<const unsigned char*>(message.data()), message.size(), out, &len);
  return Hex(out, len);
}

std::string HashOf(char c) {
  return std::string(64, c);
}

// A minimal ustar writer: enough for the archives the SDK sends, and for hostile ones.
struct TarEntry {
  std::string name;
  std::string data;
  char type = '0';  // '0' file, '5' directory, '2' symlink, '3' character device
};

void Octal(char* field, size_t width, uint64_t v) {
  // width - 1 digits and a NUL, as GNU tar writes them.
  field[width - 1] = '\0';
  for (size_t i = width - 1; i-- > 0;) {
    field[i] = static_cast<char>('0' + (v & 7));
    v >>= 3;
  }
}

std::string Tar(const std::vector<TarEntry>& entries) {
  std::string out;
  for (const auto& e : entries) {
    char h[512] = {};
    std::memcpy(h, e.name.data(), std::min<size_t>(e.name.size(), 100));
    Octal(h + 100, 8, e.type == '5' ? 0755 : 0644);
    Octal(h + 108, 8, 0);
    Octal(h + 116, 8, 0);
    Octal(h + 124, 12, e.data.size());
    Octal(h + 136, 12, 1700000000);
    std::memset(h + 148, ' ', 8);
    h[156] = e.type;
    std::memcpy(h + 257, "ustar", 6);
    std::memcpy(h + 263, "00", 2);
    unsigned sum = 0;
    for (unsigned char c : h) sum += c;
    Octal(h + 148, 7, sum);  // six digits, a NUL, and the space already there
    out.append(h, sizeof h);
    out += e.data;
    out.append((512 - e.data.size() % 512) % 512, '\0');
  }
  out.append(1024, '\0');
  return out;
}

std::string Gzip(const std::string& data) {
  codec::GzipWriter w(6);
  auto head = w.Write(data);
  auto tail = w.Finish();
  EXPECT_TRUE(head.ok() && tail.ok());
  return (head.ok() ? *head : "") + (tail.ok() ? *tail : "");
}

std::string AppTarGz() {
  return Gzip(Tar({{"app", "", '5'}, {"app/main.py", "print('hi')\n"}}));
}

class TemplateRoutesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = MakeTempDir("/tmp", "moat-template-routes.");
    ASSERT_TRUE(d.ok());
    dir_ = *d;
    auto s = store::SqliteStore::Open(dir_ + "/moat.db");
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(*s);
    ASSERT_TRUE(BootstrapApiKey(*store_, dir_, std::string(kAdminKey)).ok());
    admin_ = **store_->TeamByKeyHash(Sha256Hex(kAdminKey));
    host_.known_templates_only = true;
    ControllerOptions options{.reap_interval = std::chrono::hours(1)};
    options.templates = TemplateOptions{.uploads_dir = dir_ + "/uploads", .upload_secret = kSecret};
    auto controller = SandboxController::Start(host_, *store_, metrics_, options);
    ASSERT_TRUE(controller.ok()) << controller.status().ToString();
    controller_ = std::move(*controller);
    auto server = StartWithLocalDataPlane(
        http::ServerOptions{.host = "127.0.0.1", .port = 0}, *controller_, *store_, metrics_,
        [](const std::string& id) -> Result<std::shared_ptr<channel::GuestClient>> {
          return NotFound("sandbox " + id + " has no guest here");
        });
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(*server);
    auto acme = Call("POST", "/keys", kAdminKey, R"({"name":"first","team":"acme"})");
    ASSERT_EQ(acme.status(), 201) << acme.body();
    json j = json::parse(acme.body());
    acme_key_ = j["key"];
    acme_id_ = j["teamID"];
  }
  void TearDown() override {
    host_.ReleaseBuilds();  // a failed test's held builds end, so the controller can stop
    server_.reset();
    controller_.reset();
    store_.reset();
    EXPECT_TRUE(RemoveTree(dir_).ok());
  }

  // A request as the server handles it: its admission (which may answer it from the head
  // alone), then its route.
  http::RecordingWriter Call(const std::string& method, const std::string& path,
                             const std::string& key, const std::string& body = "") {
    http::Request req;
    req.method = method;
    size_t q = path.find('?');
    req.path = path.substr(0, q);
    if (q != std::string::npos) req.raw_query = path.substr(q + 1);
    req.headers["Host"] = kHost;
    if (!key.empty()) req.headers["X-API-KEY"] = key;
    req.peer = "127.0.0.1:1";
    http::RecordingWriter w;
    server_->Admit(req, !body.empty(), w);
    if (w.started()) return w;
    req.body = body;
    server_->Handle(req, w);
    return w;
  }
  json CallJson(const std::string& method, const std::string& path, int want_status,
                const std::string& body = "", const std::string& key = kAdminKey) {
    auto r = Call(method, path, key, body);
    EXPECT_EQ(r.status(), want_status) << method << " " << path << " " << body << ": " << r.body();
    json j = json::parse(r.body(), nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(j.is_discarded()) << method << " " << path << ": " << r.body();
    return j;
  }
  // POST /v3/templates, expecting 202.
  json Register(const json& body, const std::string& key = kAdminKey) {
    return CallJson("POST", "/v3/templates", 202, body.dump(), key);
  }
  // An error's message, after checking its status and its JSON shape.
  std::string ErrorOf(const std::string& method, const std::string& path, int want_status,
                      const std::string& body = "", const std::string& key = kAdminKey) {
    json j = CallJson(method, path, want_status, body, key);
    EXPECT_EQ(j.value("code", 0), want_status) << j.dump();
    return j.value("message", "");
  }
  int Start(const json& reg, const json& spec, const std::string& key = kAdminKey) {
    auto r = Call("POST",
                  "/v2/templates/" + reg["templateID"].get<std::string>() + "/builds/" +
                      reg["buildID"].get<std::string>(),
                  key, spec.dump());
    if (r.status() == 202) {
      EXPECT_EQ(r.body(), "") << "an empty 202";
      EXPECT_EQ(r.headers().count("Content-Type"), 0u) << "no Content-Type on an empty body";
    }
    return r.status();
  }
  json BuildStatus(const json& reg, const std::string& query = "",
                   const std::string& key = kAdminKey) {
    return CallJson("GET",
                    "/templates/" + reg["templateID"].get<std::string>() + "/builds/" +
                        reg["buildID"].get<std::string>() + "/status" + query,
                    200, "", key);
  }
  // Polls the status (as the SDK does, faster) until the build has ended.
  json WaitDone(const json& reg, const std::string& key = kAdminKey) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    for (;;) {
      json s = BuildStatus(reg, "?logsOffset=100000", key);
      std::string status = s.value("status", "");
      if (status == "ready" || status == "error") return s;
      if (std::chrono::steady_clock::now() > deadline) {
        ADD_FAILURE() << "the build never ended: " << s.dump();
        return s;
      }
      std::this_thread::sleep_for(milliseconds(5));
    }
  }
  // A template built from `base` to the end: its registration's answer.
  json BuildFromBase(const json& registration, const std::string& want = "ready",
                     const std::string& key = kAdminKey) {
    json reg = Register(registration, key);
    EXPECT_EQ(Start(reg, {{"fromTemplate", "base"}, {"steps", json::array()}}, key), 202);
    EXPECT_EQ(WaitDone(reg, key)["status"], want) << registration.dump();
    return reg;
  }
  // The upload URL of a hash for a template, split into its path and query.
  json Negotiate(const std::string& template_id, const std::string& hash,
                 const std::string& key = kAdminKey) {
    return CallJson("GET", "/templates/" + template_id + "/files/" + hash, 201, "", key);
  }
  std::string PathOf(const std::string& url) {
    std::string prefix = std::string("http://") + kHost;
    EXPECT_EQ(url.rfind(prefix, 0), 0u) << url;
    return url.substr(prefix.size());
  }
  http::RecordingWriter Upload(const std::string& path_and_query, const std::string& body) {
    return Call("PUT", path_and_query, "", body);
  }
  // Uploads `archive` as the team's files of `hash` (through template `template_id`).
  void Uploaded(const std::string& template_id, const std::string& hash, const std::string& archive,
                const std::string& key = kAdminKey) {
    json n = Negotiate(template_id, hash, key);
    auto r = Upload(PathOf(n["url"]), archive);
    ASSERT_EQ(r.status(), 200) << r.body();
  }
  std::string CreateSandbox(const std::string& template_name, int want = 201,
                            const std::string& key = kAdminKey) {
    auto r = Call("POST", "/v2/sandboxes", key, json{{"templateID", template_name}}.dump());
    EXPECT_EQ(r.status(), want) << template_name << ": " << r.body();
    if (r.status() != 201) return "";
    return json::parse(r.body()).value("sandboxID", "");
  }
  size_t UploadTempFiles() {
    size_t n = 0;
    for (const auto& t : DirNames(dir_ + "/uploads")) {
      for (const auto& f : DirNames(dir_ + "/uploads/" + t)) {
        n += f.rfind(".upload-", 0) == 0 ? 1 : 0;
      }
    }
    return n;
  }

  static constexpr const char* kAdminKey = "moat_template_routes_admin";
  std::string dir_;
  Metrics metrics_;
  test_support::FakeHostAgent host_{"h1"};
  std::unique_ptr<store::SqliteStore> store_;
  std::unique_ptr<SandboxController> controller_;
  std::unique_ptr<ApiServer> server_;
  store::TeamRecord admin_;
  std::string acme_key_, acme_id_;
};

// --- POST /v3/templates ----------------------------------------------------------------------

TEST_F(TemplateRoutesTest, RegisterAnswers202WithAWaitingBuildAndTheNormalisedName) {
  json reg = Register({{"name", "  My-Tpl:V2 "}, {"cpuCount", 4}, {"memoryMB", 2048}});
  std::string id = reg["templateID"];
  EXPECT_EQ(id.size(), 20u);
  EXPECT_EQ(id.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789"), std::string::npos) << id;
  EXPECT_TRUE(IsUuidV4(reg["buildID"])) << reg.dump();
  EXPECT_EQ(reg["names"], json::array({"my-tpl"}));
  EXPECT_EQ(reg["aliases"], json::array({"my-tpl"}));
  EXPECT_EQ(reg["tags"], json::array({"v2"}));
  EXPECT_EQ(reg["public"], false);
  EXPECT_EQ(reg.size(), 6u) << reg.dump();

  json s = BuildStatus(reg);
  EXPECT_EQ(s["status"], "waiting");
  EXPECT_EQ(s["templateID"], id);
  EXPECT_EQ(s["buildID"], reg["buildID"]);
  EXPECT_EQ(s["logEntries"], json::array());
  EXPECT_EQ(s["logs"], json::array());
  EXPECT_FALSE(s.contains("reason"));
  EXPECT_EQ(host_.CountCalls("build"), 0) << "nothing runs before the start";

  // The smallest resources, and the deprecated `alias` in place of `name`.
  EXPECT_EQ(Register({{"alias", "tiny"}, {"cpuCount", 1}, {"memoryMB", 128}})["aliases"],
            json::array({"tiny"}));
}

TEST_F(TemplateRoutesTest, RegisterPutsTheNamesTagFirstDeduplicatesAndDefaults) {
  EXPECT_EQ(Register({{"name", "t1"}})["tags"], json::array({"default"}));
  EXPECT_EQ(Register({{"name", "t2"}, {"tags", json::array()}})["tags"], json::array({"default"}));
  EXPECT_EQ(Register({{"name", "t3"}, {"tags", {"a", "B", "a", " b "}}})["tags"],
            json::array({"a", "b"}));
  EXPECT_EQ(Register({{"name", "t4:x"}, {"tags", {"y", "x"}}})["tags"], json::array({"x", "y"}));
  EXPECT_EQ(Register({{"name", "t5:default"}})["tags"], json::array({"default"}))
      << ":default counts as no tag";
  EXPECT_EQ(Register({{"name", "t6:v1.2_rc-1"}})["tags"], json::array({"v1.2_rc-1"}));
}

TEST_F(TemplateRoutesTest, RegisterRefusesBadNamesTagsResourcesAndNamespaces) {
  EXPECT_EQ(ErrorOf("POST", "/v3/templates", 400, "{}"), "Name is required");
  EXPECT_EQ(ErrorOf("POST", "/v3/templates", 400, R"({"name":"   "})"), "Name is required");
  EXPECT_EQ(ErrorOf("POST", "/v3/templates", 400, R"({"name":42})"), "Name is required");
  for (const char* name :
       {"bad name", "bad!", "dots.not.allowed", "ümlaut", "a:b:c", "a/b/c", "/x", "x:", ":tag"}) {
    std::string m = ErrorOf("POST", "/v3/templates", 400, json{{"name", name}}.dump());
    EXPECT_FALSE(m.empty()) << name;
  }
  EXPECT_TRUE(
      Contains(ErrorOf("POST", "/v3/templates", 400, R"({"name":"x:bad tag"})"), "invalid tag"));
  EXPECT_TRUE(Contains(
      ErrorOf("POST", "/v3/templates", 400, R"({"name":"x:6f1c2a3b-1111-4222-8333-444455556666"})"),
      "invalid tag"))
      << "a tag must not be a UUID";
  EXPECT_TRUE(Contains(ErrorOf("POST", "/v3/templates", 400,
                               R"({"name":"x","tags":["6F1C2A3B-1111-4222-8333-444455556666"]})"),
                       "invalid tag"));
  EXPECT_TRUE(Contains(ErrorOf("POST", "/v3/templates", 400, R"({"name":"x","tags":["a b"]})"),
                       "invalid tag"));
  ErrorOf("POST", "/v3/templates", 400, R"({"name":"x","tags":[""]})");
  ErrorOf("POST", "/v3/templates", 400, R"({"name":"x","tags":"a"})");
  ErrorOf("POST", "/v3/templates", 400, R"({"name":"x","tags":[1]})");
  EXPECT_EQ(ErrorOf("POST", "/v3/templates", 400, R"({"name":"x","cpuCount":3})"),
            "CPU count must be 1 or an even number");
  ErrorOf("POST", "/v3/templates", 400, R"({"name":"x","cpuCount":0})");
  ErrorOf("POST", "/v3/templates", 400, R"({"name":"x","cpuCount":34})");
  ErrorOf("POST", "/v3/templates", 400, R"({"name":"x","cpuCount":"2"})");
  EXPECT_TRUE(Contains(ErrorOf("POST", "/v3/templates", 400, R"({"name":"x","memoryMB":127})"),
                       "at least 128"));
  EXPECT_EQ(ErrorOf("POST", "/v3/templates", 400, R"({"name":"x","memoryMB":1025})"),
            "Memory must be divisible by 2");
  ErrorOf("POST", "/v3/templates", 400, R"({"name":"x","memoryMB":1024.5})");
  ErrorOf("POST", "/v3/templates", 400, R"({"name":"x","minFreeDiskMb":-1})");
  ErrorOf("POST", "/v3/templates", 400, "not json");
  ErrorOf("POST", "/v3/templates", 400, R"(["x"])");
  // A namespace must be the caller's team (by name or id).
  EXPECT_TRUE(Contains(ErrorOf("POST", "/v3/templates", 400, R"({"name":"other/x"})", acme_key_),
                       "namespace"));
  EXPECT_EQ(ErrorOf("POST", "/v3/templates", 400, R"({"name":"acme/x"})"),
            "namespace \"acme\" is not your team's")
      << "acme is not the admin's team";
  EXPECT_EQ(CallJson("GET", "/templates", 200), json::array()) << "nothing was registered";
  EXPECT_EQ(CallJson("GET", "/templates", 200, "", acme_key_), json::array());

  EXPECT_EQ(Register({{"name", "ACME/In-Ns"}}, acme_key_)["aliases"], json::array({"in-ns"}));
  EXPECT_EQ(Register({{"name", acme_id_ + "/by-id"}}, acme_key_)["aliases"],
            json::array({"by-id"}));
}

TEST_F(TemplateRoutesTest, RegisterReusesTheTemplateOfAnAliasAndRefusesTheBuiltInNames) {
  json first = Register({{"name", "reuse"}});
  json again = Register({{"name", "REUSE:v2"}});
  EXPECT_EQ(again["templateID"], first["templateID"]) << "a rebuild";
  EXPECT_NE(again["buildID"], first["buildID"]);
  json other_team = Register({{"name", "reuse"}}, acme_key_);
  EXPECT_NE(other_team["templateID"], first["templateID"]) << "each team names its own";
  EXPECT_EQ(CallJson("GET", "/templates", 200).size(), 1u);

  for (const char* name : {"base", "Base:v1", "code-interpreter-v1"}) {
    EXPECT_TRUE(Contains(ErrorOf("POST", "/v3/templates", 409, json{{"name", name}}.dump()),
                         "already used"))
        << name;
  }
}

TEST_F(TemplateRoutesTest, AWaitingBuildIsSupersededByANewerOneWithATagInCommon) {
  json a = Register({{"name", "sup"}, {"tags", {"x", "y"}}});
  json other_tag = Register({{"name", "sup:z"}});
  json b = Register({{"name", "sup"}, {"tags", {"y"}}});
  json sa = BuildStatus(a);
  EXPECT_EQ(sa["status"], "error");
  EXPECT_TRUE(Contains(sa["reason"].value("message", ""), "superseded")) << sa.dump();
  EXPECT_TRUE(sa["reason"]["logEntries"].is_array()) << sa.dump();
  EXPECT_EQ(BuildStatus(other_tag)["status"], "waiting") << "no tag in common";
  EXPECT_EQ(BuildStatus(b)["status"], "waiting");
  EXPECT_EQ(Start(a, {{"fromTemplate", "base"}}), 400);
  EXPECT_EQ(ErrorOf("POST",
                    "/v2/templates/" + a["templateID"].get<std::string>() + "/builds/" +
                        a["buildID"].get<std::string>(),
                    400, R"({"fromTemplate":"base"})"),
            "build is not in waiting state");

  // A started build is not superseded by a newer registration.
  ASSERT_EQ(Start(b, {{"fromTemplate", "base"}}), 202);
  EXPECT_EQ(WaitDone(b)["status"], "ready");
  json c = Register({{"name", "sup"}, {"tags", {"y"}}});
  EXPECT_EQ(BuildStatus(b)["status"], "ready");
  EXPECT_EQ(BuildStatus(c)["status"], "waiting");
}

// --- Files: negotiation and the upload URL ---------------------------------------------------

TEST_F(TemplateRoutesTest, FileNegotiationChecksTheHashAndTheTeamAndSignsAnUploadUrl) {
  json reg = Register({{"name", "files"}});
  std::string tid = reg["templateID"];
  EXPECT_EQ(ErrorOf("GET", "/templates/" + tid + "/files/abc", 400), "Invalid files hash");
  ErrorOf("GET", "/templates/" + tid + "/files/" + std::string(64, 'A'), 400);
  ErrorOf("GET", "/templates/" + tid + "/files/" + std::string(65, 'a'), 400);
  ErrorOf("GET", "/templates/" + tid + "/files/" + HashOf('a'), 404, "", acme_key_);
  ErrorOf("GET", "/templates/nosuchtemplate/files/" + HashOf('a'), 404);
  EXPECT_EQ(Call("GET", "/templates/" + tid + "/files/" + HashOf('a'), "").status(), 401);

  int64_t before = std::time(nullptr);
  json n = Negotiate(tid, HashOf('a'));
  int64_t after = std::time(nullptr);
  EXPECT_EQ(n["present"], false);
  std::string url = n["url"];
  std::string path = PathOf(url);
  ASSERT_EQ(path.rfind("/template-files/upload?", 0), 0u) << url;
  auto q = codec::ParseQuery(path.substr(path.find('?') + 1));
  std::string team = codec::QueryValue(q, "team").value_or("");
  std::string hash = codec::QueryValue(q, "hash").value_or("");
  int64_t expires = std::stoll(codec::QueryValue(q, "expires").value_or("0"));
  EXPECT_EQ(team, admin_.id);
  EXPECT_EQ(hash, HashOf('a'));
  EXPECT_GE(expires, before + 1800);
  EXPECT_LE(expires, after + 1800);
  EXPECT_EQ(codec::QueryValue(q, "token").value_or(""), UploadToken(team, hash, expires));
  // Reached through a proxy: the URL the client can use.
  http::Request req;
  req.method = "GET";
  req.path = "/templates/" + tid + "/files/" + HashOf('a');
  req.headers = {{"X-API-KEY", kAdminKey},
                 {"Host", "internal:3000"},
                 {"X-Forwarded-Host", "moat.example.com"},
                 {"X-Forwarded-Proto", "https"}};
  http::RecordingWriter w;
  server_->Handle(req, w);
  ASSERT_EQ(w.status(), 201) << w.body();
  EXPECT_EQ(json::parse(w.body())["url"].get<std::string>().rfind(
                "https://moat.example.com/template-files/upload?", 0),
            0u)
      << w.body();

  auto up = Upload(path, AppTarGz());
  ASSERT_EQ(up.status(), 200) << up.body();
  n = Negotiate(tid, HashOf('a'));
  EXPECT_EQ(n["present"], true);
  EXPECT_TRUE(n.contains("url")) << "a URL even when present (forceUpload)";
  // One upload per team and hash, whichever template asked.
  json other = Register({{"name", "files2"}});
  EXPECT_EQ(Negotiate(other["templateID"], HashOf('a'))["present"], true);
  json theirs = Register({{"name", "files"}}, acme_key_);
  EXPECT_EQ(Negotiate(theirs["templateID"], HashOf('a'), acme_key_)["present"], false)
      << "another team's upload is not this team's";
}

TEST_F(TemplateRoutesTest, AnUploadUrlAuthenticatesItselfBeforeItsBodyIsRead) {
  json reg = Register({{"name", "auth"}});
  std::string tid = reg["templateID"];
  std::string hash = HashOf('b');
  std::string team = admin_.id;
  auto url = [&](const std::string& t, const std::string& h, int64_t expires,
                 const std::string& token) {
    return std::string("/template-files/upload?team=") + t + "&hash=" + h +
           "&expires=" + std::to_string(expires) + "&token=" + token;
  };
  int64_t later = std::time(nullptr) + 600;
  // Admission answers each of these from the head: the body is never read.
  auto admit = [&](const std::string& method, const std::string& target) {
    http::Request req;
    req.method = method;
    req.path = target.substr(0, target.find('?'));
    if (target.find('?') != std::string::npos) req.raw_query = target.substr(target.find('?') + 1);
    http::RecordingWriter w;
    server_->Admit(req, /*has_body=*/true, w);
    return w;
  };
  std::string good = url(team, hash, later, UploadToken(team, hash, later));
  std::string bad_token = url(team, hash, later, UploadToken(team, hash, later + 1));
  std::string expired =
      url(team, hash, std::time(nullptr) - 10, UploadToken(team, hash, std::time(nullptr) - 10));
  std::string other_hash = url(team, HashOf('c'), later, UploadToken(team, hash, later));
  std::string other_team = url(acme_id_, hash, later, UploadToken(team, hash, later));
  for (const auto& [target, want] : std::vector<std::pair<std::string, int>>{
           {bad_token, 403},
           {expired, 403},
           {other_hash, 403},
           {other_team, 403},
           {"/template-files/upload?team=" + team + "&hash=" + hash, 400},
           {"/template-files/upload", 400},
           {url("../x", hash, later, UploadToken("../x", hash, later)), 403},
       }) {
    auto w = admit("PUT", target);
    EXPECT_EQ(w.status(), want) << target << ": " << w.body();
    // And the route checks again for a request that did not come through admission.
    http::Request req;
    req.method = "PUT";
    req.path = "/template-files/upload";
    req.raw_query = target.substr(std::min(target.size(), target.find('?') + 1));
    req.body = AppTarGz();
    http::RecordingWriter direct;
    server_->Handle(req, direct);
    EXPECT_EQ(direct.status(), want) << target << ": " << direct.body();
  }
  EXPECT_TRUE(Contains(admit("PUT", expired).body(), "expired"));
  EXPECT_EQ(admit("GET", good).status(), 405);
  EXPECT_EQ(admit("POST", good).status(), 405);
  EXPECT_EQ(Negotiate(tid, hash)["present"], false) << "nothing was stored";

  auto admitted = admit("PUT", good);
  EXPECT_FALSE(admitted.started()) << "a good URL is admitted without a key";
  EXPECT_EQ(Upload(good, AppTarGz()).status(), 200);
  EXPECT_EQ(Negotiate(tid, hash)["present"], true);
}

TEST_F(TemplateRoutesTest, AnUploadMustBeASafeTarPlainOrGzipped) {
  json reg = Register({{"name", "tars"}});
  std::string tid = reg["templateID"];
  auto put = [&](char hash_char, const std::string& body) {
    json n = Negotiate(tid, HashOf(hash_char));
    return Upload(PathOf(n["url"]), body);
  };
  for (const auto& [name, body] : std::vector<std::pair<std::string, std::string>>{
           {"not a tar", "hello, this is not an archive"},
           {"gzip of not a tar", Gzip(std::string(2000, 'x'))},
           {"a traversal", Gzip(Tar({{"../x", "escape"}}))},
           {"a nested traversal", Tar({{"app/../../x", "escape"}})},
           {"an absolute path", Gzip(Tar({{"/etc/passwd", "root::0:0"}}))},
           {"a device", Gzip(Tar({{"dev", "", '3'}}))},
           {"a truncated gzip", AppTarGz().substr(0, 20)},
       }) {
    auto r = put('d', body);
    EXPECT_EQ(r.status(), 400) << name << ": " << r.body();
    EXPECT_EQ(json::parse(r.body(), nullptr, false).value("code", 0), 400) << name;
  }
  EXPECT_EQ(Negotiate(tid, HashOf('d'))["present"], false) << "nothing refused was kept";
  EXPECT_EQ(UploadTempFiles(), 0u) << "no temp file left behind";

  auto gz = put('e', AppTarGz());
  EXPECT_EQ(gz.status(), 200) << gz.body();
  auto plain = put('f', Tar({{"a.txt", "plain tar, gzip:false"}}));
  EXPECT_EQ(plain.status(), 200) << plain.body();
  EXPECT_EQ(Negotiate(tid, HashOf('e'))["present"], true);
  EXPECT_EQ(Negotiate(tid, HashOf('f'))["present"], true);
  // A second upload of the same hash (forceUpload) replaces the first.
  EXPECT_EQ(put('e', AppTarGz()).status(), 200);
  EXPECT_EQ(UploadTempFiles(), 0u);
}

TEST_F(TemplateRoutesTest, OverTheWireTheStart202HasContentLengthZeroAndUploadsStream) {
  json reg = Register({{"name", "wire"}});
  std::string tid = reg["templateID"], bid = reg["buildID"];
  uint16_t port = server_->port();
  std::string hash = HashOf('9');

  // The upload as the SDK sends it: PUT with Content-Length, no key, to the URL it was given.
  auto neg =
      test_support::Exchange(port, "GET /templates/" + tid + "/files/" + hash +
                                       " HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-KEY: " + kAdminKey +
                                       "\r\nConnection: close\r\n\r\n");
  ASSERT_EQ(neg.status, 201) << neg.body;
  std::string url = json::parse(neg.body)["url"];
  ASSERT_EQ(url.rfind("http://127.0.0.1/template-files/upload?", 0), 0u) << url;
  std::string target = url.substr(std::strlen("http://127.0.0.1"));
  std::string archive = Gzip(Tar({{"big.bin", std::string(300000, 'z')}}));
  auto up = test_support::Exchange(port, "PUT " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\n" +
                                             "Content-Length: " + std::to_string(archive.size()) +
                                             "\r\nConnection: close\r\n\r\n" + archive);
  EXPECT_EQ(up.status, 200) << up.body;
  auto refused = test_support::Exchange(
      port, "PUT " + target + "0 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: " +
                std::to_string(archive.size()) + "\r\nConnection: close\r\n\r\n" + archive);
  EXPECT_EQ(refused.status, 403) << refused.body;

  std::string spec = json{
      {"fromTemplate", "base"},
      {"steps",
       {{{"type", "COPY"}, {"args", {"big.bin", "/big.bin", "", ""}}, {"filesHash", hash}}}},
      {"force", false}}.dump();
  auto started = test_support::Exchange(
      port, "POST /v2/templates/" + tid + "/builds/" + bid +
                " HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-KEY: " + kAdminKey +
                "\r\nContent-Type: application/json\r\nContent-Length: " +
                std::to_string(spec.size()) + "\r\nConnection: close\r\n\r\n" + spec);
  EXPECT_EQ(started.status, 202);
  EXPECT_EQ(started.head.Header("content-length"), "0") << started.head.first_line;
  EXPECT_EQ(started.head.Header("transfer-encoding"), "") << "never chunked";
  EXPECT_EQ(started.body, "");
  EXPECT_EQ(WaitDone(reg)["status"], "ready");
}

// --- POST /v2/templates/{id}/builds/{buildID} --------------------------------------------------

TEST_F(TemplateRoutesTest, StartRefusesABadSpecAndLeavesTheBuildWaiting) {
  json reg = Register({{"name", "spec"}});
  std::string tid = reg["templateID"], bid = reg["buildID"];
  std::string path = "/v2/templates/" + tid + "/builds/" + bid;
  EXPECT_TRUE(Contains(ErrorOf("POST", path, 400, R"({"fromImage":"x","fromTemplate":"base"})"),
                       "exactly one of fromImage and fromTemplate"));
  ErrorOf("POST", path, 400, R"({"steps":[]})");
  ErrorOf("POST", path, 400, R"({"fromImage":"","fromTemplate":""})");
  ErrorOf("POST", path, 400, R"({"fromImage":7})");
  ErrorOf("POST", path, 400, "");
  ErrorOf("POST", path, 400, "{");
  ErrorOf("POST", path, 400, R"({"fromTemplate":"base","steps":{}})");
  ErrorOf("POST", path, 400, R"({"fromTemplate":"base","steps":[{"args":["x"]}]})");
  ErrorOf("POST", path, 400, R"({"fromTemplate":"base","steps":[{"type":"RUN","args":[1]}]})");
  ErrorOf("POST", path, 400, R"({"fromTemplate":"base","steps":[{"type":"RUN","args":"x"}]})");
  ErrorOf("POST", path, 400, R"({"fromTemplate":"base","startCmd":5})");
  EXPECT_TRUE(Contains(ErrorOf("POST", "/v2/templates/" + tid + "/builds/not-a-uuid", 400,
                               R"({"fromTemplate":"base"})"),
                       "not a UUID"));
  // Another template's build, an unknown one, another team's.
  json other = Register({{"name", "spec2"}});
  ErrorOf("POST", "/v2/templates/" + tid + "/builds/" + other["buildID"].get<std::string>(), 404,
          R"({"fromTemplate":"base"})");
  ErrorOf("POST", "/v2/templates/" + tid + "/builds/6f1c2a3b-1111-4222-8333-444455556666", 404,
          R"({"fromTemplate":"base"})");
  ErrorOf("POST", path, 404, R"({"fromTemplate":"base"})", acme_key_);
  EXPECT_EQ(Call("POST", path, "", R"({"fromTemplate":"base"})").status(), 401);
  EXPECT_EQ(BuildStatus(reg)["status"], "waiting");
  EXPECT_EQ(BuildStatus(other)["status"], "waiting");

  // Unknown step fields are ignored (forceUpload, resolveSymlinks, gzip).
  EXPECT_EQ(Start(reg, {{"fromTemplate", "base"},
                        {"steps", {{{"type", "RUN"}, {"args", {"true"}}, {"gzip", true}}}},
                        {"someday", 1}}),
            202);
  EXPECT_EQ(ErrorOf("POST", path, 400, R"({"fromTemplate":"base"})"),
            "build is not in waiting state");
  EXPECT_EQ(WaitDone(reg)["status"], "ready");
  EXPECT_EQ(ErrorOf("POST", path, 400, R"({"fromTemplate":"base"})"),
            "build is not in waiting state");
  EXPECT_EQ(host_.CountCalls("build"), 1);
}

TEST_F(TemplateRoutesTest, TheHostGetsTheSpecWithItsBaseResolvedAndTheUploadedFiles) {
  json parent =
      Register({{"name", "parent"}, {"cpuCount", 4}, {"memoryMB", 2048}, {"minFreeDiskMb", 100}});
  std::string hash = HashOf('1');
  Uploaded(parent["templateID"], hash, AppTarGz());
  json steps = {{{"type", "RUN"}, {"args", {"echo hi", "root"}}, {"force", false}},
                {{"type", "COPY"},
                 {"args", {"app", "/app/", "user", "0755"}},
                 {"filesHash", hash},
                 {"forceUpload", true}},
                {{"type", "ENV"}, {"args", {"A", "1"}}}};
  ASSERT_EQ(Start(parent, {{"fromTemplate", "base"},
                           {"steps", steps},
                           {"startCmd", "python -m http.server 8000"},
                           {"readyCmd", "sleep 1"},
                           {"force", true}}),
            202);
  ASSERT_EQ(WaitDone(parent)["status"], "ready");
  ASSERT_EQ(host_.builds_received.size(), 1u);
  const HostTemplateBuild& got = host_.builds_received[0];
  EXPECT_EQ(got.build_id, parent["buildID"]);
  EXPECT_EQ(got.template_id, parent["templateID"]);
  EXPECT_EQ(got.start["fromTemplate"], "base");
  EXPECT_EQ(got.start["steps"], steps) << "the steps as sent, unknown fields included";
  EXPECT_EQ(got.start["startCmd"], "python -m http.server 8000");
  EXPECT_EQ(got.start["readyCmd"], "sleep 1");
  EXPECT_EQ(got.start["force"], true);
  EXPECT_EQ(got.vcpus, 4u);
  EXPECT_EQ(got.memory_mib, 2048u);
  EXPECT_EQ(got.min_free_disk_mib, 100u);
  ASSERT_EQ(got.files.size(), 1u);
  EXPECT_EQ(got.files.begin()->first, hash);
  EXPECT_EQ(got.files.begin()->second, dir_ + "/uploads/" + admin_.id + "/" + hash);
  EXPECT_TRUE(PathExists(got.files.begin()->second));

  // From the template by name, by name:tag and by id: the host gets its ready build's id.
  for (const std::string& from : {std::string("parent"), std::string("Parent:default"),
                                  parent["templateID"].get<std::string>()}) {
    json child = Register({{"name", "child"}});
    ASSERT_EQ(Start(child, {{"fromTemplate", from}}), 202);
    ASSERT_EQ(WaitDone(child)["status"], "ready") << from;
    EXPECT_EQ(host_.builds_received.back().start["fromTemplate"], parent["buildID"]) << from;
    EXPECT_TRUE(host_.builds_received.back().files.empty());
  }
  // An unknown base is no HTTP error: the build fails in step "base", before the host.
  size_t calls = host_.builds_received.size();
  for (const auto& [from, named] : std::vector<std::pair<std::string, std::string>>{
           {"nosuch", "'nosuch' not found"},
           {"parent:nosuchtag", "tag 'nosuchtag' does not exist"},
           {"bad name!", "'bad name!' not found"}}) {
    json child = Register({{"name", "child"}});
    ASSERT_EQ(Start(child, {{"fromTemplate", from}}), 202) << from;
    json s = WaitDone(child);
    EXPECT_EQ(s["status"], "error") << from;
    EXPECT_EQ(s["reason"]["step"], "base") << s.dump();
    EXPECT_TRUE(Contains(s["reason"]["message"], named)) << s.dump();
  }
  // Another team cannot build from this team's template.
  json theirs = Register({{"name", "theirs"}}, acme_key_);
  ASSERT_EQ(Start(theirs, {{"fromTemplate", "parent"}}, acme_key_), 202);
  EXPECT_EQ(WaitDone(theirs, acme_key_)["status"], "error");
  EXPECT_EQ(host_.builds_received.size(), calls) << "no failed base reached the host";
}

TEST_F(TemplateRoutesTest, ACopyOfFilesNeverUploadedFailsInItsStepWithoutTheHost) {
  json reg = Register({{"name", "missing"}});
  std::string hash = HashOf('7');
  ASSERT_EQ(Negotiate(reg["templateID"], hash)["present"], false);
  ASSERT_EQ(
      Start(reg, {{"fromTemplate", "base"},
                  {"steps",
                   {{{"type", "RUN"}, {"args", {"true"}}},
                    {{"type", "COPY"}, {"args", {"a", "/a", "", ""}}, {"filesHash", hash}}}}}),
      202);
  json s = WaitDone(reg);
  EXPECT_EQ(s["status"], "error");
  EXPECT_EQ(s["reason"]["step"], "2") << s.dump();
  EXPECT_TRUE(Contains(s["reason"]["message"], "never uploaded")) << s.dump();
  ASSERT_FALSE(s["reason"]["logEntries"].empty()) << s.dump();
  for (const auto& e : s["reason"]["logEntries"]) {
    EXPECT_EQ(e["step"], "2") << e.dump();
    EXPECT_TRUE(e["level"] == "error" || e["level"] == "warn") << e.dump();
  }
  EXPECT_EQ(host_.CountCalls("build"), 0);

  // A files hash that is no hash fails that step too.
  json bad = Register({{"name", "missing"}});
  ASSERT_EQ(
      Start(bad, {{"fromTemplate", "base"},
                  {"steps", {{{"type", "COPY"}, {"args", {"a", "/a"}}, {"filesHash", "../x"}}}}}),
      202);
  s = WaitDone(bad);
  EXPECT_EQ(s["status"], "error");
  EXPECT_EQ(s["reason"]["step"], "1") << s.dump();
  EXPECT_EQ(host_.CountCalls("build"), 0);
}

// --- GET .../status ------------------------------------------------------------------------------

TEST_F(TemplateRoutesTest, TheStatusPagesTheLogByOffsetUntilAnEmptyPage) {
  for (int i = 1; i <= 5; ++i) {
    host_.build_log.push_back({1700000000000 + i, i == 3 ? "warn" : "info", std::to_string(i),
                               "line " + std::to_string(i)});
  }
  json reg = Register({{"name", "logs"}});
  ASSERT_EQ(Start(reg, {{"fromTemplate", "base"}}), 202);
  ASSERT_EQ(WaitDone(reg)["status"], "ready");

  json all = BuildStatus(reg);
  ASSERT_EQ(all["logEntries"].size(), 7u) << "started, the host's five, ready: " << all.dump();
  EXPECT_TRUE(Contains(all["logEntries"][0]["message"], "started"));
  EXPECT_TRUE(Contains(all["logEntries"][6]["message"], "ready"));
  const json& third = all["logEntries"][3];
  EXPECT_EQ(third["message"], "line 3");
  EXPECT_EQ(third["level"], "warn");
  EXPECT_EQ(third["step"], "3");
  EXPECT_EQ(third["timestamp"], "2023-11-14T22:13:20.003Z");
  EXPECT_EQ(all["logs"], json::array());

  // As the SDK reads it: offset += page size, until a page is empty.
  std::vector<std::string> messages;
  int64_t offset = 0;
  for (int page = 0;; ++page) {
    ASSERT_LT(page, 10);
    json s = BuildStatus(reg, "?logsOffset=" + std::to_string(offset) + "&limit=3");
    ASSERT_TRUE(s["logEntries"].is_array());
    EXPECT_LE(s["logEntries"].size(), 3u);
    if (s["logEntries"].empty()) break;
    for (const auto& e : s["logEntries"]) messages.push_back(e["message"]);
    offset += static_cast<int64_t>(s["logEntries"].size());
  }
  ASSERT_EQ(messages.size(), 7u);
  for (size_t i = 0; i < 7; ++i) EXPECT_EQ(messages[i], all["logEntries"][i]["message"]);
  EXPECT_EQ(BuildStatus(reg, "?logsOffset=7")["logEntries"], json::array());
  EXPECT_EQ(BuildStatus(reg, "?logsOffset=1000")["logEntries"], json::array());
  EXPECT_EQ(BuildStatus(reg, "?logsOffset=-5")["logEntries"].size(), 7u);
  EXPECT_EQ(BuildStatus(reg, "?logsOffset=2&limit=0")["logEntries"].size(), 1u);
  ErrorOf("GET",
          "/templates/" + reg["templateID"].get<std::string>() + "/builds/" +
              reg["buildID"].get<std::string>() + "/status?logsOffset=abc",
          400);
}

TEST_F(TemplateRoutesTest, TheStatusPageIsCappedAtAHundredEntries) {
  for (int i = 0; i < 250; ++i) host_.build_log.push_back({1, "info", "1", std::to_string(i)});
  json reg = Register({{"name", "many"}});
  ASSERT_EQ(Start(reg, {{"fromTemplate", "base"}}), 202);
  ASSERT_EQ(WaitDone(reg)["status"], "ready");
  EXPECT_EQ(BuildStatus(reg)["logEntries"].size(), 100u);
  EXPECT_EQ(BuildStatus(reg, "?limit=1000")["logEntries"].size(), 100u);
  json last = BuildStatus(reg, "?logsOffset=200&limit=1000");
  ASSERT_EQ(last["logEntries"].size(), 52u);
  EXPECT_EQ(last["logEntries"][0]["message"], "199");
}

TEST_F(TemplateRoutesTest, TheStatusGoesFromBuildingToReadyOrToErrorWithTheFailingStep) {
  host_.HoldBuilds();
  host_.build_log = {{1, "info", "1", "step one output"}};
  json reg = Register({{"name", "states"}});
  ASSERT_EQ(Start(reg, {{"fromTemplate", "base"}}), 202);
  ASSERT_TRUE(host_.WaitForBuildsEntered(1, std::chrono::seconds(10)));
  EXPECT_EQ(BuildStatus(reg)["status"], "building");
  // The log so far is readable while the build runs.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (BuildStatus(reg)["logEntries"].size() < 2 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(20));
  }
  EXPECT_EQ(BuildStatus(reg)["logEntries"].size(), 2u) << "started, step one output";
  host_.ReleaseBuilds();
  json done = WaitDone(reg);
  EXPECT_EQ(done["status"], "ready");
  EXPECT_FALSE(done.contains("reason"));

  host_.build_log = {{1, "info", "1", "fine"},
                     {2, "info", "2", "compiling"},
                     {3, "warn", "2", "missing header"},
                     {4, "warn", "1", "an earlier warning"}};
  host_.build_failure = Internal("step 2: RUN exited with status 2");
  host_.build_failed_step = "2";
  json failed = Register({{"name", "states"}});
  ASSERT_EQ(Start(failed, {{"fromTemplate", "base"}}), 202);
  json s = WaitDone(failed);
  EXPECT_EQ(s["status"], "error");
  ASSERT_TRUE(s["reason"].is_object()) << s.dump();
  EXPECT_EQ(s["reason"]["message"], "step 2: RUN exited with status 2");
  EXPECT_EQ(s["reason"]["step"], "2");
  json reasons = s["reason"]["logEntries"];
  ASSERT_EQ(reasons.size(), 2u) << "step 2's warnings and errors: " << s.dump();
  EXPECT_EQ(reasons[0]["message"], "missing header");
  EXPECT_EQ(reasons[1]["level"], "error");
  EXPECT_TRUE(Contains(reasons[1]["message"], "exited with status 2"));
  EXPECT_EQ(BuildStatus(reg)["status"], "ready") << "the earlier build is untouched";

  // Unknown builds, another template's, another team's.
  std::string tid = reg["templateID"];
  ErrorOf("GET", "/templates/" + tid + "/builds/6f1c2a3b-1111-4222-8333-444455556666/status", 404);
  ErrorOf("GET", "/templates/" + tid + "/builds/nonsense/status", 404);
  json other = Register({{"name", "other"}});
  ErrorOf("GET", "/templates/" + tid + "/builds/" + other["buildID"].get<std::string>() + "/status",
          404);
  ErrorOf("GET", "/templates/" + tid + "/builds/" + reg["buildID"].get<std::string>() + "/status",
          404, "", acme_key_);
  // The status by the template's name works as by its id.
  EXPECT_EQ(
      CallJson("GET", "/templates/states/builds/" + reg["buildID"].get<std::string>() + "/status",
               200)["status"],
      "ready");
}

// --- After a ready build ------------------------------------------------------------------------

TEST_F(TemplateRoutesTest, AReadyTemplateIsFoundByAliasListedAndDescribed) {
  json reg = BuildFromBase({{"name", "web"}, {"cpuCount", 4}, {"memoryMB", 1024}});
  std::string tid = reg["templateID"];
  json alias = CallJson("GET", "/templates/aliases/web", 200);
  EXPECT_EQ(alias, (json{{"templateID", tid}, {"public", false}}));
  EXPECT_EQ(CallJson("GET", "/templates/aliases/web:default", 200)["templateID"], tid);
  EXPECT_EQ(CallJson("GET", "/templates/aliases/WEB", 200)["templateID"], tid);
  ErrorOf("GET", "/templates/aliases/web:nosuch", 404);
  ErrorOf("GET", "/templates/aliases/nosuch", 404);
  ErrorOf("GET", "/templates/aliases/web", 404, "", acme_key_);
  EXPECT_EQ(CallJson("GET", "/templates/aliases/base", 200)["public"], true);

  json list = CallJson("GET", "/templates", 200);
  ASSERT_EQ(list.size(), 1u) << list.dump();
  const json& t = list[0];
  EXPECT_EQ(t["templateID"], tid);
  EXPECT_EQ(t["buildID"], reg["buildID"]);
  EXPECT_EQ(t["cpuCount"], 4);
  EXPECT_EQ(t["memoryMB"], 1024);
  EXPECT_EQ(t["diskSizeMB"], 2048) << "what the host built";
  EXPECT_EQ(t["aliases"], json::array({"web"}));
  EXPECT_EQ(t["names"], json::array({"web"}));
  EXPECT_EQ(t["buildStatus"], "ready");
  EXPECT_EQ(t["buildCount"], 1);
  EXPECT_EQ(t["public"], false);
  EXPECT_TRUE(codec::ParseRfc3339(t["createdAt"].get<std::string>()).ok()) << t.dump();
  EXPECT_EQ(CallJson("GET", "/templates", 200, "", acme_key_), json::array());

  // A rebuild in progress does not change what the list shows as the template's build.
  json next = Register({{"name", "web"}});
  list = CallJson("GET", "/templates", 200);
  EXPECT_EQ(list[0]["buildID"], reg["buildID"]);
  EXPECT_EQ(list[0]["buildStatus"], "waiting");
  EXPECT_EQ(list[0]["buildCount"], 2);

  for (const std::string& id : {tid, std::string("web")}) {
    json info = CallJson("GET", "/templates/" + id, 200);
    EXPECT_EQ(info["templateID"], tid);
    ASSERT_EQ(info["builds"].size(), 2u) << info.dump();
    std::set<std::string> statuses;
    for (const auto& b : info["builds"]) statuses.insert(b["status"]);
    EXPECT_EQ(statuses, (std::set<std::string>{"ready", "waiting"}));
    ASSERT_EQ(info["tags"].size(), 1u) << info.dump();
    EXPECT_EQ(info["tags"][0]["tag"], "default");
    EXPECT_EQ(info["tags"][0]["buildID"], reg["buildID"]) << "the tag's ready build";
  }
  ErrorOf("GET", "/templates/" + tid, 404, "", acme_key_);
}

TEST_F(TemplateRoutesTest, ASandboxFromATemplateNameRunsItsLatestReadyBuild) {
  json first =
      BuildFromBase({{"name", "app"}, {"cpuCount", 4}, {"memoryMB", 2048}}, "ready", acme_key_);
  std::string tid = first["templateID"], b1 = first["buildID"];
  for (const std::string& name : {std::string("app"), std::string("App:default"),
                                  std::string("acme/app"), tid, std::string("app:") + b1}) {
    auto r = Call("POST", "/v2/sandboxes", acme_key_, json{{"templateID", name}}.dump());
    ASSERT_EQ(r.status(), 201) << name << ": " << r.body();
    json sbx = json::parse(r.body());
    EXPECT_EQ(sbx["templateID"], tid) << "the record names the E2B template id";
    std::string id = sbx["sandboxID"];
    EXPECT_EQ(host_.created_from[id], b1) << name << ": the host starts the build";
    json info = CallJson("GET", "/sandboxes/" + id, 200, "", acme_key_);
    EXPECT_EQ(info["templateID"], tid);
    EXPECT_EQ(info["cpuCount"], 4);
    EXPECT_EQ(info["memoryMB"], 2048);
  }
  // Not this team's, or no such tag, or nothing: 404, and nothing starts.
  size_t created = host_.created_from.size();
  CreateSandbox("app", 404);
  CreateSandbox(tid, 404);
  CreateSandbox("app:nosuch", 404, acme_key_);
  CreateSandbox("other/app", 404, acme_key_);
  EXPECT_EQ(host_.created_from.size(), created);

  // A newer build that fails does not replace the ready one.
  host_.build_failure = Internal("RUN exited with status 1");
  json failed = BuildFromBase({{"name", "app"}}, "error", acme_key_);
  std::string sbx = CreateSandbox("app", 201, acme_key_);
  EXPECT_EQ(host_.created_from[sbx], b1);
  // One still waiting does not either.
  json waiting = Register({{"name", "app"}}, acme_key_);
  sbx = CreateSandbox("app", 201, acme_key_);
  EXPECT_EQ(host_.created_from[sbx], b1);
  // A newer ready build does.
  host_.build_failure = Status::Ok();
  ASSERT_EQ(Start(waiting, {{"fromTemplate", "base"}}, acme_key_), 202);
  ASSERT_EQ(WaitDone(waiting, acme_key_)["status"], "ready");
  sbx = CreateSandbox("app", 201, acme_key_);
  EXPECT_EQ(host_.created_from[sbx], waiting["buildID"]);
  // The older build is still reachable by its id as a tag.
  sbx = CreateSandbox("app:" + b1, 201, acme_key_);
  EXPECT_EQ(host_.created_from[sbx], b1);
  CreateSandbox("app:" + failed["buildID"].get<std::string>(), 404, acme_key_);

  json list = CallJson("GET", "/templates", 200, "", acme_key_);
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0]["spawnCount"], 9) << list.dump();
  EXPECT_EQ(list[0]["buildID"], waiting["buildID"]);
}

TEST_F(TemplateRoutesTest, TagsAreAssignedListedAndRemoved) {
  json reg = BuildFromBase({{"name", "tg"}});
  std::string tid = reg["templateID"], b1 = reg["buildID"];
  json assigned =
      CallJson("POST", "/templates/tags", 201, R"({"target":"tg","tags":["prod","V1"]})");
  EXPECT_EQ(assigned["buildID"], b1);
  EXPECT_EQ(assigned["tags"], json::array({"prod", "v1"}));
  for (const std::string& id : {tid, std::string("tg")}) {
    json tags = CallJson("GET", "/templates/" + id + "/tags", 200);
    ASSERT_EQ(tags.size(), 3u) << tags.dump();
    std::set<std::string> names;
    for (const auto& t : tags) {
      names.insert(t["tag"]);
      EXPECT_EQ(t["buildID"], b1);
      EXPECT_TRUE(codec::ParseRfc3339(t["createdAt"].get<std::string>()).ok()) << t.dump();
    }
    EXPECT_EQ(names, (std::set<std::string>{"default", "prod", "v1"}));
  }
  EXPECT_EQ(CallJson("GET", "/templates/aliases/tg:prod", 200)["templateID"], tid);
  EXPECT_EQ(host_.created_from[CreateSandbox("tg:prod")], b1);

  // A new build of `default` leaves `prod` where it was.
  json b2 = BuildFromBase({{"name", "tg"}});
  EXPECT_EQ(host_.created_from[CreateSandbox("tg")], b2["buildID"]);
  EXPECT_EQ(host_.created_from[CreateSandbox("tg:prod")], b1);
  // Moving `prod` to the new build.
  EXPECT_EQ(CallJson("POST", "/templates/tags", 201,
                     R"({"target":"tg:default","tags":["prod"]})")["buildID"],
            b2["buildID"]);
  EXPECT_EQ(host_.created_from[CreateSandbox("tg:prod")], b2["buildID"]);

  Call("DELETE", "/templates/tags", kAdminKey, R"({"name":"tg","tags":["prod"]})");
  auto removed = Call("DELETE", "/templates/tags", kAdminKey, R"({"name":"tg","tags":["v1"]})");
  EXPECT_EQ(removed.status(), 204) << removed.body();
  EXPECT_EQ(removed.body(), "");
  ErrorOf("GET", "/templates/aliases/tg:prod", 404);
  CreateSandbox("tg:prod", 404);
  ErrorOf("DELETE", "/templates/tags", 404, R"({"name":"tg","tags":["prod"]})");
  ErrorOf("DELETE", "/templates/tags", 404, R"({"name":"tg","tags":["default"]})", acme_key_);
  EXPECT_EQ(CallJson("GET", "/templates/tg/tags", 200).size(), 1u);

  // Bad requests.
  ErrorOf("POST", "/templates/tags", 400, R"({"target":"tg"})");
  ErrorOf("POST", "/templates/tags", 400, R"({"target":"tg","tags":[]})");
  ErrorOf("POST", "/templates/tags", 400, R"({"target":"tg","tags":["bad tag"]})");
  ErrorOf("POST", "/templates/tags", 400,
          R"({"target":"tg","tags":["6f1c2a3b-1111-4222-8333-444455556666"]})");
  ErrorOf("POST", "/templates/tags", 404, R"({"target":"tg:nosuch","tags":["x"]})");
  ErrorOf("POST", "/templates/tags", 404, R"({"target":"tg","tags":["x"]})", acme_key_);
  ErrorOf("DELETE", "/templates/tags", 400, R"({"tags":["x"]})");
  ErrorOf("GET", "/templates/tg/tags", 404, "", acme_key_);
}

TEST_F(TemplateRoutesTest, DeleteWaitsForTheTemplatesSandboxesAndRemovesItsBuildsOnTheHost) {
  json b1 = BuildFromBase({{"name", "del"}});
  json b2 = BuildFromBase({{"name", "del"}, {"tags", {"v2"}}});
  host_.build_failure = Internal("no");
  json b3 = BuildFromBase({{"name", "del"}}, "error");
  host_.build_failure = Status::Ok();
  json waiting = Register({{"name", "del"}, {"tags", {"v3"}}});
  std::string tid = b1["templateID"];
  std::string sbx = CreateSandbox("del");
  ASSERT_FALSE(sbx.empty());

  EXPECT_TRUE(Contains(ErrorOf("DELETE", "/templates/del", 409), sbx));
  ErrorOf("DELETE", "/templates/" + tid, 404, "", acme_key_);
  ErrorOf("DELETE", "/templates/del", 404, "", acme_key_);
  EXPECT_TRUE(host_.deleted_builds.empty());
  // Paused, it still holds the template.
  ASSERT_EQ(Call("POST", "/sandboxes/" + sbx + "/pause", kAdminKey).status(), 204);
  ErrorOf("DELETE", "/templates/del", 409);
  ASSERT_EQ(Call("DELETE", "/sandboxes/" + sbx, kAdminKey).status(), 204);

  auto r = Call("DELETE", "/templates/" + tid, kAdminKey);
  EXPECT_EQ(r.status(), 204) << r.body();
  std::multiset<std::string> deleted(host_.deleted_builds.begin(), host_.deleted_builds.end());
  EXPECT_EQ(deleted, (std::multiset<std::string>{b1["buildID"], b2["buildID"]}))
      << "each ready build, once";
  ErrorOf("GET", "/templates/" + tid, 404);
  ErrorOf("GET", "/templates/aliases/del", 404);
  EXPECT_EQ(CallJson("GET", "/templates", 200), json::array());
  ErrorOf("GET", "/templates/" + tid + "/builds/" + b1["buildID"].get<std::string>() + "/status",
          404);
  ErrorOf("DELETE", "/templates/" + tid, 404);
  CreateSandbox("del", 404);
  // The name is free again: a new template.
  EXPECT_NE(Register({{"name", "del"}})["templateID"], tid);
}

TEST_F(TemplateRoutesTest, DeleteRefusesWhileABuildRuns) {
  json reg = BuildFromBase({{"name", "busy"}});
  host_.HoldBuilds();
  json running = Register({{"name", "busy"}});
  ASSERT_EQ(Start(running, {{"fromTemplate", "base"}}), 202);
  ASSERT_TRUE(host_.WaitForBuildsEntered(2, std::chrono::seconds(10)));
  EXPECT_TRUE(Contains(ErrorOf("DELETE", "/templates/busy", 409), "build running"));
  host_.ReleaseBuilds();
  ASSERT_EQ(WaitDone(running)["status"], "ready");
  EXPECT_EQ(Call("DELETE", "/templates/busy", kAdminKey).status(), 204);
  EXPECT_EQ(host_.deleted_builds.size(), 2u);
}

// --- Concurrency
// ----------------------------------------------------------------------------------

TEST_F(TemplateRoutesTest, BuildsOfOneTemplateRunOneAfterTheOther) {
  host_.HoldBuilds();
  json first = Register({{"name", "serial"}});
  ASSERT_EQ(Start(first, {{"fromTemplate", "base"}}), 202);
  ASSERT_TRUE(host_.WaitForBuildsEntered(1, std::chrono::seconds(10)));
  json second = Register({{"name", "serial"}});
  ASSERT_EQ(Start(second, {{"fromTemplate", "base"}}), 202);
  EXPECT_FALSE(host_.WaitForBuildsEntered(2, milliseconds(300)))
      << "the second waits for the first";
  EXPECT_EQ(BuildStatus(second)["status"], "building") << "started, queued behind the first";
  host_.ReleaseBuild(first["buildID"]);
  ASSERT_TRUE(host_.WaitForBuildsEntered(2, std::chrono::seconds(10)));
  EXPECT_EQ(WaitDone(first)["status"], "ready");
  EXPECT_EQ(BuildStatus(second)["status"], "building");
  host_.ReleaseBuild(second["buildID"]);
  EXPECT_EQ(WaitDone(second)["status"], "ready");
  EXPECT_EQ(host_.max_concurrent_builds, 1u);
  ASSERT_EQ(host_.builds_received.size(), 2u);
  EXPECT_EQ(host_.builds_received[0].build_id, first["buildID"]);
  EXPECT_EQ(host_.builds_received[1].build_id, second["buildID"]);
}

TEST_F(TemplateRoutesTest, BuildsOfTwoTemplatesRunAtOnce) {
  host_.HoldBuilds();
  json a = Register({{"name", "para-a"}});
  json b = Register({{"name", "para-b"}});
  json c = Register({{"name", "para-b"}}, acme_key_);
  ASSERT_EQ(Start(a, {{"fromTemplate", "base"}}), 202);
  ASSERT_EQ(Start(b, {{"fromTemplate", "base"}}), 202);
  ASSERT_EQ(Start(c, {{"fromTemplate", "base"}}, acme_key_), 202);
  EXPECT_TRUE(host_.WaitForBuildsEntered(3, std::chrono::seconds(10)))
      << "all three inside the host at once";
  EXPECT_EQ(host_.max_concurrent_builds, 3u);
  EXPECT_EQ(controller_->templates()->running(), 3u);
  host_.ReleaseBuilds();
  EXPECT_EQ(WaitDone(a)["status"], "ready");
  EXPECT_EQ(WaitDone(b)["status"], "ready");
  EXPECT_EQ(WaitDone(c, acme_key_)["status"], "ready");
}

}  // namespace
}  // namespace moat::api
