// moatd: the moat server. `moatd serve` is the all-in-one role: the HTTP API (control + envd on
// one port), the embedded SQLite store and the local host agent. A fleet (docs/fleet.md) runs
// `moatd api` replicas (the API, no VMs) and a `moatd agent` per host (its VMs, the agent API
// only), on a shared PostgreSQL store.
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>

#include "agent/agent.h"
#include "agent/builtin_templates.h"
#include "api/api_server.h"
#include "api/auth.h"
#include "api/fleet/fleet_auth.h"
#include "api/fleet/fleet_host_directory.h"
#include "api/fleet/fleet_maintenance.h"
#include "api/fleet/relay_data_plane.h"
#include "api/sandbox_controller.h"
#include "api/store/open_store.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/unique_fd.h"
#include "host/agent_server.h"
#include "host/host_data_plane.h"
#include "host/host_membership.h"
#include "host/in_process_host_agent.h"
#include "host/local_data_plane.h"
#include "moatd/memfs_command.h"
#include "moatd/moatd_config.h"
#include "moatd/snapshot_store_setup.h"
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

// SIGINT/SIGTERM are taken by sigwait; blocked before any thread starts, so that every thread
// inherits the mask (children reset it before exec).
sigset_t BlockStopSignals() {
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  return stop_signals;
}

// What the host side needs to know about this machine before it starts VMs.
struct HostProbe {
  vmm::Accel accel = vmm::Accel::kTcg;
  std::string qemu_version;
};

// Probes the accelerator and QEMU (logged); nullopt after printing why not (exit 2).
std::optional<HostProbe> ProbeHost(const MoatdConfig& config) {
  vmm::qemu::AccelProbeOptions probe;
  probe.kernel_path = config.guest_dir + "/vmlinux";
  auto accel = vmm::qemu::ResolveAccel(config.accel, probe);
  if (!accel.ok()) {
    std::fprintf(stderr, "moatd: --accel: %s\n", accel.status().message().c_str());
    return std::nullopt;
  }
  LogInfo("moatd.accel",
          {{"accel", std::string(vmm::AccelName(accel->accel))}, {"reason", accel->reason}});
  auto qemu = vmm::qemu::ProbeQemuVersion(vmm::qemu::kDefaultQemuBinary);
  Status qemu_ok = qemu.ok() ? vmm::qemu::CheckQemuSupported(*qemu) : qemu.status();
  if (!qemu_ok.ok()) {
    std::fprintf(stderr, "moatd: %s\n", qemu_ok.message().c_str());
    return std::nullopt;
  }
  LogInfo("moatd.qemu", {{"version", qemu->text}});
  return HostProbe{accel->accel, qemu->text};
}

// This host's agent (serve's and an agent's), on the config's data dir, guest and network.
Result<std::unique_ptr<agent::Agent>> StartLocalAgent(const MoatdConfig& config,
                                                      const HostProbe& host,
                                                      HostSnapshotStore* snapshots) {
  agent::AgentConfig ac;
  if (snapshots != nullptr) ac.replication = snapshots->replicator.get();
  ac.data_dir = config.data_dir;
  ac.base.kernel_path = config.guest_dir + "/vmlinux";
  ac.base.rootfs_path = config.guest_dir + "/rootfs.ext4";
  ac.accel = host.accel;
  ac.warm_sandboxes = config.warm_sandboxes;
  ac.warm_max = config.warm_max;
  ac.refill_delay = std::chrono::milliseconds(config.refill_delay_ms);
  ac.memory_reserve_mib = config.memory_reserve_mb;
  ac.low_priority_refills = config.low_priority_refills;
  ac.warm_memory_budget_mib = config.warm_memory_mb;
  ac.insecure_registries = config.insecure_registries;
  ac.template_cache_mib = config.template_cache_mb;
  ac.builtins = agent::BuiltinTemplates(ac.base, config.guest_dir);
  ac.prebake_builtins = config.prebake_templates;
  for (const auto& b : ac.builtins) LogInfo("moatd.builtin_template", {{"template", b.name}});
  ac.memory_file_snapshots = config.memory_file_snapshots;
  ac.jail_id_first = config.jail_id_first;
  if (config.network) {
    ac.network = config.net;
    ac.ready_slots = config.ready_slots;
    std::string dns;
    for (const auto& d : config.dns) dns += (dns.empty() ? "" : ",") + d;
    LogInfo("moatd.network", {{"pool", config.net_pool}, {"dns", dns.empty() ? "none" : dns}});
  } else {
    LogInfo("moatd.network", {{"pool", "off"}});
  }
  return agent::Agent::Start(ac);
}

http::ServerOptions HttpOptions(const MoatdConfig& config) {
  http::ServerOptions opts;
  opts.host = config.listen_host;
  opts.port = config.listen_port;
  opts.body_limit = config.max_body_bytes;
  opts.max_connections = config.max_connections;
  opts.max_connections_per_client = config.max_connections_per_client;
  opts.reserved_connections = config.reserved_connections;
  opts.header_timeout = std::chrono::seconds(config.header_timeout_s);
  opts.body_min_rate = config.min_body_rate;
  return opts;
}

PortProxyOptions ProxyOptions(const MoatdConfig& config) {
  PortProxyOptions proxy;
  proxy.idle_timeout = std::chrono::seconds(config.proxy_idle_timeout_s);
  proxy.max_connections = config.proxy_max_connections;
  proxy.domain = config.domain;
  return proxy;
}

std::string UrlOf(const std::string& listen_host, uint16_t port) {
  std::string host =
      listen_host.find(':') != std::string::npos ? "[" + listen_host + "]" : listen_host;
  return "http://" + host + ":" + std::to_string(port);
}

// The admin key on a store's first start (MOAT_API_KEY, or a generated one), kept in the data
// dir; and the lines that tell the operator where the API is and which key to use.
Result<BootstrapResult> Bootstrap(store::Store& store, const MoatdConfig& config) {
  const char* env_key = std::getenv("MOAT_API_KEY");
  return BootstrapApiKey(store, config.data_dir,
                         env_key != nullptr ? std::optional<std::string>(env_key) : std::nullopt);
}

void PrintApiBanner(const std::string& url, const MoatdConfig& config,
                    const BootstrapResult& boot) {
  const char* env_key = std::getenv("MOAT_API_KEY");
  std::printf("moatd: serving the API on %s (data in %s)\n", url.c_str(), config.data_dir.c_str());
  if (boot.created && env_key != nullptr && *env_key != '\0') {
    std::printf("moatd: created the admin API key from MOAT_API_KEY (also in %s)\n",
                boot.key_file.c_str());
  } else if (boot.created) {
    // Printed once, when generated; the file keeps it.
    std::printf("moatd: created the admin API key (also in %s):\n  %s\n", boot.key_file.c_str(),
                boot.key.c_str());
  } else {
    std::printf("moatd: API keys as before (the first one is in %s)\n", boot.key_file.c_str());
  }
  std::printf(
      "moatd: use it from the e2b SDKs with\n  export E2B_API_URL=%s E2B_SANDBOX_URL=%s "
      "E2B_API_KEY=$(cat %s)\n",
      url.c_str(), url.c_str(), boot.key_file.c_str());
  std::printf("moatd: the dashboard is at %s/dashboard/ (sign in with an API key)\n", url.c_str());
  std::fflush(stdout);
}

// A host's end (serve's and an agent's): stop taking requests, end every sandbox — or detach
// it, for the next moatd on this data dir to re-adopt — (their streams end), then let the
// handlers finish.
template <typename Server>
void StopHost(Server& server, agent::Agent& agent, bool keep_sandboxes,
              const std::function<void()>& before_kill = {}) {
  server.Shutdown();
  if (keep_sandboxes) {
    agent.Detach();
  } else {
    if (before_kill) before_kill();
    agent.KillAll();
  }
  server.Wait();
}

int ValidateOrExit(MoatdConfig& config) {
  Status valid = ValidateConfig(config);
  if (valid.ok()) return 0;
  std::fprintf(stderr, "moatd: %s\n", valid.message().c_str());
  return 2;
}

// Custom templates served from this data dir: uploads under template-files/, signed with a key
// kept in template-upload.key (made on first use, mode 0600).
Result<TemplateOptions> TemplatesIn(const std::string& data_dir, bool owns_builds) {
  TemplateOptions o;
  o.uploads_dir = data_dir + "/template-files";
  o.fail_interrupted_builds = owns_builds;
  MOAT_RETURN_IF_ERROR(MakeDirs(o.uploads_dir, 0700));
  std::string key_file = data_dir + "/template-upload.key";
  auto key = ReadFile(key_file);
  if (!key.ok() || key->size() < 32) {
    MOAT_RETURN_IF_ERROR(WriteFileAtomic(key_file, RandomToken("", 32), 0600));
    MOAT_ASSIGN_OR_RETURN(key, ReadFile(key_file));
  }
  o.upload_secret = *key;
  return o;
}

// memfs outlives its agent only for the VMs a next agent re-adopts (--keep-sandboxes-on-stop);
// otherwise no VM maps its files any more and it stops with the host, unmounting.
void StopMemfs(HostSnapshotStore* snapshots, bool keep_sandboxes) {
  if (snapshots == nullptr || snapshots->memfs == nullptr || keep_sandboxes) return;
  snapshots->replicator.reset();
  if (Status s = snapshots->memfs->Stop(); !s.ok()) {
    LogWarn("moatd.memfs_stop_failed", {{"error", s.ToString()}});
  }
}

// `keep_sandboxes`: on SIGTERM/SIGINT leave running sandboxes to the next moatd on this data dir
// (Agent::Detach) instead of killing them.
int Serve(MoatdConfig config, bool keep_sandboxes) {
  sigset_t stop_signals = BlockStopSignals();
  if (int rc = ValidateOrExit(config); rc != 0) return rc;
  auto probe = ProbeHost(config);
  if (!probe) return 2;
  auto store = store::OpenStore(config.store, config.data_dir);
  if (!store.ok()) return Fail("store", store.status());
  auto boot = Bootstrap(**store, config);
  if (!boot.ok()) return Fail("api key", boot.status());
  auto snapshots = OpenHostSnapshotStore(config, **store, kServeHostId);
  if (!snapshots.ok()) return Fail("snapshot store", snapshots.status());
  auto agent = StartLocalAgent(config, *probe, snapshots->get());
  if (!agent.ok()) return Fail("agent", agent.status());

  // `serve` is one control plane and this one host, with no hop between them.
  host::InProcessHostAgent this_host(kServeHostId, **agent);
  if (*snapshots) this_host.SetReplicator((*snapshots)->replicator.get());
  Metrics metrics;
  auto templates = TemplatesIn(config.data_dir, /*owns_builds=*/true);
  if (!templates.ok()) return Fail("templates", templates.status());
  ControllerOptions copts;
  copts.history = config.history;
  copts.history_retention = std::chrono::hours(24 * config.history_retention_days);
  copts.usage_interval = std::chrono::seconds(config.usage_interval_s);
  copts.templates = *templates;
  if (*snapshots) {
    metrics.SetHostCollector([s = snapshots->get()] { return s->RenderMetrics(kServeHostId); });
  }
  auto controller = SandboxController::Start(this_host, **store, metrics, copts);
  if (!controller.ok()) return Fail("controller", controller.status());
  // Sandbox ports: the slot address of a running sandbox (its DNAT forwards to the guest).
  PortResolver resolver = nullptr;
  if (config.network) {
    resolver = [c = controller->get()](const std::string& id, uint16_t port) {
      return c->ResolvePort(id, port);
    };
  }
  auto server =
      StartWithLocalDataPlane(HttpOptions(config), **controller, **store, metrics,
                              host::GuestLookupOf(**agent), resolver, ProxyOptions(config));
  if (!server.ok()) return Fail("listen", server.status());
  (*server)->SetDashboardDir(config.dashboard_dir);
  std::string url = UrlOf(config.listen_host, (*server)->port());
  LogInfo("moatd.listening", {{"url", url}, {"data_dir", config.data_dir}});
  PrintApiBanner(url, config, *boot);

  int sig = 0;
  sigwait(&stop_signals, &sig);
  LogInfo("moatd.stopping",
          {{"signal", sig}, {"sandboxes", keep_sandboxes ? "kept running" : "killed"}});
  // Their histories end now, not when the next moatd finds them gone.
  StopHost(**server, **agent, keep_sandboxes, [c = controller->get()] { c->EndAtShutdown(); });
  server->reset();
  controller->reset();
  agent->reset();
  StopMemfs(snapshots->get(), keep_sandboxes);
  LogInfo("moatd.stopped");
  return 0;
}

// --- the fleet --------------------------------------------------------------------------------

// A fleet replica's API: the control routes over the fleet's hosts; envd and port traffic is
// relayed to the agent of the host that runs the sandbox (fleet::RelayDataPlane).
int RunApi(MoatdConfig config) {
  sigset_t stop_signals = BlockStopSignals();
  config.role = MoatdRole::kApi;
  if (int rc = ValidateOrExit(config); rc != 0) return rc;
  auto token = fleet::FleetToken::FromFile(config.fleet_token_file);
  if (!token.ok()) return Fail("--fleet-token-file", token.status());
  auto store = store::OpenStore(config.store, config.data_dir);
  if (!store.ok()) return Fail("store", store.status());
  auto boot = Bootstrap(**store, config);
  if (!boot.ok()) return Fail("api key", boot.status());

  fleet::FleetPlacementOptions placement;
  placement.cpu_overcommit = config.cpu_overcommit;
  placement.mem_overcommit = config.mem_overcommit;
  fleet::FleetHostDirectory hosts(**store, *token, placement);
  Metrics metrics;
  ControllerOptions copts;
  copts.history = config.history;
  copts.history_retention = std::chrono::hours(24 * config.history_retention_days);
  copts.usage_interval = std::chrono::seconds(config.usage_interval_s);
  copts.reconcile_at_start = false;  // each agent reconciles its own host when it registers
  // Custom templates: uploads are kept in the store (any replica serves them), and every
  // replica signs and checks upload URLs with a key derived from the fleet token. A build
  // belongs to the replica that started it; one left `building` by a replica that died stays so.
  auto templates = TemplatesIn(config.data_dir, /*owns_builds=*/false);
  if (!templates.ok()) return Fail("templates", templates.status());
  templates->upload_secret = token->Signature(0, "template-uploads", "", "");
  copts.templates = *templates;
  auto controller = SandboxController::Start(hosts, **store, metrics, copts);
  if (!controller.ok()) return Fail("controller", controller.status());
  fleet::FleetMaintenanceOptions mopts;
  mopts.lost_after = std::chrono::seconds(config.lost_after_s);
  mopts.creating_timeout = std::chrono::seconds(config.creating_timeout_s);
  auto maintenance = fleet::FleetMaintenance::Start(**store, **controller, mopts);

  fleet::RelayDataPlaneOptions relay;
  relay.idle_timeout = std::chrono::seconds(config.proxy_idle_timeout_s);
  relay.max_connections = config.proxy_max_connections;
  relay.max_body_bytes = config.max_body_bytes;
  auto server = ApiServer::Start(
      HttpOptions(config), **controller, **store, metrics,
      std::make_unique<fleet::RelayDataPlane>(**store, hosts, *token, metrics, relay),
      config.domain);
  if (!server.ok()) return Fail("listen", server.status());
  (*server)->SetDashboardDir(config.dashboard_dir);
  std::string url = UrlOf(config.listen_host, (*server)->port());
  LogInfo("moatd.listening", {{"url", url}, {"role", "api"}});
  PrintApiBanner(url, config, *boot);

  int sig = 0;
  sigwait(&stop_signals, &sig);
  LogInfo("moatd.stopping", {{"signal", sig}, {"role", "api"}});
  (*server)->Shutdown();
  (*server)->Wait();
  server->reset();
  maintenance.reset();
  controller->reset();
  LogInfo("moatd.stopped");
  return 0;
}

// What this machine offers the fleet.
store::HostRegistration Registration(const MoatdConfig& config, const HostProbe& probe) {
  store::HostRegistration r;
  r.id = config.host_id;
  r.endpoint = config.advertise;
  long cpus = ::sysconf(_SC_NPROCESSORS_ONLN);
  r.vcpu_total = cpus > 0 ? cpus : 1;
  long pages = ::sysconf(_SC_PHYS_PAGES);
  long page = ::sysconf(_SC_PAGESIZE);
  r.mem_total_mb = pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page / (1024 * 1024) : 0;
  r.accel = std::string(vmm::AccelName(probe.accel));
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) != 0) continue;
    size_t colon = line.find(':');
    if (colon != std::string::npos)
      r.cpu_model = line.substr(line.find_first_not_of(" \t", colon + 1));
    break;
  }
  r.qemu_build = probe.qemu_version;
  return r;
}

// Agents side by side on one machine must not share jail uids: each holds a lock on its first id
// for its life (a second agent with the same range is refused).
Result<UniqueFd> LockJailIds(uint32_t first) {
  MOAT_RETURN_IF_ERROR(MakeDirs("/run/moat", 0755));
  std::string path = "/run/moat/jail-ids-" + std::to_string(first) + ".lock";
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd) return ErrnoError("open(" + path + ")");
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    return FailedPrecondition("--jail-id-first " + std::to_string(first) +
                              ": another moatd on this machine uses these jail ids (" + path +
                              " is locked); give each agent its own range");
  }
  return fd;
}

int RunAgent(MoatdConfig config, bool keep_sandboxes) {
  sigset_t stop_signals = BlockStopSignals();
  config.role = MoatdRole::kAgent;
  if (int rc = ValidateOrExit(config); rc != 0) return rc;
  auto token = fleet::FleetToken::FromFile(config.fleet_token_file);
  if (!token.ok()) return Fail("--fleet-token-file", token.status());
  auto jail_lock = LockJailIds(config.jail_id_first);
  if (!jail_lock.ok()) return Fail("jail ids", jail_lock.status());
  auto probe = ProbeHost(config);
  if (!probe) return 2;
  auto store = store::OpenStore(config.store, config.data_dir);
  if (!store.ok()) return Fail("store", store.status());
  auto snapshots = OpenHostSnapshotStore(config, **store, config.host_id);
  if (!snapshots.ok()) return Fail("snapshot store", snapshots.status());
  auto agent = StartLocalAgent(config, *probe, snapshots->get());
  if (!agent.ok()) return Fail("agent", agent.status());
  host::InProcessHostAgent this_host(config.host_id, **agent);
  if (*snapshots) this_host.SetReplicator((*snapshots)->replicator.get());
  // envd and port traffic relayed by the replicas, for the sandboxes running here.
  Metrics metrics;
  HistoryLog history(store->get(), config.history);
  auto data_plane =
      host::FleetHostDataPlane(**store, this_host, **agent, metrics, ProxyOptions(config),
                               config.max_body_bytes, config.network, &history);

  auto server = host::AgentServer::Start(this_host, *token, HttpOptions(config), data_plane.get(),
                                         config.data_dir + "/template-files");
  if (!server.ok()) return Fail("listen", server.status());
  if (*snapshots) {
    (*server)->SetMetrics(
        [s = snapshots->get(), id = config.host_id] { return s->RenderMetrics(id); });
  }
  host::MembershipOptions mopts;
  mopts.heartbeat_interval = std::chrono::milliseconds(config.heartbeat_interval_ms);
  auto membership =
      host::HostMembership::Start(**store, this_host, Registration(config, *probe), mopts);
  if (!membership.ok()) return Fail("registering in the fleet", membership.status());
  std::string url = UrlOf(config.listen_host, (*server)->port());
  LogInfo("moatd.listening", {{"url", url},
                              {"role", "agent"},
                              {"host", config.host_id},
                              {"advertise", config.advertise},
                              {"epoch", (*membership)->epoch()}});
  std::printf("moatd: agent %s serving on %s (advertised as %s, data in %s)\n",
              config.host_id.c_str(), url.c_str(), config.advertise.c_str(),
              config.data_dir.c_str());
  std::fflush(stdout);

  int sig = 0;
  sigwait(&stop_signals, &sig);
  LogInfo("moatd.stopping", {{"signal", sig},
                             {"role", "agent"},
                             {"sandboxes", keep_sandboxes ? "kept running" : "killed"}});
  // Heartbeats stop first: a host that goes away is declared lost once they are overdue, and its
  // sandboxes with it (those still running are killed now, or re-adopted by the next agent).
  membership->reset();
  StopHost(**server, **agent, keep_sandboxes);
  server->reset();
  agent->reset();
  StopMemfs(snapshots->get(), keep_sandboxes);
  LogInfo("moatd.stopped");
  return 0;
}

}  // namespace
}  // namespace moat::api

namespace {

using moat::api::MoatdConfig;

// The HTTP server's flags (serve, api and agent).
void AddHttpOptions(CLI::App* cmd, MoatdConfig& config) {
  cmd->add_option("--listen", config.listen, "HOST:PORT to listen on (port 0: any free port)")
      ->capture_default_str();
  cmd->add_option("--max-body-bytes", config.max_body_bytes, "largest request body (413 above)")
      ->capture_default_str();
  cmd->add_option("--max-connections", config.max_connections, "open HTTP connections (503 past)")
      ->capture_default_str();
  cmd->add_option("--max-connections-per-client", config.max_connections_per_client,
                  "connections from one address that have not authenticated yet")
      ->capture_default_str();
  cmd->add_option("--reserved-connections", config.reserved_connections,
                  "connections kept for authenticated requests")
      ->capture_default_str();
  cmd->add_option("--header-timeout", config.header_timeout_s,
                  "seconds a request's head may take to arrive (408 past it)")
      ->capture_default_str();
  cmd->add_option("--min-body-rate", config.min_body_rate,
                  "bytes/s below which a request body is cut off after 30 s (0: no minimum)")
      ->capture_default_str();
}

// The public API's own flags (serve and api).
void AddApiOptions(CLI::App* cmd, MoatdConfig& config) {
  cmd->add_option("--proxy-idle-timeout", config.proxy_idle_timeout_s,
                  "seconds a connection to a sandbox port may stay idle")
      ->capture_default_str();
  cmd->add_option("--proxy-max-connections", config.proxy_max_connections,
                  "connections to sandbox ports open at once (503 past it)")
      ->capture_default_str();
  cmd->add_option("--domain", config.domain,
                  "sandbox domain: <port>-<id>.<domain> must resolve to moatd (wildcard DNS)");
  cmd->add_option("--dashboard-dir", config.dashboard_dir,
                  "the dashboard's built files, served under /dashboard/ (default: "
                  "<moatd's dir>/../dashboard)");
  cmd->add_option("--history", config.history,
                  "keep sandbox history, commands, the audit log and usage (docs/usage.md)")
      ->capture_default_str();
  cmd->add_option("--history-retention-days", config.history_retention_days,
                  "days ended sandboxes' history, audit records and usage are kept")
      ->check(CLI::Range(1, 36500))
      ->capture_default_str();
  cmd->add_option("--usage-interval", config.usage_interval_s,
                  "seconds between two readings of running sandboxes' network counters")
      ->check(CLI::Range(1, 3600))
      ->capture_default_str();
}

struct VmFlags {
  std::string accel = "auto";
  std::string network = "on";
  std::string snapshot_format = "memory-file";
  std::string refill_priority = "normal";
  bool keep_sandboxes = false;
};

// The VM host's flags (serve and agent).
void AddVmOptions(CLI::App* cmd, MoatdConfig& config, VmFlags& flags) {
  cmd->add_option("--accel", flags.accel, "auto|kvm|tcg")->capture_default_str();
  cmd->add_option("--guest-dir", config.guest_dir, "directory with vmlinux and rootfs.ext4");
  cmd->add_option("--network", flags.network, "on|off: sandboxes get a network slot (DESIGN §6)")
      ->capture_default_str();
  cmd->add_option("--net-pool", config.net_pool, "IPv4 pool the slots' /30s come from")
      ->capture_default_str();
  cmd->add_option("--dns", config.dns,
                  "resolver(s) sandboxes' DNS goes to (default: /etc/resolv.conf's)");
  cmd->add_option("--ready-slots", config.ready_slots, "network slots kept ready")
      ->capture_default_str();
  cmd->add_option("--warm-sandboxes", config.warm_sandboxes,
                  "clones of the base template kept restored and warm, so that a create only "
                  "hands one out (0: every create restores)")
      ->capture_default_str();
  cmd->add_option("--warm-max", config.warm_max,
                  "the most clones one template's warm pool grows to when creates find it dry "
                  "(one more per such create in the last 5 minutes; within --warm-memory-mb); "
                  "0: pools stay at --warm-sandboxes")
      ->capture_default_str();
  cmd->add_option("--memory-reserve-mb", config.memory_reserve_mb,
                  "no new VM starts (create, resume, fork, warm refill) while the host's "
                  "MemAvailable is below this many MiB: such a create fails with 429 naming it "
                  "rather than the OOM killer picking a sandbox later; 0: no check")
      ->capture_default_str();
  cmd->add_option("--refill-delay-ms", config.refill_delay_ms,
                  "after a create takes a warm clone, a pool that still holds one waits this "
                  "long before it refills, so that the new sandbox's first commands have the "
                  "cores (a pool left empty refills at once); 0: refill at once")
      ->capture_default_str();
  cmd->add_option("--refill-priority", flags.refill_priority,
                  "normal|low: low refills warm clones as background work (nice 19, CPU weight 1 "
                  "until claimed): requests keep the cores under load, but the pool serves fewer "
                  "creates of a fast serial loop (docs/performance.md)")
      ->capture_default_str();
  cmd->add_option("--insecure-registry", config.insecure_registries,
                  "a registry on this host's own network (loopback or link-local: \"127.0.0.1\" "
                  "for any port, or \"127.0.0.1:5000\") that template builds may pull images "
                  "from, over plain HTTP; repeatable. Others on such addresses are refused");
  cmd->add_option("--template-cache-mb", config.template_cache_mb,
                  "disk the cache of template build layers may keep (least recently used layers "
                  "are evicted after each build)")
      ->capture_default_str();
  cmd->add_option("--prebake-templates", config.prebake_templates,
                  "bake the built-in templates whose images are in the guest dir "
                  "(code-interpreter-v1) in the background at start, so that their first create "
                  "restores a snapshot (otherwise on first use)")
      ->capture_default_str();
  cmd->add_option("--warm-memory-mb", config.warm_memory_mb,
                  "guest memory all warm clones together may hold: the base template's first, "
                  "then those of custom templates in recent use")
      ->capture_default_str();
  cmd->add_option("--snapshot-format", flags.snapshot_format,
                  "memory-file|stream: how pause, named snapshots and fork save a sandbox's RAM "
                  "(memory-file: a file that restores map, nothing loaded; stream: inside one "
                  "migration stream that restores load)")
      ->capture_default_str();
  cmd->add_option("--snapshot-store", config.snapshot_store,
                  "s3://bucket[/prefix]: share pauses, named snapshots and template bakes with "
                  "the other hosts through this S3-compatible store (docs/snapshots.md); "
                  "credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
                  "--s3-credentials-file");
  cmd->add_option("--s3-endpoint", config.s3_endpoint,
                  "the store's URL (http://host:port or https://…), path-style requests");
  cmd->add_option("--s3-region", config.s3_region, "the store's SigV4 region")
      ->capture_default_str();
  cmd->add_option("--s3-credentials-file", config.s3_credentials_file,
                  "an AWS shared-credentials file (or KEY=VALUE lines) for the store");
  cmd->add_option("--chunk-cache-mb", config.chunk_cache_mb,
                  "disk memfs's chunk cache may keep (least recently used chunks go first; "
                  "chunks of memory files in use never do)")
      ->capture_default_str();
  cmd->add_option("--upload-concurrency", config.upload_concurrency,
                  "chunk transfers in flight per snapshot upload or download")
      ->capture_default_str();
  cmd->add_option("--upload-bytes-per-second", config.upload_bytes_per_second,
                  "bytes per second one chunk upload may send (0: no limit)")
      ->capture_default_str();
  cmd->add_option("--sweep-interval", config.sweep_interval_s,
                  "seconds between sweeps of chunks no snapshot references (0: never)")
      ->capture_default_str();
  cmd->add_option("--snapshot-delete-grace", config.snapshot_delete_grace_s,
                  "seconds a released snapshot's objects stay in the store (hosts that restored "
                  "it moments ago may still be paging it in)")
      ->capture_default_str();
  cmd->add_flag("--keep-sandboxes-on-stop", flags.keep_sandboxes,
                "on SIGTERM/SIGINT leave running sandboxes running; the next moatd on the same "
                "data dir re-adopts them (default: they are killed)");
}

// The VM flags into the config; 0, or 2 after saying what was wrong.
int ApplyVmFlags(const VmFlags& flags, MoatdConfig& config) {
  if (flags.network != "on" && flags.network != "off") {
    std::fprintf(stderr, "moatd: --network: expected on or off, got \"%s\"\n",
                 flags.network.c_str());
    return 2;
  }
  config.network = flags.network == "on";
  if (flags.snapshot_format != "memory-file" && flags.snapshot_format != "stream") {
    std::fprintf(stderr, "moatd: --snapshot-format: expected memory-file or stream, got \"%s\"\n",
                 flags.snapshot_format.c_str());
    return 2;
  }
  config.memory_file_snapshots = flags.snapshot_format == "memory-file";
  if (flags.refill_priority != "normal" && flags.refill_priority != "low") {
    std::fprintf(stderr, "moatd: --refill-priority: expected normal or low, got \"%s\"\n",
                 flags.refill_priority.c_str());
    return 2;
  }
  config.low_priority_refills = flags.refill_priority == "low";
  auto mode = moat::vmm::qemu::ParseAccelMode(flags.accel);
  if (!mode.ok()) {
    std::fprintf(stderr, "moatd: --accel: %s\n", mode.status().message().c_str());
    return 2;
  }
  config.accel = *mode;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moatd: the moat sandbox server"};
  app.set_version_flag("--version", "moatd 0.1.0");
  app.require_subcommand(1);
  std::string log_format = "text";
  app.add_option("--log-format", log_format,
                 "text (logfmt: ts=… level=… event=… k=v) or json (one object per line); every "
                 "line a request causes carries its request_id and sandbox")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
  MoatdConfig config;
  VmFlags vm;

  auto* serve = app.add_subcommand("serve", "API + scheduler + local agent on embedded defaults");
  AddHttpOptions(serve, config);
  serve->add_option("--data-dir", config.data_dir, "state directory")->capture_default_str();
  serve->add_option("--store", config.store,
                    "postgresql://… to keep the metadata in PostgreSQL (default: SQLite in the "
                    "data dir)");
  AddApiOptions(serve, config);
  AddVmOptions(serve, config, vm);

  auto* api = app.add_subcommand(
      "api", "a fleet's API replica: stateless, any number behind a load balancer (docs/fleet.md)");
  AddHttpOptions(api, config);
  api->add_option("--store", config.store, "the fleet's PostgreSQL (postgresql://…)")->required();
  api->add_option("--fleet-token-file", config.fleet_token_file,
                  "file whose first line is the fleet's shared secret (mode 0600)")
      ->required();
  api->add_option("--data-dir", config.data_dir, "where the admin API key file is written")
      ->capture_default_str();
  AddApiOptions(api, config);
  api->add_option("--cpu-overcommit", config.cpu_overcommit,
                  "vCPUs placed per host CPU (a host's capacity is its CPUs × this)")
      ->capture_default_str();
  api->add_option("--mem-overcommit", config.mem_overcommit,
                  "guest memory placed per MiB of host memory")
      ->capture_default_str();
  api->add_option("--lost-after", config.lost_after_s,
                  "seconds without a heartbeat after which a host is declared lost")
      ->capture_default_str();
  api->add_option("--creating-timeout", config.creating_timeout_s,
                  "seconds after which a sandbox still `creating` (its replica died) is reclaimed")
      ->capture_default_str();

  auto* agent = app.add_subcommand("agent", "a fleet host's agent: runs its VMs (docs/fleet.md)");
  AddHttpOptions(agent, config);
  agent->add_option("--store", config.store, "the fleet's PostgreSQL (postgresql://…)")->required();
  agent
      ->add_option("--fleet-token-file", config.fleet_token_file,
                   "file whose first line is the fleet's shared secret (mode 0600)")
      ->required();
  agent->add_option("--host-id", config.host_id, "this host's stable name in the fleet")
      ->required();
  agent->add_option("--history", config.history, "record the commands run in sandboxes")
      ->capture_default_str();
  agent->add_option("--data-dir", config.data_dir, "state directory")->capture_default_str();
  agent->add_option("--advertise", config.advertise,
                    "URL replicas reach this agent at (default: http://<listen>)");
  agent
      ->add_option("--jail-id-first", config.jail_id_first,
                   "first of this agent's 65536 jail uids (agents on one machine: disjoint)")
      ->capture_default_str();
  agent
      ->add_option("--heartbeat-interval-ms", config.heartbeat_interval_ms,
                   "how often the agent proves it is alive")
      ->capture_default_str();
  AddVmOptions(agent, config, vm);

  moat::api::MemfsCommand memfs;
  moat::api::AddMemfsCommand(app, memfs);

  CLI11_PARSE(app, argc, argv);
  moat::SetLogFormat(log_format == "json" ? moat::LogFormat::kJson : moat::LogFormat::kText);
  if (memfs.app->parsed()) return moat::api::RunMemfsCommand(memfs);
  if (api->parsed()) return moat::api::RunApi(config);
  if (int rc = ApplyVmFlags(vm, config); rc != 0) return rc;
  if (serve->parsed()) return moat::api::Serve(config, vm.keep_sandboxes);
  if (agent->parsed()) return moat::api::RunAgent(config, vm.keep_sandboxes);
  return 2;
}
