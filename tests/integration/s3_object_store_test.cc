// S3ObjectStore against a real S3-compatible server (s3rver from npm, support/s3_server.h):
// put/get, ranges, head, delete, listing past one page, every key character, many threads;
// and the failure paths: nothing listening, a server that dies and comes back, one that never
// answers, one that answers 503, bad credentials. The retries and their bounds are measured.
#include "storage/s3_object_store.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/unique_fd.h"
#include "support/raw_http.h"
#include "support/s3_server.h"

namespace moat::storage {
namespace {

using std::chrono::milliseconds;
using test_support::S3Server;
using Clock = std::chrono::steady_clock;

// `lhs = value of expr`, or the test fails here with the error.
#define ASSERT_OK_AND_ASSIGN(lhs, expr)                         \
  auto MOAT_CONCAT_(assigned_, __LINE__) = (expr);              \
  ASSERT_TRUE(MOAT_CONCAT_(assigned_, __LINE__).ok())           \
      << MOAT_CONCAT_(assigned_, __LINE__).status().ToString(); \
  lhs = std::move(MOAT_CONCAT_(assigned_, __LINE__)).value()

milliseconds Since(Clock::time_point t) {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - t);
}

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(rng());
  return out;
}

// A config no real server answers: the tests of failures point it somewhere.
S3Config ConfigFor(const std::string& endpoint) {
  S3Config c;
  c.location = {"moat-test", "p"};
  c.endpoint = endpoint;
  c.credentials = {"S3RVER", "S3RVER", ""};
  return c;
}

// One server for the suite; each test has a prefix of its own.
class S3StoreTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = std::make_unique<S3Server>();
    start_ = server_->Start();
  }
  static void TearDownTestSuite() { server_.reset(); }
  void SetUp() override {
    ASSERT_TRUE(start_.ok()) << start_.ToString();
    std::string prefix = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    auto store = S3ObjectStore::Make(server_->Config("t/" + prefix));
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(*store);
  }

  static std::unique_ptr<S3Server> server_;
  static Status start_;
  std::unique_ptr<S3ObjectStore> store_;
};

std::unique_ptr<S3Server> S3StoreTest::server_;
Status S3StoreTest::start_;

TEST_F(S3StoreTest, GetReturnsWhatPutStored) {
  std::string chunk = RandomBytes(4 << 20, 1);
  ASSERT_TRUE(store_->Put("chunks/big", chunk).ok());
  ASSERT_TRUE(store_->Put("empty", "").ok());
  ASSERT_OK_AND_ASSIGN(std::string got, store_->Get("chunks/big"));
  EXPECT_TRUE(got == chunk) << "4 MiB object differs (size " << got.size() << ")";
  ASSERT_OK_AND_ASSIGN(std::string empty, store_->Get("empty"));
  EXPECT_EQ(empty, "");
  // Overwriting (a manifest rewritten with its prefetch trace) replaces the object.
  ASSERT_TRUE(store_->Put("empty", "now full").ok());
  EXPECT_EQ(*store_->Get("empty"), "now full");

  const ObjectStoreStats& s = store_->stats();
  EXPECT_EQ(s.puts.load(), 3u);
  EXPECT_EQ(s.put_bytes.load(), chunk.size() + 8);
  EXPECT_EQ(s.gets.load(), 3u);
  EXPECT_EQ(s.get_bytes.load(), chunk.size() + 8);
  EXPECT_EQ(s.retries.load(), 0u);
  EXPECT_EQ(s.failures.load(), 0u);
}

TEST_F(S3StoreTest, GetOfAMissingKeyIsNotFound) {
  auto got = store_->Get("chunks/none");
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), ErrorCode::kNotFound) << got.status().ToString();
  EXPECT_NE(got.status().message().find("chunks/none"), std::string::npos);
  EXPECT_NE(got.status().message().find("NoSuchKey"), std::string::npos);
  EXPECT_EQ(store_->GetRange("chunks/none", 0, 10).status().code(), ErrorCode::kNotFound);
}

TEST_F(S3StoreTest, GetRangeReturnsTheMiddleAndStopsAtTheEnd) {
  std::string body = RandomBytes(100000, 2);
  ASSERT_TRUE(store_->Put("o", body).ok());
  ASSERT_OK_AND_ASSIGN(std::string middle, store_->GetRange("o", 4096, 8192));
  EXPECT_TRUE(middle == body.substr(4096, 8192));
  ASSERT_OK_AND_ASSIGN(std::string first, store_->GetRange("o", 0, 1));
  EXPECT_EQ(first, body.substr(0, 1));
  ASSERT_OK_AND_ASSIGN(std::string tail, store_->GetRange("o", 99990, 4096));
  EXPECT_EQ(tail, body.substr(99990));
  ASSERT_OK_AND_ASSIGN(std::string at_end, store_->GetRange("o", 100000, 10));
  EXPECT_EQ(at_end, "");
  ASSERT_OK_AND_ASSIGN(std::string past_end, store_->GetRange("o", 500000, 10));
  EXPECT_EQ(past_end, "");
  EXPECT_EQ(store_->stats().get_bytes.load(), 8192u + 1 + 10);
}

TEST_F(S3StoreTest, HeadGivesTheSizeOrNothing) {
  ASSERT_TRUE(store_->Put("snapshots/s/manifest.json", std::string(1234, 'm')).ok());
  ASSERT_OK_AND_ASSIGN(auto present, store_->Head("snapshots/s/manifest.json"));
  EXPECT_EQ(present, std::optional<uint64_t>(1234));
  ASSERT_OK_AND_ASSIGN(auto absent, store_->Head("snapshots/s/other"));
  EXPECT_FALSE(absent.has_value());
  EXPECT_EQ(store_->stats().heads.load(), 2u);
  EXPECT_EQ(store_->stats().failures.load(), 0u);
}

TEST_F(S3StoreTest, DeleteRemovesAndMissingKeysAreFine) {
  ASSERT_TRUE(store_->Put("chunks/d", "x").ok());
  ASSERT_TRUE(store_->Delete("chunks/d").ok());
  ASSERT_OK_AND_ASSIGN(auto gone, store_->Head("chunks/d"));
  EXPECT_FALSE(gone.has_value());
  EXPECT_TRUE(store_->Delete("chunks/d").ok());
  EXPECT_TRUE(store_->Delete("never/was").ok());
  EXPECT_EQ(store_->stats().deletes.load(), 3u);
}

TEST_F(S3StoreTest, ListFollowsContinuationTokensPastAThousandKeys) {
  // s3rver answers at most 1000 keys a page, as S3 does: 1100 keys take two pages.
  constexpr int kKeys = 1100;
  std::atomic<int> next{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = next++; i < kKeys; i = next++) {
        char key[32];
        std::snprintf(key, sizeof key, "chunks/%05d", i);
        EXPECT_TRUE(store_->Put(key, std::string(static_cast<size_t>(i % 7), 'c')).ok()) << key;
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_TRUE(store_->Put("snapshots/one/manifest.json", "{}").ok());

  uint64_t pages_before = store_->stats().lists.load();
  ASSERT_OK_AND_ASSIGN(auto chunks, store_->List("chunks/"));
  EXPECT_GE(store_->stats().lists.load() - pages_before, 2u);
  ASSERT_EQ(chunks.size(), static_cast<size_t>(kKeys));
  for (int i = 0; i < kKeys; ++i) {
    char key[32];
    std::snprintf(key, sizeof key, "chunks/%05d", i);
    ASSERT_EQ(chunks[static_cast<size_t>(i)].key, key);  // the store's prefix stripped, in order
    ASSERT_EQ(chunks[static_cast<size_t>(i)].size, static_cast<uint64_t>(i % 7));
  }
  ASSERT_OK_AND_ASSIGN(auto all, store_->List(""));
  EXPECT_EQ(all.size(), static_cast<size_t>(kKeys) + 1);
  EXPECT_EQ(all.back().key, "snapshots/one/manifest.json");
  ASSERT_OK_AND_ASSIGN(auto none, store_->List("nothing/"));
  EXPECT_TRUE(none.empty());
}

TEST_F(S3StoreTest, StoresUnderOtherPrefixesAreApart) {
  ASSERT_OK_AND_ASSIGN(auto other, S3ObjectStore::Make(server_->Config("t/apart-other")));
  // "t/StoresUnderOtherPrefixesAreApartX" starts with this store's prefix but is not under it.
  ASSERT_OK_AND_ASSIGN(auto lookalike,
                       S3ObjectStore::Make(server_->Config("t/StoresUnderOtherPrefixesAreApartX")));
  ASSERT_TRUE(store_->Put("k", "mine").ok());
  ASSERT_TRUE(other->Put("k", "theirs").ok());
  ASSERT_TRUE(lookalike->Put("k", "lookalike").ok());
  EXPECT_EQ(*store_->Get("k"), "mine");
  EXPECT_EQ(*other->Get("k"), "theirs");
  ASSERT_OK_AND_ASSIGN(auto listed, store_->List(""));
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].key, "k");
}

TEST_F(S3StoreTest, KeysWithEveryAllowedCharacterRoundTrip) {
  std::vector<std::string> keys = {"a-b_c.d/E.F..g/-_.x", ".hidden/..dots../x.",
                                   "UPPER/lower/0123456789", "chunks/" + std::string(64, 'f'),
                                   std::string(200, 'a') + "/" + std::string(200, 'b')};
  for (const auto& k : keys) {
    ASSERT_TRUE(IsValidObjectKey(k)) << k;
    ASSERT_TRUE(store_->Put(k, "v:" + k).ok()) << k;
  }
  for (const auto& k : keys) {
    auto got = store_->Get(k);
    ASSERT_TRUE(got.ok()) << k << ": " << got.status().ToString();
    EXPECT_EQ(*got, "v:" + k);
    ASSERT_OK_AND_ASSIGN(auto size, store_->Head(k));
    EXPECT_EQ(size, std::optional<uint64_t>(k.size() + 2));
  }
  ASSERT_OK_AND_ASSIGN(auto listed, store_->List(""));
  std::vector<std::string> names;
  for (const auto& o : listed) names.push_back(o.key);
  std::sort(keys.begin(), keys.end());
  EXPECT_EQ(names, keys);
}

TEST_F(S3StoreTest, ManyThreadsPutAndGetAtOnce) {
  constexpr int kThreads = 8;
  constexpr int kPerThread = 16;
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        std::string key = "chunks/t" + std::to_string(t) + "-" + std::to_string(i);
        std::string body = RandomBytes(64 * 1024 + static_cast<size_t>(i), t * 100 + i);
        if (!store_->Put(key, body).ok()) wrong++;
        auto got = store_->Get(key);
        if (!got.ok() || *got != body) wrong++;
        auto part = store_->GetRange(key, 1000, 1000);
        if (!part.ok() || *part != body.substr(1000, 1000)) wrong++;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(store_->stats().puts.load(), static_cast<uint64_t>(kThreads * kPerThread));
  EXPECT_EQ(store_->stats().gets.load(), static_cast<uint64_t>(2 * kThreads * kPerThread));
  EXPECT_EQ(store_->stats().failures.load(), 0u);
}

TEST_F(S3StoreTest, WrongCredentialsArePermissionDeniedWithoutTheSecret) {
  S3Config c = server_->Config("t/creds");
  c.credentials = {"NOT-S3RVER", "super-secret-value-123", ""};
  ASSERT_OK_AND_ASSIGN(auto store, S3ObjectStore::Make(c));
  Status put = store->Put("k", "v");
  ASSERT_FALSE(put.ok());
  EXPECT_EQ(put.code(), ErrorCode::kPermissionDenied) << put.ToString();
  EXPECT_NE(put.message().find("InvalidAccessKeyId"), std::string::npos) << put.ToString();
  EXPECT_EQ(put.message().find("super-secret"), std::string::npos) << put.ToString();
  EXPECT_EQ(store->stats().retries.load(), 0u);  // a 403 is not retried
  EXPECT_EQ(store->stats().failures.load(), 1u);
}

TEST_F(S3StoreTest, SendRateIsCapped) {
  S3Config c = server_->Config("t/rate");
  c.max_send_bytes_per_second = 256 * 1024;
  ASSERT_OK_AND_ASSIGN(auto slow, S3ObjectStore::Make(c));
  auto started = Clock::now();
  ASSERT_TRUE(slow->Put("k", std::string(256 * 1024, 'r')).ok());
  // 256 KiB at 256 KiB/s: about a second (libcurl paces in bursts; allow some slack).
  EXPECT_GE(Since(started).count(), 600);
}

TEST_F(S3StoreTest, CreateBucketIsIdempotent) {
  ASSERT_OK_AND_ASSIGN(auto store, S3ObjectStore::Make(server_->Config()));
  EXPECT_TRUE(store->CreateBucket().ok());
  S3Config c = server_->Config();
  c.location.bucket = "another-bucket";
  ASSERT_OK_AND_ASSIGN(auto another, S3ObjectStore::Make(c));
  ASSERT_TRUE(another->CreateBucket().ok());
  ASSERT_TRUE(another->Put("k", "v").ok());
  EXPECT_EQ(*another->Get("k"), "v");
}

TEST(S3StoreFailures, NothingListeningIsUnavailableAfterTheAttempts) {
  uint16_t port = test_support::RefusedLoopbackPort();
  S3Config c = ConfigFor("http://127.0.0.1:" + std::to_string(port));
  c.max_attempts = 4;
  c.backoff_base = milliseconds(20);
  ASSERT_OK_AND_ASSIGN(auto store, S3ObjectStore::Make(c));
  auto started = Clock::now();
  auto got = store->Get("chunks/x");
  auto took = Since(started);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), ErrorCode::kUnavailable) << got.status().ToString();
  EXPECT_NE(got.status().message().find("GET chunks/x"), std::string::npos);
  EXPECT_NE(got.status().message().find("after 4 attempts"), std::string::npos);
  EXPECT_NE(got.status().message().find("connect"), std::string::npos) << got.status().message();
  EXPECT_EQ(store->stats().retries.load(), 3u);
  EXPECT_EQ(store->stats().failures.load(), 1u);
  // Back-off 20 + 40 + 80 ms at most (jitter only shortens it), and refusals are immediate.
  EXPECT_GE(took.count(), 70);
  EXPECT_LT(took.count(), 2000);
}

TEST(S3StoreFailures, AServerThatStopsAndComesBackServesAgain) {
  S3Server server;
  ASSERT_TRUE(server.Start().ok());
  S3Config c = server.Config("restart");
  ASSERT_OK_AND_ASSIGN(auto store, S3ObjectStore::Make(c));
  ASSERT_TRUE(store->Put("before", "kept").ok());

  server.Kill();
  c.max_attempts = 1;
  ASSERT_OK_AND_ASSIGN(auto impatient, S3ObjectStore::Make(c));
  Status down = impatient->Put("during", "x");
  EXPECT_EQ(down.code(), ErrorCode::kUnavailable) << down.ToString();

  // A store with retries enough rides out the outage: the server comes back on the same port
  // and data while its request is backing off.
  c.max_attempts = 30;
  c.backoff_base = milliseconds(100);
  ASSERT_OK_AND_ASSIGN(auto patient, S3ObjectStore::Make(c));
  // The server is started from this thread: it dies with the thread that started it.
  Result<std::string> got = Internal("not run");
  std::thread reader([&] { got = patient->Get("before"); });
  std::this_thread::sleep_for(milliseconds(300));
  Status restart = server.Start();
  reader.join();
  ASSERT_TRUE(restart.ok()) << restart.ToString();
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got, "kept");
  EXPECT_GE(patient->stats().retries.load(), 1u);
  EXPECT_EQ(patient->stats().failures.load(), 0u);

  // The first store's handles held connections to the old server: they are redone.
  ASSERT_TRUE(store->Put("after", "new").ok());
  EXPECT_EQ(*store->Get("after"), "new");
  EXPECT_EQ(*store->Get("before"), "kept");
}

TEST(S3StoreFailures, AServerThatNeverAnswersTimesOut) {
  // Listening but never accepting: the kernel completes the handshake and takes the request,
  // and no answer ever comes.
  UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(listener);
  sockaddr_in addr = test_support::LoopbackAddress(0);
  // sockaddr_in is the IPv4 form of sockaddr: the cast is how the socket API takes it.
  ASSERT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(listener.get(), 16), 0);
  socklen_t len = sizeof addr;
  ASSERT_EQ(::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len), 0);

  S3Config c = ConfigFor("http://127.0.0.1:" + std::to_string(ntohs(addr.sin_port)));
  c.request_timeout = milliseconds(300);
  c.max_attempts = 2;
  c.backoff_base = milliseconds(10);
  ASSERT_OK_AND_ASSIGN(auto store, S3ObjectStore::Make(c));
  auto started = Clock::now();
  auto head = store->Head("k");
  auto took = Since(started);
  ASSERT_FALSE(head.ok());
  EXPECT_EQ(head.status().code(), ErrorCode::kUnavailable) << head.status().ToString();
  EXPECT_NE(head.status().message().find("HEAD k"), std::string::npos);
  EXPECT_NE(head.status().message().find("imeout"), std::string::npos) << head.status().message();
  EXPECT_EQ(store->stats().retries.load(), 1u);
  EXPECT_GE(took.count(), 2 * 300);
  EXPECT_LT(took.count(), 2 * 300 + 1000);
}

TEST(S3StoreFailures, Http503IsRetriedAndNamedWithItsS3Error) {
  std::atomic<int> requests{0};
  std::atomic<int> fail_first{1000};
  test_support::LoopbackServer server([&](test_support::Conn& conn) {
    for (;;) {
      std::string head = conn.ReadUntil("\r\n\r\n");
      if (head.empty()) return;
      int n = requests++;
      std::string response;
      if (n < fail_first.load()) {
        std::string body =
            "<?xml version=\"1.0\"?><Error><Code>SlowDown</Code><Message>Please reduce your "
            "request rate.</Message></Error>";
        response =
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
            "Content-Length: " +
            std::to_string(body.size()) + "\r\n\r\n" + body;
      } else {
        response = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
      }
      if (!test_support::SendAll(conn.fd.get(), response)) return;
    }
  });
  S3Config c = ConfigFor("http://127.0.0.1:" + std::to_string(server.port()));
  c.max_attempts = 3;
  c.backoff_base = milliseconds(10);
  ASSERT_OK_AND_ASSIGN(auto store, S3ObjectStore::Make(c));

  auto got = store->Get("chunks/slow");
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), ErrorCode::kUnavailable);
  EXPECT_NE(got.status().message().find("HTTP 503 SlowDown: Please reduce your request rate."),
            std::string::npos)
      << got.status().message();
  EXPECT_EQ(requests.load(), 3);
  EXPECT_EQ(store->stats().retries.load(), 2u);
  EXPECT_EQ(store->stats().failures.load(), 1u);

  // Two 503s, then an answer: the third attempt succeeds.
  requests = 0;
  fail_first = 2;
  ASSERT_OK_AND_ASSIGN(std::string body, store->Get("chunks/slow"));
  EXPECT_EQ(body, "hello");
  EXPECT_EQ(store->stats().retries.load(), 4u);
  EXPECT_EQ(store->stats().failures.load(), 1u);
  EXPECT_EQ(store->stats().gets.load(), 1u);
}

}  // namespace
}  // namespace moat::storage
