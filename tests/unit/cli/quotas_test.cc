// `moat team quotas`: the body --set sends and the table it prints. No server.
#include "cli/quotas.h"

#include <gtest/gtest.h>

namespace moat::cli {
namespace {

using nlohmann::json;

TEST(ParseQuotaSets, MapsKebabOrCamelNamesToTheApiAndDefaultToNull) {
  auto body = ParseQuotaSets({"max-sandboxes=10", "maxVcpus=0", "max-memory-mib=default",
                              "max-creates-per-minute=60", "max-metadata-bytes=1024"});
  ASSERT_TRUE(body.ok()) << body.status().ToString();
  EXPECT_EQ(*body, json({{"maxSandboxes", 10},
                         {"maxVcpus", 0},
                         {"maxMemoryMiB", nullptr},
                         {"maxCreatesPerMinute", 60},
                         {"maxMetadataBytes", 1024}}));
  EXPECT_EQ(*ParseQuotaSets({}), json::object());
}

TEST(ParseQuotaSets, RejectsUnknownNamesBadValuesAndRepeatsNamingThem) {
  for (const char* bad : {"max-disks=1", "max-sandboxes=-1", "max-sandboxes=1k",
                          "max-sandboxes=", "=5", "max-sandboxes"}) {
    auto r = ParseQuotaSets({bad});
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("--set"), std::string::npos) << r.status().message();
  }
  auto twice = ParseQuotaSets({"max-sandboxes=1", "maxSandboxes=2"});
  ASSERT_FALSE(twice.ok());
  EXPECT_NE(twice.status().message().find("twice"), std::string::npos);
}

TEST(FormatQuotas, ShowsEachLimitMarkingDefaultsWithWhatIsUsed) {
  json q = {
      {"teamID", "t123"},
      {"teamName", "acme"},
      {"quotas",
       {{"maxSandboxes", 10},
        {"maxVcpus", 200},
        {"maxMemoryMiB", 409600},
        {"maxCreatesPerMinute", 300},
        {"maxMetadataBytes", 65536}}},
      {"set", {{"maxSandboxes", 10}}},
      {"usage", {{"sandboxes", 3}, {"vcpus", 6}, {"memoryMiB", 1536}, {"createsLastMinute", 4}}}};
  std::string out = FormatQuotas(q);
  EXPECT_EQ(out,
            "team: acme (t123)\n"
            "QUOTA                   LIMIT             USED\n"
            "max-sandboxes           10                3\n"
            "max-vcpus               200 (default)     6\n"
            "max-memory-mib          409600 (default)  1536\n"
            "max-creates-per-minute  300 (default)     4\n"
            "max-metadata-bytes      65536 (default)   -\n");
}

}  // namespace
}  // namespace moat::cli
