// The build context of `moat template build`: which files a COPY source names (.dockerignore
// included), their filesHash, and the tar.gz that uploads them, read back by GNU tar.
#include "cli/template_archive.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "api/codec/gzip.h"
#include "cli/tar_writer.h"
#include "common/child_process.h"
#include "common/fs.h"
#include "common/unique_fd.h"

namespace moat::cli {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

class TemplateArchiveTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = MakeTempDir(::testing::TempDir(), "moat-archive-");
    ASSERT_TRUE(dir.ok()) << dir.status().ToString();
    root_ = *dir;
  }
  void TearDown() override { (void)RemoveTree(root_); }

  void Write(const std::string& rel, std::string_view data, mode_t mode = 0644) {
    const std::string path = root_ + "/" + rel;
    ASSERT_TRUE(MakeDirs(path.substr(0, path.rfind('/'))).ok());
    ASSERT_TRUE(WriteFileAtomic(path, data, mode).ok()) << path;
    ASSERT_EQ(::chmod(path.c_str(), mode), 0);
  }
  void Link(const std::string& rel, const std::string& target) {
    ASSERT_EQ(::symlink(target.c_str(), (root_ + "/" + rel).c_str()), 0) << rel;
  }

  BuildContext Context() {
    auto ctx = BuildContext::Open(root_);
    EXPECT_TRUE(ctx.ok()) << ctx.status().ToString();
    return std::move(*ctx);
  }

  std::vector<std::string> Paths(std::string_view source) {
    auto entries = Context().Match(source);
    EXPECT_TRUE(entries.ok()) << entries.status().ToString();
    std::vector<std::string> out;
    if (entries.ok()) {
      for (const auto& e : *entries) out.push_back(e.path);
    }
    return out;
  }

  std::string Hash(std::string_view source, std::string_view dest = "/dest/") {
    BuildContext ctx = Context();
    auto entries = ctx.Match(source);
    EXPECT_TRUE(entries.ok()) << entries.status().ToString();
    if (!entries.ok()) return "";
    auto hash = ctx.FilesHash(source, dest, *entries);
    EXPECT_TRUE(hash.ok()) << hash.status().ToString();
    return hash.ok() ? *hash : "";
  }

  std::string root_;
};

TEST(CleanContextPath, CleansRelativePathsAndRefusesThoseThatLeave) {
  EXPECT_EQ(*CleanContextPath("./app//src/"), "app/src");
  EXPECT_EQ(*CleanContextPath("."), ".");
  EXPECT_EQ(*CleanContextPath("./"), ".");
  EXPECT_EQ(*CleanContextPath("a/../b"), "b");
  EXPECT_EQ(*CleanContextPath("*.py"), "*.py");
  for (const char* bad : {"../x", "a/../../x", "..", "/etc/passwd", "/"}) {
    auto r = CleanContextPath(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
  }
  EXPECT_EQ(CleanContextPath("../x").status().message(),
            "source ../x is outside the context directory");
}

TEST(DockerIgnore, MatchesPathsOrTheirParentsAndLetsTheLastLineDecide) {
  DockerIgnore ignore = DockerIgnore::Parse(
      "# comment\n"
      "\n"
      "*.log\n"
      "/build\n"
      "**/node_modules\n"
      "secrets/*\n"
      "!secrets/public.pem\n"
      "  docs/**/*.tmp  \r\n");
  EXPECT_TRUE(ignore.Excludes("debug.log"));
  EXPECT_FALSE(ignore.Excludes("sub/debug.log"));  // * stays within one component, as in Docker
  EXPECT_TRUE(ignore.Excludes("build"));
  EXPECT_TRUE(ignore.Excludes("build/out/bin"));  // below an excluded directory
  EXPECT_TRUE(ignore.Excludes("node_modules/x/index.js"));
  EXPECT_TRUE(ignore.Excludes("web/app/node_modules"));
  EXPECT_TRUE(ignore.Excludes("secrets/key"));
  EXPECT_FALSE(ignore.Excludes("secrets/public.pem"));
  EXPECT_TRUE(ignore.Excludes("docs/a/b/c.tmp"));
  EXPECT_TRUE(ignore.Excludes("docs/c.tmp"));
  EXPECT_FALSE(ignore.Excludes("docs/c.md"));
  EXPECT_FALSE(ignore.Excludes("src/main.py"));
  EXPECT_FALSE(ignore.Excludes(""));
  EXPECT_TRUE(ignore.has_exceptions());
}

TEST_F(TemplateArchiveTest, ExpandsADirectoryToEverythingBelowItSorted) {
  Write("app/b.txt", "b");
  Write("app/a/x.py", "x");
  Write("app/.hidden", "h");
  Write("app-other.txt", "o");
  Link("app/link", "b.txt");
  EXPECT_THAT(Paths("app"),
              ElementsAre("app", "app/.hidden", "app/a", "app/a/x.py", "app/b.txt", "app/link"));
  EXPECT_THAT(Paths("app/b.txt"), ElementsAre("app/b.txt"));
}

TEST_F(TemplateArchiveTest, MatchesGlobsIncludingDotfilesInEveryComponent) {
  Write("src/a.py", "");
  Write("src/.b.py", "");
  Write("src/c.txt", "");
  Write("lib/d.py", "");
  EXPECT_THAT(Paths("src/*.py"), ElementsAre("src/.b.py", "src/a.py"));
  EXPECT_THAT(Paths("*/*.py"), ElementsAre("lib/d.py", "src/.b.py", "src/a.py"));
  EXPECT_THAT(Paths("src/?.txt"), ElementsAre("src/c.txt"));
}

TEST_F(TemplateArchiveTest, LeavesOutWhatDockerignoreExcludesAndReportsNothingLeft) {
  Write(".dockerignore", "*.env\napp/cache\n!app/cache/keep\n");
  Write("app/main.py", "");
  Write("app/cache/junk", "");
  Write("app/cache/keep", "");
  Write("prod.env", "SECRET=1");
  EXPECT_THAT(Paths("."), ElementsAre("", ".dockerignore", "app", "app/cache/keep", "app/main.py"));
  EXPECT_THAT(Paths("app"), ElementsAre("app", "app/cache/keep", "app/main.py"));
  auto r = Context().Match("prod.env");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kNotFound);
  EXPECT_THAT(r.status().message(), HasSubstr("no files found for prod.env"));
  EXPECT_THAT(r.status().message(), HasSubstr("(after .dockerignore)"));
  EXPECT_FALSE(Context().Match("missing/*.py").ok());
}

TEST_F(TemplateArchiveTest, RefusesASourceReachedThroughASymlink) {
  auto outside = MakeTempDir(::testing::TempDir(), "moat-outside-");
  ASSERT_TRUE(outside.ok());
  ASSERT_TRUE(WriteFileAtomic(*outside + "/secret", "s").ok());
  Link("escape", *outside);
  auto r = Context().Match("escape/secret");
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("goes through the symbolic link escape"));
  // The link itself is copied as a link, never followed.
  auto link = Context().Match("escape");
  ASSERT_TRUE(link.ok());
  ASSERT_EQ(link->size(), 1u);
  EXPECT_TRUE((*link)[0].is_symlink());
  EXPECT_EQ((*link)[0].link_target, *outside);
  (void)RemoveTree(*outside);
}

TEST_F(TemplateArchiveTest, HashesTheSameFilesTheSameAndAnyChangeDifferently) {
  Write("app/a.txt", "one");
  Write("app/sub/b.txt", "two");
  Link("app/link", "a.txt");
  const std::string first = Hash("app");
  EXPECT_EQ(first.size(), 64u);
  EXPECT_EQ(first.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_EQ(Hash("app"), first);

  // Timestamps do not count.
  struct timespec times[2] = {{.tv_sec = 1000, .tv_nsec = 0}, {.tv_sec = 1000, .tv_nsec = 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, (root_ + "/app/a.txt").c_str(), times, 0), 0);
  EXPECT_EQ(Hash("app"), first);

  EXPECT_NE(Hash("app", "/elsewhere/"), first);  // the destination is part of it
  Write("app/sub/b.txt", "tw0");                 // same size, other content
  const std::string changed = Hash("app");
  EXPECT_NE(changed, first);
  ASSERT_EQ(::chmod((root_ + "/app/sub/b.txt").c_str(), 0755), 0);
  const std::string mode_changed = Hash("app");
  EXPECT_NE(mode_changed, changed);
  ASSERT_EQ(::unlink((root_ + "/app/link").c_str()), 0);
  Link("app/link", "sub/b.txt");
  EXPECT_NE(Hash("app"), mode_changed);
}

Result<std::string> RunTar(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"tar"};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunTool(argv, std::chrono::seconds(30));
}

TEST_F(TemplateArchiveTest, WritesATarGzThatGnuTarReadsBackWithLongPathsAndLinks) {
  const std::string long_dir = "app/" + std::string(60, 'd') + "/" + std::string(50, 'e');
  const std::string long_file = long_dir + "/" + std::string(80, 'f') + ".txt";
  const std::string long_target = std::string(120, 't');
  Write("app/top.txt", "top\n");
  Write("app/nested/deeper/run.sh", "#!/bin/sh\necho hi\n", 0755);
  Write(long_file, std::string(70000, 'z'));  // past one 64 KiB read
  Write("app/empty", "");
  Link("app/short-link", "top.txt");
  Link("app/long-link", long_target);

  BuildContext ctx = Context();
  auto entries = ctx.Match("app");
  ASSERT_TRUE(entries.ok()) << entries.status().ToString();
  const std::string archive = root_ + ".tar.gz";
  {
    int fd = ::open(archive.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0);
    UniqueFd out(fd);
    Status written = ctx.WriteArchive(*entries, out.get());
    ASSERT_TRUE(written.ok()) << written.ToString();
  }
  auto bytes = ReadFile(archive);
  ASSERT_TRUE(bytes.ok());
  ASSERT_GE(bytes->size(), 2u);
  EXPECT_EQ(static_cast<unsigned char>((*bytes)[0]), 0x1f);  // gzip, as the builder expects
  EXPECT_EQ(static_cast<unsigned char>((*bytes)[1]), 0x8b);

  auto listing = RunTar({"-tzvf", archive});
  ASSERT_TRUE(listing.ok()) << listing.status().ToString();
  EXPECT_THAT(*listing, HasSubstr("app/top.txt"));
  EXPECT_THAT(*listing, HasSubstr("app/nested/deeper/run.sh"));
  EXPECT_THAT(*listing, HasSubstr(long_file));
  EXPECT_THAT(*listing, HasSubstr("app/short-link -> top.txt"));
  EXPECT_THAT(*listing, HasSubstr("app/long-link -> " + long_target));
  EXPECT_THAT(*listing, HasSubstr("drwx"));
  EXPECT_THAT(*listing, HasSubstr("-rwxr-xr-x"));

  const std::string out = root_ + "-out";
  ASSERT_TRUE(MakeDirs(out).ok());
  auto extracted = RunTar({"-xzf", archive, "-C", out});
  ASSERT_TRUE(extracted.ok()) << extracted.status().ToString();
  EXPECT_EQ(*ReadFile(out + "/app/top.txt"), "top\n");
  EXPECT_EQ(*ReadFile(out + "/" + long_file), std::string(70000, 'z'));
  EXPECT_EQ(*ReadFile(out + "/app/empty"), "");
  struct stat st {};
  ASSERT_EQ(::stat((out + "/app/nested/deeper/run.sh").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0755u);
  char target[256] = {};
  ASSERT_GT(::readlink((out + "/app/long-link").c_str(), target, sizeof target - 1), 0);
  EXPECT_EQ(std::string(target), long_target);
  (void)RemoveTree(out);
  ::unlink(archive.c_str());
}

TEST(TarWriter, WritesBlocksWithAValidChecksumAndTwoZeroBlocksAtTheEnd) {
  std::string tar;
  TarWriter writer([&tar](std::string_view d) {
    tar.append(d);
    return Status::Ok();
  });
  ASSERT_TRUE(writer.AddDirectory("dir", 0755, 0).ok());
  ASSERT_TRUE(writer.Finish().ok());
  ASSERT_EQ(tar.size(), 3 * TarWriter::kBlock);
  EXPECT_EQ(tar.substr(0, 4), "dir/");
  EXPECT_EQ(tar[156], '5');
  EXPECT_EQ(tar.substr(257, 6), std::string("ustar\0", 6));
  unsigned sum = 0;
  for (size_t i = 0; i < TarWriter::kBlock; ++i) {
    sum += (i >= 148 && i < 156) ? ' ' : static_cast<unsigned char>(tar[i]);
  }
  EXPECT_EQ(std::stoul(tar.substr(148, 6), nullptr, 8), sum);
  EXPECT_EQ(tar.substr(TarWriter::kBlock), std::string(2 * TarWriter::kBlock, '\0'));
  EXPECT_EQ(writer.bytes_written(), tar.size());
}

}  // namespace
}  // namespace moat::cli
