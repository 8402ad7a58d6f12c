// Network slots: which /30 of the pool a sandbox's veth pair uses, the names of its namespace
// and links, and SlotAllocator, which hands slot indices out.
//
// Slot i of pool P takes the /30 at P + 4i: P + 4i + 1 is the host side of the veth pair (the
// slot's gateway), P + 4i + 2 the namespace side (the "slot address" the guest is NATed to).
// Every guest sees the same 169.254.0.21/30 behind a tap whose address is 169.254.0.22, so one
// snapshot restores into any slot.
#pragma once

#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

#include "common/ipv4.h"
#include "common/status.h"

namespace moat::net {

inline constexpr char kDefaultPool[] = "10.200.0.0/16";
// Inside every slot, on the guest's side of the tap (fixed: part of every snapshot).
inline constexpr char kGuestAddress[] = "169.254.0.21";
inline constexpr char kGatewayAddress[] = "169.254.0.22";
inline constexpr unsigned kGuestPrefix = 30;
// Locally administered unicast MACs; the guest's is migrated device state, and the tap's is
// fixed too so that a restored guest's ARP entry for its gateway stays right in any slot.
inline constexpr char kGuestMac[] = "02:00:a9:fe:00:15";
inline constexpr char kGatewayMac[] = "02:00:a9:fe:00:16";
// The tap's name inside the slot namespace; the guest's interface.
inline constexpr char kTapName[] = "moat-tap";
inline constexpr char kGuestInterface[] = "eth0";

// Everything about slot `index` of `pool` that follows from arithmetic.
struct SlotAddresses {
  uint32_t index = 0;
  Ipv4Cidr pool;
  Ipv4Cidr subnet;           // the /30
  Ipv4Address host_address;  // host side of the veth: the slot's gateway
  Ipv4Address slot_address;  // namespace side: the guest's traffic leaves with this source
  std::string netns;         // "moat-10.200.0.4"
  std::string host_link;     // "moat0ac80004h" (hex of the /30; ≤ 15 characters)
  std::string ns_link;       // "moat0ac80004g", inside the namespace

  // Fails if `index` is outside the pool.
  static Result<SlotAddresses> For(const Ipv4Cidr& pool, uint32_t index);
};

// How many /30 slots a pool holds: 16,384 for a /16. The pool must be /8../30.
Result<uint32_t> SlotCount(const Ipv4Cidr& pool);

// Hands out slot indices. Never-used slots go first; released ones join the back of a FIFO, so
// a slot is reused as late as possible (its conntrack entries and the peers' ARP caches have
// long expired by then). Thread-safe.
class SlotAllocator {
 public:
  explicit SlotAllocator(uint32_t count) : count_(count), used_(count, false) {}
  // ResourceExhausted when every slot is taken.
  Result<uint32_t> Allocate();
  // Marks a specific slot taken (a slot re-adopted after an agent restart). AlreadyExists if it
  // is taken, InvalidArgument if out of range.
  Status Reserve(uint32_t index);
  // Returns a slot; releasing a free or out-of-range slot is ignored (logged by the caller).
  void Release(uint32_t index);
  uint32_t count() const { return count_; }
  uint32_t in_use() const;

 private:
  mutable std::mutex mu_;
  uint32_t count_;
  uint32_t next_fresh_ = 0;        // slots >= this have never been handed out
  std::deque<uint32_t> released_;  // FIFO of returned slots
  std::vector<bool> used_;
  uint32_t in_use_ = 0;
};

}  // namespace moat::net
