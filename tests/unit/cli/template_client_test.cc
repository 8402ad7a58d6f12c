// `moat template build` against an in-process fake of moatd's template API: the five calls of
// E2B-TEMPLATES §1 in order, what each carries (the upload's Content-Length and no API key, the
// start body), the log polled by logsOffset to the final empty page; and what `template`
// prints.
#include "cli/template_client.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>
#include <string>
#include <vector>

#include "api/codec/gzip.h"
#include "api/http/server.h"
#include "cli/template_output.h"
#include "common/fs.h"

namespace moat::cli {
namespace {

namespace http = api::http;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

struct Recorded {
  std::string method;
  std::string path;
  std::string query;
  http::Headers headers;
  std::string body;
};

// The names in a plain tar, read block by block (GNU long names included).
std::vector<std::string> TarNames(const std::string& tar) {
  std::vector<std::string> names;
  std::string long_name;
  for (size_t at = 0; at + 512 <= tar.size();) {
    const std::string_view header(tar.data() + at, 512);
    if (header.find_first_not_of('\0') == std::string_view::npos) break;
    const size_t size = std::stoul(std::string(header.substr(124, 11)), nullptr, 8);
    const char type = header[156];
    std::string name(header.substr(0, 100).data(), strnlen(header.data(), 100));
    std::string data = tar.substr(at + 512, size);
    at += 512 + (size + 511) / 512 * 512;
    if (type == 'L') {
      long_name = data.substr(0, data.find('\0'));
      continue;
    }
    names.push_back(long_name.empty() ? name : long_name);
    long_name.clear();
  }
  return names;
}

// moatd's template routes, answered from a script: `cached` hashes are present; the status
// endpoint serves `pages` one per call (the last one again once they run out).
class FakeTemplateApi {
 public:
  struct Page {
    std::string status;
    std::vector<std::string> messages;
    std::string reason;
  };

  FakeTemplateApi() {
    auto server = http::HttpServer::Start(
        http::ServerOptions{},
        [this](http::Request& req, http::ResponseWriter& w) { Handle(req, w); },
        [](const Status&, int code, http::ResponseWriter& w) { (void)w.Send(code, {}, ""); });
    EXPECT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(*server);
  }

  ApiClient Client() {
    auto base = ParseBaseUrl("http://127.0.0.1:" + std::to_string(server_->port()));
    return ApiClient(ApiConfig{.base = *base, .api_key = "k-secret"});
  }

  std::vector<Recorded> requests() {
    std::lock_guard lock(mu_);
    return requests_;
  }

  std::vector<std::string> cached;
  std::vector<Page> pages;
  int upload_status = 200;

 private:
  void Json(http::ResponseWriter& w, int status, const json& body) {
    (void)w.Send(status, {{"Content-Type", "application/json"}}, body.dump());
  }

  void Handle(http::Request& req, http::ResponseWriter& w) {
    size_t status_calls = 0;
    {
      std::lock_guard lock(mu_);
      requests_.push_back({req.method, req.path, req.raw_query, req.headers, req.body});
      for (const auto& r : requests_) status_calls += r.path.find("/status") != std::string::npos;
    }
    const std::string& p = req.path;
    if (req.method == "POST" && p == "/v3/templates") {
      return Json(w, 202,
                  {{"templateID", "tpl123"},
                   {"buildID", "b-1"},
                   {"names", {"my-tpl"}},
                   {"aliases", {"my-tpl"}},
                   {"tags", {"default"}},
                   {"public", false}});
    }
    const std::string files = "/templates/tpl123/files/";
    if (req.method == "GET" && p.rfind(files, 0) == 0) {
      const std::string hash = p.substr(files.size());
      const bool present = std::find(cached.begin(), cached.end(), hash) != cached.end();
      return Json(w, 201,
                  {{"present", present},
                   {"url", "http://127.0.0.1:" + std::to_string(server_->port()) + "/upload/" +
                               hash + "?token=t0k"}});
    }
    if (req.method == "PUT" && p.rfind("/upload/", 0) == 0) {
      return (void)w.Send(upload_status, {}, "");
    }
    if (req.method == "POST" && p == "/v2/templates/tpl123/builds/b-1") {
      return (void)w.Send(202, {}, "");  // empty, with Content-Length: 0
    }
    if (req.method == "GET" && p == "/templates/tpl123/builds/b-1/status") {
      const Page& page = pages.at(std::min(status_calls, pages.size()) - 1);
      json entries = json::array();
      for (const auto& m : page.messages) {
        entries.push_back({{"timestamp", "2026-08-22T10:00:00Z"},
                           {"level", "info"},
                           {"message", m},
                           {"step", "1"}});
      }
      json body = {{"templateID", "tpl123"},
                   {"buildID", "b-1"},
                   {"status", page.status},
                   {"logEntries", entries},
                   {"logs", json::array()}};
      if (!page.reason.empty()) body["reason"] = {{"message", page.reason}};
      return Json(w, 200, body);
    }
    if (req.method == "DELETE" && p == "/templates/gone") {
      return Json(w, 404, {{"code", 404}, {"message", "template 'gone' not found"}});
    }
    if (req.method == "DELETE" && p == "/templates/my-tpl") return (void)w.Send(204, {}, "");
    Json(w, 404, {{"code", 404}, {"message", "no route"}});
  }

  std::mutex mu_;
  std::vector<Recorded> requests_;
  std::unique_ptr<http::HttpServer> server_;
};

class TemplateBuildTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = MakeTempDir(::testing::TempDir(), "moat-build-");
    ASSERT_TRUE(dir.ok());
    root_ = *dir;
    ASSERT_TRUE(MakeDirs(root_ + "/app/sub").ok());
    ASSERT_TRUE(MakeDirs(root_ + "/lib").ok());
    ASSERT_TRUE(WriteFileAtomic(root_ + "/app/main.py", "print('hi')\n").ok());
    ASSERT_TRUE(WriteFileAtomic(root_ + "/app/sub/util.py", "x = 1\n").ok());
    ASSERT_TRUE(WriteFileAtomic(root_ + "/lib/helper.sh", "true\n").ok());
    auto dockerfile = ParseDockerfile(
        "FROM python:3.12\nCOPY app /home/user/app/\nRUN pip install flask\nCOPY lib /opt/lib/\n"
        "CMD python app/main.py\n");
    ASSERT_TRUE(dockerfile.ok()) << dockerfile.status().ToString();
    dockerfile_ = std::move(*dockerfile);
    auto context = BuildContext::Open(root_);
    ASSERT_TRUE(context.ok());
    context_ = std::make_unique<BuildContext>(std::move(*context));
    auto copies = PrepareCopies(*context_, dockerfile_);
    ASSERT_TRUE(copies.ok()) << copies.status().ToString();
    ASSERT_EQ(copies->size(), 2u);
    app_hash_ = (*copies)[0].files_hash;
    lib_hash_ = (*copies)[1].files_hash;
  }
  void TearDown() override { (void)RemoveTree(root_); }

  Result<TemplateBuildResult> Build(FakeTemplateApi& fake, std::vector<std::string>* log) {
    ApiClient api = fake.Client();
    TemplateBuildOptions options{.name = "my-tpl",
                                 .cpu_count = 4,
                                 .memory_mb = 2048,
                                 .min_free_disk_mb = std::nullopt,
                                 .no_cache = false,
                                 .poll_interval = std::chrono::milliseconds(1)};
    int polls = 0;
    BuildObserver observer{.log = [log](const BuildLogLine& l) { log->push_back(l.message); },
                           .polled = [&polls] { ++polls; }};
    auto r = BuildTemplate(api, *context_, dockerfile_, options, observer);
    EXPECT_GT(polls, 0);
    return r;
  }

  std::string root_;
  DockerfileTemplate dockerfile_;
  std::unique_ptr<BuildContext> context_;
  std::string app_hash_;
  std::string lib_hash_;
};

TEST_F(TemplateBuildTest, MakesTheFiveCallsInOrderAndFollowsTheLogToTheEmptyPage) {
  FakeTemplateApi fake;
  fake.cached = {lib_hash_};
  fake.pages = {{"building", {"[builder 1/6] FROM python:3.12", "[builder 2/6] COPY app"}, ""},
                {"building", {}, ""},
                {"ready", {"Build finished"}, ""},
                {"ready", {}, ""}};
  std::vector<std::string> log;
  auto r = Build(fake, &log);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->template_id, "tpl123");
  EXPECT_EQ(r->build_id, "b-1");
  EXPECT_EQ(r->name, "my-tpl");

  std::vector<Recorded> reqs = fake.requests();
  std::vector<std::string> calls;
  for (const auto& q : reqs)
    calls.push_back(q.method + " " + q.path + (q.query.empty() ? "" : "?" + q.query));
  EXPECT_THAT(calls, ElementsAre("POST /v3/templates", "GET /templates/tpl123/files/" + app_hash_,
                                 "PUT /upload/" + app_hash_ + "?token=t0k",
                                 "GET /templates/tpl123/files/" + lib_hash_,
                                 "POST /v2/templates/tpl123/builds/b-1",
                                 "GET /templates/tpl123/builds/b-1/status?logsOffset=0",
                                 "GET /templates/tpl123/builds/b-1/status?logsOffset=2",
                                 "GET /templates/tpl123/builds/b-1/status?logsOffset=2",
                                 "GET /templates/tpl123/builds/b-1/status?logsOffset=3"));

  // Control calls carry the key; the register body has the resources and no disk field unset.
  EXPECT_EQ(reqs[0].headers["X-API-Key"], "k-secret");
  EXPECT_EQ(json::parse(reqs[0].body),
            json({{"name", "my-tpl"}, {"cpuCount", 4}, {"memoryMB", 2048}}));

  // The upload: a tar.gz of the step's files with an explicit length and no API key.
  const Recorded& put = reqs[2];
  EXPECT_EQ(put.headers.count("X-API-Key"), 0u);
  EXPECT_EQ(put.headers.count("Transfer-Encoding"), 0u);
  EXPECT_EQ(put.headers.at("Content-Length"), std::to_string(put.body.size()));
  auto tar = api::codec::GunzipBounded(put.body, 1 << 20);
  ASSERT_TRUE(tar.ok()) << tar.status().ToString();
  EXPECT_THAT(TarNames(*tar), ElementsAre("app/", "app/main.py", "app/sub/", "app/sub/util.py"));

  // The start body: the steps with each COPY's hash, the start and ready commands.
  json start = json::parse(reqs[4].body);
  EXPECT_EQ(start["fromImage"], "python:3.12");
  EXPECT_EQ(start["force"], false);
  EXPECT_EQ(start["startCmd"], "python app/main.py");
  EXPECT_EQ(start["readyCmd"], "sleep 20");
  ASSERT_EQ(start["steps"].size(), 7u);
  EXPECT_EQ(start["steps"][2], json({{"type", "COPY"},
                                     {"args", {"app", "/home/user/app/", "", ""}},
                                     {"force", false},
                                     {"filesHash", app_hash_}}));
  EXPECT_EQ(start["steps"][3],
            json({{"type", "RUN"}, {"args", {"pip install flask"}}, {"force", false}}));
  EXPECT_EQ(start["steps"][4]["filesHash"], lib_hash_);

  // The server's lines in order, between the client's own.
  std::vector<std::string> server_lines;
  bool skipped = false;
  for (const auto& line : log) {
    if (line.rfind("[builder", 0) == 0 || line == "Build finished") server_lines.push_back(line);
    skipped = skipped || line == "Skipping upload of 'lib', already cached";
  }
  EXPECT_TRUE(skipped);
  EXPECT_THAT(server_lines, ElementsAre("[builder 1/6] FROM python:3.12", "[builder 2/6] COPY app",
                                        "Build finished"));
}

TEST_F(TemplateBuildTest, UploadsAHashSharedByTwoStepsOnce) {
  auto twice = ParseDockerfile("FROM x\nCOPY app /a/\nRUN true\nCOPY app /a/\n");
  ASSERT_TRUE(twice.ok());
  dockerfile_ = std::move(*twice);
  FakeTemplateApi fake;
  fake.pages = {{"ready", {}, ""}};
  std::vector<std::string> log;
  ASSERT_TRUE(Build(fake, &log).ok());
  int files_calls = 0;
  for (const auto& q : fake.requests()) files_calls += q.path.find("/files/") != std::string::npos;
  EXPECT_EQ(files_calls, 1);
}

TEST_F(TemplateBuildTest, FailsWithTheReasonOnceTheErrorLogIsDrained) {
  FakeTemplateApi fake;
  fake.cached = {app_hash_, lib_hash_};
  fake.pages = {{"building", {"step 3"}, ""},
                {"error", {"pip: no such package"}, "RUN pip install flask: exit status 1"},
                {"error", {}, "RUN pip install flask: exit status 1"}};
  std::vector<std::string> log;
  auto r = Build(fake, &log);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kFailedPrecondition);
  EXPECT_EQ(r.status().message(), "build b-1 failed: RUN pip install flask: exit status 1");
  EXPECT_THAT(log, ::testing::Contains("pip: no such package"));
  int puts = 0;
  for (const auto& q : fake.requests()) puts += q.method == "PUT";
  EXPECT_EQ(puts, 0);  // everything was cached
}

TEST_F(TemplateBuildTest, StopsAtARefusedUploadNamingTheStep) {
  FakeTemplateApi fake;
  fake.upload_status = 403;
  fake.pages = {{"ready", {}, ""}};
  std::vector<std::string> log;
  ApiClient api = fake.Client();
  auto r = BuildTemplate(api, *context_, dockerfile_, TemplateBuildOptions{.name = "my-tpl"},
                         BuildObserver{});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kPermissionDenied);
  EXPECT_THAT(r.status().message(), HasSubstr("uploading the files of COPY app"));
  for (const auto& q : fake.requests()) EXPECT_NE(q.path, "/v2/templates/tpl123/builds/b-1");
}

TEST_F(TemplateBuildTest, RegistersNothingWhenACopySourceIsMissing) {
  auto missing = ParseDockerfile("FROM x\nRUN true\nCOPY nope /a/\n");
  ASSERT_TRUE(missing.ok());
  dockerfile_ = std::move(*missing);
  FakeTemplateApi fake;
  ApiClient api = fake.Client();
  auto r = BuildTemplate(api, *context_, dockerfile_, TemplateBuildOptions{.name = "x"},
                         BuildObserver{});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("Dockerfile line 3: COPY nope: no files found"));
  EXPECT_TRUE(fake.requests().empty());
}

TEST(DeleteTemplate, SaysWhichTemplateWasNotFound) {
  FakeTemplateApi fake;
  ApiClient api = fake.Client();
  EXPECT_TRUE(DeleteTemplate(api, "my-tpl").ok());
  Status gone = DeleteTemplate(api, "gone");
  EXPECT_EQ(gone.code(), ErrorCode::kNotFound);
  EXPECT_EQ(gone.message(), "template gone not found");
  auto info = GetTemplate(api, "gone");
  ASSERT_FALSE(info.ok());
  EXPECT_EQ(info.status().message(), "template gone not found");
}

TEST(BuildStartBody, SendsForceAndOmitsStartAndReadyWithoutACommand) {
  auto t = ParseDockerfile("FROM e2bdev/base\n");
  ASSERT_TRUE(t.ok());
  json body = BuildStartBody(*t, {}, /*force=*/true);
  EXPECT_EQ(body["force"], true);
  EXPECT_FALSE(body.contains("startCmd"));
  EXPECT_FALSE(body.contains("readyCmd"));
  EXPECT_FALSE(body.contains("fromTemplate"));
  EXPECT_EQ(body["steps"].size(), 4u);
}

TEST(TemplateNameFromDir, LowerCasesTheBaseNameAndReplacesOtherCharacters) {
  EXPECT_EQ(TemplateNameFromDir("/home/me/My App.v2/"), "my-app-v2");
  EXPECT_EQ(TemplateNameFromDir("/srv/web_api"), "web_api");
  EXPECT_EQ(TemplateNameFromDir("/tmp/--Ünï--"), "n");
  EXPECT_EQ(TemplateNameFromDir("/"), "");
}

TEST(ParseUrl, SplitsAnAbsoluteUrlIntoWhereToConnectAndTheTarget) {
  auto u = ParseUrl("http://10.0.0.5:3000/upload?path=a%2Fb&token=x#frag");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->base.host, "10.0.0.5");
  EXPECT_EQ(u->base.port, "3000");
  EXPECT_EQ(u->target, "/upload?path=a%2Fb&token=x");
  EXPECT_EQ(ParseUrl("http://h?x=1")->target, "/?x=1");
  EXPECT_EQ(ParseUrl("http://h")->target, "/");
  EXPECT_FALSE(ParseUrl("https://s3.example.com/b?sig=1").ok());
}

class TemplateOutputTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* tz = std::getenv("TZ");
    saved_tz_ = tz ? std::optional<std::string>(tz) : std::nullopt;
    ::setenv("TZ", "UTC", 1);
    ::tzset();
  }
  void TearDown() override {
    if (saved_tz_) {
      ::setenv("TZ", saved_tz_->c_str(), 1);
    } else {
      ::unsetenv("TZ");
    }
    ::tzset();
  }
  std::optional<std::string> saved_tz_;
};

TEST_F(TemplateOutputTest, PrintsALogLineAsLocalTimeLevelAndCleanMessage) {
  EXPECT_EQ(FormatBuildLogLine({"2026-08-22T10:11:12.345Z", "info", "\x1b[32mdone\x1b[0m\r\n"}),
            "10:11:12 info  done");
  EXPECT_EQ(FormatBuildLogLine({"2026-08-22T10:11:12+02:00", "error", "bad\x07 thing"}),
            "08:11:12 error bad thing");
  EXPECT_EQ(FormatBuildLogLine({"garbage", "warn", "x"}), "--:--:-- warn  x");
}

TEST(BuildProgressLabel, TakesTheStepCounterFromBuilderLines) {
  EXPECT_EQ(BuildProgressLabel("[builder 3/7] RUN pip install flask"),
            "[3/7] RUN pip install flask");
  EXPECT_EQ(BuildProgressLabel("CACHED [builder 2/7] COPY app /app/ [abc]"),
            "[2/7] COPY app /app/ [abc]");
  EXPECT_EQ(BuildProgressLabel("[4/9] WORKDIR /srv"), "[4/9] WORKDIR /srv");
  EXPECT_EQ(BuildProgressLabel("Collecting flask"), std::nullopt);
}

TEST(FormatTemplateList, ShowsOneRowPerTemplate) {
  json list = json::parse(R"([{"templateID":"k3v9","buildID":"b1","cpuCount":2,"memoryMB":1024,
    "diskSizeMB":5120,"public":false,"aliases":["my-tpl"],"names":["my-tpl"],
    "createdAt":"2026-08-22T10:00:00Z","updatedAt":"2026-08-22T11:00:00Z","buildStatus":"ready"}])");
  EXPECT_EQ(
      FormatTemplateList(list),
      "TEMPLATE ID  NAMES   STATUS  VCPU  MEM(MiB)  DISK(MiB)  PUBLIC  UPDATED\n"
      "k3v9         my-tpl  ready   2     1024      5120       false   2026-08-22T11:00:00Z\n");
}

TEST(FormatTemplateInfo, ShowsTheFieldsThenTheBuilds) {
  json t = json::parse(R"({"templateID":"k3v9","aliases":["my-tpl"],"public":false,
    "builds":[{"buildID":"b1","status":"ready","createdAt":"c1","finishedAt":"f1","cpuCount":2,
               "memoryMB":1024},
              {"buildID":"b2","status":"building","createdAt":"c2","finishedAt":null,
               "cpuCount":2,"memoryMB":1024}]})");
  EXPECT_EQ(FormatTemplateInfo(t),
            "templateID:  k3v9\n"
            "aliases:     my-tpl\n"
            "public:      false\n"
            "\n"
            "BUILD ID  STATUS    VCPU  MEM(MiB)  CREATED  FINISHED\n"
            "b1        ready     2     1024      c1       f1\n"
            "b2        building  2     1024      c2       -\n");
  EXPECT_THAT(FormatTemplateInfo(json::parse(R"({"templateID":"x"})")), HasSubstr("builds: none"));
}

}  // namespace
}  // namespace moat::cli
