// ChunkFetcher: one fetch per chunk however many callers want it, corrupt objects refused and
// never cached, failures shared by the waiters and retried later, and the fetch metrics.
#include "storage/chunk_fetcher.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <latch>
#include <map>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "common/fs.h"
#include "storage/chunking.h"
#include "support/test_util.h"

namespace moat::storage {
namespace {

using test_support::Sha256Hex;

// An ObjectStore in memory: counts Get calls, can be slowed down, and can be made to fail.
class MemoryStore : public ObjectStore {
 public:
  Status Put(const std::string& key, std::string_view body) override {
    std::lock_guard lock(mu_);
    objects_[key] = std::string(body);
    return Status::Ok();
  }
  Result<std::string> Get(const std::string& key) override {
    get_calls += 1;
    std::this_thread::sleep_for(delay.load());
    if (fail) return Unavailable("memory store: failing on purpose");
    std::lock_guard lock(mu_);
    auto it = objects_.find(key);
    if (it == objects_.end()) return NotFound("memory store: no " + key);
    return it->second;
  }
  Result<std::string> GetRange(const std::string& key, uint64_t offset, uint64_t length) override {
    MOAT_ASSIGN_OR_RETURN(std::string all, Get(key));
    if (offset >= all.size()) return std::string();
    return all.substr(offset, length);
  }
  Result<std::optional<uint64_t>> Head(const std::string& key) override {
    std::lock_guard lock(mu_);
    auto it = objects_.find(key);
    if (it == objects_.end()) return std::optional<uint64_t>();
    return std::optional<uint64_t>(it->second.size());
  }
  Status Delete(const std::string& key) override {
    std::lock_guard lock(mu_);
    objects_.erase(key);
    return Status::Ok();
  }
  Result<std::vector<ObjectInfo>> List(const std::string& prefix) override {
    std::lock_guard lock(mu_);
    std::vector<ObjectInfo> out;
    for (const auto& [key, body] : objects_) {
      if (key.starts_with(prefix)) out.push_back({key, body.size()});
    }
    return out;
  }
  std::string Describe() const override { return "memory store"; }

  std::atomic<int> get_calls{0};
  std::atomic<std::chrono::milliseconds> delay{std::chrono::milliseconds(0)};
  std::atomic<bool> fail{false};

 private:
  std::mutex mu_;
  std::map<std::string, std::string> objects_;
};

std::string Chunk(int seed, size_t size = 4096) {
  std::string data(size, '\0');
  for (size_t i = 0; i < size; ++i) data[i] = static_cast<char>(seed * 13 + i % 241 + 1);
  return data;
}

class ChunkFetcherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = MakeTempDir("/tmp", "moat-chunk-fetcher.");
    ASSERT_TRUE(d.ok()) << d.status().ToString();
    dir_ = *d;
    auto cache = ChunkCache::Open(dir_ + "/cache", uint64_t{1} << 30);
    ASSERT_TRUE(cache.ok()) << cache.status().ToString();
    cache_ = std::move(cache).value();
    fetcher_ = std::make_unique<ChunkFetcher>(*cache_, store_);
  }
  void TearDown() override {
    fetcher_.reset();
    cache_.reset();
    (void)RemoveTree(dir_);
  }

  // Stores Chunk(seed) under its hash and returns the hash.
  std::string Upload(int seed) {
    std::string data = Chunk(seed);
    std::string hash = Sha256Hex(data);
    EXPECT_TRUE(store_.Put(ChunkKey(hash), data).ok());
    return hash;
  }

  // Runs Ensure(hash) on `n` threads started together; their statuses.
  std::vector<Status> EnsureFrom(int n, const std::string& hash) {
    std::vector<Status> out(n);
    std::latch start(n);
    std::vector<std::thread> threads;
    for (int i = 0; i < n; ++i) {
      threads.emplace_back([&, i] {
        start.arrive_and_wait();
        out[i] = fetcher_->Ensure(hash);
      });
    }
    for (auto& t : threads) t.join();
    return out;
  }

  std::string dir_;
  MemoryStore store_;
  std::unique_ptr<ChunkCache> cache_;
  std::unique_ptr<ChunkFetcher> fetcher_;
};

TEST_F(ChunkFetcherTest, SixteenConcurrentCallersCauseOneGet) {
  std::string hash = Upload(1);
  store_.delay = std::chrono::milliseconds(200);
  for (const Status& s : EnsureFrom(16, hash)) EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(store_.get_calls, 1);
  EXPECT_TRUE(cache_->Contains(hash));
  auto read = cache_->ReadAll(hash);
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(*read, Chunk(1));
  auto stats = fetcher_->stats();
  EXPECT_EQ(stats.fetches, 1u);
  EXPECT_EQ(stats.fetch_bytes, 4096u);
  EXPECT_EQ(stats.failures, 0u);
  // Every other caller either waited on the fetch or, started late, found the chunk cached.
  EXPECT_GE(stats.waits, 1u);
  EXPECT_LE(stats.waits, 15u);
}

TEST_F(ChunkFetcherTest, ACachedChunkNeedsNoGet) {
  std::string data = Chunk(2);
  std::string hash = Sha256Hex(data);
  ASSERT_TRUE(cache_->Insert(hash, data).ok());
  EXPECT_TRUE(fetcher_->Ensure(hash).ok());
  EXPECT_EQ(store_.get_calls, 0);
  EXPECT_EQ(fetcher_->Ensure("not-a-hash").code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(store_.get_calls, 0);
}

TEST_F(ChunkFetcherTest, ACorruptObjectIsRefusedAndNotCached) {
  std::string hash = Sha256Hex(Chunk(3));
  ASSERT_TRUE(store_.Put(ChunkKey(hash), Chunk(4)).ok());
  Status s = fetcher_->Ensure(hash);
  EXPECT_EQ(s.code(), ErrorCode::kInternal);
  EXPECT_NE(s.message().find(hash), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("corrupt"), std::string::npos) << s.message();
  EXPECT_FALSE(cache_->Contains(hash));
  EXPECT_EQ(cache_->stats().chunks, 0u);
  // Not remembered as good either: the next Ensure fetches again.
  EXPECT_EQ(fetcher_->Ensure(hash).code(), ErrorCode::kInternal);
  EXPECT_EQ(store_.get_calls, 2);
  EXPECT_EQ(fetcher_->stats().failures, 2u);

  std::string empty_hash = Sha256Hex(Chunk(5));
  ASSERT_TRUE(store_.Put(ChunkKey(empty_hash), "").ok());
  EXPECT_EQ(fetcher_->Ensure(empty_hash).code(), ErrorCode::kInternal);
  EXPECT_FALSE(cache_->Contains(empty_hash));
}

TEST_F(ChunkFetcherTest, AFailingStoreFailsEveryWaiterAndALaterEnsureRetries) {
  std::string hash = Upload(6);
  store_.fail = true;
  store_.delay = std::chrono::milliseconds(200);
  std::vector<Status> statuses = EnsureFrom(8, hash);
  for (const Status& s : statuses) {
    EXPECT_EQ(s.code(), ErrorCode::kUnavailable) << s.ToString();
    EXPECT_NE(s.message().find(hash), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("memory store"), std::string::npos) << s.message();
  }
  EXPECT_EQ(store_.get_calls, 1);
  EXPECT_FALSE(cache_->Contains(hash));
  auto stats = fetcher_->stats();
  EXPECT_EQ(stats.failures, 1u);
  EXPECT_EQ(stats.fetches, 0u);

  store_.fail = false;
  store_.delay = std::chrono::milliseconds(0);
  EXPECT_TRUE(fetcher_->Ensure(hash).ok());
  EXPECT_EQ(store_.get_calls, 2);
  EXPECT_TRUE(cache_->Contains(hash));
}

TEST_F(ChunkFetcherTest, AMissingObjectIsNotFound) {
  std::string hash = Sha256Hex("never uploaded");
  Status s = fetcher_->Ensure(hash);
  EXPECT_EQ(s.code(), ErrorCode::kNotFound);
  EXPECT_NE(s.message().find(hash), std::string::npos) << s.message();
}

TEST_F(ChunkFetcherTest, StatsCountFetchesBytesAndLatencyBuckets) {
  auto empty = fetcher_->stats();
  ASSERT_EQ(empty.latency_buckets.size(), std::size(kFetchLatencyBucketsMs) + 1);
  EXPECT_EQ(std::accumulate(empty.latency_buckets.begin(), empty.latency_buckets.end(), 0ull), 0u);

  for (int seed = 10; seed < 13; ++seed) ASSERT_TRUE(fetcher_->Ensure(Upload(seed)).ok());
  store_.delay = std::chrono::milliseconds(30);
  ASSERT_TRUE(fetcher_->Ensure(Upload(13)).ok());

  auto stats = fetcher_->stats();
  EXPECT_EQ(stats.fetches, 4u);
  EXPECT_EQ(stats.fetch_bytes, 4u * 4096u);
  EXPECT_EQ(std::accumulate(stats.latency_buckets.begin(), stats.latency_buckets.end(), 0ull), 4u);
  // The slow fetch took over 25 ms: it is counted in the 50 ms bucket or above.
  EXPECT_GE(std::accumulate(stats.latency_buckets.begin() + 5, stats.latency_buckets.end(), 0ull),
            1u);
  EXPECT_GE(stats.latency_sum_ms, 30.0);
  EXPECT_EQ(stats.waits, 0u);
  EXPECT_EQ(stats.failures, 0u);
}

}  // namespace
}  // namespace moat::storage
