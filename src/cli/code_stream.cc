#include "cli/code_stream.h"

#include <algorithm>
#include <array>

#include "api/codec/protojson.h"
#include "common/json_depth.h"

namespace moat::cli {
namespace {

std::string LinePrefix(uint64_t line_number) {
  return "interpreter stream line " + std::to_string(line_number) + ": ";
}

// A string member, "" when absent or null, or an error naming it when it has another type.
Result<std::string> OptionalString(const json& object, const char* key, const char* type,
                                   uint64_t line_number) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return std::string();
  if (!it->is_string()) {
    return InvalidArgument(LinePrefix(line_number) + "the " + type + "'s \"" + key +
                           "\" is not a string");
  }
  return it->get<std::string>();
}

Result<CodeResult> DecodeResult(const json& line, uint64_t line_number) {
  CodeResult out;
  for (const auto& [key, value] : line.items()) {
    if (key == "type") continue;
    if (key == "is_main_result") {
      if (!value.is_boolean() && !value.is_null()) {
        return InvalidArgument(LinePrefix(line_number) +
                               "the result's \"is_main_result\" is not a boolean");
      }
      out.is_main_result = value.is_boolean() && value.get<bool>();
    } else if (value.is_null()) {
      continue;  // an absent MIME type, written out
    } else if (key == "text" || key == "html" || key == "markdown" || key == "latex" ||
               key == "javascript") {
      if (!value.is_string()) {
        return InvalidArgument(LinePrefix(line_number) + "the result's \"" + key +
                               "\" is not a string");
      }
      out.text_forms[key] = value.get<std::string>();
    } else if (key == "json" || key == "data" || key == "chart") {
      // Any JSON: `json` is an object on the wire although E2B's TS type says string. The depth
      // bound makes this dump safe.
      out.text_forms[key] = value.is_string() ? value.get<std::string>() : value.dump();
    } else if (auto format = FileFormatForField(key)) {
      if (!value.is_string()) {
        return InvalidArgument(LinePrefix(line_number) + "the result's \"" + key +
                               "\" is not a string");
      }
      out.files.push_back({*format, value.get<std::string>()});
    } else if (key == "extra") {
      if (value.is_object()) {
        for (const auto& [mime, unused] : value.items()) out.other_fields.push_back(mime);
      }
    } else {
      out.other_fields.push_back(key);
    }
  }
  // items() walks keys in sorted order; keep the files in the table's order for stable names.
  const auto& formats = ResultFileFormats();
  auto rank = [&formats](const ResultFile& f) {
    return std::find_if(formats.begin(), formats.end(),
                        [&f](const ResultFileFormat& g) { return g.field == f.format.field; }) -
           formats.begin();
  };
  std::stable_sort(out.files.begin(), out.files.end(),
                   [&rank](const ResultFile& a, const ResultFile& b) { return rank(a) < rank(b); });
  return out;
}

}  // namespace

Result<std::string> ExecuteRequestBody(const ExecuteRequest& request) {
  json body = {{"code", request.code}};
  if (!request.language.empty()) body["language"] = request.language;
  if (!request.context_id.empty()) body["context_id"] = request.context_id;
  if (!request.env_vars.empty()) body["env_vars"] = request.env_vars;
  try {
    return body.dump();
  } catch (const json::exception&) {  // type_error 316: a string that is not UTF-8
    return InvalidArgument("the code or an --env value is not valid UTF-8");
  }
}

std::vector<std::pair<std::string, std::string>> ExecuteHeaders(const std::string& id,
                                                                const json& sandbox_info) {
  std::vector<std::pair<std::string, std::string>> headers = {
      {"E2b-Sandbox-Id", id},
      {"E2b-Sandbox-Port", kInterpreterPort},
      {"Content-Type", "application/json"},
  };
  if (!sandbox_info.is_object()) return headers;
  // Only the traffic token (the port proxy checks it and keeps it). Not the envd access token
  // the official client also sends: moat's interpreter has no use for it, and it would reach
  // the guest.
  auto it = sandbox_info.find("trafficAccessToken");
  if (it != sandbox_info.end() && it->is_string() && !it->get<std::string>().empty()) {
    headers.emplace_back("E2B-Traffic-Access-Token", it->get<std::string>());
  }
  return headers;
}

Status NdjsonLineReader::TooLong() const {
  return ResourceExhausted(LinePrefix(line_number_ + 1) + "longer than " +
                           std::to_string(max_line_) + " bytes");
}

Result<std::optional<std::string>> NdjsonLineReader::Next() {
  if (failed_) return TooLong();
  size_t newline = buffer_.find('\n', scanned_);
  if (newline == std::string::npos) {
    // Nothing complete: drop what was consumed, so the buffer holds one partial line at most.
    buffer_.erase(0, start_);
    start_ = 0;
    scanned_ = buffer_.size();
    if (buffer_.size() > max_line_) {
      failed_ = true;
      return TooLong();
    }
    return std::optional<std::string>();
  }
  if (newline - start_ > max_line_) {
    failed_ = true;
    return TooLong();
  }
  std::string line = buffer_.substr(start_, newline - start_);
  start_ = scanned_ = newline + 1;
  ++line_number_;
  return std::optional<std::string>(std::move(line));
}

Result<std::optional<std::string>> NdjsonLineReader::Finish() {
  MOAT_ASSIGN_OR_RETURN(auto line, Next());
  if (line) return line;  // Finish is called until nullopt, like Next
  if (buffer_.empty()) return std::optional<std::string>();
  std::string rest = std::move(buffer_);
  buffer_.clear();
  start_ = scanned_ = 0;
  ++line_number_;
  return std::optional<std::string>(std::move(rest));
}

const std::vector<ResultFileFormat>& ResultFileFormats() {
  static const std::vector<ResultFileFormat> kFormats = {
      {.field = "png", .mime = "image/png", .extension = "png", .base64 = true},
      {.field = "jpeg", .mime = "image/jpeg", .extension = "jpg", .base64 = true},
      {.field = "svg", .mime = "image/svg+xml", .extension = "svg", .base64 = false},
      {.field = "pdf", .mime = "application/pdf", .extension = "pdf", .base64 = true},
  };
  return kFormats;
}

std::optional<ResultFileFormat> FileFormatForField(std::string_view field) {
  for (const auto& format : ResultFileFormats()) {
    if (format.field == field) return format;
  }
  return std::nullopt;
}

Result<std::string> DecodeResultFile(const ResultFile& file) {
  if (!file.format.base64) return file.payload;
  std::string compact;
  compact.reserve(file.payload.size());
  for (char c : file.payload) {
    if (c != '\n' && c != '\r' && c != ' ' && c != '\t') compact.push_back(c);
  }
  auto bytes = api::codec::Base64Decode(compact);
  if (!bytes.ok()) {
    return InvalidArgument(std::string(file.format.mime) + " is not valid base64 (" +
                           bytes.status().message() + ")");
  }
  return bytes;
}

std::optional<std::string> ResultText(const CodeResult& result) {
  for (const char* field : {"text", "markdown", "html", "latex", "json", "data", "javascript"}) {
    auto it = result.text_forms.find(field);
    if (it != result.text_forms.end()) return it->second;
  }
  return std::nullopt;
}

Result<CodeEvent> DecodeCodeEvent(std::string_view line, uint64_t line_number) {
  if (line.find_first_not_of(" \t\r") == std::string_view::npos) {
    return InvalidArgument(LinePrefix(line_number) + "blank (the E2B client fails on it too)");
  }
  if (JsonDepth(line, kMaxCodeStreamDepth) < 0) {
    return InvalidArgument(LinePrefix(line_number) + "JSON nested deeper than " +
                           std::to_string(kMaxCodeStreamDepth) + " levels");
  }
  json parsed;
  try {
    parsed = json::parse(line);
  } catch (const json::exception& e) {  // its text says where, and quotes what it last read
    return InvalidArgument(LinePrefix(line_number) + "not valid JSON (" + QuoteUntrusted(e.what()) +
                           ")");
  }
  if (!parsed.is_object()) return InvalidArgument(LinePrefix(line_number) + "not a JSON object");
  auto type = parsed.find("type");
  if (type == parsed.end() || !type->is_string()) {
    return InvalidArgument(LinePrefix(line_number) + "no string \"type\"");
  }
  const std::string& name = type->get_ref<const std::string&>();
  CodeEvent event;
  if (name == "stdout" || name == "stderr") {
    event.type = name == "stdout" ? CodeEventType::kStdout : CodeEventType::kStderr;
    auto text = parsed.find("text");
    if (text == parsed.end() || !text->is_string()) {
      return InvalidArgument(LinePrefix(line_number) + "the " + name + " line has no string text");
    }
    event.text = text->get<std::string>();
  } else if (name == "result") {
    event.type = CodeEventType::kResult;
    MOAT_ASSIGN_OR_RETURN(event.result, DecodeResult(parsed, line_number));
  } else if (name == "error") {
    event.type = CodeEventType::kError;
    MOAT_ASSIGN_OR_RETURN(event.error.name, OptionalString(parsed, "name", "error", line_number));
    MOAT_ASSIGN_OR_RETURN(event.error.value, OptionalString(parsed, "value", "error", line_number));
    MOAT_ASSIGN_OR_RETURN(event.error.traceback,
                          OptionalString(parsed, "traceback", "error", line_number));
  } else if (name == "number_of_executions") {
    event.type = CodeEventType::kNumberOfExecutions;
  } else if (name == "end_of_execution") {
    event.type = CodeEventType::kEndOfExecution;
  } else if (name == "keepalive") {
    event.type = CodeEventType::kKeepalive;
  }
  return event;
}

std::string QuoteUntrusted(std::string_view text, size_t max) {
  static constexpr std::array<char, 16> kHex = {'0', '1', '2', '3', '4', '5', '6', '7',
                                                '8', '9', 'a', 'b', 'c', 'd', 'e', 'f'};
  std::string out;
  for (char c : text.substr(0, max)) {
    auto byte = static_cast<unsigned char>(c);
    if (byte >= 0x20 && byte < 0x7f) {
      out.push_back(c);
    } else {
      out += "\\x";
      out.push_back(kHex[byte >> 4]);
      out.push_back(kHex[byte & 0xf]);
    }
  }
  if (text.size() > max) out += "...";
  return out;
}

}  // namespace moat::cli
