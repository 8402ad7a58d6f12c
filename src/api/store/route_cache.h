// RouteCache: the records of running sandboxes as the data plane reads them (a fleet replica's
// relay, an agent's envd routes), kept briefly so that exec and file traffic does not ask the
// database on every request, and kept through a database outage (shared/FLEET.md §4: "exec,
// files and ports keep working from the replicas' route caches").
//
// Only running records are kept. One read within `fresh` is answered from memory; an older one
// asks the store; when the store fails, the last record read (within `stale_limit`) answers. A
// sandbox killed meanwhile is caught by its host (its VM is gone): the cache never makes a
// stopped sandbox reachable, only a route to its host.
#pragma once

#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "api/store/store.h"

namespace moat::api::store {

struct RouteCacheOptions {
  std::chrono::milliseconds fresh{1000};
  std::chrono::milliseconds stale_limit{std::chrono::minutes(10)};
  size_t max_entries = 65536;
};

class RouteCache {
 public:
  explicit RouteCache(Store& store, RouteCacheOptions options = {})
      : store_(store), options_(options) {}

  // The running record of `id`; nullopt when it is not running (or unknown); the store's error
  // when it fails and nothing usable is cached.
  Result<std::optional<SandboxRecord>> Running(const std::string& id);

 private:
  using Clock = std::chrono::steady_clock;
  struct Entry {
    SandboxRecord record;
    Clock::time_point read_at;
  };
  Store& store_;
  RouteCacheOptions options_;
  std::mutex mu_;
  std::unordered_map<std::string, Entry> entries_;
};

}  // namespace moat::api::store
