// SigV4 against the examples AWS publishes. A wrong signature fails only against a real server,
// as an opaque 403, so each step (canonical request, string to sign, signature) is pinned.
//
// Sources:
//  - S3 API reference, "Authenticating Requests: Using the Authorization Header (AWS Signature
//    Version 4)", examples GET Object, PUT Object, GET Bucket Lifecycle, Get Bucket (List
//    Objects) (docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html).
//  - IAM user guide, signature examples: the derived signing key for 20120215/us-east-1/iam,
//    and the ListUsers request of 20150830 (signing key, string to sign, signature).
#include "storage/sigv4.h"

#include <gtest/gtest.h>

#include <string>

namespace moat::storage {
namespace {

constexpr char kEmptySha256[] = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
constexpr int64_t k20130524 = 1369353600;  // 2013-05-24T00:00:00Z

SigV4Credentials S3ExampleCredentials() {
  return {"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", ""};
}

std::string S3StringToSign(const std::string& canonical_request_hash) {
  return "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n" +
         canonical_request_hash;
}

std::string S3Authorization(const std::string& signed_headers, const std::string& signature) {
  return "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
         "SignedHeaders=" +
         signed_headers + ",Signature=" + signature;
}

TEST(SigV4, S3GetObject) {
  SigV4Request request{
      .method = "GET",
      .path = "/test.txt",
      .headers = {{"Host", "examplebucket.s3.amazonaws.com"}, {"Range", "bytes=0-9"}},
      .payload_sha256 = kEmptySha256};
  SigV4Signed s = SignV4(request, S3ExampleCredentials(), {"us-east-1", "s3"}, k20130524);
  EXPECT_EQ(s.canonical_request, std::string("GET\n/test.txt\n\n"
                                             "host:examplebucket.s3.amazonaws.com\n"
                                             "range:bytes=0-9\n"
                                             "x-amz-content-sha256:") +
                                     kEmptySha256 +
                                     "\nx-amz-date:20130524T000000Z\n\n"
                                     "host;range;x-amz-content-sha256;x-amz-date\n" +
                                     kEmptySha256);
  EXPECT_EQ(s.string_to_sign,
            S3StringToSign("7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"));
  EXPECT_EQ(s.signature, "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
  EXPECT_EQ(s.authorization,
            S3Authorization("host;range;x-amz-content-sha256;x-amz-date",
                            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"));
  HeaderList want_added = {{"x-amz-date", "20130524T000000Z"},
                           {"x-amz-content-sha256", kEmptySha256}};
  EXPECT_EQ(s.headers_to_add, want_added);
}

TEST(SigV4, S3PutObject) {
  const std::string body = "Welcome to Amazon S3.";
  const std::string body_sha = Sha256Hex(body);
  ASSERT_EQ(body_sha, "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072");
  SigV4Request request{.method = "PUT",
                       .path = "/test$file.text",
                       .headers = {{"Host", "examplebucket.s3.amazonaws.com"},
                                   {"Date", "Fri, 24 May 2013 00:00:00 GMT"},
                                   {"x-amz-storage-class", "REDUCED_REDUNDANCY"}},
                       .payload_sha256 = body_sha};
  SigV4Signed s = SignV4(request, S3ExampleCredentials(), {"us-east-1", "s3"}, k20130524);
  EXPECT_EQ(s.canonical_request,
            "PUT\n/test%24file.text\n\n"
            "date:Fri, 24 May 2013 00:00:00 GMT\n"
            "host:examplebucket.s3.amazonaws.com\n"
            "x-amz-content-sha256:" +
                body_sha +
                "\nx-amz-date:20130524T000000Z\n"
                "x-amz-storage-class:REDUCED_REDUNDANCY\n\n"
                "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class\n" +
                body_sha);
  EXPECT_EQ(s.string_to_sign,
            S3StringToSign("9e0e90d9c76de8fa5b200d8c849cd5b8dc7a3be3951ddb7f6a76b4158342019d"));
  EXPECT_EQ(s.signature, "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd");
  EXPECT_EQ(s.authorization,
            S3Authorization("date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
                            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"));
}

TEST(SigV4, S3GetBucketLifecycle) {
  SigV4Request request{.method = "GET",
                       .path = "/",
                       .query = {{"lifecycle", ""}},
                       .headers = {{"Host", "examplebucket.s3.amazonaws.com"}},
                       .payload_sha256 = kEmptySha256};
  SigV4Signed s = SignV4(request, S3ExampleCredentials(), {"us-east-1", "s3"}, k20130524);
  EXPECT_EQ(s.canonical_request, std::string("GET\n/\nlifecycle=\n"
                                             "host:examplebucket.s3.amazonaws.com\n"
                                             "x-amz-content-sha256:") +
                                     kEmptySha256 +
                                     "\nx-amz-date:20130524T000000Z\n\n"
                                     "host;x-amz-content-sha256;x-amz-date\n" +
                                     kEmptySha256);
  EXPECT_EQ(s.string_to_sign,
            S3StringToSign("9766c798316ff2757b517bc739a67f6213b4ab36dd5da2f94eaebf79c77395ca"));
  EXPECT_EQ(s.signature, "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543");
  EXPECT_EQ(s.authorization,
            S3Authorization("host;x-amz-content-sha256;x-amz-date",
                            "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"));
}

TEST(SigV4, S3ListObjectsSortsQuery) {
  // Given out of order: the canonical query is sorted by name.
  SigV4Request request{.method = "GET",
                       .path = "",
                       .query = {{"prefix", "J"}, {"max-keys", "2"}},
                       .headers = {{"Host", "examplebucket.s3.amazonaws.com"}},
                       .payload_sha256 = kEmptySha256};
  SigV4Signed s = SignV4(request, S3ExampleCredentials(), {"us-east-1", "s3"}, k20130524);
  EXPECT_EQ(s.canonical_request, std::string("GET\n/\nmax-keys=2&prefix=J\n"
                                             "host:examplebucket.s3.amazonaws.com\n"
                                             "x-amz-content-sha256:") +
                                     kEmptySha256 +
                                     "\nx-amz-date:20130524T000000Z\n\n"
                                     "host;x-amz-content-sha256;x-amz-date\n" +
                                     kEmptySha256);
  EXPECT_EQ(s.string_to_sign,
            S3StringToSign("df57d21db20da04d7fa30298dd4488ba3a2b47ca3a489c74750e0f1e7df1b9b7"));
  EXPECT_EQ(s.signature, "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7");
}

TEST(SigV4, DerivedSigningKey) {
  auto key =
      SigV4SigningKey("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215", "us-east-1", "iam");
  EXPECT_EQ(HexEncode(key.data(), key.size()),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d");
}

TEST(SigV4, IamListUsers) {
  auto key =
      SigV4SigningKey("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20150830", "us-east-1", "iam");
  EXPECT_EQ(HexEncode(key.data(), key.size()),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9");

  SigV4Request request{
      .method = "GET",
      .path = "/",
      .query = {{"Version", "2010-05-08"}, {"Action", "ListUsers"}},
      .headers = {{"Host", "iam.amazonaws.com"},
                  {"Content-Type", "application/x-www-form-urlencoded; charset=utf-8"}},
      .payload_sha256 = kEmptySha256,
      .add_content_sha256_header = false};
  SigV4Signed s = SignV4(request, {"AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", ""},
                         {"us-east-1", "iam"}, 1440938160 /* 2015-08-30T12:36:00Z */);
  EXPECT_EQ(s.string_to_sign,
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/iam/aws4_request\n"
            "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59");
  EXPECT_EQ(s.signature, "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7");
  EXPECT_NE(s.authorization.find("SignedHeaders=content-type;host;x-amz-date,"), std::string::npos);
}

// Beyond the published examples: the rules those examples do not exercise.

TEST(SigV4, UriEncoding) {
  EXPECT_EQ(SigV4UriEncode("AZaz09-._~", false), "AZaz09-._~");
  EXPECT_EQ(SigV4UriEncode("a b/c+d*e=f%", false), "a%20b%2Fc%2Bd%2Ae%3Df%25");
  EXPECT_EQ(SigV4UriEncode("/chunks/a b", true), "/chunks/a%20b");
  EXPECT_EQ(SigV4UriEncode("\xc3\xa9", false), "%C3%A9");
}

TEST(SigV4, PathEncodedOnceAndQueryValuesEncoded) {
  SigV4Request request{.method = "GET",
                       .path = "/prefix/a%20b",
                       .query = {{"list-type", "2"}, {"prefix", "a/b c"}},
                       .headers = {{"Host", "h"}},
                       .payload_sha256 = std::string(kUnsignedPayload)};
  SigV4Signed s = SignV4(request, S3ExampleCredentials(), {"us-east-1", "s3"}, k20130524);
  EXPECT_EQ(s.canonical_request.substr(0, s.canonical_request.find("\nhost:")),
            "GET\n/prefix/a%2520b\nlist-type=2&prefix=a%2Fb%20c");
  EXPECT_EQ(s.canonical_request.substr(s.canonical_request.rfind('\n') + 1), "UNSIGNED-PAYLOAD");
}

TEST(SigV4, HeadersTrimmedCollapsedAndMerged) {
  SigV4Request request{.method = "GET",
                       .path = "/",
                       .headers = {{"Host", "h"},
                                   {"X-Meta", "  a   b  "},
                                   {"x-meta", "c"},
                                   {"X-Amz-Date", "ignored"}},
                       .payload_sha256 = kEmptySha256};
  SigV4Signed s = SignV4(request, S3ExampleCredentials(), {"us-east-1", "s3"}, k20130524);
  EXPECT_NE(s.canonical_request.find("\nx-meta:a b,c\n"), std::string::npos);
  EXPECT_EQ(s.canonical_request.find("ignored"), std::string::npos);
}

TEST(SigV4, SessionTokenIsSignedAndAdded) {
  SigV4Request request{
      .method = "GET", .path = "/", .headers = {{"Host", "h"}}, .payload_sha256 = kEmptySha256};
  SigV4Credentials creds = S3ExampleCredentials();
  creds.session_token = "token/+=";
  SigV4Signed s = SignV4(request, creds, {"us-east-1", "s3"}, k20130524);
  EXPECT_EQ(s.headers_to_add.back(),
            (std::pair<std::string, std::string>{"x-amz-security-token", "token/+="}));
  EXPECT_NE(s.authorization.find("SignedHeaders=host;x-amz-content-sha256;x-amz-date;"
                                 "x-amz-security-token,"),
            std::string::npos);
  // The secret appears in nothing the signer returns.
  for (const std::string* text :
       {&s.canonical_request, &s.string_to_sign, &s.signature, &s.authorization}) {
    EXPECT_EQ(text->find(creds.secret_access_key), std::string::npos);
  }
}

}  // namespace
}  // namespace moat::storage
