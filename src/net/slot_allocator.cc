#include "net/slot_allocator.h"

#include <algorithm>
#include <cstdio>

namespace moat::net {

Result<uint32_t> SlotCount(const Ipv4Cidr& pool) {
  if (pool.prefix < 8 || pool.prefix > 30) {
    return InvalidArgument("slot pool " + pool.ToString() + " must be a /8 to /30");
  }
  return static_cast<uint32_t>(pool.Size() / 4);
}

Result<SlotAddresses> SlotAddresses::For(const Ipv4Cidr& pool, uint32_t index) {
  MOAT_ASSIGN_OR_RETURN(uint32_t count, SlotCount(pool));
  if (index >= count) {
    return InvalidArgument("slot " + std::to_string(index) + " is outside pool " + pool.ToString() +
                           " (" + std::to_string(count) + " slots)");
  }
  SlotAddresses s;
  s.index = index;
  s.pool = pool;
  uint32_t base = pool.address.value + 4 * index;
  s.subnet = {{base}, 30};
  s.host_address = {base + 1};
  s.slot_address = {base + 2};
  s.netns = "moat-" + s.subnet.address.ToString();
  char hex[9];
  std::snprintf(hex, sizeof hex, "%08x", base);
  s.host_link = std::string("moat") + hex + "h";
  s.ns_link = std::string("moat") + hex + "g";
  return s;
}

Result<uint32_t> SlotAllocator::Allocate() {
  std::lock_guard lock(mu_);
  while (next_fresh_ < count_) {
    uint32_t i = next_fresh_++;
    if (!used_[i]) {  // a Reserve()d slot is skipped
      used_[i] = true;
      ++in_use_;
      return i;
    }
  }
  while (!released_.empty()) {
    uint32_t i = released_.front();
    released_.pop_front();
    if (!used_[i]) {
      used_[i] = true;
      ++in_use_;
      return i;
    }
  }
  return ResourceExhausted("all " + std::to_string(count_) + " network slots are in use");
}

Status SlotAllocator::Reserve(uint32_t index) {
  std::lock_guard lock(mu_);
  if (index >= count_) {
    return InvalidArgument("slot " + std::to_string(index) + " is outside the pool");
  }
  if (used_[index]) {
    return Status(ErrorCode::kAlreadyExists, "slot " + std::to_string(index) + " is in use");
  }
  used_[index] = true;
  ++in_use_;
  return Status::Ok();
}

void SlotAllocator::Release(uint32_t index) {
  std::lock_guard lock(mu_);
  if (index >= count_ || !used_[index]) return;
  used_[index] = false;
  --in_use_;
  // A slot never handed out by Allocate (reserved above next_fresh_) is still fresh.
  if (index < next_fresh_) released_.push_back(index);
}

uint32_t SlotAllocator::in_use() const {
  std::lock_guard lock(mu_);
  return in_use_;
}

}  // namespace moat::net
