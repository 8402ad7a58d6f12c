#include "moatd/moatd_config.h"

#include <unistd.h>

#include <cctype>
#include <climits>
#include <cstdlib>
#include <utility>

#include "common/fs.h"
#include "storage/s3_object_store.h"

namespace moat::api {
namespace {

std::string ExecutableDir() {
  char buf[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return ".";
  std::string path(buf, static_cast<size_t>(n));
  return path.substr(0, path.rfind('/'));
}

// The IPv4 nameservers of resolv.conf that are not loopback (a local stub resolver is not
// reachable from a sandbox: the host accepts nothing from slots).
std::vector<std::string> SystemResolvers() {
  std::vector<std::string> out;
  auto text = ReadFile("/etc/resolv.conf");
  if (!text.ok()) return out;
  size_t pos = 0;
  while (pos < text->size()) {
    size_t end = text->find('\n', pos);
    if (end == std::string::npos) end = text->size();
    std::string line = text->substr(pos, end - pos);
    pos = end + 1;
    const std::string kKey = "nameserver";
    if (line.rfind(kKey, 0) != 0) continue;
    size_t start = line.find_first_not_of(" \t", kKey.size());
    if (start == std::string::npos || start == kKey.size()) continue;
    std::string addr = line.substr(start, line.find_first_of(" \t#", start) - start);
    auto ip = net::Ipv4Address::Parse(addr);
    if (ip.ok() && (ip->value >> 24) != 127) out.push_back(addr);
  }
  return out;
}

Status ValidateNetwork(MoatdConfig& c) {
  auto pool = net::Ipv4Cidr::Parse(c.net_pool);
  if (!pool.ok()) return pool.status().Annotate("--net-pool");
  c.net.pool = *pool;
  c.net.state_dir = c.data_dir + "/net";
  if (c.dns.empty()) c.dns = SystemResolvers();
  c.net.dns_servers.clear();
  for (const auto& d : c.dns) {
    auto ip = net::Ipv4Address::Parse(d);
    if (!ip.ok()) return InvalidArgument("--dns: not an IPv4 address: \"" + d + "\"");
    c.net.dns_servers.push_back(*ip);
  }
  // moatd's own port, on whatever address a sandbox might find it.
  c.net.control_plane_ports = {c.listen_port};
  if (c.ready_slots > 64) {
    return InvalidArgument("--ready-slots: must be 0..64, got " + std::to_string(c.ready_slots));
  }
  Status valid = c.net.Validate();
  if (!valid.ok()) return valid.Annotate("networking");
  return Status::Ok();
}

Status ValidateFleet(MoatdConfig& c) {
  if (c.role == MoatdRole::kServe) return Status::Ok();
  if (c.store.rfind("postgresql://", 0) != 0 && c.store.rfind("postgres://", 0) != 0) {
    return InvalidArgument(
        "--store: a fleet's api and agent roles share a PostgreSQL store "
        "(postgresql://…), got \"" +
        c.store + "\"");
  }
  if (c.fleet_token_file.empty()) {
    return InvalidArgument("--fleet-token-file: required for the api and agent roles");
  }
  if (c.role == MoatdRole::kApi) {
    if (c.cpu_overcommit < 1 || c.cpu_overcommit > 64 || c.mem_overcommit < 1 ||
        c.mem_overcommit > 4) {
      return InvalidArgument("--cpu-overcommit must be 1..64 and --mem-overcommit 1..4");
    }
    if (c.lost_after_s < 3 || c.lost_after_s > 3600) {
      return InvalidArgument("--lost-after: must be 3..3600 seconds, got " +
                             std::to_string(c.lost_after_s));
    }
    if (c.creating_timeout_s < 10 || c.creating_timeout_s > 24 * 3600) {
      return InvalidArgument("--creating-timeout: must be 10..86400 seconds, got " +
                             std::to_string(c.creating_timeout_s));
    }
    return Status::Ok();
  }
  if (c.host_id.empty() || c.host_id.size() > 63) {
    return InvalidArgument("--host-id: required, 1..63 characters");
  }
  for (char ch : c.host_id) {
    if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '-' && ch != '_' && ch != '.') {
      return InvalidArgument("--host-id: letters, digits, '-', '_' and '.' only, got \"" +
                             c.host_id + "\"");
    }
  }
  if (c.advertise.empty()) {
    if (c.listen_host == "0.0.0.0" || c.listen_host == "::" || c.listen_host.empty()) {
      return InvalidArgument(
          "--advertise: required when --listen is a wildcard address (the URL "
          "replicas reach this agent at, e.g. http://10.0.0.7:7070)");
    }
    std::string host =
        c.listen_host.find(':') != std::string::npos ? "[" + c.listen_host + "]" : c.listen_host;
    if (c.listen_port == 0) return InvalidArgument("--listen: an agent needs a fixed port");
    c.advertise = "http://" + host + ":" + std::to_string(c.listen_port);
  }
  if (c.advertise.rfind("http://", 0) != 0) {
    return InvalidArgument("--advertise: expected http://HOST:PORT, got \"" + c.advertise + "\"");
  }
  if (c.jail_id_first < 100000 || c.jail_id_first > 4000000000u) {
    return InvalidArgument("--jail-id-first: must be 100000..4000000000");
  }
  if (c.heartbeat_interval_ms < 100 || c.heartbeat_interval_ms > 60000) {
    return InvalidArgument("--heartbeat-interval-ms: must be 100..60000");
  }
  return Status::Ok();
}

}  // namespace

Status ValidateConfig(MoatdConfig& c) {
  if (!c.snapshot_store.empty()) {
    if (auto url = storage::ParseS3Url(c.snapshot_store); !url.ok()) {
      return InvalidArgument("--snapshot-store: " + url.status().message());
    }
    if (c.s3_endpoint.rfind("http://", 0) != 0 && c.s3_endpoint.rfind("https://", 0) != 0) {
      return InvalidArgument(
          "--s3-endpoint: an http:// or https:// URL is needed with "
          "--snapshot-store, got \"" +
          c.s3_endpoint + "\"");
    }
    if (c.upload_concurrency < 1 || c.upload_concurrency > 64) {
      return InvalidArgument("--upload-concurrency: must be 1..64, got " +
                             std::to_string(c.upload_concurrency));
    }
    if (c.chunk_cache_mb < 64) {
      return InvalidArgument("--chunk-cache-mb: must be at least 64, got " +
                             std::to_string(c.chunk_cache_mb));
    }
    if (c.sweep_interval_s < 0) return InvalidArgument("--sweep-interval: must be >= 0");
    if (c.snapshot_delete_grace_s < 0) {
      return InvalidArgument("--snapshot-delete-grace: must be >= 0");
    }
  }
  size_t colon = c.listen.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return InvalidArgument("--listen: expected HOST:PORT, got \"" + c.listen + "\"");
  }
  std::string port = c.listen.substr(colon + 1);
  char* end = nullptr;
  long p = std::strtol(port.c_str(), &end, 10);
  if (port.empty() || *end != '\0' || p < 0 || p > 65535) {
    return InvalidArgument("--listen: port must be 0..65535, got \"" + port + "\"");
  }
  c.listen_host = c.listen.substr(0, colon);
  if (c.listen_host.size() > 2 && c.listen_host.front() == '[' && c.listen_host.back() == ']') {
    c.listen_host = c.listen_host.substr(1, c.listen_host.size() - 2);
  }
  c.listen_port = static_cast<uint16_t>(p);
  if (c.max_body_bytes < 1024 * 1024) {
    return InvalidArgument("--max-body-bytes: must be at least 1048576, got " +
                           std::to_string(c.max_body_bytes));
  }
  if (c.max_connections < 1) return InvalidArgument("--max-connections: must be at least 1");
  if (c.max_connections_per_client < 1) {
    return InvalidArgument("--max-connections-per-client: must be at least 1");
  }
  if (c.reserved_connections >= c.max_connections) {
    return InvalidArgument("--reserved-connections: must be less than --max-connections (" +
                           std::to_string(c.max_connections) + "), got " +
                           std::to_string(c.reserved_connections));
  }
  if (c.header_timeout_s < 1 || c.header_timeout_s > 3600) {
    return InvalidArgument("--header-timeout: must be 1..3600 seconds, got " +
                           std::to_string(c.header_timeout_s));
  }
  if (c.proxy_idle_timeout_s < 1 || c.proxy_idle_timeout_s > 7 * 24 * 3600) {
    return InvalidArgument("--proxy-idle-timeout: must be 1..604800 seconds, got " +
                           std::to_string(c.proxy_idle_timeout_s));
  }
  if (c.proxy_max_connections < 1) {
    return InvalidArgument("--proxy-max-connections: must be at least 1");
  }
  if (c.data_dir.empty()) return InvalidArgument("--data-dir: must not be empty");
  Status made = MakeDirs(c.data_dir, 0711);
  if (!made.ok()) return made.Annotate("--data-dir");
  MOAT_RETURN_IF_ERROR(ValidateFleet(c));
  for (char ch : c.domain) {
    if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '-' && ch != '.') {
      return InvalidArgument("--domain: not a DNS name: \"" + c.domain + "\"");
    }
  }
  if (c.role != MoatdRole::kAgent && c.dashboard_dir.empty()) {
    c.dashboard_dir = ExecutableDir() + "/../dashboard";
  }
  // An api replica runs no VMs: no guest artifacts, no network slots.
  const bool vms = c.role != MoatdRole::kApi;
  if (vms && c.guest_dir.empty()) c.guest_dir = ExecutableDir() + "/../guest";
  // The jail binds these paths into the VMM's namespace: they must be absolute and canonical.
  for (auto [flag, dir] : {std::pair{"--data-dir", &c.data_dir}, {"--guest-dir", &c.guest_dir}}) {
    if (dir->empty()) continue;  // an api replica's guest dir
    char real[PATH_MAX];
    if (::realpath(dir->c_str(), real) == nullptr) {
      return ErrnoError(std::string(flag) + ": " + *dir);
    }
    *dir = real;
  }
  if (!vms) return Status::Ok();
  for (const char* f : {"/vmlinux", "/rootfs.ext4"}) {
    if (!PathExists(c.guest_dir + f)) {
      return NotFound("--guest-dir: " + c.guest_dir + f + " not found (run `make guest`)");
    }
  }
  if (c.warm_memory_mb > (uint64_t{1} << 20)) {
    return InvalidArgument("--warm-memory-mb: must be at most 1048576, got " +
                           std::to_string(c.warm_memory_mb));
  }
  if (c.warm_sandboxes > 16) {
    return InvalidArgument("--warm-sandboxes: must be 0..16, got " +
                           std::to_string(c.warm_sandboxes));
  }
  if (c.warm_max > 64) {
    return InvalidArgument("--warm-max: must be 0..64, got " + std::to_string(c.warm_max));
  }
  if (c.memory_reserve_mb > (uint64_t{1} << 20)) {
    return InvalidArgument("--memory-reserve-mb: must be at most 1048576, got " +
                           std::to_string(c.memory_reserve_mb));
  }
  if (c.refill_delay_ms > 60000) {
    return InvalidArgument("--refill-delay-ms: must be 0..60000, got " +
                           std::to_string(c.refill_delay_ms));
  }
  if (c.network) MOAT_RETURN_IF_ERROR(ValidateNetwork(c));
  return Status::Ok();
}

}  // namespace moat::api
