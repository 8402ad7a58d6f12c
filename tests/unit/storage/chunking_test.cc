// Chunking: zero elision (holes and explicit zeros), content addressing, and reading chunks back.
#include "storage/chunking.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <string>

#include "common/fs.h"
#include "common/unique_fd.h"
#include "support/test_util.h"

namespace moat::storage {
namespace {

using test_support::Sha256Hex;

class ChunkingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = MakeTempDir("/tmp", "moat-chunking.");
    ASSERT_TRUE(d.ok()) << d.status().ToString();
    dir_ = *d;
  }
  void TearDown() override { (void)RemoveTree(dir_); }

  // A file of `size` bytes (a hole unless written) with `writes` at their offsets.
  std::string MakeFile(const std::string& name, uint64_t size,
                       const std::vector<std::pair<uint64_t, std::string>>& writes) {
    std::string path = dir_ + "/" + name;
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    EXPECT_TRUE(fd.valid());
    EXPECT_EQ(::ftruncate(fd.get(), static_cast<off_t>(size)), 0);
    for (const auto& [offset, bytes] : writes) {
      EXPECT_EQ(::pwrite(fd.get(), bytes.data(), bytes.size(), static_cast<off_t>(offset)),
                static_cast<ssize_t>(bytes.size()));
    }
    return path;
  }

  std::string dir_;
};

// Whether the file system of `path` reports holes (tmpfs, ext4, xfs and btrfs do).
bool ReportsHoles(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  off_t hole = ::lseek(fd.get(), 0, SEEK_HOLE);
  return hole == 0;
}

TEST(ChunkMapTest, LengthsAndNonZeroBytesFollowTheSize) {
  ChunkMap map{.size = 2 * kChunkSize + 10, .chunks = {"a", std::nullopt, "b"}};
  EXPECT_EQ(map.ChunkLength(0), kChunkSize);
  EXPECT_EQ(map.ChunkLength(1), kChunkSize);
  EXPECT_EQ(map.ChunkLength(2), 10u);
  EXPECT_EQ(map.ChunkLength(3), 0u);
  EXPECT_EQ(map.NonZeroBytes(), kChunkSize + 10);
  EXPECT_EQ(ChunkMap{}.NonZeroBytes(), 0u);
}

TEST(ChunkHashTest, NamesAndKeys) {
  const std::string hash = Sha256Hex("abc");
  EXPECT_TRUE(IsValidChunkHash(hash));
  EXPECT_EQ(ChunkHash("abc"), hash);
  EXPECT_FALSE(IsValidChunkHash(""));
  EXPECT_FALSE(IsValidChunkHash(hash.substr(1)));
  EXPECT_FALSE(IsValidChunkHash(hash + "0"));
  std::string upper = hash;
  upper[0] = 'A';
  EXPECT_FALSE(IsValidChunkHash(upper));
  std::string slash = hash;
  slash[5] = '/';
  EXPECT_FALSE(IsValidChunkHash(slash));
  EXPECT_EQ(ChunkKey(hash), "chunks/" + hash);
}

TEST(IsAllZeroTest, FindsAnyNonZeroByteAtAnyPosition) {
  EXPECT_TRUE(IsAllZero(""));
  for (size_t size : {1u, 7u, 4095u, 4096u, 4097u, 3 * 4096u + 5}) {
    std::string data(size, '\0');
    EXPECT_TRUE(IsAllZero(data)) << size;
    for (size_t pos : {size_t{0}, size / 2, size - 1}) {
      data[pos] = 1;
      EXPECT_FALSE(IsAllZero(data)) << size << " at " << pos;
      data[pos] = 0;
    }
  }
}

TEST_F(ChunkingTest, AnEmptyFileHasNoChunks) {
  auto map = ChunkFile(MakeFile("empty", 0, {}));
  ASSERT_TRUE(map.ok()) << map.status().ToString();
  EXPECT_EQ(map->size, 0u);
  EXPECT_TRUE(map->chunks.empty());
  EXPECT_EQ(map->NonZeroBytes(), 0u);
}

TEST_F(ChunkingTest, HolesAndExplicitZerosAreNullAndDataIsHashed) {
  // Chunk 0: a hole. Chunk 1: data at both ends (a hole between). Chunk 2: written zeros.
  // Chunk 3: a partial last chunk of 100 bytes with data.
  const uint64_t size = 3 * kChunkSize + 100;
  std::string path = MakeFile("sparse", size,
                              {{kChunkSize, "head"},
                               {2 * kChunkSize - 4, "tail"},
                               {2 * kChunkSize, std::string(kChunkSize, '\0')},
                               {3 * kChunkSize + 99, "x"}});
  auto map = ChunkFile(path);
  ASSERT_TRUE(map.ok()) << map.status().ToString();
  EXPECT_EQ(map->size, size);
  ASSERT_EQ(map->chunks.size(), 4u);
  EXPECT_FALSE(map->chunks[0]);
  std::string chunk1(kChunkSize, '\0');
  chunk1.replace(0, 4, "head");
  chunk1.replace(kChunkSize - 4, 4, "tail");
  EXPECT_EQ(map->chunks[1], Sha256Hex(chunk1));
  EXPECT_FALSE(map->chunks[2]);
  std::string last(100, '\0');
  last[99] = 'x';
  EXPECT_EQ(map->chunks[3], Sha256Hex(last));  // only the bytes up to the size
  EXPECT_EQ(map->NonZeroBytes(), kChunkSize + 100);
}

TEST_F(ChunkingTest, EqualChunksShareAHashAndOneChangedByteDoesNot) {
  std::string block(kChunkSize, 'a');
  std::string changed = block;
  changed[12345] = 'b';
  std::string path = MakeFile("dup", 3 * kChunkSize, {{0, block}, {kChunkSize, block}});
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  ASSERT_EQ(::pwrite(fd.get(), changed.data(), changed.size(), 2 * kChunkSize),
            static_cast<ssize_t>(changed.size()));
  auto map = ChunkFile(path);
  ASSERT_TRUE(map.ok()) << map.status().ToString();
  ASSERT_EQ(map->chunks.size(), 3u);
  EXPECT_EQ(map->chunks[0], map->chunks[1]);
  EXPECT_EQ(map->chunks[0], Sha256Hex(block));
  EXPECT_NE(map->chunks[2], map->chunks[0]);
  EXPECT_EQ(map->chunks[2], Sha256Hex(changed));
}

TEST_F(ChunkingTest, AHugeSparseFileIsChunkedWithoutReadingItsHoles) {
  // 256 GiB of hole and one byte: read, it would take minutes; skipped by SEEK_DATA, moments.
  const uint64_t size = uint64_t{256} << 30;
  std::string path = MakeFile("huge", size, {{size - 1, "z"}});
  if (!ReportsHoles(path)) GTEST_SKIP() << "this file system does not report holes";
  auto start = std::chrono::steady_clock::now();
  auto map = ChunkFile(path);
  auto elapsed = std::chrono::steady_clock::now() - start;
  ASSERT_TRUE(map.ok()) << map.status().ToString();
  ASSERT_EQ(map->chunks.size(), size / kChunkSize);
  for (size_t i = 0; i + 1 < map->chunks.size(); ++i) ASSERT_FALSE(map->chunks[i]) << i;
  EXPECT_TRUE(map->chunks.back());
  EXPECT_EQ(map->NonZeroBytes(), kChunkSize);
  EXPECT_LT(elapsed, std::chrono::seconds(10));
}

TEST_F(ChunkingTest, ReadChunkReturnsTheBytesOfEachChunk) {
  std::string data(kChunkSize + 7, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 31 + 1);
  std::string path =
      MakeFile("round", 2 * kChunkSize + 7,
               {{0, data.substr(0, kChunkSize)}, {2 * kChunkSize, data.substr(kChunkSize)}});
  auto map = ChunkFile(path);
  ASSERT_TRUE(map.ok()) << map.status().ToString();
  ASSERT_EQ(map->chunks.size(), 3u);
  auto c0 = ReadChunk(path, *map, 0);
  ASSERT_TRUE(c0.ok()) << c0.status().ToString();
  EXPECT_EQ(*c0, data.substr(0, kChunkSize));
  EXPECT_EQ(Sha256Hex(*c0), map->chunks[0]);
  auto c1 = ReadChunk(path, *map, 1);  // a null chunk reads as zeros
  ASSERT_TRUE(c1.ok()) << c1.status().ToString();
  EXPECT_EQ(*c1, std::string(kChunkSize, '\0'));
  auto c2 = ReadChunk(path, *map, 2);
  ASSERT_TRUE(c2.ok()) << c2.status().ToString();
  EXPECT_EQ(*c2, data.substr(kChunkSize));
  EXPECT_EQ(ReadChunk(path, *map, 3).status().code(), ErrorCode::kInvalidArgument);
}

TEST_F(ChunkingTest, ReadChunkRefusesAFileChangedSinceItWasChunked) {
  std::string path = MakeFile("changing", kChunkSize + 1, {{0, "abc"}});
  auto map = ChunkFile(path);
  ASSERT_TRUE(map.ok()) << map.status().ToString();
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  ASSERT_EQ(::pwrite(fd.get(), "x", 1, 1), 1);
  ASSERT_EQ(::pwrite(fd.get(), "y", 1, kChunkSize), 1);
  auto changed = ReadChunk(path, *map, 0);
  EXPECT_EQ(changed.status().code(), ErrorCode::kFailedPrecondition);
  EXPECT_NE(changed.status().message().find(path), std::string::npos);
  EXPECT_EQ(ReadChunk(path, *map, 1).status().code(), ErrorCode::kFailedPrecondition);
  ASSERT_EQ(::ftruncate(fd.get(), 10), 0);
  EXPECT_EQ(ReadChunk(path, *map, 0).status().code(), ErrorCode::kFailedPrecondition);
}

TEST_F(ChunkingTest, ErrorsNameThePath) {
  auto missing = ChunkFile(dir_ + "/missing");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), ErrorCode::kNotFound);
  EXPECT_NE(missing.status().message().find(dir_ + "/missing"), std::string::npos);
  auto directory = ChunkFile(dir_);
  ASSERT_FALSE(directory.ok());
  EXPECT_NE(directory.status().message().find(dir_), std::string::npos);
}

}  // namespace
}  // namespace moat::storage
