// bash → /bin/sh when the guest has no bash (images from OCI registries): the official E2B client
// starts every command as `/bin/bash -l -c CMD`.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "common/fs.h"
#include "guest/exec.h"

namespace moat::guest {
namespace {

// A PATH with no bash in it (and nothing else).
class ShellFallbackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = MakeTempDir("/tmp", "moat-shell-fallback.");
    ASSERT_TRUE(dir.ok()) << dir.status().ToString();
    dir_ = *dir;
  }
  void TearDown() override { EXPECT_TRUE(RemoveTree(dir_).ok()); }

  // An executable file `name` in the temp dir.
  std::string MakeExecutable(const std::string& name) {
    std::string path = dir_ + "/" + name;
    EXPECT_TRUE(WriteFileAtomic(path, "#!/bin/true\n", 0755).ok());
    return path;
  }

  std::string dir_;
};

TEST_F(ShellFallbackTest, BashThatIsMissingRunsAsTheShellWithTheSameArguments) {
  UserTable users = UserTable::FromText("root:x:0:0:root:/root:/bin/sh\n", "");
  auto spec = ParseExecRequest(
      {{"argv", {"bash", "-l", "-c", "echo hi"}}, {"env", {{"PATH", dir_}}}, {"cwd", "/"}}, {},
      users);
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->argv, (std::vector<std::string>{"/bin/sh", "-l", "-c", "echo hi"}));
  // What `processes` reports stays what was asked for.
  EXPECT_EQ(spec->request_argv[0], "bash");
}

TEST_F(ShellFallbackTest, EveryNameOfBashFallsBackToTheGivenShell) {
  std::string sh = MakeExecutable("sh");
  std::string empty_path = dir_ + "/empty";
  EXPECT_EQ(FindProgramOrShell("bash", empty_path, "/", sh).value(), sh);
  EXPECT_TRUE(IsBash("/bin/bash"));
  EXPECT_TRUE(IsBash("/usr/bin/bash"));
  EXPECT_FALSE(IsBash("/opt/bash5/bin/bash"));
  EXPECT_FALSE(IsBash("bashful"));
}

TEST_F(ShellFallbackTest, BashThatExistsIsUsed) {
  std::string bash = MakeExecutable("bash");
  MakeExecutable("sh");
  EXPECT_EQ(FindProgramOrShell("bash", dir_, "/", dir_ + "/sh").value(), bash);
}

TEST_F(ShellFallbackTest, OtherProgramsAndAMissingShellStayNotFound) {
  auto other = FindProgramOrShell("python9", dir_, "/", MakeExecutable("sh"));
  EXPECT_EQ(other.status().code(), ErrorCode::kNotFound);
  EXPECT_NE(other.status().message().find("python9"), std::string::npos);
  auto no_shell = FindProgramOrShell("bash", dir_, "/", dir_ + "/no-such-sh");
  EXPECT_EQ(no_shell.status().code(), ErrorCode::kNotFound);
  EXPECT_NE(no_shell.status().message().find("bash"), std::string::npos);
}

}  // namespace
}  // namespace moat::guest
