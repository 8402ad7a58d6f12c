// The client side of `process.Process/Start` (E2B-WIRE §4, §6): the request message, the
// response envelopes as they arrive in arbitrary chunks, and the exit code an `end` event means.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "api/codec/connect.h"
#include "common/status.h"

namespace moat::cli {

using nlohmann::json;

struct PtySize {
  uint16_t cols = 80;
  uint16_t rows = 24;
};

// {"process":{"cmd","args","envs","cwd"?},"stdin":<stdin_open>,"pty"?:{"size":{…}}}; argv[0]
// is the command. With a PTY the process's output arrives as `data.pty` and its input goes in
// as `input.pty`; without one, `stdin_open` lets SendInput feed it (`input.stdin`).
json StartRequest(const std::vector<std::string>& argv,
                  const std::map<std::string, std::string>& envs, const std::string& cwd,
                  bool stdin_open = false, std::optional<PtySize> pty = std::nullopt);
// The unary requests of an interactive exec: input to pid (`input.pty` or `input.stdin`), a PTY
// resize, closing stdin.
json SendInputRequest(uint32_t pid, std::string_view data, bool pty);
json ResizeRequest(uint32_t pid, PtySize size);
json CloseStdinRequest(uint32_t pid);

// Splits a byte stream into Connect envelopes, however the transport chunked it.
class EnvelopeReader {
 public:
  void Append(std::string_view bytes) { buffer_.append(bytes); }
  // The next complete envelope, nullopt until one has fully arrived, or an error for a
  // malformed one (compressed, oversized).
  Result<std::optional<api::codec::Envelope>> Next();
  // Bytes received but not yet part of a complete envelope.
  size_t pending() const { return buffer_.size(); }

 private:
  std::string buffer_;
};

// The exit status a shell would report for an `end` event: exitCode (absent = 0) for a normal
// exit, 128 + the signal number for "signal: <name>", else 255.
int ExitCodeFromEnd(const json& end);

// The end-stream message's outcome: ok for `{}`, else its error's code and message.
Status EndStreamStatus(const json& message);

}  // namespace moat::cli
