// HistoryLog: what moatd remembers of sandboxes beyond their lives (docs/dashboard.md) — their
// history records and lifecycle events, the commands run in them, the audit log of control
// actions. Written beside the action, never instead of it: a store error here is logged and
// counted (moat_history_write_errors_total), and the action it describes goes on.
//
// Actor: who the request being served on this thread acts as (routes::Authed sets it for the
// handler's duration), so that the controller can say "killed by <key name>" without every
// method taking the caller; the reaper's thread has none.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>

#include "api/store/store.h"

namespace moat::api {

struct Actor {
  std::string team_id;
  std::string key_id;
  std::string key_name;
  std::string source;  // the client's address
  std::string request_id;
};

// The actor of the request this thread serves, or null.
const Actor* CurrentActor();

// Sets the thread's actor for its scope (restoring the previous one after).
class ScopedActor {
 public:
  explicit ScopedActor(const Actor* actor);
  ~ScopedActor();
  ScopedActor(const ScopedActor&) = delete;
  ScopedActor& operator=(const ScopedActor&) = delete;

 private:
  const Actor* previous_;
};

// The first and last `kOutputKeep` bytes of a stream, and its length (CommandRecord's tails).
class OutputTail {
 public:
  static constexpr size_t kOutputKeep = 4096;
  void Append(std::string_view data);
  // Fills head, tail (empty when head holds it all) and bytes.
  void Fill(std::string* head, std::string* tail, int64_t* bytes) const;

 private:
  std::string head_;
  std::string tail_;  // a ring kept as the last kOutputKeep bytes
  int64_t bytes_ = 0;
};

class HistoryLog {
 public:
  // `store` null or `enabled` false: records nothing (moatd --history=false; the benchmark's
  // "off" side).
  HistoryLog(store::Store* store, bool enabled) : store_(enabled ? store : nullptr) {}

  bool enabled() const { return store_ != nullptr; }

  // A sandbox was recorded (creating: from a template, a snapshot, or as a fork of
  // `parent_id`), by the thread's actor — before its host starts it, so that a kill racing with
  // the create finds its history…
  void Recorded(const store::SandboxRecord& r, const std::string& parent_kind,
                const std::string& parent_id);
  // …and it started (running), `duration_ms` after its create began.
  void Started(const store::SandboxRecord& r, int64_t duration_ms);
  // A lifecycle event (and the state it leaves the sandbox in, when not empty).
  void Event(const std::string& sandbox_id, const std::string& team_id, std::string_view kind,
             int64_t duration_ms, const std::string& detail_json = "", std::string_view state = "",
             const std::string& host_id = "");
  // The sandbox ended: `reason` store::kEnd*; a kill names the thread's actor's key.
  void Ended(const std::string& sandbox_id, const std::string& team_id, const char* reason,
             const std::string& detail = "");
  // Keeps an ended sandbox's console log (its last kConsoleKeep bytes).
  static constexpr size_t kConsoleKeep = 256 * 1024;
  void Console(const std::string& sandbox_id, std::string text);

  // Commands (envd): 0 when nothing was recorded.
  int64_t CommandStarted(store::CommandRecord c);
  void CommandFinished(const store::CommandRecord& c);

  // One control action, by the thread's actor.
  void Audit(std::string_view action, const std::string& target, int status,
             const std::string& detail_json = "");

  // What this process wrote (GET /metrics): records by kind — "history", "event", "command",
  // "audit", "console" — and the writes that failed.
  struct Counters {
    std::atomic<int64_t> history{0}, event{0}, command{0}, audit{0}, console{0}, errors{0};
    std::atomic<int64_t> meter_passes{0}, pruned{0};
  };
  static Counters& counters();
  static int64_t write_errors() { return counters().errors.load(); }

 private:
  void Failed(std::string_view what, const Status& s);

  store::Store* store_;
};

}  // namespace moat::api
