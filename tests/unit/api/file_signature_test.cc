#include <gtest/gtest.h>

#include <string>

#include "api/auth.h"
#include "api/codec/query.h"

namespace moat::api {
namespace {

constexpr std::string_view kToken = "tok123";
constexpr int64_t kNow = 1700000000;

// Known answers computed with the e2b client's algorithm (its getSignature: WebCrypto SHA-256,
// btoa, trailing '=' stripped) in Node.
TEST(FileSignature, MatchesTheOfficialClient) {
  EXPECT_EQ(FileSignature("/home/user/a b.txt", "read", "user", kToken, -1),
            "v1_GQlIcsb/LwV59+hwZmcXGPPkldguQgCHaWkaRrks0To");
  EXPECT_EQ(FileSignature("dir/f", "write", "", kToken, 1700000000),
            "v1_QCOxFviuUHj/ehwXCTL9FVTfiPS8DKKZ7Z68eIUju6k");
}

std::string Query(std::string_view path, std::string_view user, std::string_view sig,
                  int64_t expiration) {
  std::string q = "path=" + codec::PercentEncode(path);
  if (!user.empty()) q += "&username=" + codec::PercentEncode(user);
  q += "&signature=" + codec::PercentEncode(sig);
  if (expiration >= 0) q += "&signature_expiration=" + std::to_string(expiration);
  return q;
}

TEST(FileSignature, AcceptsAValidSignature) {
  std::string sig = FileSignature("/tmp/x", "read", "root", kToken, -1);
  EXPECT_TRUE(CheckFileSignature(Query("/tmp/x", "root", sig, -1), "read", kToken, kNow).ok());
  std::string timed = FileSignature("/tmp/x", "write", "", kToken, kNow + 60);
  EXPECT_TRUE(
      CheckFileSignature(Query("/tmp/x", "", timed, kNow + 60), "write", kToken, kNow).ok());
}

TEST(FileSignature, RejectsWhatTheSignatureDoesNotCover) {
  std::string sig = FileSignature("/tmp/x", "read", "user", kToken, -1);
  auto expect_invalid = [](const Status& s) {
    EXPECT_EQ(s.code(), ErrorCode::kUnauthenticated);
    EXPECT_EQ(s.message(), "invalid signature");
  };
  expect_invalid(CheckFileSignature(Query("/tmp/y", "user", sig, -1), "read", kToken, kNow));
  expect_invalid(CheckFileSignature(Query("/tmp/x", "root", sig, -1), "read", kToken, kNow));
  expect_invalid(CheckFileSignature(Query("/tmp/x", "user", sig, -1), "write", kToken, kNow));
  expect_invalid(CheckFileSignature(Query("/tmp/x", "user", sig, -1), "read", "other", kNow));
  // An expiration added to an unexpiring signature is not covered by it.
  expect_invalid(CheckFileSignature(Query("/tmp/x", "user", sig, kNow + 9), "read", kToken, kNow));
}

TEST(FileSignature, ExpiredOrMissing) {
  std::string sig = FileSignature("/tmp/x", "read", "", kToken, kNow - 1);
  Status s = CheckFileSignature(Query("/tmp/x", "", sig, kNow - 1), "read", kToken, kNow);
  EXPECT_EQ(s.code(), ErrorCode::kUnauthenticated);
  EXPECT_EQ(s.message(), "signature is already expired");
  s = CheckFileSignature("path=%2Ftmp%2Fx", "read", kToken, kNow);
  EXPECT_EQ(s.code(), ErrorCode::kUnauthenticated);
  EXPECT_NE(s.message().find("signature query parameter"), std::string::npos);
  s = CheckFileSignature("path=x&signature=v1_a&signature_expiration=soon", "read", kToken, kNow);
  EXPECT_EQ(s.code(), ErrorCode::kUnauthenticated);
  EXPECT_NE(s.message().find("signature_expiration"), std::string::npos);
}

}  // namespace
}  // namespace moat::api
