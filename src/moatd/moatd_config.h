// moatd's configuration: one typed struct, validated at start-up; a bad value is an error that
// names the flag.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "net/net_config.h"
#include "vmm/qemu/accel_probe.h"

namespace moat::api {

// Which moatd: `serve` (API, store and host agent in one process), a fleet's `api` replica
// (no VMs: every host is a remote agent) or a fleet's `agent` (one host's VMs, no public API).
enum class MoatdRole { kServe, kApi, kAgent };

struct MoatdConfig {
  MoatdRole role = MoatdRole::kServe;
  std::string listen = "127.0.0.1:3000";
  std::string data_dir = "./.moat";
  // The metadata store: empty for SQLite in the data dir, or a postgresql:// URI
  // (api/store/open_store.h).
  std::string store;
  vmm::qemu::AccelMode accel = vmm::qemu::AccelMode::kAuto;
  // Where the base template's vmlinux and rootfs.ext4 are; default: <moatd's dir>/../guest.
  std::string guest_dir;
  // Request bodies above this are refused with 413 (file uploads are the large ones; they stream
  // into the guest, so this bounds the transfer, not moatd's memory).
  size_t max_body_bytes = 256u * 1024 * 1024;
  // HTTP limits (docs/security.md, "HTTP limits"): connections in all, connections per client
  // address that have not authenticated, the slots kept for authenticated requests, the time a
  // request's head may take, and the rate below which a body is cut off (bytes/s; 0: none).
  size_t max_connections = 2048;
  size_t max_connections_per_client = 256;
  size_t reserved_connections = 64;
  int64_t header_timeout_s = 30;
  size_t min_body_rate = 16 * 1024;
  // The port proxy (<port>-<id>.<domain>): a proxied connection idle this long is closed; at most
  // this many are open at once (503 past it).
  int64_t proxy_idle_timeout_s = 600;
  size_t proxy_max_connections = 1024;
  // Sandbox networking (DESIGN §6): on gives every sandbox a slot with internet access and
  // nothing else; off gives sandboxes no NIC at all.
  bool network = true;
  // The sandbox domain clients are told (Sandbox.domain, the SDK's getHost); empty: null.
  std::string domain;
  // --dashboard-dir: where the dashboard's built files are (served under /dashboard/);
  // default: <moatd's dir>/../dashboard (api and serve).
  std::string dashboard_dir;
  std::string net_pool = "10.200.0.0/16";
  // Resolvers the slots forward DNS to; empty: the non-loopback nameservers of
  // /etc/resolv.conf.
  std::vector<std::string> dns;
  size_t ready_slots = 4;
  // Warm clones of the base template kept restored for creates (agent::AgentConfig).
  size_t warm_sandboxes = 2;
  // The most one template's pool grows to when creates find it dry (agent::AgentConfig).
  size_t warm_max = 16;
  // --refill-delay-ms: agent::AgentConfig::refill_delay.
  uint64_t refill_delay_ms = 500;
  // --memory-reserve-mb: agent::AgentConfig::memory_reserve_mib.
  uint64_t memory_reserve_mb = 1024;
  // --refill-priority low: agent::AgentConfig::low_priority_refills.
  bool low_priority_refills = false;
  // Guest memory all warm clones together may hold (custom templates' pools share what the
  // base template's leaves).
  uint64_t warm_memory_mb = 4096;
  // --insecure-registry: registries on this host's own network template builds may pull from.
  std::vector<std::string> insecure_registries;
  // --template-cache-mb: disk for the cache of template build layers.
  uint64_t template_cache_mb = 20480;
  // --prebake-templates: bake the built-in templates (code-interpreter-v1) at start, in the
  // background, rather than on their first create.
  bool prebake_templates = true;
  // --history: keep sandboxes' history, their commands, the audit log and usage (docs/usage.md);
  // false only to measure what it costs (bench/).
  bool history = true;
  // --history-retention-days: ended sandboxes' history, audit records and usage go after this.
  int history_retention_days = 30;
  // --usage-interval: seconds between two readings of running sandboxes' network counters.
  int usage_interval_s = 60;
  // Pause, named snapshots and fork write memory-file snapshots (docs/snapshots.md); false:
  // one full migration stream each (--snapshot-format stream).
  bool memory_file_snapshots = true;

  // Snapshots across hosts (docs/snapshots.md "Across hosts"): s3://bucket[/prefix] of an
  // S3-compatible store at --s3-endpoint; empty: every snapshot stays on its host. Credentials
  // come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN) or
  // --s3-credentials-file, and are never logged.
  std::string snapshot_store;
  std::string s3_endpoint;
  std::string s3_region = "us-east-1";
  std::string s3_credentials_file;
  // The per-host chunk cache of memfs (its disk bound), chunk transfers in flight per snapshot,
  // bytes per second one chunk upload may send (0: no limit), and the chunk sweep's period.
  uint64_t chunk_cache_mb = 10240;
  int upload_concurrency = 4;
  uint64_t upload_bytes_per_second = 0;
  int64_t sweep_interval_s = 600;
  // How long a released snapshot's objects stay (hosts that restored it moments ago page in).
  int64_t snapshot_delete_grace_s = 600;

  // The fleet (api and agent roles; docs/fleet.md). The token file's first line is the shared
  // secret requests between replicas and agents are signed with.
  std::string fleet_token_file;
  // agent: the host's stable name in the fleet, and the URL replicas reach this agent at
  // (default http://<listen>; required when listening on a wildcard address).
  std::string host_id;
  std::string advertise;
  // agent: the first of this agent's 65536 jail uids/gids; agents side by side on one machine
  // need ranges that do not overlap (a lock file under /run/moat refuses a second agent with the
  // same first id).
  uint32_t jail_id_first = 900000;
  int64_t heartbeat_interval_ms = 2000;
  // api: placement and the failure model (FLEET.md §2, §4).
  double cpu_overcommit = 4.0;
  double mem_overcommit = 1.0;
  int64_t lost_after_s = 15;
  int64_t creating_timeout_s = 300;

  // Filled in by ValidateConfig from `listen`.
  std::string listen_host;
  uint16_t listen_port = 0;
  // Filled in by ValidateConfig when `network` is on.
  net::NetConfig net;
};

// Checks every field: listen is host:port with a port in 0..65535 (0: any free port), the data dir
// is creatable, the guest dir holds both artifacts. Fills in defaults that depend on the
// environment.
Status ValidateConfig(MoatdConfig& config);

}  // namespace moat::api
