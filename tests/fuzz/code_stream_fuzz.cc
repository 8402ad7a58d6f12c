// libFuzzer target for the code interpreter's `/execute` response (cli/code_stream.h,
// cli/code_output.h): NDJSON that a guest root can forge. The first byte picks a chunk size and
// --json; the rest is the body, fed to `moat run-code`'s CodeOutput in those chunks (output to
// /dev/null, no directory, so no file is ever created) and to two line readers, whole and byte
// by byte, which must agree. Every line is also decoded on its own. Checks that nothing throws
// or crashes and that the bounds hold (line length, decoded sizes).
#include <fcntl.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cli/code_output.h"
#include "cli/code_stream.h"

namespace cli = moat::cli;

namespace {

// Small, so that inputs of a few KiB reach the bound.
constexpr size_t kMaxLine = 512;

// Every line `reader` yields for `in` appended in pieces of `step` bytes, then its Finish; stops
// at the first error (recorded as nullopt).
std::vector<std::optional<std::string>> Split(std::string_view in, size_t step) {
  cli::NdjsonLineReader reader(kMaxLine);
  std::vector<std::optional<std::string>> lines;
  for (size_t at = 0; at < in.size(); at += step) {
    reader.Append(in.substr(at, step));
    for (;;) {
      auto line = reader.Next();
      if (!line.ok()) {
        lines.emplace_back();
        return lines;
      }
      if (!*line) break;
      if ((*line)->size() > kMaxLine) std::abort();
      lines.emplace_back(std::move(**line));
    }
  }
  for (;;) {
    auto line = reader.Finish();
    if (!line.ok()) {
      lines.emplace_back();
      return lines;
    }
    if (!*line) return lines;
    if ((*line)->size() > kMaxLine) std::abort();
    lines.emplace_back(std::move(**line));
  }
}

void CheckEvent(std::string_view line, uint64_t number) {
  auto event = cli::DecodeCodeEvent(line, number);
  if (!event.ok()) {
    if (event.status().message().find("line " + std::to_string(number)) == std::string::npos) {
      std::abort();  // every stream error names its line
    }
    return;
  }
  if (event->type != cli::CodeEventType::kResult) return;
  for (const auto& file : event->result.files) {
    if (!cli::FileFormatForField(file.format.field)) std::abort();
    auto bytes = cli::DecodeResultFile(file);
    if (bytes.ok() && bytes->size() > file.payload.size()) std::abort();
  }
  (void)cli::ResultText(event->result);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const int devnull = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
  if (size == 0) return 0;
  const size_t step = (data[0] & 0x3f) + 1;
  const bool json = (data[0] & 0x40) != 0;
  std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);  // bytes as chars

  cli::CodeOutput output({.stdout_fd = devnull,
                          .stderr_fd = devnull,
                          .dir_fd = -1,
                          .dir_label = "/nonexistent",
                          .json = json,
                          .max_line = kMaxLine});
  moat::Status status;
  for (size_t at = 0; at < in.size() && status.ok(); at += step) {
    status = output.Consume(in.substr(at, step));
  }
  if (status.ok()) (void)output.Finish();

  auto chunked = Split(in, step);
  if (chunked != Split(in, in.size() + 1) || chunked != Split(in, 1)) std::abort();
  uint64_t number = 0;
  for (const auto& line : chunked) {
    if (line) CheckEvent(*line, ++number);
  }
  return 0;
}
