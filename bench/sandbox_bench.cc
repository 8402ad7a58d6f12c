// Sandbox-core benchmark: cold boot to moat-guest ready, the exec round trip of `true` through
// the channel against the host's own fork+exec of /bin/true (side by side, one run), and file
// write/read throughput through the channel. Prints a human summary and writes JSON.
//
// usage: sandbox_bench [--guest-dir DIR] [--boots N] [--execs N] [--file-mib N] [--json PATH]
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "agent/agent.h"
#include "bench_util.h"
#include "common/child_process.h"
#include "common/fs.h"

namespace moat::bench {
namespace {

using nlohmann::json;

struct Options {
  std::string guest_dir = "build/guest";
  int boots = 5;
  int execs = 200;
  int file_mib = 64;
  std::string json_path = "build/bench/sandbox.json";
};

int Fail(const Status& s, const char* what) {
  std::fprintf(stderr, "sandbox_bench: %s: %s\n", what, s.ToString().c_str());
  return 1;
}

int Run(const Options& o) {
  auto dir = MakeTempDir("/tmp", "moat-bench.");
  if (!dir.ok()) return Fail(dir.status(), "temp dir");
  agent::AgentConfig c;
  c.data_dir = *dir;
  c.base.kernel_path = o.guest_dir + "/vmlinux";
  c.base.rootfs_path = o.guest_dir + "/rootfs.ext4";
  c.base.vcpus = 1;
  c.base.memory_mib = 256;
  c.accel = vmm::Accel::kTcg;
  json out = {{"accel", "tcg"}, {"vcpus", 1}, {"memory_mib", 256}};
  int rc = 0;
  {
    auto agent = agent::Agent::Start(c);
    if (!agent.ok()) return Fail(agent.status(), "agent");

    // 1. Cold boot to ready (each boot a new sandbox, killed right after).
    std::vector<double> boots;
    for (int i = 0; i < o.boots; ++i) {
      auto t0 = Clock::now();
      auto sb = (*agent)->Create("base", {});
      if (!sb.ok()) return Fail(sb.status(), "cold boot");
      boots.push_back(Ms(Clock::now() - t0));
      (void)(*agent)->Kill((*sb)->id());
    }
    out["cold_boot_to_ready_ms"] = Percentiles(boots);

    auto sb = (*agent)->Create("base", {});
    if (!sb.ok()) return Fail(sb.status(), "create");
    auto guest = (*sb)->Guest();
    if (!guest.ok()) return Fail(guest.status(), "guest");

    // 2. Exec round trip of `true` vs the host's fork+exec of /bin/true, interleaved.
    std::vector<double> guest_exec, host_exec;
    for (int i = 0; i < o.execs; ++i) {
      auto t0 = Clock::now();
      auto r = (*guest)->Run({.argv = {"/bin/true"}}, Clock::now() + std::chrono::seconds(30));
      if (!r.ok() || r->exit_code != 0) return Fail(r.status(), "exec true");
      guest_exec.push_back(Ms(Clock::now() - t0));
      auto h0 = Clock::now();
      auto child = ChildProcess::Spawn({.argv = {"/bin/true"}});
      if (!child.ok()) return Fail(child.status(), "host fork+exec");
      (void)child->Wait();
      host_exec.push_back(Ms(Clock::now() - h0));
    }
    out["exec_true_roundtrip_ms"] = Percentiles(guest_exec);
    // What the guest itself pays for fork+exec of /bin/true under this accelerator: 50 in a
    // loop inside one exec, the loop's own start subtracted via a 0-iteration run.
    auto loop = [&](int n) -> Result<double> {
      auto t0 = Clock::now();
      auto r =
          (*guest)->Run({.cmd = "for i in $(seq " + std::to_string(n) + "); do /bin/true; done"},
                        Clock::now() + std::chrono::seconds(120));
      if (!r.ok()) return r.status();
      return Ms(Clock::now() - t0);
    };
    auto empty = loop(0);
    auto fifty = loop(50);
    if (!empty.ok() || !fifty.ok()) return Fail(fifty.status(), "in-guest loop");
    out["guest_internal_fork_exec_true_ms"] = (*fifty - *empty) / 50;
    out["host_fork_exec_true_ms"] = Percentiles(host_exec);

    // 3. File throughput: write then read o.file_mib MiB through the channel.
    std::string data(static_cast<size_t>(o.file_mib) << 20, 'x');
    for (size_t i = 0; i < data.size(); i += 4096) data[i] = static_cast<char>(i / 4096);
    auto t0 = Clock::now();
    auto up = (*guest)->Open({{"op", "write_file"}, {"path", "/tmp/bench.bin"}});
    if (!up.ok()) return Fail(up.status(), "write_file");
    Status w = (*up)->Write(channel::SubChannel::kStdin, data);
    if (!w.ok()) return Fail(w, "write");
    (void)(*up)->CloseWrite(channel::SubChannel::kStdin);
    for (;;) {
      auto ev = (*up)->Next(Clock::now() + std::chrono::seconds(120));
      if (!ev.ok()) return Fail(ev.status(), "write_file result");
      if (ev->kind == channel::StreamEvent::Kind::kEnd) {
        if (!ev->status.ok()) return Fail(ev->status, "write_file");
        break;
      }
    }
    double write_s = Ms(Clock::now() - t0) / 1000;
    t0 = Clock::now();
    auto down = (*guest)->Open({{"op", "read_file"}, {"path", "/tmp/bench.bin"}});
    if (!down.ok()) return Fail(down.status(), "read_file");
    size_t got = 0;
    for (;;) {
      auto ev = (*down)->Next(Clock::now() + std::chrono::seconds(120));
      if (!ev.ok()) return Fail(ev.status(), "read_file");
      if (ev->kind == channel::StreamEvent::Kind::kData) got += ev->data.size();
      if (ev->kind == channel::StreamEvent::Kind::kEnd) break;
    }
    double read_s = Ms(Clock::now() - t0) / 1000;
    if (got != data.size()) {
      std::fprintf(stderr, "sandbox_bench: read %zu bytes, wrote %zu\n", got, data.size());
      rc = 1;
    }
    out["file_write_mib_s"] = o.file_mib / write_s;
    out["file_read_mib_s"] = o.file_mib / read_s;
    out["file_mib"] = o.file_mib;
  }
  (void)RemoveTree(*dir);

  Status saved = WriteJson(o.json_path, out);
  if (!saved.ok()) return Fail(saved, "writing JSON");
  auto p = [&](const char* k, const char* q) { return out[k][q].get<double>(); };
  std::printf(
      "sandbox core benchmark (TCG, 1 vCPU, 256 MiB)\n"
      "  cold boot to ready      p50 %7.1f ms   p95 %7.1f ms   (n=%d)\n"
      "  exec `true` round trip  p50 %7.2f ms   p99 %7.2f ms   (n=%d)\n"
      "  host fork+exec true     p50 %7.2f ms   p99 %7.2f ms   ratio %.1fx\n"
      "  in-guest fork+exec true     %7.2f ms   (what the guest pays itself under this accel)\n"
      "  file write %.0f MiB/s, read %.0f MiB/s (%d MiB through the channel)\n"
      "  JSON: %s\n",
      p("cold_boot_to_ready_ms", "p50"), p("cold_boot_to_ready_ms", "p95"), o.boots,
      p("exec_true_roundtrip_ms", "p50"), p("exec_true_roundtrip_ms", "p99"), o.execs,
      p("host_fork_exec_true_ms", "p50"), p("host_fork_exec_true_ms", "p99"),
      p("exec_true_roundtrip_ms", "p50") / p("host_fork_exec_true_ms", "p50"),
      out["guest_internal_fork_exec_true_ms"].get<double>(), out["file_write_mib_s"].get<double>(),
      out["file_read_mib_s"].get<double>(), o.file_mib, o.json_path.c_str());
  return rc;
}

}  // namespace
}  // namespace moat::bench

int main(int argc, char** argv) {
  using moat::bench::AtLeastOne;
  moat::bench::Options o;
  bool parsed = moat::bench::ParseFlags(
      argc, argv,
      {{"--guest-dir", [&](const std::string& v) { o.guest_dir = v; }},
       {"--boots", [&](const std::string& v) { o.boots = AtLeastOne(v); }},
       {"--execs", [&](const std::string& v) { o.execs = AtLeastOne(v); }},
       {"--file-mib", [&](const std::string& v) { o.file_mib = AtLeastOne(v); }},
       {"--json", [&](const std::string& v) { o.json_path = v; }}},
      "sandbox_bench [--guest-dir DIR] [--boots N] [--execs N] [--file-mib N] [--json PATH]");
  if (!parsed) return 2;
  return moat::bench::Run(o);
}
