// The query strings of `moat audit`, `usage` and `history`: --from/--to as RFC 3339, the
// metadata filter's double encoding, values percent-encoded. No server.
#include "cli/query_args.h"

#include <gtest/gtest.h>

namespace moat::cli {
namespace {

constexpr int64_t kNow = 1767830400;  // 2026-01-08T00:00:00Z

TEST(ParseTimeArg, TurnsDurationsIntoTheTimeThatLongBeforeNow) {
  EXPECT_EQ(*ParseTimeArg("24h", "--from", kNow), "2026-01-07T00:00:00Z");
  EXPECT_EQ(*ParseTimeArg("7d", "--from", kNow), "2026-01-01T00:00:00Z");
  EXPECT_EQ(*ParseTimeArg("30m", "--from", kNow), "2026-01-07T23:30:00Z");
  EXPECT_EQ(*ParseTimeArg("90s", "--from", kNow), "2026-01-07T23:58:30Z");
  EXPECT_EQ(*ParseTimeArg("1h30m", "--to", kNow), "2026-01-07T22:30:00Z");
  EXPECT_EQ(*ParseTimeArg("2w", "--from", kNow), "2025-12-25T00:00:00Z");
  EXPECT_EQ(*ParseTimeArg("0m", "--to", kNow), "2026-01-08T00:00:00Z");
}

TEST(ParseTimeArg, PassesRfc3339OnAsGivenAndReadsADateAsMidnightUtc) {
  for (const char* t : {"2026-01-02T15:04:05Z", "2026-01-02T15:04:05.250Z",
                        "2026-01-02T15:04:05+02:00", "2026-01-02T15:04:05-07:30"}) {
    auto r = ParseTimeArg(t, "--from", kNow);
    ASSERT_TRUE(r.ok()) << t << ": " << r.status().ToString();
    EXPECT_EQ(*r, t);
  }
  EXPECT_EQ(*ParseTimeArg("2026-01-02", "--to", kNow), "2026-01-02T00:00:00Z");
}

TEST(ParseTimeArg, RejectsAnythingElseNamingTheFlagAndTheArgument) {
  for (const char* bad :
       {"yesterday", "24", "h", "-1h", "1.5h", "24H", "1h30", "7days", "2026-01-02T15:04:05",
        "2026-01-02 15:04:05Z", "2026-1-2", "", "1234567890d"}) {
    auto r = ParseTimeArg(bad, "--from", kNow);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("--from: \"" + std::string(bad) + "\""), std::string::npos)
        << r.status().message();
    EXPECT_NE(r.status().message().find("24h"), std::string::npos) << "shows what is accepted";
  }
}

TEST(AddTimeRange, SendsOnlyTheBoundsGivenAsRfc3339) {
  QueryString q;
  ASSERT_TRUE(AddTimeRange(q, "", "", kNow).ok());
  EXPECT_EQ(q.str(), "");
  ASSERT_TRUE(AddTimeRange(q, "1d", "2026-01-07T12:00:00+01:00", kNow).ok());
  EXPECT_EQ(q.str(), "?from=2026-01-07T00%3A00%3A00Z&to=2026-01-07T12%3A00%3A00%2B01%3A00");
  QueryString bad;
  Status s = AddTimeRange(bad, "1d", "soon", kNow);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("--to"), std::string::npos);
}

TEST(QueryString, EncodesValuesButNotPreEncodedOnes) {
  QueryString q;
  q.Add("action", "sandbox.kill").Add("target", "a b&c=d/é").AddEncoded("metadata", "x%3D1");
  EXPECT_EQ(q.str(), "?action=sandbox.kill&target=a%20b%26c%3Dd%2F%C3%A9&metadata=x%3D1");
}

TEST(MetadataQuery, EncodesEachPieceThenTheWholeForm) {
  EXPECT_EQ(MetadataQuery({{"env", "prod"}, {"user", "a&b=c"}}),
            "env%3Dprod%26user%3Da%2526b%253Dc");
  EXPECT_EQ(MetadataQuery({}), "");
}

}  // namespace
}  // namespace moat::cli
