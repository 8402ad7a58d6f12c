// HostNetwork: one per host agent — the host-side nftables table, the slot allocator and the
// slot records. NetworkSlot: one sandbox's network — namespace, veth pair, tap, NAT and egress
// policy — and the one owner of all of it: destroying it (or Release()) removes every piece.
//
//   auto host = HostNetwork::Create(config);              // agent start
//   auto slot = host->CreateSlot(policy);                  // or SlotPool::Acquire()
//   spec.net = vmm::NetDeviceSpec{slot->tap_fd(), slot->guest_mac()};
//   channel::ops::Unary(*guest, slot->GuestConfig(), ...);             // after boot, restore and
//   fork slot->ApplyPolicy(new_policy);                         // PUT /sandboxes/{id}/network
//   slot.reset();                                          // after the VMM has exited
#pragma once

#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "channel/protocol.h"
#include "common/egress_policy.h"
#include "common/status.h"
#include "common/unique_fd.h"
#include "net/domain_proxy.h"
#include "net/net_config.h"
#include "net/nft_ruleset.h"
#include "net/slot_allocator.h"
#include "net/slot_record.h"

namespace moat::net {

class NetworkSlot {
 public:
  ~NetworkSlot();
  NetworkSlot(const NetworkSlot&) = delete;
  NetworkSlot& operator=(const NetworkSlot&) = delete;

  const SlotAddresses& addresses() const { return slot_; }
  // The tap, for the VMM (`-netdev tap,fd=N`; pass a dup, keep this one). -1 for an adopted
  // slot: the re-adopted VMM holds the tap.
  int tap_fd() const { return tap_.get(); }
  // /run/netns/<name>: for tools and tests that enter the slot's namespace.
  std::string netns_path() const;
  const std::string& netns_name() const { return slot_.netns; }
  // The guest's MAC: the same in every slot (one snapshot restores into any of them).
  static const char* guest_mac() { return kGuestMac; }
  // Where moatd's port proxy connects to reach port P inside the guest: slot_address():P.
  Ipv4Address slot_address() const { return slot_.slot_address; }

  // Replaces the egress policy atomically (new connections see it at once; established ones
  // continue) and records it. On failure the previous policy stays in force.
  Status ApplyPolicy(const EgressPolicy& policy);
  EgressPolicy policy() const;
  // The slot's byte counters since it was set up (net/nft_ruleset.h), read with one `nft -j`
  // inside its namespace (a few milliseconds; bounded by a 2 s timeout). A slot set up by an
  // agent from before the counters existed has none: an error, as for a released slot. Safe to
  // call concurrently with every other method (the object must stay alive meanwhile): the nft
  // run holds no lock, so it delays neither ApplyPolicy() nor Release(); one racing Release()
  // reads the namespace it opened before or fails, and a detached slot fails.
  Result<SlotCounters> ReadCounters() const;

  // The `network` request for moat-guest (api/guest-channel.md), sent after every boot,
  // restore and fork: {"op":"network","interface":"eth0","address":"169.254.0.21/30",
  // "gateway":"169.254.0.22","mac":"02:...","dns":["169.254.0.22"]}.
  channel::proto::NetworkOp GuestConfig() const;

  // Removes the link, the namespace (and with it the tap, the inner veth end, the nftables
  // table), the record, and returns the slot to the allocator. Idempotent. Call it after the
  // VMM has exited: a VMM still holding the tap keeps the (unnamed) namespace alive.
  Status Release();
  // Leaves the slot set up and recorded, for the next agent to adopt along with its sandbox
  // (whose VMM holds the tap): closes this object's tap fd and returns the index to the
  // allocator without removing anything. Release() and the destructor do nothing afterwards.
  void Detach();

 private:
  friend class HostNetwork;
  struct Shared;
  NetworkSlot(std::shared_ptr<Shared> shared, SlotAddresses slot)
      : shared_(std::move(shared)), slot_(std::move(slot)) {}
  Status SetUp(const EgressPolicy& policy);
  // Starts, updates or stops the domain proxy to match `policy` (called with mu_ held).
  Status SyncDomainProxy(const EgressPolicy& policy, int netns_fd);
  Status WriteRecord();
  // Returns the slot's index to the allocator, if this object holds it. Called with mu_ held.
  void ReleaseIndex();

  std::shared_ptr<Shared> shared_;
  SlotAddresses slot_;
  mutable std::mutex mu_;
  UniqueFd tap_;
  EgressPolicy policy_;
  std::unique_ptr<DomainProxy> domain_proxy_;  // while the policy names domains
  int64_t created_unix_ms_ = 0;
  // What this object owns and must remove: set as each piece is created (or adopted).
  bool owns_index_ = false;
  bool owns_record_ = false;
  bool owns_links_ = false;  // the namespace and the veth pair
};

class HostNetwork {
 public:
  // Validates the config, creates the state dir and installs the host table (replacing one a
  // crashed agent with the same pool left). Leftover slots are not touched: adopt the ones to
  // keep, then CleanupLeftovers().
  static Result<std::unique_ptr<HostNetwork>> Create(NetConfig config);
  // Removes the host table. Slots still alive keep their namespaces but lose the host-side
  // guard, so destroy them first (this logs if any are).
  ~HostNetwork();
  HostNetwork(const HostNetwork&) = delete;
  HostNetwork& operator=(const HostNetwork&) = delete;

  // A new slot with `policy`. A slot whose address someone else holds (a link or namespace
  // of that name exists and is not ours) is skipped.
  Result<std::unique_ptr<NetworkSlot>> CreateSlot(const EgressPolicy& policy = {});
  // Takes over a recorded slot of a re-adopted sandbox (its VMM holds the tap: tap_fd() is -1).
  Result<std::unique_ptr<NetworkSlot>> AdoptSlot(const SlotRecord& record);
  // Records of slots left by an earlier agent.
  Result<std::vector<SlotRecord>> LeftoverSlots() const;
  // Releases every recorded slot not adopted by this HostNetwork.
  Result<size_t> CleanupLeftovers();
  // Makes the destructor leave the host table installed: detached slots (NetworkSlot::Detach)
  // live on, and their traffic needs its NAT and guards until the next agent's Create()
  // replaces the table.
  void Detach();

  const NetConfig& config() const;
  uint32_t slots_in_use() const;

 private:
  explicit HostNetwork(std::shared_ptr<NetworkSlot::Shared> shared) : shared_(std::move(shared)) {}
  std::shared_ptr<NetworkSlot::Shared> shared_;
  bool detached_ = false;
};

}  // namespace moat::net
