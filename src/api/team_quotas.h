// Per-team quotas (docs/security.md, "Quotas and keys"): what a team may hold and how fast it may
// create. Running sandboxes count against the concurrency, vCPU and memory limits; paused ones
// hold only disk and count against none. Creates and fork children count against the rate (a
// sliding 60 s window, kept in memory: a restart forgets it); a resume does not. A create's
// metadata and its envVars are each limited in size. Every refusal is resource_exhausted (HTTP
// 429, the SDK's RateLimitError) with a message naming the limit and the current value.
//
// Admission is race-free: QuotaGate::Admit counts the team's running sandboxes in the store plus
// the admissions in flight (created, resumed or forked, not recorded yet), under one mutex, and
// holds what it admitted until the returned Hold is destroyed — after the sandbox is recorded, or
// when its start failed. Between the two, the sandbox is counted twice: an admission then may be
// refused that would fit a moment later, never the other way round.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "api/sandbox_actions.h"
#include "api/store/store.h"
#include "common/status.h"

namespace moat::api {

// The limits in force for a team: its stored settings, each unset one the default.
struct TeamQuotas {
  int64_t max_sandboxes = 100;             // running at once
  int64_t max_vcpus = 200;                 // of its running sandboxes
  int64_t max_memory_mib = 400 * 1024;     // of its running sandboxes
  int64_t max_creates_per_minute = 300;    // creates and fork children in the last 60 s
  int64_t max_metadata_bytes = 64 * 1024;  // a create's metadata JSON, and its envVars JSON
};

TeamQuotas EffectiveQuotas(const store::QuotaSettings& settings);

// The quotas by their API names ("maxSandboxes", …), for the routes and their documentation.
struct QuotaField {
  std::string_view name;
  std::optional<int64_t> store::QuotaSettings::*setting;
  int64_t TeamQuotas::*limit;
};
inline constexpr int64_t kMaxQuotaValue = 1'000'000'000'000;  // keeps every sum far from overflow
const std::vector<QuotaField>& QuotaFields();

// PUT /teams/{teamID}/quotas: `current` with the body's fields applied — an integer in
// 0..kMaxQuotaValue sets a limit, null returns it to the default, an absent one stays; an unknown
// field or a wrong type is invalid_argument naming it.
Result<store::QuotaSettings> ParseQuotaUpdate(std::string_view body,
                                              const store::QuotaSettings& current);

class QuotaGate {
 public:
  using Clock = std::function<std::chrono::steady_clock::time_point()>;
  // `clock`: steady_clock::now unless a test gives another.
  explicit QuotaGate(store::Store& store, Clock clock = nullptr);
  QuotaGate(const QuotaGate&) = delete;
  QuotaGate& operator=(const QuotaGate&) = delete;

  // What one admission asks for.
  struct Ask {
    int64_t sandboxes = 0;  // that will be running
    int64_t vcpus = 0;
    int64_t memory_mib = 0;
    int64_t creates = 0;         // against the rate: creates and fork children, not resumes
    int64_t metadata_bytes = 0;  // a create's metadata and envVars, as JSON
    int64_t env_vars_bytes = 0;
  };
  // A create of a sandbox with `vcpus` and `memory_mib`.
  static Ask CreateAsk(const CreateSandboxAction& action, int64_t vcpus, int64_t memory_mib);

  // What an admission holds until it is destroyed (movable; a moved-from Hold holds nothing).
  class Hold {
   public:
    Hold() = default;
    Hold(Hold&& other) noexcept;
    Hold& operator=(Hold&& other) noexcept;
    ~Hold();

   private:
    friend class QuotaGate;
    Hold(QuotaGate* gate, std::string team_id, Ask ask)
        : gate_(gate), team_id_(std::move(team_id)), ask_(ask) {}
    void Release();
    QuotaGate* gate_ = nullptr;
    std::string team_id_;
    Ask ask_;
  };

  // Admits `ask` for the team if its running sandboxes, plus the admissions in flight, plus
  // `ask` stay within its quotas; resource_exhausted naming the first limit it would pass
  // otherwise. An admitted ask's creates are counted against the rate at once, and stay counted
  // if the start fails.
  Result<Hold> Admit(const std::string& team_id, const Ask& ask);

  // Creates counted against the team's rate in the last 60 s.
  int64_t CreatesInLastMinute(const std::string& team_id);

 private:
  void Forget(const std::string& team_id, const Ask& ask);
  // Drops creates older than the window; the team's deque (may be empty).
  std::deque<std::chrono::steady_clock::time_point>& RecentCreates(const std::string& team_id);

  store::Store& store_;
  Clock clock_;
  std::mutex mu_;
  std::map<std::string, store::TeamUsage> in_flight_;
  std::map<std::string, std::deque<std::chrono::steady_clock::time_point>> creates_;
};

}  // namespace moat::api
