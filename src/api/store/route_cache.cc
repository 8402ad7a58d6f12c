#include "api/store/route_cache.h"

#include <algorithm>
#include <memory>

#include "common/log.h"

namespace moat::api::store {

Result<std::optional<SandboxRecord>> RouteCache::Running(const std::string& id) {
  auto now = Clock::now();
  auto fresh = watching_.load() ? options_.fresh_watched : options_.fresh;
  uint64_t epoch;
  {
    std::lock_guard lock(mu_);
    auto it = entries_.find(id);
    if (it != entries_.end() && it->second.current && now - it->second.read_at < fresh) {
      return std::optional<SandboxRecord>(it->second.record);
    }
    epoch = epoch_;
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
  // A read that overlapped an invalidation answers this request but is not fresh for the next.
  entries_[id] = Entry{**read, now, epoch == epoch_};
  return std::move(*read);
}

void RouteCache::Invalidate(const std::string& id) {
  std::lock_guard lock(mu_);
  ++epoch_;
  entries_.erase(id);
}

void RouteCache::AgeAll() {
  std::lock_guard lock(mu_);
  ++epoch_;
  for (auto& [id, e] : entries_) e.current = false;
}

void RouteCache::Watch() {
  if (watcher_.joinable()) return;
  stopping_ = false;
  watcher_ = std::thread([this] { WatchLoop(); });
}

void RouteCache::Stop() {
  stopping_ = true;
  if (watcher_.joinable()) watcher_.join();
  watching_ = false;
}

void RouteCache::WatchLoop() {
  auto backoff = std::chrono::milliseconds(200);
  std::unique_ptr<SandboxChangeFeed> feed;
  while (!stopping_) {
    if (!feed) {
      auto opened = store_.WatchSandboxChanges();
      if (opened.ok() && !*opened) return;  // this store has no other writers
      if (!opened.ok()) {
        // Waits in small steps so that Stop is not held up by the back-off.
        for (auto waited = std::chrono::milliseconds(0); waited < backoff && !stopping_;
             waited += options_.poll) {
          std::this_thread::sleep_for(std::min(options_.poll, backoff));
        }
        backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
        continue;
      }
      feed = std::move(*opened);
      // Listening from now on; what was read before may have changed unseen.
      AgeAll();
      watching_ = true;
      backoff = std::chrono::milliseconds(200);
      LogInfo("routes.watching", {});
    }
    auto next = feed->Next(options_.poll);
    if (!next.ok()) {
      watching_ = false;
      AgeAll();
      feed.reset();
      LogWarn("routes.watch_lost", {{"error", next.status().ToString()}});
      continue;
    }
    if (*next) Invalidate(**next);
  }
  watching_ = false;
}

}  // namespace moat::api::store
