#include "memfs/memfs_control.h"

#include <gtest/gtest.h>

#include <string>

#include "common/fs.h"

namespace moat::memfs {
namespace {

const std::string kHashA(64, 'a');
const std::string kHashB = std::string(63, '0') + "f";

MemfsFileSpec ThreeChunks() {
  MemfsFileSpec spec;
  spec.name = "snap_1-mem";
  spec.chunks.size = 2 * storage::kChunkSize + 5;
  spec.chunks.chunks = {kHashA, std::nullopt, kHashB};
  spec.prefetch = {2, 0};
  spec.fill = true;
  return spec;
}

class ControlDir : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = MakeTempDir("/tmp", "memfs-control-");
    ASSERT_TRUE(dir.ok()) << dir.status().ToString();
    dir_ = *dir;
  }
  void TearDown() override { (void)RemoveTree(dir_); }
  std::string dir_;
};

TEST(MemfsFileSpec, EncodesAndDecodesToTheSameSpec) {
  MemfsFileSpec spec = ThreeChunks();
  auto decoded = DecodeMemfsFileSpec(spec.name, EncodeMemfsFileSpec(spec));
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(*decoded, spec);
}

TEST(MemfsFileSpec, AcceptsTheMinimalFormWithoutVersionPrefetchOrFill) {
  auto spec = DecodeMemfsFileSpec("a", R"({"size": 5, "chunks": [null]})");
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->chunks.size, 5u);
  EXPECT_TRUE(spec->prefetch.empty());
  EXPECT_FALSE(spec->fill);
  auto empty = DecodeMemfsFileSpec("a", R"({"size": 0, "chunks": []})");
  EXPECT_TRUE(empty.ok()) << empty.status().ToString();
}

TEST(MemfsFileSpec, RefusesAChunkCountThatDoesNotMatchTheSize) {
  std::string exact = std::to_string(storage::kChunkSize);
  EXPECT_TRUE(DecodeMemfsFileSpec("a", R"({"size":)" + exact + R"(,"chunks":[null]})").ok());
  auto s = DecodeMemfsFileSpec("a", R"({"size":)" + exact + R"(,"chunks":[null,null]})");
  EXPECT_EQ(s.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("chunks"), std::string::npos);
  EXPECT_FALSE(DecodeMemfsFileSpec("a", R"({"size":1,"chunks":[]})").ok());
  EXPECT_FALSE(DecodeMemfsFileSpec("a", R"({"size":0,"chunks":[null]})").ok());
}

TEST(MemfsFileSpec, RefusesHashesThatAreNotLowercaseSha256Hex) {
  for (std::string bad : {std::string(63, 'a'), std::string(65, 'a'), std::string(64, 'A'),
                          std::string(63, 'a') + "g", std::string("")}) {
    auto s = DecodeMemfsFileSpec("a", R"({"size":1,"chunks":[")" + bad + R"("]})");
    EXPECT_EQ(s.status().code(), ErrorCode::kInvalidArgument) << bad;
  }
  EXPECT_FALSE(DecodeMemfsFileSpec("a", R"({"size":1,"chunks":[5]})").ok());
}

TEST(MemfsFileSpec, RefusesWrongTypesUnknownKeysAndOtherVersions) {
  for (const char* bad : {
           R"({"size":-1,"chunks":[]})",
           R"({"size":1.5,"chunks":[null]})",
           R"({"size":"1","chunks":[null]})",
           R"({"size":1,"chunks":[null],"fill":"yes"})",
           R"({"size":1,"chunks":[null],"extra":1})",
           R"({"size":1,"chunks":[null],"version":2})",
           R"({"size":1,"chunks":{}})",
           R"({"chunks":[]})",
           R"({"size":0})",
           R"([1,2])",
           R"({"size":1,"chunks":[null])",
           R"({"size":1099511627777,"chunks":[]})",
       }) {
    auto s = DecodeMemfsFileSpec("a", bad);
    EXPECT_EQ(s.status().code(), ErrorCode::kInvalidArgument) << bad;
  }
}

TEST(MemfsFileSpec, RefusesPrefetchIndexesOutOfRangeOrRepeated) {
  EXPECT_TRUE(DecodeMemfsFileSpec("a", R"({"size":1,"chunks":[null],"prefetch":[0]})").ok());
  for (const char* bad : {
           R"({"size":1,"chunks":[null],"prefetch":[1]})",
           R"({"size":1,"chunks":[null],"prefetch":[0,0]})",
           R"({"size":1,"chunks":[null],"prefetch":[-1]})",
           R"({"size":1,"chunks":[null],"prefetch":0})",
       }) {
    EXPECT_FALSE(DecodeMemfsFileSpec("a", bad).ok()) << bad;
  }
}

TEST(MemfsFileSpec, NamesAreShortWordsAndNeverTheStatsFile) {
  EXPECT_TRUE(IsValidMemfsName("a"));
  EXPECT_TRUE(IsValidMemfsName("Snap_01-mem"));
  EXPECT_TRUE(IsValidMemfsName(std::string(64, 'x')));
  for (std::string bad :
       {std::string(""), std::string(65, 'x'), std::string("a/b"), std::string(".."),
        std::string("a.json"), std::string("stats"), std::string("a b")}) {
    EXPECT_FALSE(IsValidMemfsName(bad)) << bad;
  }
  EXPECT_FALSE(DecodeMemfsFileSpec("../x", R"({"size":0,"chunks":[]})").ok());
}

TEST_F(ControlDir, WrittenSpecsReadBackAndRemovedOnesAreNotFound) {
  MemfsFileSpec spec = ThreeChunks();
  ASSERT_TRUE(WriteMemfsFile(dir_, spec).ok());
  auto read = ReadMemfsFile(dir_, spec.name);
  ASSERT_TRUE(read.ok()) << read.status().ToString();
  EXPECT_EQ(*read, spec);
  // Only the file itself: no temporary left behind.
  EXPECT_EQ(DirNames(dir_), std::vector<std::string>{spec.name + ".json"});
  ASSERT_TRUE(RemoveMemfsFile(dir_, spec.name).ok());
  EXPECT_EQ(ReadMemfsFile(dir_, spec.name).status().code(), ErrorCode::kNotFound);
  EXPECT_TRUE(RemoveMemfsFile(dir_, spec.name).ok());  // absent is fine
}

TEST_F(ControlDir, WriteRefusesAnInvalidSpec) {
  MemfsFileSpec spec = ThreeChunks();
  spec.chunks.chunks.pop_back();
  EXPECT_EQ(WriteMemfsFile(dir_, spec).code(), ErrorCode::kInvalidArgument);
  spec = ThreeChunks();
  spec.name = "stats";
  EXPECT_EQ(WriteMemfsFile(dir_, spec).code(), ErrorCode::kInvalidArgument);
  EXPECT_TRUE(DirNames(dir_).empty());
}

TEST_F(ControlDir, ReadValidatesWhatItFinds) {
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/bad.json", R"({"size":1,"chunks":[]})").ok());
  auto s = ReadMemfsFile(dir_, "bad");
  EXPECT_EQ(s.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("bad.json"), std::string::npos) << s.status().message();
}

TEST_F(ControlDir, TheFirstTraceStaysAndReadsBack) {
  EXPECT_EQ(ReadMemfsTrace(dir_, "f").status().code(), ErrorCode::kNotFound);
  auto first = WriteMemfsTraceIfAbsent(dir_, "f", {5, 2, 7});
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_TRUE(*first);
  auto second = WriteMemfsTraceIfAbsent(dir_, "f", {1});
  ASSERT_TRUE(second.ok());
  EXPECT_FALSE(*second);
  auto trace = ReadMemfsTrace(dir_, "f");
  ASSERT_TRUE(trace.ok()) << trace.status().ToString();
  EXPECT_EQ(*trace, (std::vector<uint32_t>{5, 2, 7}));
  EXPECT_EQ(DirNames(dir_), std::vector<std::string>{"f.trace"});
  ASSERT_TRUE(RemoveMemfsTrace(dir_, "f").ok());
  EXPECT_EQ(ReadMemfsTrace(dir_, "f").status().code(), ErrorCode::kNotFound);
}

TEST_F(ControlDir, ATraceThatIsNotAnArrayOfIndexesIsInvalid) {
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/f.trace", R"([1,"x"])").ok());
  EXPECT_EQ(ReadMemfsTrace(dir_, "f").status().code(), ErrorCode::kInvalidArgument);
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/f.trace", R"([1,1])").ok());
  EXPECT_EQ(ReadMemfsTrace(dir_, "f").status().code(), ErrorCode::kInvalidArgument);
}

TEST_F(ControlDir, StatsAreAJsonObject) {
  EXPECT_EQ(ReadMemfsStats(dir_).status().code(), ErrorCode::kNotFound);
  ASSERT_TRUE(ReplaceFile(MemfsStatsPath(dir_), R"({"pid":7,"fetch":{"fetches":3}})").ok());
  auto stats = ReadMemfsStats(dir_);
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ((*stats)["fetch"]["fetches"], 3);
  ASSERT_TRUE(ReplaceFile(MemfsStatsPath(dir_), "[]").ok());
  EXPECT_EQ(ReadMemfsStats(dir_).status().code(), ErrorCode::kInvalidArgument);
}

TEST(MemfsProcess, PathsAreUnderTheMount) {
  MemfsProcessOptions o;
  o.mount_dir = "/run/moat/memfs";
  MemfsProcess p(o);
  EXPECT_EQ(p.PathOf("snap1"), "/run/moat/memfs/snap1");
  EXPECT_FALSE(p.pid().has_value());
}

}  // namespace
}  // namespace moat::memfs
