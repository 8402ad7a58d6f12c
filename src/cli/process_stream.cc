#include "cli/process_stream.h"

#include <csignal>

#include "api/codec/protojson.h"

namespace moat::cli {
namespace {

// Output chunks are small; a message this large means a broken stream, not a big chunk.
constexpr size_t kMaxMessage = 64 * 1024 * 1024;
constexpr size_t kHeaderSize = 5;

ErrorCode CodeFromConnectName(std::string_view name) {
  if (name == "invalid_argument" || name == "failed_precondition" || name == "out_of_range") {
    return ErrorCode::kInvalidArgument;
  }
  if (name == "not_found") return ErrorCode::kNotFound;
  if (name == "already_exists") return ErrorCode::kAlreadyExists;
  if (name == "permission_denied") return ErrorCode::kPermissionDenied;
  if (name == "unauthenticated") return ErrorCode::kUnauthenticated;
  if (name == "resource_exhausted") return ErrorCode::kResourceExhausted;
  if (name == "deadline_exceeded") return ErrorCode::kDeadlineExceeded;
  if (name == "unavailable") return ErrorCode::kUnavailable;
  if (name == "canceled") return ErrorCode::kCancelled;
  if (name == "aborted") return ErrorCode::kAborted;
  return ErrorCode::kInternal;
}

// A string member, or `fallback` when absent or not a string (server output is not trusted to be
// well-typed, and nlohmann's typed getters would throw).
std::string StringMember(const json& object, const char* key, std::string fallback) {
  if (!object.is_object()) return fallback;
  auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : fallback;
}

}  // namespace

json StartRequest(const std::vector<std::string>& argv,
                  const std::map<std::string, std::string>& envs, const std::string& cwd,
                  bool stdin_open, std::optional<PtySize> pty) {
  json process = {
      {"cmd", argv.empty() ? "" : argv[0]},
      {"args", std::vector<std::string>(argv.begin() + (argv.empty() ? 0 : 1), argv.end())}};
  if (!envs.empty()) process["envs"] = envs;
  if (!cwd.empty()) process["cwd"] = cwd;
  json request = {{"process", process}, {"stdin", stdin_open}};
  if (pty) request["pty"] = {{"size", {{"cols", pty->cols}, {"rows", pty->rows}}}};
  return request;
}

json SendInputRequest(uint32_t pid, std::string_view data, bool pty) {
  return {{"process", {{"pid", pid}}},
          {"input", {{pty ? "pty" : "stdin", api::codec::Base64Encode(data)}}}};
}

json ResizeRequest(uint32_t pid, PtySize size) {
  return {{"process", {{"pid", pid}}},
          {"pty", {{"size", {{"cols", size.cols}, {"rows", size.rows}}}}}};
}

json CloseStdinRequest(uint32_t pid) {
  return {{"process", {{"pid", pid}}}};
}

Result<std::optional<api::codec::Envelope>> EnvelopeReader::Next() {
  if (buffer_.size() < kHeaderSize) return std::optional<api::codec::Envelope>();
  uint32_t length = 0;
  for (size_t i = 1; i < kHeaderSize; ++i) {
    length = (length << 8) | static_cast<uint8_t>(buffer_[i]);
  }
  if (length > kMaxMessage) {
    return InvalidArgument("envelope of " + std::to_string(length) + " bytes is too large");
  }
  if (buffer_.size() < kHeaderSize + length) return std::optional<api::codec::Envelope>();
  // The codec validates the flags (no compression) on exactly one whole envelope.
  MOAT_ASSIGN_OR_RETURN(
      auto envelopes, api::codec::DecodeEnvelopes(
                          std::string_view(buffer_).substr(0, kHeaderSize + length), kMaxMessage));
  buffer_.erase(0, kHeaderSize + length);
  if (envelopes.size() != 1) return Internal("envelope decoding produced no single message");
  return std::optional<api::codec::Envelope>(std::move(envelopes.front()));
}

int ExitCodeFromEnd(const json& end) {
  if (!end.is_object()) return 255;
  auto exited = end.find("exited");
  if (exited != end.end() && exited->is_boolean() && exited->get<bool>()) {
    auto code = end.find("exitCode");
    if (code == end.end()) return 0;  // proto3 JSON omits a zero exit code
    if (code->is_number_integer()) return code->get<int>() & 0xff;
    return 255;
  }
  static const std::map<std::string, int> kSignals = {
      {"signal: killed", SIGKILL},     {"signal: terminated", SIGTERM},
      {"signal: interrupt", SIGINT},   {"signal: hangup", SIGHUP},
      {"signal: aborted", SIGABRT},    {"signal: segmentation fault", SIGSEGV},
      {"signal: broken pipe", SIGPIPE}};
  auto it = kSignals.find(StringMember(end, "status", ""));
  return it != kSignals.end() ? 128 + it->second : 255;
}

Status EndStreamStatus(const json& message) {
  if (!message.is_object() || !message.contains("error")) return Status::Ok();
  const json& error = message["error"];
  std::string code = StringMember(error, "code", "unknown");
  std::string text = StringMember(error, "message", "");
  if (text.empty()) text = code;
  return Status(CodeFromConnectName(code), text);
}

}  // namespace moat::cli
