// The client side of the code interpreter's `POST /execute` (E2B-CODE-INTERPRETER §1-§3): the
// request's headers and body, and the NDJSON response read line by line however the transport
// chunks it. The response comes from the guest, so it is untrusted: every malformed input (a
// line past the bound, bad JSON, a wrong-typed field) is an error value naming the line, never
// an exception or a crash.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

namespace moat::cli {

using nlohmann::json;

// The interpreter's guest port, reached through moatd's port proxy (E2b-Sandbox-Port).
inline constexpr const char* kInterpreterPort = "49999";
// A line this long is a broken or hostile stream: a 20-megapixel PNG in base64 is well under it.
inline constexpr size_t kMaxCodeStreamLine = 64 * 1024 * 1024;
// JSON nested deeper than this is refused before parsing, so that nothing that later walks a
// value recursively (dump) can exhaust the stack. Python's json.dumps stops near 1000 itself.
inline constexpr int kMaxCodeStreamDepth = 512;

struct ExecuteRequest {
  std::string code;
  std::string language;    // "" = not sent
  std::string context_id;  // "" = not sent; exclusive with language
  std::map<std::string, std::string> env_vars;
};

// {"code","language"?,"context_id"?,"env_vars"?}. Invalid UTF-8 (in the code or an env var) is
// invalid_argument: JSON cannot carry it and silently replacing bytes would change the program.
Result<std::string> ExecuteRequestBody(const ExecuteRequest& request);

// The headers of `POST /execute` for sandbox `id`, given its `GET /sandboxes/{id}` answer:
// routing (E2b-Sandbox-Id, E2b-Sandbox-Port), Content-Type, and the envdAccessToken
// (X-Access-Token) and trafficAccessToken (E2B-Traffic-Access-Token) where it has them. Never the
// API key: the port proxy does not need it, and the interpreter in the guest must not see it.
std::vector<std::pair<std::string, std::string>> ExecuteHeaders(const std::string& id,
                                                                const json& sandbox_info);

// Splits a byte stream into '\n'-terminated lines, however it was chunked. Bytes are not decoded,
// so a multi-byte character split across chunks arrives whole. Lines are numbered from 1.
class NdjsonLineReader {
 public:
  explicit NdjsonLineReader(size_t max_line = kMaxCodeStreamLine) : max_line_(max_line) {}

  void Append(std::string_view bytes) { buffer_.append(bytes); }
  // The next complete line without its '\n', nullopt until one has arrived, or
  // resource_exhausted once the line being received is longer than max_line (from then on).
  Result<std::optional<std::string>> Next();
  // At the end of the stream: bytes after the last '\n' as a last line (the official client
  // parses them too), or nullopt when there are none.
  Result<std::optional<std::string>> Finish();
  // The number of the line Next or Finish returned last.
  uint64_t line_number() const { return line_number_; }

 private:
  Status TooLong() const;

  size_t max_line_;
  std::string buffer_;
  size_t start_ = 0;    // where the next line begins in buffer_
  size_t scanned_ = 0;  // buffer_[start_, scanned_) holds no '\n'
  uint64_t line_number_ = 0;
  bool failed_ = false;
};

// A rich-output field that is saved to a file rather than printed.
struct ResultFileFormat {
  std::string_view field;      // the wire field: "png"
  std::string_view mime;       // "image/png"
  std::string_view extension;  // "png", without the dot
  bool base64 = false;         // png, jpeg and pdf are base64 on the wire; svg is text
};
// png, jpeg, svg, pdf, in that order.
const std::vector<ResultFileFormat>& ResultFileFormats();
// The format of wire field `field`, or nullopt for one that is not saved to a file.
std::optional<ResultFileFormat> FileFormatForField(std::string_view field);

// One file-format field of a result, still as it came (base64 or SVG text).
struct ResultFile {
  ResultFileFormat format;
  std::string payload;
};
// The file's bytes: base64 decoded (ASCII whitespace skipped: Jupyter ends base64 with "\n"), or
// the SVG text as is. Bad base64 is invalid_argument naming the MIME type.
Result<std::string> DecodeResultFile(const ResultFile& file);

struct CodeResult {
  bool is_main_result = false;
  // The text forms, by wire field ("text", "html", "markdown", "latex", "javascript") and, as
  // compact JSON, the structured ones ("json", "data", "chart").
  std::map<std::string, std::string> text_forms;
  std::vector<ResultFile> files;
  // Fields that are neither, and the MIME types in `extra` (plotly, bokeh, ...): for a note.
  std::vector<std::string> other_fields;
};

// What a result shows as text: `text`, else the first of markdown, html, latex, json, data,
// javascript (a main result with only HTML still shows something). nullopt when it has none.
std::optional<std::string> ResultText(const CodeResult& result);

struct CodeError {
  std::string name;
  std::string value;
  std::string traceback;
};

enum class CodeEventType {
  kStdout,
  kStderr,
  kResult,
  kError,
  kNumberOfExecutions,
  kEndOfExecution,
  kKeepalive,
  kUnknown,  // a type this client does not know: skipped, as the official client does
};

struct CodeEvent {
  CodeEventType type = CodeEventType::kUnknown;
  std::string text;   // kStdout, kStderr
  CodeResult result;  // kResult
  CodeError error;    // kError
};

// One line of the stream. invalid_argument naming `line_number` for a blank line (the official
// client fails on one too, so the server must not send it), JSON that does not parse or nests
// past kMaxCodeStreamDepth, anything but an object, a missing or non-string `type`, or a field
// this client reads with the wrong type. Fields it does not read are not checked.
Result<CodeEvent> DecodeCodeEvent(std::string_view line, uint64_t line_number);

// `text` cut to `max` bytes with control characters and non-ASCII bytes as \xNN, for quoting
// untrusted text (an error body, a bad line) in one line of an error message.
std::string QuoteUntrusted(std::string_view text, size_t max = 200);

}  // namespace moat::cli
