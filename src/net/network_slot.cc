#include "net/network_slot.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>

#include "common/fs.h"
#include "common/log.h"
#include "net/net_tools.h"
#include "net/nft_ruleset.h"

namespace moat::net {

struct NetworkSlot::Shared {
  Shared(NetConfig c, uint32_t count) : config(std::move(c)), allocator(count) {}
  const NetConfig config;
  SlotAllocator allocator;
  std::mutex mu;
  std::set<std::string> live;  // netns names of this agent's slots
};

namespace {

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string Prefixed(const Ipv4Address& a, unsigned prefix) {
  return a.ToString() + "/" + std::to_string(prefix);
}

}  // namespace

Status NetConfig::Validate() const {
  auto slots = SlotCount(pool);
  if (!slots.ok()) return slots.status().Annotate("pool");
  for (const char* reserved : {"169.254.0.0/16", "127.0.0.0/8", "0.0.0.0/8"}) {
    Ipv4Cidr r = *Ipv4Cidr::Parse(reserved);
    if (r.Contains(pool.address) || pool.Contains(r.address)) {
      return InvalidArgument("pool: " + pool.ToString() + " overlaps " + reserved);
    }
  }
  if (state_dir.empty() || state_dir[0] != '/') {
    return InvalidArgument("state_dir: an absolute path is required");
  }
  if (link_group == 0) return InvalidArgument("link_group: must not be 0 (the default group)");
  for (const auto* bin : {&ip_binary, &nft_binary}) {
    if (::access(bin->c_str(), X_OK) < 0) {
      return ErrnoError((bin == &ip_binary ? "ip_binary: " : "nft_binary: ") + *bin);
    }
  }
  return Status::Ok();
}

// --- NetworkSlot ---------------------------------------------------------------------------

NetworkSlot::~NetworkSlot() {
  Status s = Release();
  if (!s.ok())
    LogError("net.slot_release_failed", {{"netns", slot_.netns}, {"error", s.ToString()}});
}

std::string NetworkSlot::netns_path() const {
  return NetnsPath(slot_.netns);
}

Status NetworkSlot::WriteRecord() {
  SlotRecord r{.slot = slot_,
               .created_unix_ms = created_unix_ms_,
               .owner_pid = static_cast<int>(::getpid()),
               .policy = policy_};
  return WriteFileAtomic(SlotRecordPath(shared_->config.state_dir, slot_), SerializeSlotRecord(r),
                         0600);
}

Status NetworkSlot::SetUp(const EgressPolicy& policy) {
  const NetConfig& c = shared_->config;
  policy_ = policy;
  created_unix_ms_ = NowUnixMs();
  // Someone else's slot (another agent on an overlapping pool, or an unrecorded leftover):
  // never touch it.
  if (PathExists("/sys/class/net/" + slot_.host_link) || PathExists(NetnsPath(slot_.netns))) {
    return Status(ErrorCode::kAlreadyExists,
                  "network slot " + slot_.netns + " (" + slot_.host_link + ") already exists");
  }
  // Recorded before anything exists, so that a crash at any later point leaves a record.
  MOAT_RETURN_IF_ERROR(WriteRecord());
  owns_record_ = true;
  owns_links_ = true;
  const std::string group = std::to_string(c.link_group);
  // Host side: the namespace, the veth pair (inner end created inside the namespace), the
  // slot's /30 on the host end, and the interface group the host table matches.
  std::string host_batch = "netns add " + slot_.netns + "\nlink add " + slot_.host_link +
                           " group " + group + " type veth peer name " + slot_.ns_link + " netns " +
                           slot_.netns + "\naddr add " + Prefixed(slot_.host_address, 30) +
                           " dev " + slot_.host_link + "\nlink set " + slot_.host_link + " up\n";
  MOAT_RETURN_IF_ERROR(RunTool({c.ip_binary, "-batch", "-"}, host_batch).status());
  MOAT_ASSIGN_OR_RETURN(UniqueFd ns, OpenNetns(slot_.netns));
  MOAT_ASSIGN_OR_RETURN(tap_, CreateTap(ns.get(), kTapName));
  std::string ns_batch = "link set lo up\naddr add " + Prefixed(slot_.slot_address, 30) + " dev " +
                         slot_.ns_link + "\nlink set " + slot_.ns_link +
                         " up\nroute add default via " + slot_.host_address.ToString() +
                         "\nlink set " + kTapName + " address " + kGatewayMac + "\naddr add " +
                         kGatewayAddress + "/" + std::to_string(kGuestPrefix) + " dev " + kTapName +
                         "\nlink set " + kTapName + " up\n";
  MOAT_RETURN_IF_ERROR(RunTool({c.ip_binary, "-batch", "-"}, ns_batch, ns.get()).status());
  MOAT_RETURN_IF_ERROR(
      RunTool({c.nft_binary, "-f", "-"}, SlotRuleset(slot_, c, policy_), ns.get()).status());
  MOAT_RETURN_IF_ERROR(SyncDomainProxy(policy_, ns.get()));
  // Forwarding last: nothing is forwarded before the rules are in place. On the host only the
  // slot's own link forwards (packets arriving on it may be routed on).
  // The rejects of the policy are ICMP errors to the guest; the kernel rate-limits them per
  // destination (one a second after a burst of six), which would turn some denials into
  // timeouts. The guest is the only destination in this namespace.
  MOAT_RETURN_IF_ERROR(WriteNetSysctl(ns.get(), "/proc/sys/net/ipv4/icmp_ratelimit", "0"));
  MOAT_RETURN_IF_ERROR(WriteNetSysctl(ns.get(), "/proc/sys/net/ipv4/ip_forward", "1"));
  MOAT_RETURN_IF_ERROR(
      WriteNetSysctl(-1, "/proc/sys/net/ipv4/conf/" + slot_.host_link + "/forwarding", "1"));
  return Status::Ok();
}

Status NetworkSlot::ApplyPolicy(const EgressPolicy& policy) {
  std::lock_guard lock(mu_);
  if (!owns_links_) return FailedPrecondition("network slot " + slot_.netns + " was released");
  MOAT_ASSIGN_OR_RETURN(UniqueFd ns, OpenNetns(slot_.netns));
  const NetConfig& c = shared_->config;
  // The proxy first: a policy it cannot serve changes nothing.
  MOAT_RETURN_IF_ERROR(SyncDomainProxy(policy, ns.get()));
  Status s = RunTool({c.nft_binary, "-f", "-"}, EgressChainUpdate(slot_, c, policy), ns.get())
                 .status()
                 .Annotate("applying the egress policy of " + slot_.netns);
  if (!s.ok()) {
    (void)SyncDomainProxy(policy_, ns.get());
    return s;
  }
  policy_ = policy;
  return WriteRecord();
}

Status NetworkSlot::SyncDomainProxy(const EgressPolicy& policy, int netns_fd) {
  if (policy.allow_domains.empty()) {
    domain_proxy_.reset();
    return Status::Ok();
  }
  if (domain_proxy_) {
    domain_proxy_->SetPolicy(policy);
    return Status::Ok();
  }
  const NetConfig& c = shared_->config;
  if (c.dns_servers.empty()) {
    return FailedPrecondition(
        "domain names in allowOut need a resolver for sandboxes, and this agent has none "
        "(moatd --dns)");
  }
  DomainProxyOptions options;
  options.resolver = c.dns_servers.front();
  options.denied = AlwaysDeniedRanges(c);
  options.denied_ports = c.control_plane_ports;
  MOAT_ASSIGN_OR_RETURN(domain_proxy_,
                        DomainProxy::Start(netns_fd, slot_.netns, policy, std::move(options)));
  return Status::Ok();
}

EgressPolicy NetworkSlot::policy() const {
  std::lock_guard lock(mu_);
  return policy_;
}

Result<SlotCounters> NetworkSlot::ReadCounters() const {
  UniqueFd ns;
  {
    // Only the check and the open under mu_: the nft run below must not hold up ApplyPolicy(),
    // policy() or Release() (callers such as Sandbox hold their own locks around those). Once
    // open, the fd pins this slot's namespace: a Release() meanwhile removes its name and the
    // veth pair, and the namespace (with its table) lives on, unnamed, until the fd closes, so
    // the read either sees these counters or fails; it never reads a namespace of the same
    // name that a later slot set up.
    std::lock_guard lock(mu_);
    if (!owns_links_) return FailedPrecondition("network slot " + slot_.netns + " was released");
    MOAT_ASSIGN_OR_RETURN(ns, OpenNetns(slot_.netns));
  }
  MOAT_ASSIGN_OR_RETURN(std::string listing, RunTool({shared_->config.nft_binary, "-j", "list",
                                                      "counters", "table", "ip", kSlotTable},
                                                     {}, ns.get(), std::chrono::seconds(2)));
  auto counters = ParseSlotCounters(listing);
  if (!counters.ok()) return counters.status().Annotate("network slot " + slot_.netns);
  return counters;
}

channel::proto::NetworkOp NetworkSlot::GuestConfig() const {
  channel::proto::NetworkOp op;
  op.interface = kGuestInterface;
  op.address = std::string(kGuestAddress) + "/" + std::to_string(kGuestPrefix);
  op.gateway = kGatewayAddress;
  op.mac = kGuestMac;
  if (!shared_->config.dns_servers.empty()) op.dns = {kGatewayAddress};
  return op;
}

Status NetworkSlot::Release() {
  std::lock_guard lock(mu_);
  domain_proxy_.reset();
  tap_.Reset();
  Status first;
  if (owns_links_) {
    first = TeardownSlot(slot_, shared_->config.ip_binary);
    if (!first.ok()) return first;  // keep the record: a later cleanup retries
    owns_links_ = false;
  }
  if (owns_record_) {
    std::string path = SlotRecordPath(shared_->config.state_dir, slot_);
    if (::unlink(path.c_str()) < 0 && errno != ENOENT) return ErrnoError("unlink(" + path + ")");
    owns_record_ = false;
  }
  ReleaseIndex();
  return Status::Ok();
}

void NetworkSlot::ReleaseIndex() {
  if (!owns_index_) return;
  {
    std::lock_guard shared_lock(shared_->mu);
    shared_->live.erase(slot_.netns);
  }
  shared_->allocator.Release(slot_.index);
  owns_index_ = false;
}

void NetworkSlot::Detach() {
  std::lock_guard lock(mu_);
  // The next agent starts its own proxy when it adopts the slot; until then, connections the
  // policy lets through by name only are refused.
  domain_proxy_.reset();
  tap_.Reset();
  owns_links_ = false;
  owns_record_ = false;
  ReleaseIndex();
}

// --- HostNetwork ---------------------------------------------------------------------------

Result<std::unique_ptr<HostNetwork>> HostNetwork::Create(NetConfig config) {
  MOAT_RETURN_IF_ERROR(config.Validate());
  MOAT_RETURN_IF_ERROR(MakeDirs(config.state_dir, 0700));
  MOAT_ASSIGN_OR_RETURN(uint32_t count, SlotCount(config.pool));
  MOAT_RETURN_IF_ERROR(RunTool({config.nft_binary, "-f", "-"}, HostRuleset(config))
                           .status()
                           .Annotate("installing the host nftables table"));
  auto shared = std::make_shared<NetworkSlot::Shared>(std::move(config), count);
  LogInfo("net.host_ready", {{"pool", shared->config.pool.ToString()},
                             {"slots", count},
                             {"table", HostTableName(shared->config.pool)}});
  return std::unique_ptr<HostNetwork>(new HostNetwork(std::move(shared)));
}

HostNetwork::~HostNetwork() {
  if (detached_) {
    LogInfo("net.host_table_kept", {{"table", HostTableName(shared_->config.pool)}});
    return;
  }
  uint32_t live = shared_->allocator.in_use();
  if (live > 0) LogWarn("net.host_table_removed_with_live_slots", {{"slots", live}});
  const NetConfig& c = shared_->config;
  auto r = RunTool({c.nft_binary, "delete", "table", "ip", HostTableName(c.pool)});
  if (!r.ok()) LogError("net.host_table_remove_failed", {{"error", r.status().ToString()}});
}

void HostNetwork::Detach() {
  detached_ = true;
}

const NetConfig& HostNetwork::config() const {
  return shared_->config;
}

uint32_t HostNetwork::slots_in_use() const {
  return shared_->allocator.in_use();
}

Result<std::unique_ptr<NetworkSlot>> HostNetwork::CreateSlot(const EgressPolicy& policy) {
  // A few slots may be held by someone else; each is skipped (and comes back last).
  for (int attempt = 0;; ++attempt) {
    MOAT_ASSIGN_OR_RETURN(uint32_t index, shared_->allocator.Allocate());
    auto addresses = SlotAddresses::For(shared_->config.pool, index);
    if (!addresses.ok()) {
      shared_->allocator.Release(index);
      return addresses.status();
    }
    std::unique_ptr<NetworkSlot> slot(new NetworkSlot(shared_, std::move(*addresses)));
    slot->owns_index_ = true;
    {
      std::lock_guard lock(shared_->mu);
      shared_->live.insert(slot->slot_.netns);
    }
    // On failure the destructor removes whatever SetUp made.
    Status s = slot->SetUp(policy);
    if (s.ok()) return slot;
    if (s.code() != ErrorCode::kAlreadyExists || attempt >= 8) {
      return s.Annotate("setting up network slot " + slot->slot_.netns);
    }
    LogWarn("net.slot_taken", {{"netns", slot->slot_.netns}});
  }
}

Result<std::unique_ptr<NetworkSlot>> HostNetwork::AdoptSlot(const SlotRecord& record) {
  if (!(record.slot.pool == shared_->config.pool)) {
    return InvalidArgument("slot " + record.slot.netns + " belongs to pool " +
                           record.slot.pool.ToString());
  }
  if (!PathExists(NetnsPath(record.slot.netns))) {
    return NotFound("network namespace " + record.slot.netns + " is gone");
  }
  MOAT_RETURN_IF_ERROR(shared_->allocator.Reserve(record.slot.index));
  std::unique_ptr<NetworkSlot> slot(new NetworkSlot(shared_, record.slot));
  slot->owns_index_ = true;
  slot->owns_record_ = true;
  slot->owns_links_ = true;
  slot->policy_ = record.policy;
  slot->created_unix_ms_ = record.created_unix_ms;
  {
    std::lock_guard lock(shared_->mu);
    shared_->live.insert(record.slot.netns);
  }
  MOAT_RETURN_IF_ERROR(slot->WriteRecord());  // now owned by this agent's pid
  if (!record.policy.allow_domains.empty()) {
    // A proxy that cannot start (no resolver in this agent, say) must not cost the sandbox its
    // network: without it, connections by name are refused (fail closed) until the policy is
    // applied again.
    auto ns = OpenNetns(record.slot.netns);
    std::lock_guard lock(slot->mu_);
    Status s = ns.ok() ? slot->SyncDomainProxy(record.policy, ns->get()) : ns.status();
    if (!s.ok()) {
      LogError("net.domain_proxy_not_adopted",
               {{"netns", record.slot.netns}, {"error", s.ToString()}});
    }
  }
  return slot;
}

Result<std::vector<SlotRecord>> HostNetwork::LeftoverSlots() const {
  MOAT_ASSIGN_OR_RETURN(std::vector<SlotRecord> all, LoadSlotRecords(shared_->config.state_dir));
  std::lock_guard lock(shared_->mu);
  std::vector<SlotRecord> out;
  for (auto& r : all) {
    if (shared_->live.count(r.slot.netns) == 0) out.push_back(std::move(r));
  }
  return out;
}

Result<size_t> HostNetwork::CleanupLeftovers() {
  std::set<std::string> keep;
  {
    std::lock_guard lock(shared_->mu);
    keep = shared_->live;
  }
  return CleanupLeftoverSlots(shared_->config.state_dir, keep, shared_->config.ip_binary);
}

}  // namespace moat::net
