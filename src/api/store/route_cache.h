// RouteCache: the records of running sandboxes as the data plane reads them (a fleet replica's
// relay, an agent's envd routes), kept briefly so that exec and file traffic does not ask the
// database on every request, and kept through a database outage (shared/FLEET.md §4: "exec,
// files and ports keep working from the replicas' route caches").
//
// Only running records are kept. One read within `fresh` is answered from memory; an older one
// asks the store; when the store fails, the last record read (within `stale_limit`) answers. A
// sandbox killed meanwhile is caught by its host (its VM is gone): the cache never makes a
// stopped sandbox reachable, only a route to its host.
//
// Watch() follows the store's change feed (PostgreSQL LISTEN/NOTIFY, schema migration 8): a
// sandbox whose state, host or generation changes, or that is deleted, is dropped as soon as the
// notification arrives, and while the feed is up a record stays fresh for `fresh_watched`
// instead of `fresh`. When the feed breaks, everything cached counts as old (still usable
// through an outage) and the watcher reconnects with back-off.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>

#include "api/store/store.h"

namespace moat::api::store {

struct RouteCacheOptions {
  std::chrono::milliseconds fresh{1000};
  std::chrono::milliseconds fresh_watched{std::chrono::seconds(30)};
  // How long a wait on the feed lasts (and so how soon Stop is noticed).
  std::chrono::milliseconds poll{500};
  std::chrono::milliseconds stale_limit{std::chrono::minutes(10)};
  size_t max_entries = 65536;
};

class RouteCache {
 public:
  explicit RouteCache(Store& store, RouteCacheOptions options = {})
      : store_(store), options_(options) {}
  ~RouteCache() { Stop(); }
  RouteCache(const RouteCache&) = delete;
  RouteCache& operator=(const RouteCache&) = delete;

  // The running record of `id`; nullopt when it is not running (or unknown); the store's error
  // when it fails and nothing usable is cached.
  Result<std::optional<SandboxRecord>> Running(const std::string& id);

  // Starts following the store's change feed on a thread of its own; a store without one (SQLite:
  // one process) leaves the cache on `fresh` alone. Stop (or the destructor) ends it.
  void Watch();
  void Stop();
  // Whether the feed is up now (tests, logs).
  bool watching() const { return watching_.load(); }
  // Drops `id`'s route (a change notification).
  void Invalidate(const std::string& id);
  // Every cached route counts as old: the next read asks the store (a broken feed).
  void AgeAll();

 private:
  using Clock = std::chrono::steady_clock;
  void WatchLoop();
  struct Entry {
    SandboxRecord record;
    Clock::time_point read_at;
    // false: may have changed unseen (read while a change arrived, or the feed broke); the next
    // read asks the store, and the record only stands in during an outage.
    bool current = true;
  };
  Store& store_;
  RouteCacheOptions options_;
  std::mutex mu_;
  std::unordered_map<std::string, Entry> entries_;
  // Bumped by every invalidation: a store read that overlapped one is not cached as fresh (its
  // answer may predate the change).
  uint64_t epoch_ = 0;
  std::atomic<bool> watching_{false};
  std::atomic<bool> stopping_{false};
  std::thread watcher_;
};

}  // namespace moat::api::store
