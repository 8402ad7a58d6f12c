#include "net/slot_record.h"

#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "common/fs.h"
#include "common/log.h"
#include "net/net_tools.h"

namespace moat::net {

using nlohmann::json;

std::string SerializeSlotRecord(const SlotRecord& r) {
  json j = {{"version", 1},
            {"pool", r.slot.pool.ToString()},
            {"index", r.slot.index},
            {"netns", r.slot.netns},
            {"host_link", r.slot.host_link},
            {"host_address", r.slot.host_address.ToString()},
            {"slot_address", r.slot.slot_address.ToString()},
            {"created_unix_ms", r.created_unix_ms},
            {"owner_pid", r.owner_pid},
            {"policy", r.policy.ToJson()}};
  return j.dump(2) + "\n";
}

Result<SlotRecord> ParseSlotRecord(std::string_view text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return InvalidArgument("slot record is not a JSON object");
  if (j.value("version", 0) != 1) return InvalidArgument("slot record: unsupported version");
  if (!j.contains("pool") || !j["pool"].is_string() || !j.contains("index") ||
      !j["index"].is_number_unsigned()) {
    return InvalidArgument("slot record: pool (string) and index (unsigned) are required");
  }
  MOAT_ASSIGN_OR_RETURN(Ipv4Cidr pool, Ipv4Cidr::Parse(j["pool"].get<std::string>()));
  uint64_t index = j["index"].get<uint64_t>();
  if (index > UINT32_MAX) return InvalidArgument("slot record: index out of range");
  SlotRecord r;
  MOAT_ASSIGN_OR_RETURN(r.slot, SlotAddresses::For(pool, static_cast<uint32_t>(index)));
  auto same = [&j](const char* key, const std::string& want) {
    return j.contains(key) && j[key].is_string() && j[key].get<std::string>() == want;
  };
  if (!same("netns", r.slot.netns) || !same("host_link", r.slot.host_link) ||
      !same("host_address", r.slot.host_address.ToString()) ||
      !same("slot_address", r.slot.slot_address.ToString())) {
    return InvalidArgument("slot record: names or addresses do not match slot " +
                           std::to_string(index) + " of " + pool.ToString());
  }
  if (j.contains("created_unix_ms") && j["created_unix_ms"].is_number_integer()) {
    r.created_unix_ms = j["created_unix_ms"].get<int64_t>();
  }
  if (j.contains("owner_pid") && j["owner_pid"].is_number_integer()) {
    r.owner_pid = j["owner_pid"].get<int>();
  }
  if (j.contains("policy")) {
    MOAT_ASSIGN_OR_RETURN(r.policy, EgressPolicy::FromJson(j["policy"]));
  }
  return r;
}

std::string SlotRecordPath(const std::string& dir, const SlotAddresses& slot) {
  return dir + "/" + slot.netns + ".json";
}

Result<std::vector<SlotRecord>> LoadSlotRecords(const std::string& dir) {
  std::vector<SlotRecord> out;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) {
    if (errno == ENOENT) return out;
    return ErrnoError("opendir(" + dir + ")");
  }
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name.rfind("moat-", 0) == 0 && name.size() > 5 &&
        name.compare(name.size() - 5, 5, ".json") == 0) {
      names.push_back(name);
    }
  }
  ::closedir(d);
  for (const auto& name : names) {
    std::string path = dir + "/" + name;
    MOAT_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
    auto r = ParseSlotRecord(text);
    if (!r.ok()) return r.status().Annotate(path);
    if (SlotRecordPath(dir, r->slot) != path) {
      return InvalidArgument(path + ": file name does not match the slot it records");
    }
    out.push_back(std::move(*r));
  }
  std::sort(out.begin(), out.end(),
            [](const SlotRecord& a, const SlotRecord& b) { return a.slot.index < b.slot.index; });
  return out;
}

Status TeardownSlot(const SlotAddresses& slot, const std::string& ip_binary) {
  // Deleting one end of the veth pair deletes the other. Deleting the host end explicitly
  // matters: a namespace stays alive (unnamed) while anything still holds it — a VMM with the
  // tap open — and its veth end, and so the host end, would outlive the name.
  std::string batch;
  if (PathExists("/sys/class/net/" + slot.host_link)) batch += "link del " + slot.host_link + "\n";
  if (PathExists(NetnsPath(slot.netns))) batch += "netns del " + slot.netns + "\n";
  if (batch.empty()) return Status::Ok();
  return RunTool({ip_binary, "-batch", "-"}, batch)
      .status()
      .Annotate("tearing down network slot " + slot.netns);
}

Result<size_t> CleanupLeftoverSlots(const std::string& dir, const std::set<std::string>& keep,
                                    const std::string& ip_binary) {
  MOAT_ASSIGN_OR_RETURN(std::vector<SlotRecord> records, LoadSlotRecords(dir));
  Status first;
  size_t released = 0;
  for (const auto& r : records) {
    if (keep.count(r.slot.netns) != 0) continue;
    Status s = TeardownSlot(r.slot, ip_binary);
    if (s.ok()) {
      std::string path = SlotRecordPath(dir, r.slot);
      if (::unlink(path.c_str()) < 0 && errno != ENOENT) s = ErrnoError("unlink(" + path + ")");
    }
    if (!s.ok()) {
      LogError("net.leftover_release_failed", {{"netns", r.slot.netns}, {"error", s.ToString()}});
      if (first.ok()) first = s;
      continue;
    }
    LogInfo("net.leftover_released", {{"netns", r.slot.netns}, {"owner_pid", r.owner_pid}});
    ++released;
  }
  if (!first.ok()) return first;
  return released;
}

}  // namespace moat::net
