// The client side of the code interpreter's `POST /execute` (cli/code_stream.h, code_output.h):
// the request, the NDJSON lines however the bytes are chunked, what each line decodes to
// (every malformed one an error naming it), and what `moat run-code` prints and saves.
#include "cli/code_stream.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "cli/code_output.h"
#include "common/fs.h"
#include "common/unique_fd.h"

namespace moat::cli {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

// Every line `reader` has complete after `chunks` arrive one by one.
std::vector<std::string> Lines(NdjsonLineReader& reader, const std::vector<std::string>& chunks) {
  std::vector<std::string> lines;
  for (const auto& chunk : chunks) {
    reader.Append(chunk);
    for (;;) {
      auto line = reader.Next();
      EXPECT_TRUE(line.ok()) << line.status().ToString();
      if (!line.ok() || !*line) break;
      lines.push_back(**line);
    }
  }
  return lines;
}

std::vector<std::string> Bytes(std::string_view s) {
  std::vector<std::string> out;
  for (char c : s) out.emplace_back(1, c);
  return out;
}

TEST(CodeStreamLines, SplitsTheSameAtEveryChunkBoundary) {
  const std::string stream = R"({"type":"stdout","text":"a"})"
                             "\n"
                             R"({"type":"result","text":"2"})"
                             "\n"
                             R"({"type":"end_of_execution"})"
                             "\n";
  const std::vector<std::string> want = {R"({"type":"stdout","text":"a"})",
                                         R"({"type":"result","text":"2"})",
                                         R"({"type":"end_of_execution"})"};
  NdjsonLineReader whole;
  EXPECT_EQ(Lines(whole, {stream}), want);
  NdjsonLineReader bytewise;
  EXPECT_EQ(Lines(bytewise, Bytes(stream)), want);
  for (size_t cut = 0; cut <= stream.size(); ++cut) {
    NdjsonLineReader two;
    EXPECT_EQ(Lines(two, {stream.substr(0, cut), stream.substr(cut)}), want) << cut;
  }
}

TEST(CodeStreamLines, KeepsAMultiByteCharacterSplitAcrossChunksWhole) {
  // "é" (2 bytes), "€" (3) and an emoji (4), raw UTF-8 although the server should escape them.
  const std::string text = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80";
  const std::string line = R"({"type":"stdout","text":")" + text + R"("})";
  NdjsonLineReader reader;
  EXPECT_THAT(Lines(reader, Bytes(line + "\n")), ElementsAre(line));
  auto event = DecodeCodeEvent(line, 1);
  ASSERT_TRUE(event.ok()) << event.status().ToString();
  EXPECT_EQ(event->text, text);
}

TEST(CodeStreamLines, NumbersLinesFromOne) {
  NdjsonLineReader reader;
  reader.Append("a\nb\nc");
  EXPECT_EQ(**reader.Next(), "a");
  EXPECT_EQ(reader.line_number(), 1u);
  EXPECT_EQ(**reader.Next(), "b");
  EXPECT_EQ(reader.line_number(), 2u);
  EXPECT_FALSE(reader.Next()->has_value());
  EXPECT_EQ(**reader.Finish(), "c");
  EXPECT_EQ(reader.line_number(), 3u);
}

TEST(CodeStreamLines, FinishReturnsTheUnterminatedRestAsALastLine) {
  NdjsonLineReader reader;
  EXPECT_THAT(Lines(reader, {"x\ny"}), ElementsAre("x"));
  auto last = reader.Finish();
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(**last, "y");
  EXPECT_FALSE(reader.Finish()->has_value());

  NdjsonLineReader terminated;
  EXPECT_THAT(Lines(terminated, {"x\n"}), ElementsAre("x"));
  EXPECT_FALSE(terminated.Finish()->has_value());  // a final '\n' is not an empty last line
}

TEST(CodeStreamLines, PassesBlankLinesOnForTheDecoderToReject) {
  NdjsonLineReader reader;
  EXPECT_THAT(Lines(reader, {"a\n\n\r\nb\n"}), ElementsAre("a", "", "\r", "b"));
}

TEST(CodeStreamLines, AcceptsALineOfExactlyTheBound) {
  NdjsonLineReader reader(8);
  EXPECT_THAT(Lines(reader, {"12345678\n", "1234", "5678\n"}), ElementsAre("12345678", "12345678"));
}

TEST(CodeStreamLines, RejectsALineLongerThanTheBoundNamingIt) {
  NdjsonLineReader reader(8);
  reader.Append("ok\n123456789\n");
  EXPECT_EQ(**reader.Next(), "ok");
  auto r = reader.Next();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kResourceExhausted);
  EXPECT_THAT(r.status().message(), HasSubstr("line 2"));
  EXPECT_THAT(r.status().message(), HasSubstr("longer than 8 bytes"));
  reader.Append("fine\n");
  EXPECT_FALSE(reader.Next().ok());  // the stream cannot be resynchronised
  EXPECT_FALSE(reader.Finish().ok());
}

TEST(CodeStreamLines, RejectsAnOverlongLineBeforeItsNewlineArrives) {
  // The bound holds memory down: a line that never ends is refused once it is past it.
  NdjsonLineReader reader(8);
  reader.Append("12345");
  EXPECT_FALSE(reader.Next()->has_value());
  reader.Append("6789");
  auto r = reader.Next();
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("line 1"));
}

TEST(CodeStreamEvents, RejectsBlankLinesNamingTheLine) {
  for (std::string_view blank : {"", " ", "\r", " \t\r"}) {
    auto r = DecodeCodeEvent(blank, 4);
    ASSERT_FALSE(r.ok()) << QuoteUntrusted(blank);
    EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
    EXPECT_THAT(r.status().message(), HasSubstr("line 4: blank"));
  }
}

TEST(CodeStreamEvents, RejectsInvalidJsonNamingTheLine) {
  for (std::string_view bad : {"{", "{\"type\":\"stdout\",", "not json", "{\"type\":\"x\"} {}",
                               "{\"type\":\"stdout\",\"text\":\"\xff\"}"}) {
    auto r = DecodeCodeEvent(bad, 7);
    ASSERT_FALSE(r.ok()) << QuoteUntrusted(bad);
    EXPECT_THAT(r.status().message(), HasSubstr("interpreter stream line 7: not valid JSON"));
    for (char c : r.status().message()) {
      EXPECT_TRUE(c >= 0x20 && c < 0x7f) << "unquoted byte in " << r.status().message();
    }
  }
}

TEST(CodeStreamEvents, RejectsJsonThatIsNotAnObject) {
  for (std::string_view bad : {"5", "null", "[]", "\"stdout\"", "true"}) {
    auto r = DecodeCodeEvent(bad, 1);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_THAT(r.status().message(), HasSubstr("not a JSON object"));
  }
}

TEST(CodeStreamEvents, RejectsAMissingOrNonStringType) {
  for (std::string_view bad : {"{}", R"({"type":1})", R"({"type":null})", R"({"text":"x"})"}) {
    auto r = DecodeCodeEvent(bad, 1);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_THAT(r.status().message(), HasSubstr("no string \"type\""));
  }
}

TEST(CodeStreamEvents, RejectsNestingPastTheBoundBeforeParsing) {
  const std::string deep = R"({"type":"result","json":)" + std::string(200000, '[');
  auto r = DecodeCodeEvent(deep, 2);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("nested deeper"));
  // Brackets inside strings are text, not nesting.
  const std::string in_string =
      R"({"type":"stdout","text":")" + std::string(2000, '[') + R"(\"{{{"})";
  auto ok = DecodeCodeEvent(in_string, 3);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->text, std::string(2000, '[') + "\"{{{");
}

TEST(CodeStreamEvents, SkipsBookkeepingAndUnknownTypes) {
  for (auto [line, type] :
       {std::pair{R"({"type":"keepalive"})", CodeEventType::kKeepalive},
        std::pair{R"({"type": "end_of_execution"})", CodeEventType::kEndOfExecution},
        std::pair{R"({"type":"number_of_executions","execution_count":"x"})",
                  CodeEventType::kNumberOfExecutions},
        std::pair{R"({"type":"progress","text":5})", CodeEventType::kUnknown}}) {
    auto r = DecodeCodeEvent(line, 1);
    ASSERT_TRUE(r.ok()) << line << ": " << r.status().ToString();
    EXPECT_EQ(r->type, type) << line;
  }
}

TEST(CodeStreamEvents, ReadsStdoutAndStderrText) {
  auto out = DecodeCodeEvent(
      R"({"type":"stdout","text":"hi\n","timestamp":"2026-08-22T10:00:00.123456+00:00"})", 1);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->type, CodeEventType::kStdout);
  EXPECT_EQ(out->text, "hi\n");
  auto err = DecodeCodeEvent(R"({"type":"stderr","text":"caf\u00e9\r\n","timestamp":5})", 1);
  ASSERT_TRUE(err.ok());  // the timestamp is not read, so not checked
  EXPECT_EQ(err->type, CodeEventType::kStderr);
  EXPECT_EQ(err->text, "caf\xc3\xa9\r\n");
  auto crlf = DecodeCodeEvent("{\"type\":\"stdout\",\"text\":\"x\"}\r", 1);
  ASSERT_TRUE(crlf.ok());
  EXPECT_EQ(crlf->text, "x");
}

TEST(CodeStreamEvents, RejectsStdoutWithoutStringText) {
  for (std::string_view bad : {R"({"type":"stdout"})", R"({"type":"stderr","text":1})",
                               R"({"type":"stdout","text":null})"}) {
    auto r = DecodeCodeEvent(bad, 9);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_THAT(r.status().message(), HasSubstr("line 9"));
    EXPECT_THAT(r.status().message(), HasSubstr("no string text"));
  }
}

TEST(CodeStreamEvents, ReadsAResultsFormsFilesAndOtherFields) {
  auto r = DecodeCodeEvent(
      R"({"type":"result","text":"<Figure>","svg":"<svg/>","png":"iVBO","is_main_result":false,)"
      R"("html":null,"json":{"a":[1,2]},"chart":{"type":"line"},"pdf":"JVBE",)"
      R"("extra":{"application/vnd.plotly.v1+json":{}},"unknown_field":1})",
      1);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->type, CodeEventType::kResult);
  const CodeResult& res = r->result;
  EXPECT_FALSE(res.is_main_result);
  EXPECT_EQ(res.text_forms.at("text"), "<Figure>");
  EXPECT_EQ(res.text_forms.at("json"), R"({"a":[1,2]})");
  EXPECT_EQ(res.text_forms.at("chart"), R"({"type":"line"})");
  EXPECT_EQ(res.text_forms.count("html"), 0u);  // null is absent
  ASSERT_EQ(res.files.size(), 3u);              // png, svg, pdf: the table's order
  EXPECT_EQ(res.files[0].format.field, "png");
  EXPECT_EQ(res.files[0].payload, "iVBO");
  EXPECT_EQ(res.files[1].format.field, "svg");
  EXPECT_EQ(res.files[2].format.field, "pdf");
  EXPECT_THAT(res.other_fields, ElementsAre("application/vnd.plotly.v1+json", "unknown_field"));

  auto main =
      DecodeCodeEvent(R"({"type":"result","text":"2","is_main_result":true,"extra":{}})", 1);
  ASSERT_TRUE(main.ok());
  EXPECT_TRUE(main->result.is_main_result);
  EXPECT_THAT(main->result.other_fields, IsEmpty());
}

TEST(CodeStreamEvents, RejectsWrongTypedResultFieldsNamingThem) {
  for (auto [bad, field] :
       {std::pair{R"({"type":"result","png":5})", "png"},
        std::pair{R"({"type":"result","text":["a"]})", "text"},
        std::pair{R"({"type":"result","svg":{}})", "svg"},
        std::pair{R"({"type":"result","is_main_result":"yes"})", "is_main_result"}}) {
    auto r = DecodeCodeEvent(bad, 3);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_THAT(r.status().message(), HasSubstr("line 3"));
    EXPECT_THAT(r.status().message(), HasSubstr(std::string("\"") + field + "\""));
  }
}

TEST(CodeStreamEvents, ReadsAnErrorAndRejectsAWrongTypedOne) {
  auto r =
      DecodeCodeEvent(R"({"type":"error","name":"NameError","value":"name 'y' is not defined",)"
                      R"("traceback":"---\nNameError: name 'y' is not defined"})",
                      1);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->type, CodeEventType::kError);
  EXPECT_EQ(r->error.name, "NameError");
  EXPECT_EQ(r->error.value, "name 'y' is not defined");
  EXPECT_EQ(r->error.traceback, "---\nNameError: name 'y' is not defined");
  auto bare = DecodeCodeEvent(R"({"type":"error"})", 1);
  ASSERT_TRUE(bare.ok());
  EXPECT_EQ(bare->error.name, "");
  auto bad = DecodeCodeEvent(R"({"type":"error","name":"E","traceback":["a","b"]})", 2);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("\"traceback\""));
}

TEST(CodeStreamMime, MapsFileFieldsToMimeTypesAndExtensions) {
  struct Want {
    const char* field;
    const char* mime;
    const char* extension;
    bool base64;
  };
  for (auto w :
       {Want{"png", "image/png", "png", true}, Want{"jpeg", "image/jpeg", "jpg", true},
        Want{"svg", "image/svg+xml", "svg", false}, Want{"pdf", "application/pdf", "pdf", true}}) {
    auto f = FileFormatForField(w.field);
    ASSERT_TRUE(f.has_value()) << w.field;
    EXPECT_EQ(f->mime, w.mime);
    EXPECT_EQ(f->extension, w.extension);
    EXPECT_EQ(f->base64, w.base64) << w.field;
  }
  for (const char* not_a_file : {"text", "html", "markdown", "latex", "json", "javascript", "data",
                                 "chart", "extra", "image/png", "PNG", ""}) {
    EXPECT_FALSE(FileFormatForField(not_a_file).has_value()) << not_a_file;
  }
  EXPECT_EQ(ResultFileFormats().size(), 4u);
}

TEST(CodeStreamMime, DecodesBase64SkippingJupytersLineBreaks) {
  auto png = *FileFormatForField("png");
  for (const char* b64 : {"aGVsbG8=", "aGVsbG8=\n", "aGVs\nbG8=", "aGVsbG8", " aGVs\r\nbG8= "}) {
    auto bytes = DecodeResultFile({png, b64});
    ASSERT_TRUE(bytes.ok()) << b64 << ": " << bytes.status().ToString();
    EXPECT_EQ(*bytes, "hello") << b64;
  }
  auto svg = DecodeResultFile({*FileFormatForField("svg"), "<svg>\xc3\xa9</svg>"});
  ASSERT_TRUE(svg.ok());
  EXPECT_EQ(*svg, "<svg>\xc3\xa9</svg>");  // SVG is text on the wire: written as it came
}

TEST(CodeStreamMime, RejectsBadBase64NamingTheMimeType) {
  for (auto [field, b64] : {std::pair{"png", "!!!!"}, std::pair{"jpeg", "a"},
                            std::pair{"pdf", "aGVs*G8="}, std::pair{"png", "aGVs\x01G8="}}) {
    auto bytes = DecodeResultFile({*FileFormatForField(field), b64});
    ASSERT_FALSE(bytes.ok()) << b64;
    EXPECT_EQ(bytes.status().code(), ErrorCode::kInvalidArgument);
    EXPECT_THAT(bytes.status().message(),
                HasSubstr(std::string(FileFormatForField(field)->mime) + " is not valid base64"));
  }
}

TEST(CodeStreamMime, ShowsTextThenMarkdownThenHtml) {
  CodeResult r;
  EXPECT_FALSE(ResultText(r).has_value());
  r.text_forms["html"] = "<b>x</b>";
  EXPECT_EQ(ResultText(r), "<b>x</b>");
  r.text_forms["markdown"] = "**x**";
  EXPECT_EQ(ResultText(r), "**x**");
  r.text_forms["text"] = "x";
  EXPECT_EQ(ResultText(r), "x");
}

TEST(CodeStreamRequest, SendsOnlyTheFieldsThatAreSet) {
  auto bare = ExecuteRequestBody({.code = "x = 1\nx + 1"});
  ASSERT_TRUE(bare.ok());
  EXPECT_EQ(*bare, R"({"code":"x = 1\nx + 1"})");
  auto full = ExecuteRequestBody(
      {.code = "print(1)", .language = "python", .env_vars = {{"A", "1"}, {"B", "x=y"}}});
  ASSERT_TRUE(full.ok());
  json want = {
      {"code", "print(1)"}, {"language", "python"}, {"env_vars", {{"A", "1"}, {"B", "x=y"}}}};
  EXPECT_EQ(json::parse(*full), want);
  auto ctx = ExecuteRequestBody({.code = "", .context_id = "k-1"});
  ASSERT_TRUE(ctx.ok());
  EXPECT_EQ(json::parse(*ctx), json({{"code", ""}, {"context_id", "k-1"}}));
}

TEST(CodeStreamRequest, RefusesCodeThatIsNotUtf8) {
  auto r = ExecuteRequestBody({.code = "print('\xff')"});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("UTF-8"));
  EXPECT_FALSE(ExecuteRequestBody({.code = "", .env_vars = {{"A", "\xc3"}}}).ok());
}

TEST(CodeStreamRequest, RoutesToPort49999WithTheTrafficTokenOnly) {
  auto headers = ExecuteHeaders(
      "sbx1",
      json::parse(
          R"({"sandboxID":"sbx1","envdAccessToken":"et","trafficAccessToken":"tt","apiKey":"k"})"));
  EXPECT_THAT(headers,
              ElementsAre(std::pair<std::string, std::string>{"E2b-Sandbox-Id", "sbx1"},
                          std::pair<std::string, std::string>{"E2b-Sandbox-Port", "49999"},
                          std::pair<std::string, std::string>{"Content-Type", "application/json"},
                          std::pair<std::string, std::string>{"E2B-Traffic-Access-Token", "tt"}));
  auto public_sandbox =
      ExecuteHeaders("sbx1", json::parse(R"({"envdAccessToken":"et","trafficAccessToken":null})"));
  EXPECT_EQ(public_sandbox.size(), 3u);
  EXPECT_EQ(ExecuteHeaders("sbx1", json::parse(R"({"envdAccessToken":7})")).size(), 3u);
  EXPECT_EQ(ExecuteHeaders("sbx1", json::parse("[]")).size(), 3u);
}

TEST(CodeStreamQuote, EscapesControlAndNonAsciiBytesAndCuts) {
  EXPECT_EQ(QuoteUntrusted("a\x1b[31mb\n\xc3\xa9"), "a\\x1b[31mb\\x0a\\xc3\\xa9");
  EXPECT_EQ(QuoteUntrusted("abcdef", 3), "abc...");
}

// A CodeOutput writing to temp files and saving into a temp dir.
class CodeStreamOutput : public ::testing::Test {
 protected:
  void SetUp() override {
    auto tmp = MakeTempDir(::testing::TempDir(), "code-output-");
    ASSERT_TRUE(tmp.ok()) << tmp.status().ToString();
    root_ = *tmp;
    dir_path_ = root_ + "/out";
    ASSERT_EQ(::mkdir(dir_path_.c_str(), 0755), 0);
    dir_.Reset(::open(dir_path_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    out_.Reset(::open((root_ + "/stdout").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    err_.Reset(::open((root_ + "/stderr").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    ASSERT_TRUE(dir_ && out_ && err_);
  }
  void TearDown() override { std::filesystem::remove_all(root_); }

  CodeOutput Make(bool json = false) {
    return CodeOutput({.stdout_fd = out_.get(),
                       .stderr_fd = err_.get(),
                       .dir_fd = dir_.get(),
                       .dir_label = "out",
                       .json = json});
  }
  std::string Read(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  std::string Out() { return Read(root_ + "/stdout"); }
  std::string Err() { return Read(root_ + "/stderr"); }
  std::vector<std::string> Saved() {
    std::vector<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(dir_path_)) {
      names.push_back(e.path().filename());
    }
    std::sort(names.begin(), names.end());
    return names;
  }

  std::string root_;
  std::string dir_path_;
  UniqueFd dir_, out_, err_;
};

TEST_F(CodeStreamOutput, WritesOutputTheMomentItsLineIsComplete) {
  CodeOutput output = Make();
  ASSERT_TRUE(output
                  .Consume(R"({"type":"number_of_executions","execution_count":1})"
                           "\n"
                           R"({"type":"stdout","text":"hi\n"})")
                  .ok());
  EXPECT_EQ(Out(), "");  // the line has not ended yet
  ASSERT_TRUE(output.Consume("\n").ok());
  EXPECT_EQ(Out(), "hi\n");
  ASSERT_TRUE(output
                  .Consume(R"({"type":"stderr","text":"warn"})"
                           "\n"
                           R"({"type":"keepalive"})"
                           "\n")
                  .ok());
  EXPECT_EQ(Err(), "warn");
  ASSERT_TRUE(output.Consume(R"({"type":"result","text":"2","is_main_result":true})").ok());
  ASSERT_TRUE(output.Finish().ok());  // the last line without its '\n'
  EXPECT_EQ(Out(), "hi\n2\n");
  EXPECT_FALSE(output.raised());
  EXPECT_FALSE(output.failed());
  EXPECT_THAT(Saved(), IsEmpty());
}

TEST_F(CodeStreamOutput, ShowsTheSameOutputWhenFedOneByteAtATime) {
  const std::string stream = R"({"type":"stdout","text":"caf\u00e9 "})"
                             "\n"
                             R"({"type":"stdout","text":"\u20ac\n"})"
                             "\n"
                             R"({"type":"result","markdown":"**b**","is_main_result":true})"
                             "\n"
                             R"({"type":"end_of_execution"})"
                             "\n";
  CodeOutput output = Make();
  for (char c : stream) ASSERT_TRUE(output.Consume(std::string_view(&c, 1)).ok());
  ASSERT_TRUE(output.Finish().ok());
  EXPECT_EQ(Out(), "caf\xc3\xa9 \xe2\x82\xac\n**b**\n");
}

TEST_F(CodeStreamOutput, StartsItsOwnLinesOnAFreshLine) {
  CodeOutput output = Make();
  ASSERT_TRUE(output
                  .Consume(R"({"type":"stdout","text":"no newline"})"
                           "\n"
                           R"({"type":"result","text":"2"})"
                           "\n"
                           R"({"type":"stderr","text":"partial"})"
                           "\n"
                           R"({"type":"error","name":"ValueError","value":"bad"})"
                           "\n")
                  .ok());
  EXPECT_EQ(Out(), "no newline\n2\n");
  EXPECT_EQ(Err(), "partial\nValueError: bad\n");
}

TEST_F(CodeStreamOutput, SavesFilesAsNumberedResultsAndPrintsTheirPaths) {
  CodeOutput output = Make();
  ASSERT_TRUE(output
                  .Consume(R"({"type":"result","text":"<Figure size 640x480>","png":"aGVsbG8=\n",)"
                           R"("svg":"<svg/>","is_main_result":false})"
                           "\n"
                           R"({"type":"result","jpeg":"/9j/","pdf":"JVBERi0="})"
                           "\n")
                  .ok());
  ASSERT_TRUE(output.Finish().ok());
  EXPECT_EQ(Out(),
            "saved image/png to out/result-1.png\n"
            "saved image/svg+xml to out/result-2.svg\n"
            "saved image/jpeg to out/result-3.jpg\n"
            "saved application/pdf to out/result-4.pdf\n");
  EXPECT_THAT(Saved(), ElementsAre("result-1.png", "result-2.svg", "result-3.jpg", "result-4.pdf"));
  EXPECT_EQ(Read(dir_path_ + "/result-1.png"), "hello");
  EXPECT_EQ(Read(dir_path_ + "/result-2.svg"), "<svg/>");
  EXPECT_EQ(Read(dir_path_ + "/result-3.jpg"), "\xff\xd8\xff");
  EXPECT_EQ(Read(dir_path_ + "/result-4.pdf"), "%PDF-");
  EXPECT_FALSE(output.failed());
}

TEST_F(CodeStreamOutput, NeverOverwritesAFileNorFollowsALink) {
  { std::ofstream(dir_path_ + "/result-1.png") << "mine"; }
  const std::string target = root_ + "/target";
  ASSERT_EQ(::symlink(target.c_str(), (dir_path_ + "/result-2.png").c_str()), 0);
  CodeOutput output = Make();
  ASSERT_TRUE(output
                  .Consume(R"({"type":"result","png":"aGVsbG8="})"
                           "\n"
                           R"({"type":"result","png":"aGk="})"
                           "\n")
                  .ok());
  EXPECT_EQ(Out(), "saved image/png to out/result-3.png\nsaved image/png to out/result-4.png\n");
  EXPECT_EQ(Read(dir_path_ + "/result-1.png"), "mine");
  EXPECT_FALSE(std::filesystem::exists(target));
  EXPECT_EQ(Read(dir_path_ + "/result-3.png"), "hello");
  EXPECT_EQ(Read(dir_path_ + "/result-4.png"), "hi");
}

TEST_F(CodeStreamOutput, ReportsBase64ThatDoesNotDecodeAndGoesOn) {
  CodeOutput output = Make();
  ASSERT_TRUE(output
                  .Consume(R"({"type":"result","png":"!!not base64!!","text":"<Figure>"})"
                           "\n"
                           R"({"type":"stdout","text":"after\n"})"
                           "\n")
                  .ok());
  EXPECT_TRUE(output.failed());
  EXPECT_FALSE(output.raised());
  EXPECT_THAT(Err(), HasSubstr("moat: result 1: image/png is not valid base64"));
  EXPECT_EQ(Out(), "after\n");
  EXPECT_THAT(Saved(), IsEmpty());
}

TEST_F(CodeStreamOutput, ReportsAFileThatCannotBeSavedAndGoesOn) {
  ASSERT_EQ(::rmdir(dir_path_.c_str()), 0);  // dir_ now names a removed directory: ENOENT
  CodeOutput output = Make();
  ASSERT_TRUE(output
                  .Consume(R"({"type":"result","png":"aGk="})"
                           "\n"
                           R"({"type":"stdout","text":"after\n"})"
                           "\n")
                  .ok());
  EXPECT_TRUE(output.failed());
  EXPECT_THAT(Err(), HasSubstr("moat: result 1: saving image/png: creating out/result-1.png"));
  EXPECT_EQ(Out(), "after\n");
}

TEST_F(CodeStreamOutput, PrintsTheTracebackOfAnErrorAndMarksTheRunRaised) {
  CodeOutput output = Make();
  ASSERT_TRUE(
      output
          .Consume(R"({"type":"error","name":"NameError","value":"name 'y' is not defined",)"
                   R"("traceback":"Traceback:\nNameError: name 'y' is not defined"})"
                   "\n")
          .ok());
  EXPECT_TRUE(output.raised());
  EXPECT_FALSE(output.failed());
  EXPECT_EQ(Err(), "Traceback:\nNameError: name 'y' is not defined\n");
  EXPECT_EQ(Out(), "");
}

TEST_F(CodeStreamOutput, ShowsAResultWithOnlyHtmlAndNotesOneWithNoTextForm) {
  CodeOutput output = Make();
  ASSERT_TRUE(output
                  .Consume(R"({"type":"result","html":"<table></table>","is_main_result":true})"
                           "\n"
                           R"({"type":"result","extra":{"application/vnd.plotly.v1+json":{}}})"
                           "\n")
                  .ok());
  EXPECT_EQ(Out(), "<table></table>\n");
  EXPECT_THAT(Err(), HasSubstr("result 2 has no text form (application/vnd.plotly.v1+json)"));
  EXPECT_FALSE(output.failed());
}

TEST_F(CodeStreamOutput, JsonModePrintsEachLineAsReceivedAndSavesNothing) {
  const std::string lines = R"({"type":"stdout","text":"hi\n"})"
                            "\n"
                            R"({"type": "result", "png": "aGk=", "extra": {}})"
                            "\n"
                            R"({"type":"keepalive"})"
                            "\n"
                            R"({"type":"error","name":"E","value":"v","traceback":""})"
                            "\n";
  CodeOutput output = Make(/*json=*/true);
  ASSERT_TRUE(output.Consume(lines).ok());
  ASSERT_TRUE(output.Finish().ok());
  EXPECT_EQ(Out(), lines);
  EXPECT_EQ(Err(), "");
  EXPECT_TRUE(output.raised());
  EXPECT_THAT(Saved(), IsEmpty());
}

TEST_F(CodeStreamOutput, StopsAtAMalformedLineNamingIt) {
  CodeOutput output = Make();
  auto s = output.Consume(R"({"type":"stdout","text":"one\n"})"
                          "\n"
                          "\n"
                          R"({"type":"stdout","text":"two\n"})"
                          "\n");
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("interpreter stream line 2: blank"));
  EXPECT_EQ(Out(), "one\n");
}

TEST_F(CodeStreamOutput, StopsAtAnOverlongLine) {
  CodeOutput output(
      {.stdout_fd = out_.get(), .stderr_fd = err_.get(), .dir_fd = dir_.get(), .max_line = 64});
  auto s = output.Consume(R"({"type":"stdout","text":")" + std::string(100, 'x'));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), ErrorCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("line 1: longer than 64 bytes"));
}

}  // namespace
}  // namespace moat::cli
