// libFuzzer target for the guest protocol's reply decoders (channel/protocol.h): everything
// moat-guest sends back, which a guest root can forge (DESIGN §1). The input is one MESSAGE,
// END or HELLO payload, handed to every decoder as production does (HELLO and END as bytes,
// MESSAGEs parsed without exceptions first). Checks that no decoder throws or crashes and that
// what they return keeps the protocol's bounds.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string_view>

#include "channel/protocol.h"

namespace proto = moat::channel::proto;

namespace {

void CheckString(const std::string& s) {
  if (s.size() > proto::kMaxStringBytes) std::abort();
}

void CheckEntry(const proto::FileEntry& e) {
  CheckString(e.name);
  CheckString(e.path);
  CheckString(e.permissions);
  CheckString(e.owner);
  CheckString(e.group);
  if (e.symlink_target) CheckString(*e.symlink_target);
  if (e.mode & ~07777u) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);  // bytes as chars

  auto hello = proto::DecodeHello(in);
  if (hello.ok()) CheckString(hello->boot_id);
  auto end = proto::DecodeEnd(in);
  if (end.ok() && end->result.message().size() > proto::kMaxStringBytes + 256) std::abort();

  nlohmann::json msg = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (msg.is_discarded()) return 0;

  (void)proto::DecodeExecEvent(msg);
  auto procs = proto::DecodeProcesses(msg);
  if (procs.ok()) {
    if (procs->size() > proto::kMaxListEntries) std::abort();
    for (const auto& p : *procs) {
      if (p.argv.size() > proto::kMaxArgv) std::abort();
      for (const auto& a : p.argv) CheckString(a);
      CheckString(p.tag);
      CheckString(p.cmd);
      CheckString(p.cwd);
    }
  }
  for (std::string_view op : {"stat", "move", "write_file"}) {
    auto e = proto::DecodeFileEntry(msg, op);
    if (e.ok()) CheckEntry(*e);
  }
  auto entries = proto::DecodeEntries(msg);
  if (entries.ok()) {
    if (entries->size() > proto::kMaxListEntries) std::abort();
    for (const auto& e : *entries) CheckEntry(e);
  }
  (void)proto::DecodeReadFileHeader(msg);
  (void)proto::DecodeMkdirCreated(msg);
  auto watch = proto::DecodeWatchEvent(msg);
  if (watch.ok()) CheckString(watch->name);
  (void)proto::DecodeHealth(msg);
  auto metrics = proto::DecodeMetrics(msg);
  if (metrics.ok() &&
      !(metrics->cpu_used_pct >= 0 &&
        metrics->cpu_used_pct <= 100.0 * static_cast<double>(metrics->cpu_count + 1))) {
    std::abort();
  }
  return 0;
}
