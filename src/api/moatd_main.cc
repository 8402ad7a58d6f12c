// moatd: the moat server. `moatd serve` is the all-in-one role: the HTTP API (control + envd on
// one port), the embedded SQLite store and the local host agent.
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>

#include "agent/agent.h"
#include "api/api_server.h"
#include "api/auth.h"
#include "api/moatd_config.h"
#include "api/sandbox_controller.h"
#include "api/store/open_store.h"
#include "common/log.h"
#include "host/in_process_host_agent.h"
#include "vmm/qemu/command_line.h"
#include "vmm/qemu/qemu_version.h"

namespace moat::api {
namespace {

// The host id of `moatd serve`'s one host (a fleet's agents are named by --host-id).
constexpr const char* kServeHostId = "local";

int Fail(const std::string& what, const Status& s) {
  std::fprintf(stderr, "moatd: %s: %s\n", what.c_str(), s.ToString().c_str());
  return 1;
}

// `keep_sandboxes`: on SIGTERM/SIGINT leave running sandboxes to the next moatd on this data dir
// (Agent::Detach) instead of killing them.
int Serve(MoatdConfig config, bool keep_sandboxes) {
  // SIGINT/SIGTERM are taken by sigwait below; blocked before any thread starts, so that every
  // thread inherits the mask (children reset it before exec).
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  Status valid = ValidateConfig(config);
  if (!valid.ok()) {
    std::fprintf(stderr, "moatd: %s\n", valid.message().c_str());
    return 2;
  }
  vmm::qemu::AccelProbeOptions probe;
  probe.kernel_path = config.guest_dir + "/vmlinux";
  auto accel = vmm::qemu::ResolveAccel(config.accel, probe);
  if (!accel.ok()) {
    std::fprintf(stderr, "moatd: --accel: %s\n", accel.status().message().c_str());
    return 2;
  }
  LogInfo("moatd.accel",
          {{"accel", std::string(vmm::AccelName(accel->accel))}, {"reason", accel->reason}});
  auto qemu = vmm::qemu::ProbeQemuVersion(vmm::qemu::kDefaultQemuBinary);
  Status qemu_ok = qemu.ok() ? vmm::qemu::CheckQemuSupported(*qemu) : qemu.status();
  if (!qemu_ok.ok()) {
    std::fprintf(stderr, "moatd: %s\n", qemu_ok.message().c_str());
    return 2;
  }
  LogInfo("moatd.qemu", {{"version", qemu->text}});

  auto store = store::OpenStore(config.store, config.data_dir);
  if (!store.ok()) return Fail("store", store.status());
  const char* env_key = std::getenv("MOAT_API_KEY");
  auto boot =
      BootstrapApiKey(**store, config.data_dir,
                      env_key != nullptr ? std::optional<std::string>(env_key) : std::nullopt);
  if (!boot.ok()) return Fail("api key", boot.status());

  agent::AgentConfig ac;
  ac.data_dir = config.data_dir;
  ac.base.kernel_path = config.guest_dir + "/vmlinux";
  ac.base.rootfs_path = config.guest_dir + "/rootfs.ext4";
  ac.accel = accel->accel;
  ac.warm_sandboxes = config.warm_sandboxes;
  ac.memory_file_snapshots = config.memory_file_snapshots;
  if (config.network) {
    ac.network = config.net;
    ac.ready_slots = config.ready_slots;
    std::string dns;
    for (const auto& d : config.dns) dns += (dns.empty() ? "" : ",") + d;
    LogInfo("moatd.network", {{"pool", config.net_pool}, {"dns", dns.empty() ? "none" : dns}});
  } else {
    LogInfo("moatd.network", {{"pool", "off"}});
  }
  auto agent = agent::Agent::Start(ac);
  if (!agent.ok()) return Fail("agent", agent.status());

  // `serve` is one control plane and this one host, with no hop between them.
  host::InProcessHostAgent this_host(kServeHostId, **agent);
  Metrics metrics;
  auto controller = SandboxController::Start(this_host, **store, metrics, {});
  if (!controller.ok()) return Fail("controller", controller.status());

  http::ServerOptions opts;
  opts.host = config.listen_host;
  opts.port = config.listen_port;
  opts.body_limit = config.max_body_bytes;
  opts.max_connections = config.max_connections;
  opts.max_connections_per_client = config.max_connections_per_client;
  opts.reserved_connections = config.reserved_connections;
  opts.header_timeout = std::chrono::seconds(config.header_timeout_s);
  opts.body_min_rate = config.min_body_rate;
  PortProxyOptions proxy;
  proxy.idle_timeout = std::chrono::seconds(config.proxy_idle_timeout_s);
  proxy.max_connections = config.proxy_max_connections;
  proxy.domain = config.domain;
  // No resolver yet: until the agent's network slots resolve sandbox ports, requests for them
  // answer 502.
  // Sandbox ports: the slot address of a running sandbox (its DNAT forwards to the guest).
  PortResolver resolver = nullptr;
  if (config.network) {
    resolver = [c = controller->get()](const std::string& id, uint16_t port) {
      return c->ResolvePort(id, port);
    };
  }
  auto server = ApiServer::Start(opts, **controller, **store, metrics, host::GuestLookupOf(**agent),
                                 resolver, proxy);
  if (!server.ok()) return Fail("listen", server.status());

  std::string host = config.listen_host.find(':') != std::string::npos
                         ? "[" + config.listen_host + "]"
                         : config.listen_host;
  std::string url = "http://" + host + ":" + std::to_string((*server)->port());
  LogInfo("moatd.listening", {{"url", url}, {"data_dir", config.data_dir}});
  std::printf("moatd: serving the API on %s (data in %s)\n", url.c_str(), config.data_dir.c_str());
  if (boot->created && env_key != nullptr && *env_key != '\0') {
    std::printf("moatd: created the admin API key from MOAT_API_KEY (also in %s)\n",
                boot->key_file.c_str());
  } else if (boot->created) {
    // Printed once, when generated; the file keeps it.
    std::printf("moatd: created the admin API key (also in %s):\n  %s\n", boot->key_file.c_str(),
                boot->key.c_str());
  } else {
    std::printf("moatd: API keys as before (the first one is in %s)\n", boot->key_file.c_str());
  }
  std::printf(
      "moatd: use it from the e2b SDKs with\n  export E2B_API_URL=%s E2B_SANDBOX_URL=%s "
      "E2B_API_KEY=$(cat %s)\n",
      url.c_str(), url.c_str(), boot->key_file.c_str());
  std::fflush(stdout);

  int sig = 0;
  sigwait(&stop_signals, &sig);
  LogInfo("moatd.stopping",
          {{"signal", sig}, {"sandboxes", keep_sandboxes ? "kept running" : "killed"}});
  // Stop taking requests, end every sandbox — or detach it, for the next moatd to re-adopt —
  // (their streams end), then let the handlers finish.
  (*server)->Shutdown();
  if (keep_sandboxes) {
    (*agent)->Detach();
  } else {
    (*agent)->KillAll();
  }
  (*server)->Wait();
  server->reset();
  controller->reset();
  agent->reset();
  LogInfo("moatd.stopped");
  return 0;
}

}  // namespace
}  // namespace moat::api

int main(int argc, char** argv) {
  CLI::App app{"moatd: the moat sandbox server"};
  app.set_version_flag("--version", "moatd 0.1.0");
  app.require_subcommand(1);
  moat::api::MoatdConfig config;
  std::string accel = "auto";
  auto* serve = app.add_subcommand("serve", "API + scheduler + local agent on embedded defaults");
  serve->add_option("--listen", config.listen, "HOST:PORT to listen on (port 0: any free port)")
      ->capture_default_str();
  serve->add_option("--data-dir", config.data_dir, "state directory")->capture_default_str();
  serve->add_option("--store", config.store,
                    "postgresql://… to keep the metadata in PostgreSQL (default: SQLite in the "
                    "data dir)");
  serve->add_option("--accel", accel, "auto|kvm|tcg")->capture_default_str();
  serve->add_option("--guest-dir", config.guest_dir, "directory with vmlinux and rootfs.ext4");
  serve->add_option("--max-body-bytes", config.max_body_bytes, "largest request body (413 above)")
      ->capture_default_str();
  serve->add_option("--max-connections", config.max_connections, "open HTTP connections (503 past)")
      ->capture_default_str();
  serve
      ->add_option("--max-connections-per-client", config.max_connections_per_client,
                   "connections from one address that have not authenticated yet")
      ->capture_default_str();
  serve
      ->add_option("--reserved-connections", config.reserved_connections,
                   "connections kept for authenticated requests")
      ->capture_default_str();
  serve
      ->add_option("--header-timeout", config.header_timeout_s,
                   "seconds a request's head may take to arrive (408 past it)")
      ->capture_default_str();
  serve
      ->add_option("--min-body-rate", config.min_body_rate,
                   "bytes/s below which a request body is cut off after 30 s (0: no minimum)")
      ->capture_default_str();
  serve
      ->add_option("--proxy-idle-timeout", config.proxy_idle_timeout_s,
                   "seconds a connection to a sandbox port may stay idle")
      ->capture_default_str();
  serve
      ->add_option("--proxy-max-connections", config.proxy_max_connections,
                   "connections to sandbox ports open at once (503 past it)")
      ->capture_default_str();
  serve->add_option("--domain", config.domain,
                    "sandbox domain: <port>-<id>.<domain> must resolve to moatd (wildcard DNS)");
  std::string network = "on";
  serve->add_option("--network", network, "on|off: sandboxes get a network slot (DESIGN §6)")
      ->capture_default_str();
  serve->add_option("--net-pool", config.net_pool, "IPv4 pool the slots' /30s come from")
      ->capture_default_str();
  serve->add_option("--dns", config.dns,
                    "resolver(s) sandboxes' DNS goes to (default: /etc/resolv.conf's)");
  serve->add_option("--ready-slots", config.ready_slots, "network slots kept ready")
      ->capture_default_str();
  serve
      ->add_option("--warm-sandboxes", config.warm_sandboxes,
                   "clones of the base template kept restored and warm, so that a create only "
                   "hands one out (0: every create restores)")
      ->capture_default_str();
  std::string snapshot_format = "memory-file";
  serve
      ->add_option("--snapshot-format", snapshot_format,
                   "memory-file|stream: how pause, named snapshots and fork save a sandbox's RAM "
                   "(memory-file: a file that restores map, nothing loaded; stream: inside one "
                   "migration stream that restores load)")
      ->capture_default_str();
  bool keep_sandboxes = false;
  serve->add_flag("--keep-sandboxes-on-stop", keep_sandboxes,
                  "on SIGTERM/SIGINT leave running sandboxes running; the next moatd on the same "
                  "data dir re-adopts them (default: they are killed)");
  CLI11_PARSE(app, argc, argv);
  if (network != "on" && network != "off") {
    std::fprintf(stderr, "moatd: --network: expected on or off, got \"%s\"\n", network.c_str());
    return 2;
  }
  config.network = network == "on";
  if (snapshot_format != "memory-file" && snapshot_format != "stream") {
    std::fprintf(stderr, "moatd: --snapshot-format: expected memory-file or stream, got \"%s\"\n",
                 snapshot_format.c_str());
    return 2;
  }
  config.memory_file_snapshots = snapshot_format == "memory-file";
  auto mode = moat::vmm::qemu::ParseAccelMode(accel);
  if (!mode.ok()) {
    std::fprintf(stderr, "moatd: --accel: %s\n", mode.status().message().c_str());
    return 2;
  }
  config.accel = *mode;
  if (serve->parsed()) return moat::api::Serve(config, keep_sandboxes);
  return 2;
}
