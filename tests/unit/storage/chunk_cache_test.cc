// ChunkCache: verified inserts, reads, LRU eviction within the bound, pins, and the directory as
// the record that Open() rebuilds the index from.
#include "storage/chunk_cache.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <thread>
#include <vector>

#include "common/fs.h"
#include "storage/chunking.h"
#include "support/test_util.h"

namespace moat::storage {
namespace {

using test_support::Sha256Hex;

// A chunk of `size` bytes whose content depends on `seed`.
std::string Chunk(int seed, size_t size = 1000) {
  std::string data(size, '\0');
  for (size_t i = 0; i < size; ++i) data[i] = static_cast<char>(seed * 7 + i % 251 + 1);
  return data;
}

class ChunkCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = MakeTempDir("/tmp", "moat-chunk-cache.");
    ASSERT_TRUE(d.ok()) << d.status().ToString();
    dir_ = *d + "/cache";
  }
  void TearDown() override { (void)RemoveTree(dir_.substr(0, dir_.rfind('/'))); }

  std::unique_ptr<ChunkCache> Open(uint64_t max_bytes) {
    auto cache = ChunkCache::Open(dir_, max_bytes);
    EXPECT_TRUE(cache.ok()) << cache.status().ToString();
    return cache.ok() ? std::move(cache).value() : nullptr;
  }

  // Inserts Chunk(seed) and returns its hash.
  std::string Put(ChunkCache& cache, int seed, size_t size = 1000) {
    std::string data = Chunk(seed, size);
    std::string hash = Sha256Hex(data);
    Status s = cache.Insert(hash, data);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return hash;
  }

  std::string PathOf(const std::string& hash) {
    return dir_ + "/" + hash.substr(0, 2) + "/" + hash;
  }

  std::string dir_;
};

TEST_F(ChunkCacheTest, InsertedChunksReadBackWholeAndInPart) {
  auto cache = Open(1 << 20);
  std::string data = Chunk(1);
  std::string hash = Put(*cache, 1);
  EXPECT_TRUE(cache->Contains(hash));
  EXPECT_TRUE(PathExists(PathOf(hash)));
  EXPECT_EQ(cache->dir(), dir_);

  auto all = cache->ReadAll(hash);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  EXPECT_EQ(*all, data);
  char part[100];
  auto n = cache->Read(hash, 950, part, sizeof part);  // past the end: fewer bytes
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_EQ(*n, 50u);
  EXPECT_EQ(std::string(part, 50), data.substr(950));
  n = cache->Read(hash, 1000, part, sizeof part);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 0u);

  EXPECT_TRUE(cache->Insert(hash, data).ok());  // again: fine, stored once
  auto stats = cache->stats();
  EXPECT_EQ(stats.chunks, 1u);
  EXPECT_EQ(stats.bytes, 1000u);
  EXPECT_EQ(stats.inserts, 1u);
  EXPECT_EQ(stats.hits, 3u);
  EXPECT_EQ(stats.misses, 0u);
  EXPECT_EQ(stats.max_bytes, uint64_t{1} << 20);
}

TEST_F(ChunkCacheTest, AMissIsNotFoundAndCounted) {
  auto cache = Open(1 << 20);
  std::string hash = Sha256Hex("absent");
  EXPECT_FALSE(cache->Contains(hash));
  EXPECT_EQ(cache->ReadAll(hash).status().code(), ErrorCode::kNotFound);
  char byte;
  EXPECT_EQ(cache->Read(hash, 0, &byte, 1).status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(cache->stats().misses, 2u);
  EXPECT_EQ(cache->stats().hits, 0u);
}

TEST_F(ChunkCacheTest, RefusesBytesThatDoNotMatchTheHashAndBadHashes) {
  auto cache = Open(1 << 20);
  std::string data = Chunk(1);
  std::string other = Sha256Hex(Chunk(2));
  Status s = cache->Insert(other, data);
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(s.message().find(other), std::string::npos) << s.message();
  EXPECT_FALSE(cache->Contains(other));
  EXPECT_FALSE(PathExists(PathOf(other)));

  EXPECT_EQ(cache->Insert("../../etc/passwd", data).code(), ErrorCode::kInvalidArgument);
  std::string upper = Sha256Hex(data);
  for (char& c : upper) c = static_cast<char>(std::toupper(c));
  EXPECT_EQ(cache->Insert(upper, data).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(cache->Insert(Sha256Hex(""), "").code(), ErrorCode::kInvalidArgument);
  std::string too_big(kChunkSize + 1, 'x');
  EXPECT_EQ(cache->Insert(Sha256Hex(too_big), too_big).code(), ErrorCode::kInvalidArgument);
  char byte;
  EXPECT_EQ(cache->Read("../x", 0, &byte, 1).status().code(), ErrorCode::kInvalidArgument);
  auto stats = cache->stats();
  EXPECT_EQ(stats.chunks, 0u);
  EXPECT_EQ(stats.inserts, 0u);
}

TEST_F(ChunkCacheTest, EvictsTheLeastRecentlyUsedBeyondTheBound) {
  auto cache = Open(3000);
  std::string a = Put(*cache, 1);
  std::string b = Put(*cache, 2);
  std::string c = Put(*cache, 3);
  ASSERT_TRUE(cache->ReadAll(a).ok());  // a is now more recent than b and c
  std::string d = Put(*cache, 4);
  EXPECT_FALSE(cache->Contains(b));
  EXPECT_FALSE(PathExists(PathOf(b)));
  EXPECT_TRUE(cache->Contains(a));
  EXPECT_TRUE(cache->Contains(c));
  EXPECT_TRUE(cache->Contains(d));
  std::string e = Put(*cache, 5);
  EXPECT_FALSE(cache->Contains(c));
  EXPECT_TRUE(cache->Contains(a));
  auto stats = cache->stats();
  EXPECT_EQ(stats.chunks, 3u);
  EXPECT_EQ(stats.bytes, 3000u);
  EXPECT_EQ(stats.evictions, 2u);
  EXPECT_EQ(stats.inserts, 5u);
}

TEST_F(ChunkCacheTest, TheChunkJustInsertedStaysEvenWhenItAloneExceedsTheBound) {
  auto cache = Open(500);
  std::string a = Put(*cache, 1);
  EXPECT_TRUE(cache->Contains(a));
  std::string b = Put(*cache, 2);
  EXPECT_TRUE(cache->Contains(b));
  EXPECT_FALSE(cache->Contains(a));
}

TEST_F(ChunkCacheTest, PinnedChunksAreNeverEvicted) {
  auto cache = Open(2000);
  std::string a = Put(*cache, 1);
  cache->Pin(a);
  cache->Pin(a);  // counted
  std::string later = Sha256Hex(Chunk(9));
  cache->Pin(later);  // absent: protected once inserted
  EXPECT_EQ(cache->stats().pinned, 2u);
  for (int seed = 2; seed < 6; ++seed) Put(*cache, seed);
  Put(*cache, 9);
  EXPECT_TRUE(cache->Contains(a));
  EXPECT_TRUE(cache->Contains(later));
  for (int seed = 10; seed < 13; ++seed) Put(*cache, seed);
  EXPECT_TRUE(cache->Contains(a));
  EXPECT_TRUE(cache->Contains(later));
  // Two pinned chunks and the newest: over the bound while they are pinned.
  EXPECT_EQ(cache->stats().bytes, 3000u);

  cache->Unpin(a);
  EXPECT_TRUE(cache->Contains(a));  // one pin left
  cache->Unpin(a);
  cache->Unpin(later);
  cache->Unpin(later);  // one too many: ignored
  auto stats = cache->stats();
  EXPECT_EQ(stats.pinned, 0u);
  EXPECT_LE(stats.bytes, 2000u);
}

TEST_F(ChunkCacheTest, RemoveDropsAChunkAndIgnoresAnAbsentOne) {
  auto cache = Open(1 << 20);
  std::string a = Put(*cache, 1);
  cache->Remove(a);
  EXPECT_FALSE(cache->Contains(a));
  EXPECT_FALSE(PathExists(PathOf(a)));
  EXPECT_EQ(cache->stats().bytes, 0u);
  cache->Remove(a);
  cache->Remove("not a hash");
  EXPECT_EQ(cache->stats().chunks, 0u);
}

TEST_F(ChunkCacheTest, ReopenRebuildsTheIndexInMtimeOrderAndRemovesLeftovers) {
  std::vector<std::string> hashes;
  {
    auto cache = Open(1 << 20);
    for (int seed = 0; seed < 4; ++seed) hashes.push_back(Put(*cache, seed));
  }
  // Recency from mtime: hashes[3] oldest ... hashes[0] newest.
  for (int i = 0; i < 4; ++i) {
    struct timespec times[2] = {{1000000 + (3 - i) * 100, 0}, {1000000 + (3 - i) * 100, 0}};
    ASSERT_EQ(::utimensat(AT_FDCWD, PathOf(hashes[i]).c_str(), times, 0), 0);
  }
  // What a crash leaves: temporaries, an empty chunk, and one larger than any chunk.
  std::string sub = dir_ + "/" + hashes[0].substr(0, 2);
  ASSERT_TRUE(WriteFileAtomic(sub + "/.tmp-" + hashes[0] + ".7", "partial").ok());
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/.tmp-stray", "partial").ok());
  std::string empty = Sha256Hex("empty");
  ASSERT_TRUE(MakeDirs(dir_ + "/" + empty.substr(0, 2)).ok());
  ASSERT_TRUE(WriteFileAtomic(PathOf(empty), "").ok());
  std::string big = Sha256Hex("big");
  ASSERT_TRUE(MakeDirs(dir_ + "/" + big.substr(0, 2)).ok());
  ASSERT_TRUE(WriteFileAtomic(PathOf(big), "").ok());
  ASSERT_EQ(::truncate(PathOf(big).c_str(), kChunkSize + 1), 0);
  // Something that is not the cache's is left alone.
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/README", "mine").ok());

  auto cache = Open(1 << 20);
  for (const auto& h : hashes) EXPECT_TRUE(cache->Contains(h)) << h;
  EXPECT_FALSE(PathExists(sub + "/.tmp-" + hashes[0] + ".7"));
  EXPECT_FALSE(PathExists(dir_ + "/.tmp-stray"));
  EXPECT_FALSE(cache->Contains(empty));
  EXPECT_FALSE(PathExists(PathOf(empty)));
  EXPECT_FALSE(cache->Contains(big));
  EXPECT_FALSE(PathExists(PathOf(big)));
  EXPECT_TRUE(PathExists(dir_ + "/README"));
  EXPECT_EQ(cache->stats().chunks, 4u);
  EXPECT_EQ(cache->stats().bytes, 4000u);
  auto read = cache->ReadAll(hashes[2]);
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(*read, Chunk(2));
  cache.reset();

  // Reopened under a smaller bound: the oldest by mtime go first. hashes[2] was read above,
  // which refreshed its mtime: it is now the newest.
  cache = Open(2000);
  EXPECT_FALSE(cache->Contains(hashes[3]));
  EXPECT_FALSE(cache->Contains(hashes[1]));
  EXPECT_TRUE(cache->Contains(hashes[0]));
  EXPECT_TRUE(cache->Contains(hashes[2]));
  EXPECT_EQ(cache->stats().chunks, 2u);
  EXPECT_EQ(cache->stats().evictions, 2u);
}

TEST_F(ChunkCacheTest, ConcurrentInsertsReadsAndPinsKeepTheIndexConsistent) {
  auto cache = Open(10 * 1000);
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        int seed = (t * 31 + i) % 24;
        std::string data = Chunk(seed);
        std::string hash = Sha256Hex(data);
        if (i % 5 == 0) cache->Pin(hash);
        EXPECT_TRUE(cache->Insert(hash, data).ok());
        auto read = cache->ReadAll(hash);
        if (read.ok()) {
          EXPECT_EQ(*read, data);
        }
        if (i % 5 == 0) cache->Unpin(hash);
        if (i % 17 == 0) cache->Remove(hash);
      }
    });
  }
  for (auto& t : threads) t.join();
  auto stats = cache->stats();
  EXPECT_LE(stats.bytes, 10u * 1000u);
  EXPECT_EQ(stats.bytes, stats.chunks * 1000u);
  EXPECT_EQ(stats.pinned, 0u);
  // The directory agrees with the index.
  uint64_t files = 0;
  for (const auto& sub : DirNames(dir_)) files += DirNames(dir_ + "/" + sub).size();
  EXPECT_EQ(files, stats.chunks);
}

}  // namespace
}  // namespace moat::storage
