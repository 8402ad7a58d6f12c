#include "api/fleet/fleet_auth.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "common/fs.h"
#include "common/log.h"
#include "common/unique_fd.h"

namespace moat::api::fleet {
namespace {

constexpr std::string_view kSecret = "0123456789abcdef0123456789abcdef";  // 32 bytes
constexpr int64_t kT = 1700000000;

FleetToken Token(std::string_view secret = kSecret) {
  auto t = FleetToken::FromSecret(std::string(secret));
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return std::move(t).value();
}

// HMAC-SHA256 through OpenSSL's EVP_MAC interface (the code under test uses HMAC()).
std::string EvpHmacHex(std::string_view key, std::string_view message) {
  unsigned char out[EVP_MAX_MD_SIZE];
  size_t len = 0;
  char digest[] = "SHA256";
  // EVP_Q_mac reads key and message as bytes; the casts only change the pointee type.
  EXPECT_NE(EVP_Q_mac(nullptr, "HMAC", nullptr, digest, nullptr, key.data(), key.size(),
                      reinterpret_cast<const unsigned char*>(message.data()), message.size(), out,
                      sizeof out, &len),
            nullptr);
  std::string hex;
  char buf[3];
  for (size_t i = 0; i < len; ++i) {
    std::snprintf(buf, sizeof buf, "%02x", out[i]);
    hex += buf;
  }
  return hex;
}

TEST(FleetToken, SignsTheDocumentedMessageWithHmacSha256) {
  FleetToken token = Token();
  std::string sig = token.Signature(kT, "POST", "/v1/sandboxes/abc?x=1", "host-a");
  // `printf '1700000000\nPOST\n/v1/sandboxes/abc?x=1\nhost-a' | openssl dgst -sha256 -hmac …`
  EXPECT_EQ(sig, "a68bee9f5a24802129fb74184d4d92ca575a92cb398c4b892fc0bfa9dd3631d2");
  EXPECT_EQ(sig, EvpHmacHex(kSecret, "1700000000\nPOST\n/v1/sandboxes/abc?x=1\nhost-a"));
  EXPECT_EQ(token.Signature(42, "GET", "/v1/inventory", "h2"),
            EvpHmacHex(kSecret, "42\nGET\n/v1/inventory\nh2"));
}

TEST(FleetToken, HeaderCarriesTheTimeAndTheSignature) {
  FleetToken token = Token();
  EXPECT_EQ(token.Header(kT, "POST", "/v1/sandboxes/abc?x=1", "host-a"),
            "t=1700000000,sig=a68bee9f5a24802129fb74184d4d92ca575a92cb398c4b892fc0bfa9dd3631d2");
}

TEST(FleetToken, AcceptsSignaturesUpToSixtySecondsEitherWay) {
  FleetToken token = Token();
  for (int64_t skew : {-60, -1, 0, 1, 60}) {
    std::string h = token.Header(kT + skew, "GET", "/v1/inventory", "h1");
    EXPECT_TRUE(token.Verify(h, "GET", "/v1/inventory", "h1", kT).ok()) << skew;
  }
  for (int64_t skew : {-61, 61, -3600, 3600}) {
    std::string h = token.Header(kT + skew, "GET", "/v1/inventory", "h1");
    Status s = token.Verify(h, "GET", "/v1/inventory", "h1", kT);
    EXPECT_EQ(s.code(), ErrorCode::kUnauthenticated) << skew;
    EXPECT_NE(s.message().find(std::to_string(skew) + " s"), std::string::npos) << s.message();
  }
}

TEST(FleetToken, RefusesASignatureOfAnotherRequestHostOrToken) {
  FleetToken token = Token();
  std::string h = token.Header(kT, "DELETE", "/v1/sandboxes/abc", "h1");
  ASSERT_TRUE(token.Verify(h, "DELETE", "/v1/sandboxes/abc", "h1", kT).ok());
  EXPECT_EQ(token.Verify(h, "GET", "/v1/sandboxes/abc", "h1", kT).code(),
            ErrorCode::kUnauthenticated);
  EXPECT_EQ(token.Verify(h, "DELETE", "/v1/sandboxes/abd", "h1", kT).code(),
            ErrorCode::kUnauthenticated);
  EXPECT_EQ(token.Verify(h, "DELETE", "/v1/sandboxes/abc?x", "h1", kT).code(),
            ErrorCode::kUnauthenticated);
  EXPECT_EQ(token.Verify(h, "DELETE", "/v1/sandboxes/abc", "h2", kT).code(),
            ErrorCode::kUnauthenticated);
  FleetToken other = Token("0123456789abcdef0123456789abcdeX");
  EXPECT_EQ(other.Verify(h, "DELETE", "/v1/sandboxes/abc", "h1", kT).code(),
            ErrorCode::kUnauthenticated);
  // The same signature for another time is another signature.
  std::string sig = token.Signature(kT, "DELETE", "/v1/sandboxes/abc", "h1");
  EXPECT_EQ(token
                .Verify("t=" + std::to_string(kT + 1) + ",sig=" + sig, "DELETE",
                        "/v1/sandboxes/abc", "h1", kT)
                .code(),
            ErrorCode::kUnauthenticated);
}

TEST(FleetToken, RefusesMissingAndMalformedHeaders) {
  FleetToken token = Token();
  std::string sig = token.Signature(kT, "GET", "/v1/inventory", "h1");
  std::string t = "t=" + std::to_string(kT);
  auto verify = [&](const std::string& h) {
    return token.Verify(h, "GET", "/v1/inventory", "h1", kT);
  };
  EXPECT_NE(verify("").message().find("missing"), std::string::npos);
  for (const std::string& bad : {
           std::string("garbage"),
           t,                                             // no sig
           "sig=" + sig,                                  // no t
           t + ",sig=" + sig.substr(2),                   // short
           t + ",sig=" + sig + "00",                      // long
           t + ",sig=" + sig.substr(0, 62) + "zz",        // not hex
           "t=-5,sig=" + sig,                             // not a time
           "t=17e8,sig=" + sig,                           // not digits
           t + ",sig=" + sig + ", " + t + ",sig=" + sig,  // the header twice
           "t=99999999999999999999999,sig=" + sig,        // overflow
       }) {
    Status s = verify(bad);
    EXPECT_EQ(s.code(), ErrorCode::kUnauthenticated) << bad;
  }
  // Order and spaces around the parts do not matter; unknown keys are ignored.
  EXPECT_TRUE(verify("sig=" + sig + ", " + t).ok());
  EXPECT_TRUE(verify(t + ",v=2,sig=" + sig).ok());
}

TEST(FleetToken, NeedsAtLeastThirtyTwoBytes) {
  EXPECT_EQ(FleetToken::FromSecret(std::string(31, 'x')).status().code(),
            ErrorCode::kInvalidArgument);
  EXPECT_TRUE(FleetToken::FromSecret(std::string(32, 'x')).ok());
}

class FleetTokenFile : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = MakeTempDir("/tmp", "fleet-auth-test-");
    ASSERT_TRUE(dir.ok()) << dir.status().ToString();
    dir_ = *dir;
  }
  void TearDown() override { (void)RemoveTree(dir_); }
  std::string Write(const std::string& name, const std::string& data, mode_t mode) {
    std::string path = dir_ + "/" + name;
    EXPECT_TRUE(WriteFileAtomic(path, data, mode).ok());
    EXPECT_EQ(::chmod(path.c_str(), mode), 0);
    return path;
  }
  std::string dir_;
};

TEST_F(FleetTokenFile, ReadsTheFirstLine) {
  std::string secret(40, 'k');
  auto token = FleetToken::FromFile(Write("token", secret + "\nsecond line\n", 0600));
  ASSERT_TRUE(token.ok()) << token.status().ToString();
  EXPECT_EQ(token->Signature(1, "GET", "/", "h"), Token(secret).Signature(1, "GET", "/", "h"));
  auto crlf = FleetToken::FromFile(Write("crlf", secret + "\r\n", 0600));
  ASSERT_TRUE(crlf.ok());
  EXPECT_EQ(crlf->Signature(1, "GET", "/", "h"), Token(secret).Signature(1, "GET", "/", "h"));
  auto bare = FleetToken::FromFile(Write("bare", secret, 0600));  // no line break
  ASSERT_TRUE(bare.ok());
  EXPECT_EQ(bare->Signature(1, "GET", "/", "h"), Token(secret).Signature(1, "GET", "/", "h"));
}

TEST_F(FleetTokenFile, RefusesAShortTokenNamingTheFile) {
  std::string path = Write("short", std::string(31, 'k') + "\n" + std::string(64, 'k'), 0600);
  auto token = FleetToken::FromFile(path);
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(token.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(token.status().message().find(path), std::string::npos);
  EXPECT_NE(token.status().message().find("31 bytes"), std::string::npos);

  auto empty = FleetToken::FromFile(Write("empty", "", 0600));
  EXPECT_EQ(empty.status().code(), ErrorCode::kInvalidArgument);
}

TEST_F(FleetTokenFile, RefusesAMissingFileOrADirectoryNamingIt) {
  auto missing = FleetToken::FromFile(dir_ + "/nope");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), ErrorCode::kNotFound);
  EXPECT_NE(missing.status().message().find(dir_ + "/nope"), std::string::npos);
  auto dir = FleetToken::FromFile(dir_);
  ASSERT_FALSE(dir.ok());
  EXPECT_NE(dir.status().message().find(dir_), std::string::npos);
}

TEST_F(FleetTokenFile, WarnsWhenOthersMayReadIt) {
  std::string log_path = dir_ + "/log";
  UniqueFd log(::open(log_path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
  ASSERT_TRUE(log.valid());
  SetLogFd(log.get());
  auto shared = FleetToken::FromFile(Write("shared", std::string(32, 'k'), 0644));
  auto own = FleetToken::FromFile(Write("own", std::string(32, 'k'), 0600));
  SetLogFd(2);
  EXPECT_TRUE(shared.ok());
  EXPECT_TRUE(own.ok());
  auto logged = ReadFile(log_path);
  ASSERT_TRUE(logged.ok());
  EXPECT_NE(logged->find("fleet.token_file_readable"), std::string::npos) << *logged;
  EXPECT_NE(logged->find(dir_ + "/shared"), std::string::npos) << *logged;
  EXPECT_EQ(logged->find(dir_ + "/own"), std::string::npos) << *logged;
  EXPECT_EQ(logged->find("kkkkkkkk"), std::string::npos) << "the token must never be logged";
}

}  // namespace
}  // namespace moat::api::fleet
