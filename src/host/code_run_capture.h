// CodeRunCapture: the port proxy's record of a code-interpreter run (docs/code-interpreter.md) in
// the history (api/history.h), kind "code": the request's code, then what the relayed answer to
// `POST /execute` said of the run — its stdout and stderr, its error, whether it ended.
//
// ExecuteStreamReader reads that answer (E2B-CODE-INTERPRETER §3) incrementally from the bytes
// the client got, however the relay cut them: the response head, the chunked (or
// Content-Length, or close-delimited) body, its NDJSON lines. The bytes come from the guest, so
// every buffer is bounded and a stream that cannot be read is recorded as "unparsable stream":
// never an exception, a crash, or memory that grows with the stream.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "api/history.h"
#include "api/store/store.h"
#include "common/relay.h"

namespace moat::api {

// One response head (as Relay bounds it).
inline constexpr size_t kMaxExecuteHead = 64 * 1024;
// A chunk-size line, extensions included.
inline constexpr size_t kMaxChunkSizeLine = 1024;
// One NDJSON line kept for decoding. A longer line that starts as an object (a large image
// result, say) is skipped unread; anything else that long is not the interpreter's stream.
inline constexpr size_t kMaxExecuteLine = 1024 * 1024;
// "<name>: <value>" of the run's error, as kept.
inline constexpr size_t kMaxExecuteError = 4096;
// The error of a stream that could not be read.
inline constexpr const char* kUnparsableStream = "unparsable stream";

class ExecuteStreamReader {
 public:
  explicit ExecuteStreamReader(size_t max_line = kMaxExecuteLine) : max_line_(max_line) {}

  // The next bytes the client got, from the first byte of the response head on.
  void Feed(std::string_view bytes);
  // The stream is over. `complete`: the upstream closed it, so a close-delimited body is whole
  // and text after its last newline is a last line (the official client parses it too); a body
  // cut short leaves its partial line unread.
  void Close(bool complete);

  // The final response's status, 0 before its head was read.
  int status() const { return status_; }
  // The run's outcome is known: end_of_execution or an error line was read, the answer was not a
  // 200, or the stream could not be read.
  bool settled() const;
  bool ended() const { return ended_; }
  bool unparsable() const { return state_ == State::kFailed; }
  // Lines longer than max_line that were skipped unread.
  uint64_t skipped_lines() const { return skipped_lines_; }
  // Bytes held for lines, heads and chunk sizes not yet complete (at most about max_line).
  size_t buffered_bytes() const { return head_.size() + line_.size(); }

  // The outcome as a command's: stdout, stderr; error "<name>: <value>" and exit code 1 after an
  // error line, exit code 0 after end_of_execution without one; error "HTTP <status>" for a
  // non-200 answer, kUnparsableStream for a stream that could not be read (no exit code).
  void Fill(store::CommandRecord* c) const;

 private:
  enum class State {
    kHead,        // reading response heads
    kChunkSize,   // a chunk-size line
    kChunkData,   // remaining_ bytes of a chunk
    kChunkEnd,    // the CRLF after a chunk
    kLengthBody,  // remaining_ bytes of a Content-Length body
    kCloseBody,   // a body that ends when the connection does
    kDone,        // nothing more is read
    kFailed,      // unparsable
  };

  std::string_view TakeHead(std::string_view bytes);
  void ParseHead(std::string_view head);
  std::string_view TakeChunkSize(std::string_view bytes);
  void TakeBody(std::string_view data);
  void TakeLine();
  void EndBody();
  void Fail();

  size_t max_line_;
  State state_ = State::kHead;
  int status_ = 0;
  std::string head_;  // a head, or a chunk-size line, being read
  uint64_t remaining_ = 0;
  std::string line_;  // the NDJSON line being read
  bool skipping_ = false;
  uint64_t line_number_ = 0;
  uint64_t skipped_lines_ = 0;
  OutputTail stdout_, stderr_;
  std::string error_;
  bool error_seen_ = false;
  bool ended_ = false;
};

class CodeRunCapture {
 public:
  // Records the start of a run of the code in `body` (an /execute request's), or returns null
  // when it is not a JSON object with a string "code" (the interpreter refuses it) or the
  // history is off.
  static std::unique_ptr<CodeRunCapture> Start(HistoryLog& log, const std::string& sandbox_id,
                                               const std::string& team_id, std::string_view body);
  ~CodeRunCapture() { Finish(RelayEnd::kClientGone, 0); }
  CodeRunCapture(const CodeRunCapture&) = delete;
  CodeRunCapture& operator=(const CodeRunCapture&) = delete;

  // Bytes relayed to the client (RelayExchange's on_downstream).
  void Downstream(std::string_view bytes) { reader_.Feed(bytes); }
  // The relay is over: how it ended and the status the client got (moatd's 502/504 when the
  // interpreter sent nothing). Records the run's end; later calls do nothing.
  void Finish(RelayEnd end, int status);

  const ExecuteStreamReader& reader() const { return reader_; }

 private:
  CodeRunCapture(HistoryLog& log, store::CommandRecord rec) : log_(log), rec_(std::move(rec)) {}

  HistoryLog& log_;
  store::CommandRecord rec_;
  ExecuteStreamReader reader_;
  bool finished_ = false;
};

}  // namespace moat::api
