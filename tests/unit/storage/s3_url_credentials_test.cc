// What the operator writes for an S3 store: the s3:// URL, the endpoint and the credentials
// (environment or file). No network. Credential errors must never carry the secret.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <string>

#include "common/fs.h"
#include "storage/s3_object_store.h"

namespace moat::storage {
namespace {

constexpr char kSecret[] = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

TEST(ParseS3Url, ReadsTheBucketAndThePrefix) {
  auto plain = ParseS3Url("s3://my-bucket");
  ASSERT_TRUE(plain.ok()) << plain.status().ToString();
  EXPECT_EQ(plain->bucket, "my-bucket");
  EXPECT_EQ(plain->prefix, "");

  auto slash = ParseS3Url("s3://my-bucket/");
  ASSERT_TRUE(slash.ok());
  EXPECT_EQ(slash->bucket, "my-bucket");
  EXPECT_EQ(slash->prefix, "");

  auto prefixed = ParseS3Url("s3://moat.snapshots/fleet-1/prod/");
  ASSERT_TRUE(prefixed.ok());
  EXPECT_EQ(prefixed->bucket, "moat.snapshots");
  EXPECT_EQ(prefixed->prefix, "fleet-1/prod");
}

TEST(ParseS3Url, RejectsWhatIsNotAnS3UrlNamingTheProblem) {
  struct Case {
    const char* url;
    const char* says;
  };
  for (const Case& c : {Case{"http://bucket", "expected s3://"}, Case{"bucket", "expected s3://"},
                        Case{"s3://", "3 to 63"}, Case{"s3://ab", "3 to 63"},
                        Case{"s3://Upper", "a-z, 0-9"}, Case{"s3://under_score", "a-z, 0-9"},
                        Case{"s3://bucket//x", "prefix"}, Case{"s3://bucket/a/../b", "prefix"},
                        Case{"s3://bucket/a b", "prefix"}, Case{"s3://bucket/x//", "prefix"}}) {
    auto r = ParseS3Url(c.url);
    ASSERT_FALSE(r.ok()) << c.url;
    EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument) << c.url;
    EXPECT_NE(r.status().message().find(c.says), std::string::npos) << r.status().message();
  }
  EXPECT_FALSE(ParseS3Url("s3://" + std::string(64, 'b')).ok());
  EXPECT_TRUE(ParseS3Url("s3://" + std::string(63, 'b')).ok());
}

// Sets or clears the AWS_* variables for one test and puts back what was there.
class CredentialsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* name : kVars) {
      const char* v = std::getenv(name);
      saved_.emplace_back(name, v != nullptr ? std::optional<std::string>(v) : std::nullopt);
      ::unsetenv(name);
    }
    auto dir = MakeTempDir("/tmp", "moat-s3-creds-");
    ASSERT_TRUE(dir.ok());
    dir_ = *dir;
  }
  void TearDown() override {
    for (const auto& [name, value] : saved_) {
      if (value) {
        ::setenv(name.c_str(), value->c_str(), 1);
      } else {
        ::unsetenv(name.c_str());
      }
    }
    (void)RemoveTree(dir_);
  }
  std::string WriteCredentials(const std::string& text) {
    std::string path = dir_ + "/credentials";
    EXPECT_TRUE(WriteFileAtomic(path, text, 0600).ok());
    return path;
  }

  static constexpr const char* kVars[] = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                          "AWS_SESSION_TOKEN"};
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
  std::string dir_;
};

TEST_F(CredentialsTest, TheEnvironmentComesFirst) {
  ::setenv("AWS_ACCESS_KEY_ID", "AKIDENV", 1);
  ::setenv("AWS_SECRET_ACCESS_KEY", kSecret, 1);
  ::setenv("AWS_SESSION_TOKEN", "token-env", 1);
  std::string file = WriteCredentials(
      "[default]\naws_access_key_id = AKIDFILE\n"
      "aws_secret_access_key = other\n");
  auto c = LoadS3Credentials(file);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->access_key_id, "AKIDENV");
  EXPECT_EQ(c->secret_access_key, kSecret);
  EXPECT_EQ(c->session_token, "token-env");
}

TEST_F(CredentialsTest, ReadsTheDefaultSectionOfASharedCredentialsFile) {
  std::string file = WriteCredentials(
      "# comment\n[other]\naws_access_key_id=AKIDOTHER\naws_secret_access_key=nope\n\n"
      "[default]\r\naws_access_key_id = AKIDDEFAULT\r\naws_secret_access_key = " +
      std::string(kSecret) + "\r\naws_session_token = tok\r\n");
  auto c = LoadS3Credentials(file);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->access_key_id, "AKIDDEFAULT");
  EXPECT_EQ(c->secret_access_key, kSecret);
  EXPECT_EQ(c->session_token, "tok");
}

TEST_F(CredentialsTest, ReadsTheOnlySectionWhenThereIsNoDefault) {
  std::string file = WriteCredentials(
      "[moat]\naws_access_key_id = AKIDMOAT\n"
      "aws_secret_access_key = " +
      std::string(kSecret) + "\n");
  auto c = LoadS3Credentials(file);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->access_key_id, "AKIDMOAT");
  EXPECT_EQ(c->session_token, "");
}

TEST_F(CredentialsTest, ReadsKeyValueLinesWithTheVariableNames) {
  std::string file = WriteCredentials("AWS_ACCESS_KEY_ID=AKIDKV\nexport AWS_SECRET_ACCESS_KEY=\"" +
                                      std::string(kSecret) + "\"\n");
  auto c = LoadS3Credentials(file);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->access_key_id, "AKIDKV");
  EXPECT_EQ(c->secret_access_key, kSecret);
}

TEST_F(CredentialsTest, HalfTheEnvironmentFallsBackToTheFile) {
  ::setenv("AWS_ACCESS_KEY_ID", "AKIDENV", 1);
  std::string file = WriteCredentials(
      "AWS_ACCESS_KEY_ID=AKIDFILE\nAWS_SECRET_ACCESS_KEY=" + std::string(kSecret) + "\n");
  auto c = LoadS3Credentials(file);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->access_key_id, "AKIDFILE");
}

TEST_F(CredentialsTest, ErrorsNameTheVariableOrFileAndNeverTheSecret) {
  auto none = LoadS3Credentials("");
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), ErrorCode::kFailedPrecondition);
  EXPECT_NE(none.status().message().find("AWS_ACCESS_KEY_ID"), std::string::npos);

  ::setenv("AWS_ACCESS_KEY_ID", "AKIDENV", 1);
  auto half = LoadS3Credentials("");
  ASSERT_FALSE(half.ok());
  EXPECT_NE(half.status().message().find("AWS_SECRET_ACCESS_KEY"), std::string::npos);
  ::unsetenv("AWS_ACCESS_KEY_ID");

  auto missing = LoadS3Credentials(dir_ + "/nope");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), ErrorCode::kFailedPrecondition);
  EXPECT_NE(missing.status().message().find(dir_ + "/nope"), std::string::npos);

  // Each of these files holds the secret somewhere; no error may repeat it.
  std::string secret(kSecret);
  for (const std::string& text : {
           "aws_secret_access_key = " + secret + "\n",               // no key id
           "[default]\naws_access_key_id = A\n" + secret + "\n",     // a line without '='
           "[a]\naws_secret_access_key=" + secret + "\n[b]\nx=y\n",  // no [default]
           "[default\naws_secret_access_key=" + secret + "\n",       // bad header
       }) {
    std::string file = WriteCredentials(text);
    auto r = LoadS3Credentials(file);
    ASSERT_FALSE(r.ok()) << text;
    EXPECT_EQ(r.status().code(), ErrorCode::kFailedPrecondition);
    EXPECT_NE(r.status().message().find(file), std::string::npos) << r.status().message();
    EXPECT_EQ(r.status().message().find(secret), std::string::npos) << r.status().message();
    EXPECT_EQ(r.status().message().find("wJalr"), std::string::npos) << r.status().message();
  }
}

S3Config ValidConfig() {
  S3Config c;
  c.location = {"bucket", "pre/fix"};
  c.endpoint = "http://127.0.0.1:4569";
  c.credentials = {"AKID", kSecret, ""};
  return c;
}

TEST(S3ObjectStoreConfig, DescribeNamesTheLocationAndEndpointButNoCredential) {
  auto store = S3ObjectStore::Make(ValidConfig());
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  EXPECT_EQ((*store)->Describe(), "s3://bucket/pre/fix at http://127.0.0.1:4569");
  S3Config c = ValidConfig();
  c.location.prefix = "";
  c.endpoint = "https://s3.eu-west-1.amazonaws.com/";
  auto aws = S3ObjectStore::Make(c);
  ASSERT_TRUE(aws.ok()) << aws.status().ToString();
  EXPECT_EQ((*aws)->Describe(), "s3://bucket at https://s3.eu-west-1.amazonaws.com");
}

TEST(S3ObjectStoreConfig, AcceptsHostsPortsAndIpv6) {
  for (const char* endpoint : {"http://localhost", "http://minio:9000", "https://[::1]:8443",
                               "http://[fe80::1]", "https://s3.amazonaws.com"}) {
    S3Config c = ValidConfig();
    c.endpoint = endpoint;
    EXPECT_TRUE(S3ObjectStore::Make(c).ok()) << endpoint;
  }
}

TEST(S3ObjectStoreConfig, RejectsEndpointsThatAreNotSchemeHostPort) {
  for (const char* endpoint :
       {"", "127.0.0.1:4569", "ftp://host", "http://", "http://host:", "http://host:0",
        "http://host:65536", "http://host:12ab", "http://host/path", "http://user@host",
        "http://host?x", "http://[::1", "http://[zz]:80"}) {
    S3Config c = ValidConfig();
    c.endpoint = endpoint;
    auto r = S3ObjectStore::Make(c);
    ASSERT_FALSE(r.ok()) << endpoint;
    EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument) << endpoint;
  }
}

TEST(S3ObjectStoreConfig, RejectsABadLocationEmptyCredentialsAndNoAttempts) {
  S3Config bucket = ValidConfig();
  bucket.location.bucket = "B";
  EXPECT_EQ(S3ObjectStore::Make(bucket).status().code(), ErrorCode::kInvalidArgument);
  S3Config prefix = ValidConfig();
  prefix.location.prefix = "a/";
  EXPECT_EQ(S3ObjectStore::Make(prefix).status().code(), ErrorCode::kInvalidArgument);
  S3Config creds = ValidConfig();
  creds.credentials.secret_access_key.clear();
  auto r = S3ObjectStore::Make(creds);
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
  S3Config attempts = ValidConfig();
  attempts.max_attempts = 0;
  EXPECT_EQ(S3ObjectStore::Make(attempts).status().code(), ErrorCode::kInvalidArgument);
}

TEST(S3ObjectStoreConfig, BadKeysFailBeforeAnyRequest) {
  S3Config c = ValidConfig();
  c.endpoint = "http://127.0.0.1:1";  // nothing listens: a request would be unavailable
  auto store = S3ObjectStore::Make(c);
  ASSERT_TRUE(store.ok());
  EXPECT_EQ((*store)->Put("../x", "b").code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ((*store)->Get("a//b").status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ((*store)->GetRange("a", 0, 0).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ((*store)->Head("").status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ((*store)->Delete("a b").code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ((*store)->stats().failures.load(), 0u);
}

}  // namespace
}  // namespace moat::storage
