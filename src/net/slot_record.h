// A slot's record on disk: DIR/<netns>.json, written before any of the slot's resources is
// made and removed after the last one is gone, so that an agent that crashed or restarted
// can adopt the slots of the sandboxes it re-adopts and release the rest.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "common/egress_policy.h"
#include "common/status.h"
#include "net/slot_allocator.h"

namespace moat::net {

struct SlotRecord {
  SlotAddresses slot;  // recomputed from pool + index when read: names are never trusted
  int64_t created_unix_ms = 0;
  int owner_pid = 0;  // the agent that made it
  EgressPolicy policy;
};

// {"version":1,"pool":"10.200.0.0/16","index":5,"netns":"moat-10.200.0.20",
//  "host_link":"moat0ac80014h","host_address":"10.200.0.21","slot_address":"10.200.0.22",
//  "created_unix_ms":N,"owner_pid":N,"policy":{...}}
std::string SerializeSlotRecord(const SlotRecord& record);
// Rejects a record whose names or addresses differ from what pool and index give.
Result<SlotRecord> ParseSlotRecord(std::string_view json);
std::string SlotRecordPath(const std::string& dir, const SlotAddresses& slot);
// Every record in `dir` (files named moat-*.json); an unreadable record is an error naming it.
Result<std::vector<SlotRecord>> LoadSlotRecords(const std::string& dir);

// Deletes the slot's host link and namespace if they exist (the namespace takes the tap, the
// inner veth end and the slot's nftables table with it). Idempotent.
Status TeardownSlot(const SlotAddresses& slot, const std::string& ip_binary);

// Releases every slot recorded in `dir` except those whose netns name is in `keep` (the ones
// the restarted agent adopted): tears it down and removes its record. Returns how many it
// released; on errors goes on with the others and returns the first.
Result<size_t> CleanupLeftoverSlots(const std::string& dir, const std::set<std::string>& keep = {},
                                    const std::string& ip_binary = "/usr/sbin/ip");

}  // namespace moat::net
