// LocalObjectStore (and IsValidObjectKey) in a temp dir: the ObjectStore contract without a
// server.
#include "storage/local_object_store.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <string>
#include <thread>
#include <vector>

#include "common/fs.h"

namespace moat::storage {
namespace {

class LocalObjectStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = MakeTempDir("/tmp", "moat-local-store-");
    ASSERT_TRUE(dir.ok()) << dir.status().ToString();
    dir_ = *dir;
    auto store = LocalObjectStore::Make(dir_ + "/store");
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(*store);
  }
  void TearDown() override { (void)RemoveTree(dir_); }

  std::string dir_;
  std::unique_ptr<LocalObjectStore> store_;
};

TEST(ObjectKey, AcceptsSegmentsOfTheAllowedCharacters) {
  EXPECT_TRUE(IsValidObjectKey("chunks/0123abcdef"));
  EXPECT_TRUE(IsValidObjectKey("snapshots/snap-1/manifest.json"));
  EXPECT_TRUE(IsValidObjectKey("a"));
  EXPECT_TRUE(IsValidObjectKey("A-Z_a.z/..x/.hidden/x.."));
  EXPECT_TRUE(IsValidObjectKey(std::string(512, 'k')));
}

TEST(ObjectKey, RejectsEmptyDotAndOddSegments) {
  for (const char* key : {"", "/a", "a/", "a//b", ".", "..", "a/./b", "a/../b", "../a", "a b",
                          "a+b", "a~b", "a%2Fb", "a\\b", "é", "a\nb", "a?b", "a#b"}) {
    EXPECT_FALSE(IsValidObjectKey(key)) << key;
  }
  EXPECT_FALSE(IsValidObjectKey(std::string(513, 'k')));
  EXPECT_FALSE(IsValidObjectKey(std::string("a\0b", 3)));
}

TEST_F(LocalObjectStoreTest, GetReturnsWhatPutStored) {
  std::string body(100000, '\0');
  for (size_t i = 0; i < body.size(); ++i) body[i] = static_cast<char>(i * 7);
  ASSERT_TRUE(store_->Put("chunks/abc", body).ok());
  auto got = store_->Get("chunks/abc");
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got, body);
  // Overwriting replaces the object whole.
  ASSERT_TRUE(store_->Put("chunks/abc", "short").ok());
  EXPECT_EQ(*store_->Get("chunks/abc"), "short");
  // An empty object is an object.
  ASSERT_TRUE(store_->Put("empty", "").ok());
  EXPECT_EQ(*store_->Get("empty"), "");
  EXPECT_EQ(store_->stats().puts.load(), 3u);
  EXPECT_EQ(store_->stats().put_bytes.load(), body.size() + 5);
  EXPECT_EQ(store_->stats().gets.load(), 3u);
  EXPECT_EQ(store_->stats().get_bytes.load(), body.size() + 5);
}

TEST_F(LocalObjectStoreTest, GetOfAMissingKeyIsNotFound) {
  auto got = store_->Get("chunks/missing");
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), ErrorCode::kNotFound);
  // A directory (the parent of other keys) is not an object either.
  ASSERT_TRUE(store_->Put("dir/a", "x").ok());
  EXPECT_EQ(store_->Get("dir").status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(store_->GetRange("missing", 0, 1).status().code(), ErrorCode::kNotFound);
}

TEST_F(LocalObjectStoreTest, GetRangeReturnsTheBytesAskedForOrFewerAtTheEnd) {
  ASSERT_TRUE(store_->Put("o", "0123456789").ok());
  EXPECT_EQ(*store_->GetRange("o", 0, 3), "012");
  EXPECT_EQ(*store_->GetRange("o", 4, 3), "456");
  EXPECT_EQ(*store_->GetRange("o", 8, 100), "89");
  EXPECT_EQ(*store_->GetRange("o", 10, 5), "");
  EXPECT_EQ(*store_->GetRange("o", 1000, 5), "");
  EXPECT_EQ(store_->GetRange("o", 0, 0).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(store_->GetRange("o", UINT64_MAX, 2).status().code(), ErrorCode::kInvalidArgument);
}

TEST_F(LocalObjectStoreTest, HeadGivesTheSizeOrNothing) {
  ASSERT_TRUE(store_->Put("snapshots/s/manifest.json", "{}").ok());
  auto head = store_->Head("snapshots/s/manifest.json");
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(*head, std::optional<uint64_t>(2));
  auto absent = store_->Head("snapshots/s/other");
  ASSERT_TRUE(absent.ok());
  EXPECT_FALSE(absent->has_value());
  auto under_file = store_->Head("snapshots/s/manifest.json/x");
  ASSERT_TRUE(under_file.ok());
  EXPECT_FALSE(under_file->has_value());
}

TEST_F(LocalObjectStoreTest, DeleteRemovesAndMissingKeysAreFine) {
  ASSERT_TRUE(store_->Put("chunks/a", "x").ok());
  ASSERT_TRUE(store_->Delete("chunks/a").ok());
  EXPECT_FALSE(store_->Head("chunks/a")->has_value());
  EXPECT_TRUE(store_->Delete("chunks/a").ok());
  EXPECT_TRUE(store_->Delete("never/was").ok());
  EXPECT_EQ(store_->stats().deletes.load(), 3u);
}

TEST_F(LocalObjectStoreTest, ListWalksEveryLevelInKeyOrderByPrefix) {
  std::vector<std::string> keys = {"chunks/b",
                                   "chunks/a",
                                   "chunks2/x",
                                   "snapshots/s1/manifest.json",
                                   "snapshots/s1/trace",
                                   "snapshots/s2/manifest.json",
                                   "top"};
  for (const auto& k : keys) ASSERT_TRUE(store_->Put(k, k).ok());
  auto all = store_->List("");
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  std::vector<std::string> names;
  for (const auto& o : *all) names.push_back(o.key);
  std::vector<std::string> sorted = keys;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(names, sorted);
  EXPECT_EQ((*all)[0].key, "chunks/a");
  EXPECT_EQ((*all)[0].size, 8u);

  auto chunks = store_->List("chunks/");
  ASSERT_TRUE(chunks.ok());
  ASSERT_EQ(chunks->size(), 2u);
  EXPECT_EQ((*chunks)[0].key, "chunks/a");
  EXPECT_EQ((*chunks)[1].key, "chunks/b");

  // A prefix is a string prefix, not a directory: "chunks" matches "chunks2/x" too.
  EXPECT_EQ(store_->List("chunks")->size(), 3u);
  EXPECT_EQ(store_->List("snapshots/s1/")->size(), 2u);
  EXPECT_EQ(store_->List("snapshots/s1/m")->size(), 1u);
  EXPECT_TRUE(store_->List("nothing/")->empty());
}

TEST_F(LocalObjectStoreTest, ListSkipsFilesThatAreNotObjects) {
  ASSERT_TRUE(store_->Put("chunks/a", "x").ok());
  // What an interrupted Put leaves behind, and a stray file no key can name.
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/store/chunks/a.~tmp~1-0", "partial").ok());
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/store/chunks/has space", "stray").ok());
  ASSERT_EQ(::symlink("a", (dir_ + "/store/chunks/link").c_str()), 0);
  auto list = store_->List("");
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].key, "chunks/a");
}

TEST_F(LocalObjectStoreTest, BadKeysAreInvalidArguments) {
  for (const char* key : {"", "../escape", "a/../../b", "/abs", "a//b", "sp ace"}) {
    EXPECT_EQ(store_->Put(key, "x").code(), ErrorCode::kInvalidArgument) << key;
    EXPECT_EQ(store_->Get(key).status().code(), ErrorCode::kInvalidArgument) << key;
    EXPECT_EQ(store_->GetRange(key, 0, 1).status().code(), ErrorCode::kInvalidArgument) << key;
    EXPECT_EQ(store_->Head(key).status().code(), ErrorCode::kInvalidArgument) << key;
    EXPECT_EQ(store_->Delete(key).code(), ErrorCode::kInvalidArgument) << key;
  }
  EXPECT_FALSE(PathExists(dir_ + "/escape"));
}

TEST_F(LocalObjectStoreTest, ConcurrentPutsOfOneKeyLeaveOneWholeObject) {
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([this, t] {
      std::string body(64 * 1024, static_cast<char>('a' + t));
      for (int i = 0; i < 20; ++i) EXPECT_TRUE(store_->Put("chunks/same", body).ok());
    });
  }
  for (auto& th : threads) th.join();
  auto got = store_->Get("chunks/same");
  ASSERT_TRUE(got.ok());
  ASSERT_EQ(got->size(), 64u * 1024);
  EXPECT_EQ(got->find_first_not_of((*got)[0]), std::string::npos);
  EXPECT_EQ(DirNames(dir_ + "/store/chunks"), std::vector<std::string>{"same"});
}

TEST(LocalObjectStore, DescribeNamesTheDirectory) {
  auto dir = MakeTempDir("/tmp", "moat-local-store-");
  ASSERT_TRUE(dir.ok());
  auto store = LocalObjectStore::Make(*dir + "/");
  ASSERT_TRUE(store.ok());
  EXPECT_EQ((*store)->Describe(), "local directory " + *dir);
  (void)RemoveTree(*dir);
}

}  // namespace
}  // namespace moat::storage
