#include "api/store/route_cache.h"

namespace moat::api::store {

Result<std::optional<SandboxRecord>> RouteCache::Running(const std::string& id) {
  auto now = Clock::now();
  {
    std::lock_guard lock(mu_);
    auto it = entries_.find(id);
    if (it != entries_.end() && now - it->second.read_at < options_.fresh) {
      return std::optional<SandboxRecord>(it->second.record);
    }
  }
  auto read = store_.GetSandbox(id);
  std::lock_guard lock(mu_);
  auto it = entries_.find(id);
  if (!read.ok()) {
    if (it != entries_.end() && now - it->second.read_at < options_.stale_limit) {
      return std::optional<SandboxRecord>(it->second.record);
    }
    return read.status();
  }
  if (!*read || (*read)->state != SandboxState::kRunning) {
    if (it != entries_.end()) entries_.erase(it);
    return std::optional<SandboxRecord>();
  }
  if (entries_.size() >= options_.max_entries && it == entries_.end()) entries_.clear();
  entries_[id] = Entry{**read, now};
  return std::move(*read);
}

}  // namespace moat::api::store
