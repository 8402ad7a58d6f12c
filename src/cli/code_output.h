// What `moat run-code` makes of the interpreter's response stream, chunk by chunk as it arrives:
// stdout and stderr text written straight through, results printed or saved as files, an
// `error` line's traceback on stderr. With --json, each line as received instead.
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "cli/code_stream.h"
#include "common/status.h"

namespace moat::cli {

struct CodeOutputOptions {
  int stdout_fd = STDOUT_FILENO;  // borrowed
  int stderr_fd = STDERR_FILENO;  // borrowed
  // The directory saved files go in (borrowed) and how their paths are printed: "<label>/<name>".
  int dir_fd = -1;
  std::string dir_label = ".";
  bool json = false;
  size_t max_line = kMaxCodeStreamLine;
};

class CodeOutput {
 public:
  explicit CodeOutput(CodeOutputOptions options)
      : options_(std::move(options)),
        reader_(options_.max_line),
        out_{options_.stdout_fd, "stdout"},
        err_{options_.stderr_fd, "stderr"} {}

  // A chunk of the response body. An error means the stream cannot be read on (a malformed line,
  // our stdout gone): the caller drops the connection, which interrupts the run in the guest.
  Status Consume(std::string_view chunk);
  // The body's end: an unterminated last line is handled as one.
  Status Finish();

  // An `error` line arrived: the code raised.
  bool raised() const { return raised_; }
  // Something could not be shown (base64 that does not decode, a file that could not be
  // written); each was reported on stderr and the run went on.
  bool failed() const { return failed_; }

 private:
  struct Stream {
    int fd;
    const char* name;
    bool at_line_start = true;  // the last byte written was '\n'
  };

  Status Handle(const std::string& line, uint64_t line_number);
  Status ShowResult(const CodeResult& result);
  // Writes `bytes` to a new file "result-N.<extension>", N the next free number (never an
  // existing file: O_EXCL), and returns its path as printed.
  Result<std::string> SaveFile(std::string_view bytes, std::string_view extension);
  // Writes `text` as it is (program output) or as a whole line (ours: it starts on a fresh line
  // and ends with '\n').
  static Status Write(Stream& stream, std::string_view text);
  static Status WriteLine(Stream& stream, std::string_view text);
  // A problem showing one thing: reported, remembered, and the stream goes on.
  Status Report(const std::string& message);

  CodeOutputOptions options_;
  NdjsonLineReader reader_;
  bool raised_ = false;
  bool failed_ = false;
  Stream out_;
  Stream err_;
  uint64_t results_ = 0;    // results seen, to name them in messages
  uint64_t next_file_ = 1;  // the N tried first for the next file
  // What one run may save: a guest streams as many results as it likes.
  size_t saved_files_ = 0;
  uint64_t saved_bytes_ = 0;
};

}  // namespace moat::cli
