// MemoryFiles without a mount: the reads, pins, prefetch, fill and trace that memfs's FUSE
// operations delegate to, over a directory store and a chunk cache in temp dirs.
#include "memfs/memory_files.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <random>
#include <thread>

#include "common/fs.h"
#include "storage/local_object_store.h"
#include "storage/sigv4.h"

namespace moat::memfs {
namespace {

using storage::kChunkSize;

class MemoryFilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = MakeTempDir("/tmp", "memfs-files-");
    ASSERT_TRUE(dir.ok()) << dir.status().ToString();
    dir_ = *dir;
    control_ = dir_ + "/control";
    ASSERT_TRUE(MakeDirs(control_).ok());
    auto store = storage::LocalObjectStore::Make(dir_ + "/store");
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(*store);
    auto cache = storage::ChunkCache::Open(dir_ + "/cache", uint64_t{256} << 20);
    ASSERT_TRUE(cache.ok()) << cache.status().ToString();
    cache_ = std::move(*cache);
    fetcher_ = std::make_unique<storage::ChunkFetcher>(*cache_, *store_);
  }
  void TearDown() override {
    files_.reset();
    (void)RemoveTree(dir_);
  }

  void Start(std::chrono::milliseconds trace_window = std::chrono::seconds(10)) {
    MemoryFilesOptions o;
    o.control_dir = control_;
    o.trace_window = trace_window;
    o.background_threads = 4;
    o.fill_delay = std::chrono::milliseconds(0);
    files_ = std::make_unique<MemoryFiles>(o, *cache_, *fetcher_);
  }

  // A file of `size` bytes whose chunks listed in `zero` are all-zero and the others random; its
  // chunks are put in the store and its spec in the control dir. Returns its bytes.
  std::string MakeFile(const std::string& name, uint64_t size, const std::vector<size_t>& zero,
                       const std::vector<uint32_t>& prefetch = {}, bool fill = false) {
    std::mt19937_64 rng(std::hash<std::string>()(name));
    std::string data(size, '\0');
    MemfsFileSpec spec;
    spec.name = name;
    spec.chunks.size = size;
    spec.prefetch = prefetch;
    spec.fill = fill;
    for (size_t i = 0; i * kChunkSize < size; ++i) {
      uint64_t begin = i * kChunkSize;
      uint64_t end = std::min(size, begin + kChunkSize);
      if (std::find(zero.begin(), zero.end(), i) != zero.end()) {
        spec.chunks.chunks.emplace_back(std::nullopt);
        continue;
      }
      for (uint64_t p = begin; p < end; p += 8) {
        uint64_t v = rng();
        std::memcpy(&data[p], &v, std::min<uint64_t>(8, end - p));
      }
      std::string_view chunk(data.data() + begin, end - begin);
      std::string hash = storage::Sha256Hex(chunk);
      EXPECT_TRUE(store_->Put(storage::ChunkKey(hash), chunk).ok());
      spec.chunks.chunks.emplace_back(hash);
    }
    EXPECT_TRUE(WriteMemfsFile(control_, spec).ok());
    specs_[name] = spec;
    return data;
  }

  MemoryFiles::Ino LookupAndOpen(const std::string& name) {
    auto attr = files_->Lookup(name);
    EXPECT_TRUE(attr.ok()) << attr.status().ToString();
    EXPECT_TRUE(files_->Open(attr->ino).ok());
    return attr->ino;
  }

  std::string ReadAt(MemoryFiles::Ino ino, uint64_t offset, size_t size) {
    std::string out(size, '\x55');
    auto n = files_->Read(ino, offset, size, out.data());
    EXPECT_TRUE(n.ok()) << n.status().ToString();
    out.resize(n.ok() ? *n : 0);
    return out;
  }

  template <typename Pred>
  bool WaitFor(Pred pred) {
    for (int i = 0; i < 500; ++i) {
      if (pred()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return pred();
  }

  std::string dir_, control_;
  std::unique_ptr<storage::LocalObjectStore> store_;
  std::unique_ptr<storage::ChunkCache> cache_;
  std::unique_ptr<storage::ChunkFetcher> fetcher_;
  std::unique_ptr<MemoryFiles> files_;
  std::map<std::string, MemfsFileSpec> specs_;
};

TEST_F(MemoryFilesTest, ReadsReturnTheFileBytesAcrossChunkBoundaries) {
  std::string data = MakeFile("f", 3 * kChunkSize + 1000, {1});
  Start();
  auto ino = LookupAndOpen("f");
  EXPECT_EQ(ReadAt(ino, 0, 4096), data.substr(0, 4096));
  EXPECT_EQ(ReadAt(ino, kChunkSize - 100, 300), data.substr(kChunkSize - 100, 300));
  EXPECT_EQ(ReadAt(ino, 2 * kChunkSize - 7, kChunkSize + 14),
            data.substr(2 * kChunkSize - 7, kChunkSize + 14));
  // The end: short, then nothing.
  EXPECT_EQ(ReadAt(ino, data.size() - 10, 4096), data.substr(data.size() - 10));
  EXPECT_EQ(ReadAt(ino, data.size(), 4096), "");
  EXPECT_EQ(ReadAt(ino, data.size() + kChunkSize, 10), "");
  files_->Release(ino);
}

TEST_F(MemoryFilesTest, ZeroChunksAreAnsweredWithoutAFetch) {
  std::string data = MakeFile("z", 2 * kChunkSize, {0});
  Start();
  auto ino = LookupAndOpen("z");
  EXPECT_EQ(ReadAt(ino, 100, 1 << 20), std::string(1 << 20, '\0'));
  EXPECT_EQ(fetcher_->stats().fetches, 0u);
  EXPECT_EQ(store_->stats().gets.load(), 0u);
  EXPECT_EQ(files_->stats().zero_chunk_reads, 1u);
  EXPECT_EQ(ReadAt(ino, kChunkSize, 10), data.substr(kChunkSize, 10));
  EXPECT_EQ(fetcher_->stats().fetches, 1u);
  files_->Release(ino);
}

TEST_F(MemoryFilesTest, ConcurrentReadsOfOneChunkFetchItOnce) {
  std::string data = MakeFile("c", kChunkSize, {});
  Start();
  auto ino = LookupAndOpen("c");
  std::vector<std::thread> readers;
  std::atomic<int> good{0};
  for (int t = 0; t < 16; ++t) {
    readers.emplace_back([&, t] {
      std::string out(65536, '\0');
      uint64_t off = uint64_t(t) * 65536;
      auto n = files_->Read(ino, off, out.size(), out.data());
      if (n.ok() && *n == out.size() && out == data.substr(off, out.size())) ++good;
    });
  }
  for (auto& r : readers) r.join();
  EXPECT_EQ(good.load(), 16);
  EXPECT_EQ(fetcher_->stats().fetches, 1u);
  files_->Release(ino);
}

TEST_F(MemoryFilesTest, AChunkTheStoreLostFailsTheRead) {
  MakeFile("lost", 2 * kChunkSize, {});
  ASSERT_TRUE(store_->Delete(storage::ChunkKey(*specs_["lost"].chunks.chunks[1])).ok());
  Start();
  auto ino = LookupAndOpen("lost");
  std::string out(10, '\0');
  EXPECT_FALSE(files_->Read(ino, kChunkSize + 5, 10, out.data()).ok());
  EXPECT_TRUE(files_->Read(ino, 5, 10, out.data()).ok());
  EXPECT_EQ(files_->stats().read_errors, 1u);
  files_->Release(ino);
}

TEST_F(MemoryFilesTest, AnOpenFilePinsItsChunksUntilItsLastRelease) {
  MakeFile("p", 3 * kChunkSize, {1});
  Start();
  auto ino = LookupAndOpen("p");
  ASSERT_TRUE(files_->Open(ino).ok());
  EXPECT_EQ(cache_->stats().pinned, 2u);
  EXPECT_EQ(files_->stats().open_files, 1u);
  files_->Release(ino);
  EXPECT_EQ(cache_->stats().pinned, 2u);
  files_->Release(ino);
  EXPECT_EQ(cache_->stats().pinned, 0u);
  EXPECT_EQ(files_->stats().open_files, 0u);
}

TEST_F(MemoryFilesTest, TheTraceKeepsFirstTouchOrderOfNonZeroChunksAndIsWrittenOnce) {
  std::string data = MakeFile("t", 8 * kChunkSize, {3});
  Start();
  auto ino = LookupAndOpen("t");
  for (uint64_t chunk : {5, 2, 3, 7, 2, 5}) ReadAt(ino, chunk * kChunkSize + 4096, 4096);
  // A read across a boundary touches both chunks, in order.
  ReadAt(ino, kChunkSize - 10, 20);
  EXPECT_EQ(ReadMemfsTrace(control_, "t").status().code(), ErrorCode::kNotFound);
  files_->Release(ino);
  auto trace = ReadMemfsTrace(control_, "t");
  ASSERT_TRUE(trace.ok()) << trace.status().ToString();
  EXPECT_EQ(*trace, (std::vector<uint32_t>{5, 2, 7, 0, 1}));
  // A later open records nothing new.
  ino = LookupAndOpen("t");
  ReadAt(ino, 6 * kChunkSize, 10);
  files_->Release(ino);
  EXPECT_EQ(*ReadMemfsTrace(control_, "t"), (std::vector<uint32_t>{5, 2, 7, 0, 1}));
  EXPECT_EQ(files_->stats().traces_written, 1u);
}

TEST_F(MemoryFilesTest, TheTraceWindowEndsOnItsOwn) {
  MakeFile("w", 4 * kChunkSize, {});
  Start(std::chrono::milliseconds(200));
  auto ino = LookupAndOpen("w");
  ReadAt(ino, 2 * kChunkSize, 10);
  std::this_thread::sleep_for(std::chrono::milliseconds(250));
  ReadAt(ino, 1 * kChunkSize, 10);  // after the window: not traced
  files_->Tick();
  auto trace = ReadMemfsTrace(control_, "w");
  ASSERT_TRUE(trace.ok()) << trace.status().ToString();
  EXPECT_EQ(*trace, std::vector<uint32_t>{2});
  files_->Release(ino);
}

TEST_F(MemoryFilesTest, AnExistingTraceIsNeverReplaced) {
  MakeFile("e", 2 * kChunkSize, {});
  ASSERT_TRUE(WriteMemfsTraceIfAbsent(control_, "e", {1}).ok());
  Start();
  auto ino = LookupAndOpen("e");
  ReadAt(ino, 0, 10);
  files_->Release(ino);
  EXPECT_EQ(*ReadMemfsTrace(control_, "e"), std::vector<uint32_t>{1});
}

TEST_F(MemoryFilesTest, PrefetchAndFillFetchChunksNobodyRead) {
  MakeFile("pf", 6 * kChunkSize, {2}, /*prefetch=*/{4, 1}, /*fill=*/false);
  MakeFile("fill", 5 * kChunkSize, {0}, /*prefetch=*/{3}, /*fill=*/true);
  Start();
  auto pf = LookupAndOpen("pf");
  ASSERT_TRUE(WaitFor([&] { return files_->stats().background.prefetch_done == 2; }));
  EXPECT_EQ(fetcher_->stats().fetches, 2u);
  EXPECT_TRUE(cache_->Contains(*specs_["pf"].chunks.chunks[4]));
  EXPECT_TRUE(cache_->Contains(*specs_["pf"].chunks.chunks[1]));
  EXPECT_FALSE(cache_->Contains(*specs_["pf"].chunks.chunks[0]));
  auto fill = LookupAndOpen("fill");
  ASSERT_TRUE(WaitFor([&] {
    auto s = files_->stats().background;
    return s.fill_done == 3 && s.prefetch_done == 3;
  }));
  EXPECT_EQ(fetcher_->stats().fetches, 6u);  // 2 + the 4 non-zero chunks of "fill"
  EXPECT_EQ(files_->stats().reads, 0u);
  files_->Release(pf);
  files_->Release(fill);
}

TEST_F(MemoryFilesTest, ARemovedControlFileHidesTheNameButOpenFilesKeepWorking) {
  std::string data = MakeFile("r", kChunkSize, {});
  Start();
  auto ino = LookupAndOpen("r");
  auto again = files_->Lookup("r");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->ino, ino);  // the same version: the same inode
  ASSERT_TRUE(RemoveMemfsFile(control_, "r").ok());
  EXPECT_TRUE(files_->Revalidate("r"));
  EXPECT_EQ(files_->Lookup("r").status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(ReadAt(ino, 10, 10), data.substr(10, 10));
  files_->Release(ino);
  files_->Forget(ino, 2);
  EXPECT_EQ(files_->GetAttr(ino).status().code(), ErrorCode::kNotFound);
}

TEST_F(MemoryFilesTest, AReplacedControlFileIsANewInode) {
  MakeFile("v", kChunkSize, {});
  Start();
  auto first = files_->Lookup("v");
  ASSERT_TRUE(first.ok());
  EXPECT_FALSE(files_->Revalidate("v"));  // unchanged: kept
  std::string second_data = MakeFile("v", 2 * kChunkSize, {1});
  auto second = files_->Lookup("v");
  ASSERT_TRUE(second.ok());
  EXPECT_NE(second->ino, first->ino);
  EXPECT_EQ(second->size, 2 * kChunkSize);
  // The old inode stays until the kernel forgets it.
  EXPECT_TRUE(files_->GetAttr(first->ino).ok());
  files_->Forget(first->ino, 1);
  EXPECT_FALSE(files_->GetAttr(first->ino).ok());
}

TEST_F(MemoryFilesTest, NamesThatAreNotValidOrNotThereAreNotFound) {
  Start();
  EXPECT_EQ(files_->Lookup("nope").status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(files_->Lookup("stats").status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(files_->Lookup("a.json").status().code(), ErrorCode::kNotFound);
  ASSERT_TRUE(WriteFileAtomic(control_ + "/bad.json", "{}").ok());
  EXPECT_EQ(files_->Lookup("bad").status().code(), ErrorCode::kInvalidArgument);
}

TEST_F(MemoryFilesTest, ListNamesTheControlFiles) {
  MakeFile("a", 10, {});
  MakeFile("b", 10, {0});
  ASSERT_TRUE(WriteFileAtomic(control_ + "/stats.json", "{}").ok());
  Start();
  auto list = files_->List();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].first, "a");
  EXPECT_EQ(list[1].first, "b");
}

}  // namespace
}  // namespace moat::memfs
