#include "guest/request.h"

#include <gtest/gtest.h>

#include "guest/exec.h"
#include "guest/identity.h"

namespace moat::guest {
namespace {

TEST(RequestFields, WrongTypesAreInvalidArgumentsNamingTheField) {
  Json req = {{"pid", "12"}, {"argv", {"a", 1}}, {"env", {{"A", 1}}}, {"stdin", "yes"}};
  auto pid = OptInt(req, "pid", 1, 100);
  EXPECT_EQ(pid.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(pid.status().message().find("\"pid\""), std::string::npos);
  EXPECT_FALSE(OptStringArray(req, "argv").ok());
  EXPECT_FALSE(OptStringMap(req, "env").ok());
  EXPECT_FALSE(OptBool(req, "stdin").ok());
}

TEST(RequestFields, AbsentAndNullAreEmptyAndRangesAreChecked) {
  Json req = {{"a", nullptr}, {"n", 5}, {"big", UINT64_MAX}, {"neg", -1}};
  auto a = OptString(req, "a");
  ASSERT_TRUE(a.ok());
  EXPECT_FALSE(a->has_value());
  EXPECT_FALSE(OptString(req, "missing")->has_value());
  EXPECT_EQ(**OptInt(req, "n", 0, 10), 5);
  EXPECT_FALSE(OptInt(req, "n", 6, 10).ok());
  EXPECT_FALSE(OptInt(req, "big", 0, INT64_MAX).ok());
  EXPECT_FALSE(OptInt(req, "neg", 0, 10).ok());
  EXPECT_EQ(RequiredString(req, "missing").status().code(), ErrorCode::kInvalidArgument);
}

TEST(RequestFields, NonObjectRequestsHaveNoFields) {
  EXPECT_FALSE(OptString(Json::array(), "x")->has_value());
  EXPECT_FALSE(RequiredInt(Json(3), "pid", 0, 1).ok());
}

TEST(DumpJson, ReplacesInvalidUtf8InsteadOfThrowing) {
  Json j = {{"name", std::string("bad\xff")}};
  EXPECT_NO_THROW(DumpJson(j));
  EXPECT_NE(DumpJson(j).find("bad"), std::string::npos);
}

TEST(EndJson, CarriesTheCodeName) {
  EXPECT_EQ(EndJson(Status::Ok()), Json::object());
  Json e = EndJson(NotFound("no process 7"));
  EXPECT_EQ(e["error"]["code"], "not_found");
  EXPECT_EQ(e["error"]["message"], "no process 7");
}

UserTable Users() {
  return UserTable::FromText(
      "root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/bash\n", "");
}

TEST(ParseExecRequest, RejectsBadShapes) {
  Defaults d;
  EXPECT_EQ(ParseExecRequest({{"op", "exec"}}, d, Users()).status().code(),
            ErrorCode::kInvalidArgument);
  EXPECT_FALSE(ParseExecRequest({{"argv", Json::array()}}, d, Users()).ok());
  EXPECT_FALSE(ParseExecRequest({{"argv", {"sh"}}, {"cmd", "x"}}, d, Users()).ok());
  EXPECT_FALSE(ParseExecRequest({{"argv", {"sh"}}, {"pty", 3}}, d, Users()).ok());
  EXPECT_FALSE(ParseExecRequest({{"argv", {"sh"}}, {"env", {{"A=B", "c"}}}}, d, Users()).ok());
  EXPECT_FALSE(ParseExecRequest({{"argv", {"sh"}}, {"timeout_ms", -5}}, d, Users()).ok());
  EXPECT_EQ(ParseExecRequest({{"argv", {"sh"}}, {"user", "ghost"}}, d, Users()).status().code(),
            ErrorCode::kNotFound);
}

TEST(ParseExecRequest, FillsInUserEnvironmentAndProgramPath) {
  Defaults d;
  d.env = {{"FROM_IDENTITY", "1"}};
  auto spec = ParseExecRequest(
      {{"argv", {"sh", "-c", "true"}}, {"env", {{"X", "y"}}}, {"user", "root"}, {"cwd", "/"}}, d,
      Users());
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->argv[0].front(), '/');  // resolved in PATH
  EXPECT_EQ(spec->cwd, "/");
  auto has = [&](const std::string& kv) {
    return std::find(spec->env.begin(), spec->env.end(), kv) != spec->env.end();
  };
  EXPECT_TRUE(has("X=y"));
  EXPECT_TRUE(has("FROM_IDENTITY=1"));
  EXPECT_TRUE(has("HOME=/root"));
  EXPECT_TRUE(has("USER=root"));
  EXPECT_TRUE(has("LOGNAME=root"));
  EXPECT_TRUE(has("SHELL=/bin/bash"));
}

TEST(ResolveUser, PrefersRequestThenIdentityThenUserThenRoot) {
  Defaults d;
  EXPECT_EQ(ResolveUser(std::nullopt, d, Users())->name, "user");
  EXPECT_EQ(ResolveUser(std::string("root"), d, Users())->name, "root");
  d.user = "root";
  EXPECT_EQ(ResolveUser(std::nullopt, d, Users())->name, "root");
  EXPECT_EQ(ResolveUser(std::nullopt, Defaults{}, UserTable::FromText("", ""))->name, "root");
}

TEST(FindProgram, SearchesPathAndReportsMissingProgramsAsNotFound) {
  auto sh = FindProgram("sh", "/nonexistent:/bin:/usr/bin", "/");
  ASSERT_TRUE(sh.ok());
  EXPECT_EQ(sh->substr(sh->size() - 3), "/sh");
  EXPECT_EQ(FindProgram("no-such-program-moat", "/bin", "/").status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(FindProgram("./nope", "/bin", "/tmp").status().code(), ErrorCode::kNotFound);
}

TEST(ParseIdentity, ValidatesEntropyAndHostname) {
  EXPECT_FALSE(ParseIdentity({{"entropy", "abc"}}).ok());                 // odd length
  EXPECT_FALSE(ParseIdentity({{"entropy", std::string(64, 'z')}}).ok());  // not hex
  EXPECT_FALSE(ParseIdentity({{"entropy", "abcd"}}).ok());                // too short
  EXPECT_FALSE(ParseIdentity({{"unix_ns", "now"}}).ok());
  EXPECT_FALSE(ParseIdentity({{"hostname", ""}}).ok());
  auto id = ParseIdentity({{"entropy", std::string(64, 'a')},
                           {"user", "user"},
                           {"env", {{"A", "b"}}},
                           {"unix_ns", 1700000000000000000}});
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  EXPECT_EQ(id->entropy.size(), 32u);
  EXPECT_EQ(id->entropy[0], '\xaa');
}

TEST(ApplyIdentity, OnlyUpdatesDefaultsOutsideAVm) {
  Defaults d;
  auto id = ParseIdentity({{"user", "user"},
                           {"workdir", "/w"},
                           {"env", {{"A", "b"}}},
                           {"unix_ns", 1}});  // would set the clock to 1970 if applied
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(ApplyIdentity(*id, /*system=*/false, &d).ok());
  EXPECT_EQ(d.user, "user");
  EXPECT_EQ(d.workdir, "/w");
  EXPECT_EQ(d.env.at("A"), "b");
  EXPECT_GT(time(nullptr), 1000000000);
}

}  // namespace
}  // namespace moat::guest
