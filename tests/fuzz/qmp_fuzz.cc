// libFuzzer target for QMP (vmm/qemu/qmp_client.h): the lines QEMU sends, which the agent
// treats as untrusted (a VMM may be compromised). Input: lines separated by '\n', each
// classified as the reader thread does and, when a reply, turned into a command's result.
// Checks that nothing throws or crashes, that only bounded, shallow objects get through, and
// that every result is a value or one of the documented error codes with a bounded message.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "vmm/qemu/qmp_client.h"

namespace qemu = moat::vmm::qemu;
using moat::ErrorCode;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);  // bytes as chars
  qemu::QmpLimits limits{.max_line_bytes = 2048, .max_json_depth = 8};
  while (!in.empty()) {
    size_t nl = in.find('\n');
    std::string_view line = in.substr(0, nl);
    in = nl == std::string_view::npos ? std::string_view() : in.substr(nl + 1);

    qemu::QmpLine parsed = qemu::ParseQmpLine(line, limits);
    if (parsed.kind == qemu::QmpLine::Kind::kInvalid) continue;
    if (!parsed.message.is_object() || line.size() > limits.max_line_bytes ||
        qemu::JsonDepth(line, limits.max_json_depth) < 0) {
      std::abort();
    }
    if (parsed.kind == qemu::QmpLine::Kind::kEvent && !parsed.message["event"].is_string()) {
      std::abort();
    }
    if (parsed.kind == qemu::QmpLine::Kind::kReply && parsed.message["id"] != parsed.id) {
      std::abort();
    }
    // What the driver reads from replies and events (query-status, query-migrate, MIGRATION).
    (void)qemu::QmpString(parsed.message, "status");
    (void)qemu::QmpEventStatus(parsed.message);
    auto r = qemu::QmpReplyResult("migrate", parsed.message);
    if (r.ok()) (void)qemu::QmpString(*r, "status");
    if (!r.ok()) {
      ErrorCode c = r.status().code();
      if (c != ErrorCode::kNotFound && c != ErrorCode::kFailedPrecondition &&
          c != ErrorCode::kAborted && c != ErrorCode::kInternal) {
        std::abort();
      }
      if (r.status().message().size() > 700) std::abort();
    }
  }
  return 0;
}
