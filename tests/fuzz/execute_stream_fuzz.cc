// libFuzzer target for the port proxy's reader of code-interpreter answers
// (host/code_run_capture.h): the bytes a client gets for `POST /execute`, which a guest root can
// forge — response heads, chunked or not, NDJSON lines. The first byte picks a piece size and
// whether the upstream closed cleanly; the rest is fed whole, in those pieces and a byte at a
// time, and the three readers must record the same outcome. Checks that nothing throws or
// crashes and that what the reader holds stays bounded.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "host/code_run_capture.h"

namespace api = moat::api;

namespace {

// Small, so that inputs of a few KiB reach the bound.
constexpr size_t kMaxLine = 256;

std::string Outcome(std::string_view in, size_t step, bool complete) {
  api::ExecuteStreamReader reader(kMaxLine);
  const size_t bound = std::max(api::kMaxExecuteHead, kMaxLine + api::kMaxChunkSizeLine);
  for (size_t at = 0; at < in.size(); at += step) {
    reader.Feed(in.substr(at, step));
    if (reader.buffered_bytes() > bound) std::abort();
  }
  reader.Close(complete);
  if (reader.buffered_bytes() != 0) std::abort();
  moat::api::store::CommandRecord c;
  reader.Fill(&c);
  if (c.error.size() > api::kMaxExecuteError) std::abort();
  if (c.stdout_head.size() > api::OutputTail::kOutputKeep ||
      c.stdout_tail.size() > api::OutputTail::kOutputKeep) {
    std::abort();
  }
  if (reader.unparsable() != (c.error == api::kUnparsableStream)) std::abort();
  return c.error + '|' + (c.exit_code ? std::to_string(*c.exit_code) : "-") + '|' + c.stdout_head +
         '|' + c.stdout_tail + '|' + std::to_string(c.stdout_bytes) + '|' + c.stderr_head + '|' +
         c.stderr_tail + '|' + std::to_string(c.stderr_bytes) + '|' +
         (reader.settled() ? "settled" : "open") + '|' + std::to_string(reader.skipped_lines());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t step = (data[0] & 0x3f) + 1;
  const bool complete = (data[0] & 0x40) != 0;
  std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);  // bytes as chars
  std::string whole = Outcome(in, in.size() + 1, complete);
  if (Outcome(in, step, complete) != whole || Outcome(in, 1, complete) != whole) std::abort();
  return 0;
}
