// `moat template build`'s Dockerfile reader: what each instruction becomes as template steps
// (E2B-TEMPLATES §3), the SDK's USER/WORKDIR wrapping, and the refusals, each naming its line.
#include "cli/dockerfile.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace moat::cli {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

using Args = std::vector<std::string>;

DockerfileTemplate Parse(std::string_view text) {
  auto r = ParseDockerfile(text);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? std::move(*r) : DockerfileTemplate{};
}

// The steps between the two leading (USER root, WORKDIR /) and the E2B defaults at the end.
std::vector<TemplateStep> Body(const DockerfileTemplate& t) {
  std::vector<TemplateStep> out;
  for (const auto& s : t.steps) {
    if (s.line != 0) out.push_back(s);
  }
  return out;
}

std::string Error(std::string_view text) {
  auto r = ParseDockerfile(text);
  EXPECT_FALSE(r.ok()) << text;
  if (r.ok()) return "";
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
  return r.status().message();
}

std::string Render(const TemplateStep& s) {
  std::string out = s.type;
  for (const auto& a : s.args) out += " [" + a + "]";
  return out;
}

std::vector<std::string> RenderAll(const std::vector<TemplateStep>& steps) {
  std::vector<std::string> out;
  for (const auto& s : steps) out.push_back(Render(s));
  return out;
}

TEST(ParseDockerfile, WrapsTheStepsInDockersDefaultsThenE2Bs) {
  DockerfileTemplate t = Parse("FROM e2bdev/base\nRUN echo hi\n");
  EXPECT_EQ(t.from_image, "e2bdev/base");
  EXPECT_THAT(RenderAll(t.steps), ElementsAre("USER [root]", "WORKDIR [/]", "RUN [echo hi]",
                                              "USER [user]", "WORKDIR [/home/user]"));
  EXPECT_EQ(t.start_cmd, "");
  EXPECT_EQ(t.ready_cmd, "");
  EXPECT_TRUE(t.notes.empty());
}

TEST(ParseDockerfile, AppendsNoDefaultTheFileSetItself) {
  DockerfileTemplate both = Parse("FROM ubuntu\nUSER app\nWORKDIR /srv\n");
  EXPECT_THAT(RenderAll(both.steps),
              ElementsAre("USER [root]", "WORKDIR [/]", "USER [app]", "WORKDIR [/srv]"));
  DockerfileTemplate user_only = Parse("FROM ubuntu\nUSER app\n");
  EXPECT_THAT(RenderAll(user_only.steps),
              ElementsAre("USER [root]", "WORKDIR [/]", "USER [app]", "WORKDIR [/home/user]"));
  DockerfileTemplate workdir_only = Parse("FROM ubuntu\nWORKDIR \"/my dir\"\n");
  EXPECT_THAT(RenderAll(workdir_only.steps),
              ElementsAre("USER [root]", "WORKDIR [/]", "WORKDIR [/my dir]", "USER [user]"));
}

TEST(ParseDockerfile, TakesTheImageOfFromWithOrWithoutAStageName) {
  EXPECT_EQ(Parse("FROM python:3.12-slim AS build\n").from_image, "python:3.12-slim");
  EXPECT_EQ(Parse("from node:lts as x\n").from_image, "node:lts");
  EXPECT_EQ(Parse("FROM ghcr.io/org/app@sha256:abc\n").from_image, "ghcr.io/org/app@sha256:abc");
  DockerfileTemplate platform = Parse("FROM --platform=linux/amd64 debian\n");
  EXPECT_EQ(platform.from_image, "debian");
  EXPECT_THAT(platform.notes, ElementsAre("Dockerfile line 1: FROM --platform is ignored"));
  EXPECT_THAT(Error("FROM a b\n"), HasSubstr("line 1: FROM wants IMAGE [AS NAME]"));
}

TEST(ParseDockerfile, ExpandsArgsDeclaredBeforeFromInFromOnly) {
  DockerfileTemplate t =
      Parse("ARG PY=3.12\nARG VARIANT\nFROM python:${PY}-slim$VARIANT\nARG PY\nRUN echo $PY\n");
  EXPECT_EQ(t.from_image, "python:3.12-slim");
  // Re-declared in the stage, an ARG takes its default from before FROM, as in Docker; the
  // pre-FROM ARGs themselves make no step.
  EXPECT_THAT(RenderAll(Body(t)), ElementsAre("ENV [PY] [3.12]", "RUN [echo $PY]"));
  EXPECT_EQ(Parse("FROM img:${TAG:-latest}\n").from_image, "img:latest");
}

TEST(ParseDockerfile, RefusesASecondFromNamingItsLine) {
  EXPECT_EQ(Error("FROM golang AS build\nRUN go build\n\nFROM debian\n"),
            "Dockerfile line 4: a second FROM is not supported (no multi-stage builds)");
}

TEST(ParseDockerfile, RefusesAFileWithoutFromAndInstructionsBeforeIt) {
  EXPECT_EQ(Error("# nothing\n"), "the Dockerfile has no FROM instruction");
  EXPECT_EQ(Error("RUN echo\nFROM x\n"), "Dockerfile line 1: RUN comes before FROM");
}

TEST(ParseDockerfile, KeepsShellFormRunAsWrittenJoiningContinuations) {
  DockerfileTemplate t = Parse(
      "FROM debian\n"
      "RUN apt-get update && \\\n"
      "    # a comment inside the command\n"
      "\n"
      "    apt-get install -y curl   \\  \n"
      "    && echo \"a  b\" 'c'\n"
      "RUN echo done\n");
  auto body = Body(t);
  ASSERT_EQ(body.size(), 2u);
  EXPECT_EQ(body[0].args,
            Args{"apt-get update &&     apt-get install -y curl       && echo \"a  b\" 'c'"});
  EXPECT_EQ(body[0].line, 2);
  EXPECT_EQ(body[1].line, 7);  // line numbers count the continuation lines
}

TEST(ParseDockerfile, JoinsExecFormRunWithSpacesQuotingOnlyWhatTheShellWouldSplit) {
  auto body = Body(Parse(
      "FROM debian\nRUN [\"pip\", \"install\", \"flask==3.0\"]\nRUN [\"sh\", \"-c\", \"a && b\", "
      "\"it's\"]\nRUN [not json\n"));
  EXPECT_EQ(body[0].args, Args{"pip install flask==3.0"});
  EXPECT_EQ(body[1].args, Args{"sh -c 'a && b' 'it'\\''s'"});
  EXPECT_EQ(body[2].args, Args{"[not json"});  // not JSON: the shell form, as Docker reads it
}

TEST(ParseDockerfile, RefusesRunFlagsHeredocsAndEmptyCommands) {
  EXPECT_EQ(Error("FROM x\nRUN --mount=type=cache,target=/root/.cache pip install\n"),
            "Dockerfile line 2: RUN --mount is not supported");
  EXPECT_EQ(Error("FROM x\nRUN <<EOF\necho\nEOF\n"),
            "Dockerfile line 2: heredocs are not supported");
  EXPECT_EQ(Error("FROM x\nRUN\n"), "Dockerfile line 2: RUN needs a command");
  EXPECT_EQ(Error("FROM x\nRUN []\n"), "Dockerfile line 2: RUN needs a command");
}

TEST(ParseDockerfile, MakesOneCopyStepPerSourceWithOwnerAndMode) {
  auto body =
      Body(Parse("FROM x\n"
                 "COPY --chown=app:staff --chmod=755 ./bin/ lib/*.so /opt/app/\n"
                 "ADD --chown=app config.json /etc/app.json\n"
                 "COPY [\"my file.txt\", \"/data/\"]\n"
                 "COPY --chmod=0644 . /srv\n"));
  EXPECT_THAT(RenderAll(body),
              ElementsAre("COPY [bin] [/opt/app/] [app:staff] [0755]",
                          "COPY [lib/*.so] [/opt/app/] [app:staff] [0755]",
                          "COPY [config.json] [/etc/app.json] [app] []",
                          "COPY [my file.txt] [/data/] [] []", "COPY [.] [/srv] [] [0644]"));
}

TEST(ParseDockerfile, RefusesCopySourcesOutsideTheContextUrlsAndOtherFlags) {
  EXPECT_EQ(Error("FROM x\nCOPY ../secret /x\n"),
            "Dockerfile line 2: COPY source ../secret is outside the context directory");
  EXPECT_EQ(Error("FROM x\nCOPY a/../../b /x\n"),
            "Dockerfile line 2: COPY source a/../../b is outside the context directory");
  EXPECT_THAT(Error("FROM x\nADD /etc/passwd /x\n"),
              HasSubstr("line 2: ADD source /etc/passwd is absolute"));
  EXPECT_EQ(Error("FROM x\nADD https://example.com/a.tgz /x\n"),
            "Dockerfile line 2: ADD of a URL is not supported (https://example.com/a.tgz)");
  EXPECT_EQ(Error("FROM x\nCOPY --from=build /app /app\n"),
            "Dockerfile line 2: COPY --from is not supported (no multi-stage builds)");
  EXPECT_EQ(Error("FROM x\nCOPY --link a /b\n"), "Dockerfile line 2: COPY --link is not supported");
  EXPECT_THAT(Error("FROM x\nCOPY --chmod=u+x a /b\n"),
              HasSubstr("COPY --chmod wants an octal mode"));
  EXPECT_EQ(Error("FROM x\nCOPY a b /dir\n"),
            "Dockerfile line 2: COPY with several sources needs a destination ending in /");
  EXPECT_EQ(Error("FROM x\nCOPY onlyone\n"),
            "Dockerfile line 2: COPY needs a source and a destination");
  // a/../b stays inside and is sent cleaned.
  EXPECT_EQ(Body(Parse("FROM x\nCOPY a/../b /x\n"))[0].args[0], "b");
}

TEST(ParseDockerfile, CopiesAnAddedArchiveAsItIsWithANote) {
  DockerfileTemplate t = Parse("FROM x\nADD vendor.tar.gz /opt/\n");
  EXPECT_EQ(Body(t)[0].args[0], "vendor.tar.gz");
  EXPECT_THAT(t.notes, ElementsAre("Dockerfile line 2: ADD copies vendor.tar.gz as it is: "
                                   "archives are not extracted"));
}

TEST(ParseDockerfile, ReadsEnvPairsWithQuotesIntoOneStep) {
  auto body =
      Body(Parse("FROM x\n"
                 "ENV A=1 B=\"two words\" C=a\\ b \\\n"
                 "    D=\"say \\\"hi\\\"\" E= A=3\n"));
  ASSERT_EQ(body.size(), 1u);
  // A later value of a key replaces the earlier one in place.
  EXPECT_EQ(body[0].args,
            (Args{"A", "3", "B", "two words", "C", "a b", "D", "say \"hi\"", "E", ""}));
}

TEST(ParseDockerfile, ReadsLegacyEnvAsTheRestOfTheLine) {
  auto body = Body(Parse("FROM x\nENV GREETING hello   \"big\" world\nENV PATH /opt/bin:$PATH\n"));
  EXPECT_EQ(body[0].args, (Args{"GREETING", "hello   big world"}));
  // $ is left for the server's shell expansion (E2B-TEMPLATES §3, ENV).
  EXPECT_EQ(body[1].args, (Args{"PATH", "/opt/bin:$PATH"}));
  EXPECT_EQ(Error("FROM x\nENV LONELY\n"),
            "Dockerfile line 2: ENV LONELY needs a value (ENV KEY VALUE or KEY=VALUE)");
  EXPECT_EQ(Error("FROM x\nENV A=1 B\n"),
            "Dockerfile line 2: ENV wants KEY=VALUE pairs (got \"B\")");
  EXPECT_EQ(Error("FROM x\nENV A=\"open\n"), "Dockerfile line 2: ENV: unterminated \" quote");
}

TEST(ParseDockerfile, KeepsADollarDockerWouldNotExpandEscapedForTheServer) {
  auto body = Body(Parse("FROM x\nENV A='$HOME' B=\\$HOME C=\"\\$HOME $HOME\"\n"));
  EXPECT_EQ(body[0].args, (Args{"A", "\\$HOME", "B", "\\$HOME", "C", "\\$HOME $HOME"}));
}

TEST(ParseDockerfile, TurnsArgIntoEnvWithAnEmptyValueWhenItHasNoDefault) {
  auto body = Body(Parse("FROM x\nARG VERSION\nARG A=1 B\n"));
  EXPECT_THAT(RenderAll(body), ElementsAre("ENV [VERSION] []", "ENV [A] [1] [B] []"));
  EXPECT_EQ(Error("FROM x\nARG\n"), "Dockerfile line 2: ARG needs a name");
}

TEST(ParseDockerfile, MakesCmdOrEntrypointTheStartCommandReadyAfterTwentySeconds) {
  DockerfileTemplate shell = Parse("FROM x\nCMD python app.py --port 8000\n");
  EXPECT_EQ(shell.start_cmd, "python app.py --port 8000");
  EXPECT_EQ(shell.ready_cmd, "sleep 20");
  DockerfileTemplate exec = Parse("FROM x\nENTRYPOINT [\"python\", \"-m\", \"http.server\"]\n");
  EXPECT_EQ(exec.start_cmd, "python -m http.server");
  EXPECT_EQ(exec.ready_cmd, "sleep 20");
  EXPECT_TRUE(Body(exec).empty());  // no step: the start command is a top-level field
}

TEST(ParseDockerfile, KeepsTheLastOfCmdAndEntrypointWithANote) {
  DockerfileTemplate t = Parse("FROM x\nENTRYPOINT [\"tini\"]\nCMD [\"serve\"]\n");
  EXPECT_EQ(t.start_cmd, "serve");
  EXPECT_THAT(t.notes, ElementsAre("Dockerfile line 3: CMD replaces the ENTRYPOINT of line 2: a "
                                   "template has one start command"));
}

TEST(ParseDockerfile, IgnoresExposeVolumeAndLabelWithANote) {
  DockerfileTemplate t =
      Parse("FROM x\nEXPOSE 8000\nVOLUME /data\nLABEL a=b\nMAINTAINER me\nRUN true\n");
  EXPECT_THAT(RenderAll(Body(t)), ElementsAre("RUN [true]"));
  EXPECT_THAT(t.notes, ElementsAre("Dockerfile line 2: EXPOSE is ignored",
                                   "Dockerfile line 3: VOLUME is ignored",
                                   "Dockerfile line 4: LABEL is ignored",
                                   "Dockerfile line 5: MAINTAINER is ignored"));
}

TEST(ParseDockerfile, RefusesEveryOtherInstructionNamingItsLine) {
  EXPECT_EQ(Error("FROM x\n\nHEALTHCHECK CMD curl -f localhost\n"),
            "Dockerfile line 3: HEALTHCHECK is not supported");
  EXPECT_EQ(Error("FROM x\nONBUILD RUN x\n"), "Dockerfile line 2: ONBUILD is not supported");
  EXPECT_EQ(Error("FROM x\nshell [\"/bin/bash\", \"-c\"]\n"),
            "Dockerfile line 2: SHELL is not supported");
  EXPECT_EQ(Error("FROM x\nSTOPSIGNAL SIGTERM\n"),
            "Dockerfile line 2: STOPSIGNAL is not supported");
  EXPECT_EQ(Error("FROM x\nRUNN x\n"), "Dockerfile line 2: RUNN is not supported");
}

TEST(ParseDockerfile, ReadsKeywordsInAnyCaseCrlfAndDirectives) {
  DockerfileTemplate t =
      Parse("# syntax=docker/dockerfile:1\r\n\r\nfrom x\r\nrun echo a \\\r\n  b\r\nUser bob\r\n");
  EXPECT_THAT(RenderAll(Body(t)), ElementsAre("RUN [echo a   b]", "USER [bob]"));
  EXPECT_EQ(Error("# escape=`\nFROM x\n"),
            "Dockerfile line 1: the escape directive is not supported (only \\ escapes)");
}

TEST(ParseDockerfile, RefusesUserWithSeveralWords) {
  EXPECT_THAT(Error("FROM x\nUSER a b\n"), HasSubstr("line 2: USER wants one user name"));
  EXPECT_EQ(Error("FROM x\nWORKDIR\n"), "Dockerfile line 2: WORKDIR needs a path");
}

TEST(DockerfileWords, SplitsOnBlanksHonouringQuotesAndEscapes) {
  auto words = DockerfileWords("a 'b c' \"d \\\" e\" f\\ g \"\"");
  ASSERT_TRUE(words.ok());
  EXPECT_EQ(*words, (Args{"a", "b c", "d \" e", "f g", ""}));
  auto whole = DockerfileWords("x  'y'  z", /*split=*/false);
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ(*whole, Args{"x  y  z"});
  EXPECT_FALSE(DockerfileWords("'open").ok());
}

}  // namespace
}  // namespace moat::cli
