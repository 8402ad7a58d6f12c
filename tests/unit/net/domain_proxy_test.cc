// The domain proxy's pure parts: reading the host a connection names (a real ClientHello made
// by OpenSSL, HTTP heads), fed whole and a byte at a time, and where it lets a connection go.
#include "net/domain_proxy.h"

#include <gtest/gtest.h>
#include <openssl/ssl.h>

#include <memory>
#include <string>

namespace moat::net {
namespace {

// The first flight OpenSSL's client sends for `sni` (none when empty).
std::string ClientHello(const std::string& sni) {
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_client_method()),
                                                        SSL_CTX_free);
  std::unique_ptr<SSL, decltype(&SSL_free)> ssl(SSL_new(ctx.get()), SSL_free);
  BIO* in = BIO_new(BIO_s_mem());
  BIO* out = BIO_new(BIO_s_mem());
  SSL_set_bio(ssl.get(), in, out);  // ssl owns both
  if (!sni.empty()) SSL_set_tlsext_host_name(ssl.get(), sni.c_str());
  EXPECT_EQ(SSL_connect(ssl.get()), -1);  // waits for the ServerHello
  char* data = nullptr;
  long n = BIO_get_mem_data(out, &data);
  return std::string(data, static_cast<size_t>(n));
}

// Feeds `bytes` one more byte at a time: every prefix but the whole says "need more".
PeekedHost PeekByteByByte(const std::string& bytes) {
  for (size_t n = 1; n < bytes.size(); ++n) {
    PeekedHost p = PeekHost(std::string_view(bytes).substr(0, n));
    if (p.state != PeekedHost::kNeedMore) {
      ADD_FAILURE() << "decided after " << n << " of " << bytes.size() << " bytes";
      return p;
    }
  }
  return PeekHost(bytes);
}

TEST(PeekHost, ReadsTheSniOfARealClientHello) {
  std::string hello = ClientHello("API.example.com");
  ASSERT_GT(hello.size(), 100u);
  PeekedHost p = PeekByteByByte(hello);
  EXPECT_EQ(p.state, PeekedHost::kFound);
  EXPECT_EQ(p.host, "api.example.com");
  EXPECT_FALSE(p.http);
}

TEST(PeekHost, AClientHelloSplitOverTwoRecordsIsReassembled) {
  std::string hello = ClientHello("split.example.com");
  std::string body = hello.substr(5);
  size_t half = body.size() / 2;
  auto record = [&](const std::string& frag) {
    std::string r = hello.substr(0, 3);
    r += static_cast<char>(frag.size() >> 8);
    r += static_cast<char>(frag.size() & 0xff);
    return r + frag;
  };
  std::string two = record(body.substr(0, half)) + record(body.substr(half));
  PeekedHost p = PeekByteByByte(two);
  EXPECT_EQ(p.state, PeekedHost::kFound);
  EXPECT_EQ(p.host, "split.example.com");
}

TEST(PeekHost, TlsWithoutSniOrGarbageNamesNoHost) {
  EXPECT_EQ(PeekHost(ClientHello("")).state, PeekedHost::kNone);
  std::string hello = ClientHello("x.example.com");
  hello[5] = 2;  // a ServerHello, not a ClientHello
  EXPECT_EQ(PeekHost(hello).state, PeekedHost::kNone);
  EXPECT_EQ(PeekHost(std::string("\x16\x03\x01\x00\x00", 5)).state, PeekedHost::kNone);
  EXPECT_EQ(PeekHost("\x01\x02garbage").state, PeekedHost::kNone);
  EXPECT_EQ(PeekHost("SSH-2.0-OpenSSH_9.2\r\n").state, PeekedHost::kNone);
}

TEST(PeekHost, ReadsTheHostHeaderOfAnHttpRequest) {
  PeekedHost p =
      PeekByteByByte("GET /x HTTP/1.1\r\nUser-Agent: t\r\nhOsT:  Allowed.Test:8080 \r\n");
  EXPECT_EQ(p.state, PeekedHost::kFound);
  EXPECT_EQ(p.host, "allowed.test");
  EXPECT_TRUE(p.http);
  PeekedHost bare = PeekHost("POST / HTTP/1.0\nHost: a.b\n\n");
  EXPECT_EQ(bare.host, "a.b");
}

TEST(PeekHost, AnHttpHeadWithoutAUsableHostNamesNoHost) {
  PeekedHost none = PeekHost("GET / HTTP/1.1\r\nAccept: */*\r\n\r\n");
  EXPECT_EQ(none.state, PeekedHost::kNone);
  EXPECT_TRUE(none.http);  // answered with a 403
  EXPECT_EQ(PeekHost("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n").state, PeekedHost::kNone);
  EXPECT_EQ(PeekHost("GET / HTTP/2.0\r\nHost: a\r\n\r\n").state, PeekedHost::kNone);
  EXPECT_EQ(PeekHost("get / HTTP/1.1\r\n").state, PeekedHost::kNone);
  EXPECT_EQ(PeekHost("GET / HTTP/1.1\r\nAccept: */*\r\n").state, PeekedHost::kNeedMore);
}

TEST(ChooseUpstream, KeepsTheGuestsChoiceOnlyWhenItIsAnAddressOfTheName) {
  auto a = [](const char* s) { return *Ipv4Address::Parse(s); };
  std::vector<Ipv4Cidr> denied = {*Ipv4Cidr::Parse("10.0.0.0/8"),
                                  *Ipv4Cidr::Parse("169.254.0.0/16")};
  std::vector<Ipv4Address> resolved = {a("10.1.1.1"), a("198.51.100.1"), a("198.51.100.2")};
  EXPECT_EQ(ChooseUpstream(a("198.51.100.2"), resolved, denied), a("198.51.100.2"));
  // A guest claiming the name while connecting elsewhere reaches the name's server instead.
  EXPECT_EQ(ChooseUpstream(a("203.0.113.9"), resolved, denied), a("198.51.100.1"));
  // A name resolving into denied ranges (metadata, say) leads nowhere.
  EXPECT_EQ(ChooseUpstream(a("10.1.1.1"), resolved, denied), a("198.51.100.1"));
  EXPECT_EQ(ChooseUpstream(a("169.254.169.254"), {a("169.254.169.254")}, denied), std::nullopt);
  EXPECT_EQ(ChooseUpstream(a("198.51.100.1"), {}, denied), std::nullopt);
}

}  // namespace
}  // namespace moat::net
