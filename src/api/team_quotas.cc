#include "api/team_quotas.h"

#include <nlohmann/json.hpp>
#include <utility>

#include "api/codec/protojson.h"

namespace moat::api {
namespace {

using nlohmann::json;
using std::chrono::steady_clock;

constexpr auto kRateWindow = std::chrono::seconds(60);

Status Exceeded(std::string_view limit_name, int64_t limit, const std::string& current) {
  return ResourceExhausted("team quota " + std::string(limit_name) + " exceeded: the limit is " +
                           std::to_string(limit) + ", " + current);
}

// "…; 3 more asked" when an ask is for more than one.
std::string More(int64_t n, std::string_view unit) {
  return "this asks for " + std::to_string(n) + " more" + (unit.empty() ? "" : " ") +
         std::string(unit);
}

}  // namespace

TeamQuotas EffectiveQuotas(const store::QuotaSettings& settings) {
  TeamQuotas q;
  for (const QuotaField& f : QuotaFields()) {
    if (const auto& v = settings.*f.setting) q.*f.limit = *v;
  }
  return q;
}

const std::vector<QuotaField>& QuotaFields() {
  using S = store::QuotaSettings;
  static const std::vector<QuotaField> kFields = {
      {"maxSandboxes", &S::max_sandboxes, &TeamQuotas::max_sandboxes},
      {"maxVcpus", &S::max_vcpus, &TeamQuotas::max_vcpus},
      {"maxMemoryMiB", &S::max_memory_mib, &TeamQuotas::max_memory_mib},
      {"maxCreatesPerMinute", &S::max_creates_per_minute, &TeamQuotas::max_creates_per_minute},
      {"maxMetadataBytes", &S::max_metadata_bytes, &TeamQuotas::max_metadata_bytes},
  };
  return kFields;
}

Result<store::QuotaSettings> ParseQuotaUpdate(std::string_view text,
                                              const store::QuotaSettings& current) {
  MOAT_ASSIGN_OR_RETURN(json body, codec::ParseMessage(text));
  store::QuotaSettings out = current;
  for (const auto& [key, value] : body.items()) {
    const QuotaField* field = nullptr;
    for (const QuotaField& f : QuotaFields()) {
      if (f.name == key) field = &f;
    }
    if (field == nullptr) {
      std::string known;
      for (const QuotaField& f : QuotaFields()) {
        if (!known.empty()) known += ", ";
        known += f.name;
      }
      return InvalidArgument("unknown quota \"" + key + "\" (known: " + known + ")");
    }
    if (value.is_null()) {
      out.*field->setting = std::nullopt;
      continue;
    }
    if (!value.is_number_integer()) {
      return InvalidArgument("\"" + key + "\" must be an integer, or null for the default");
    }
    MOAT_ASSIGN_OR_RETURN(auto v, codec::IntField(body, key, 0, kMaxQuotaValue));
    out.*field->setting = v;
  }
  return out;
}

QuotaGate::QuotaGate(store::Store& store, Clock clock) : store_(store), clock_(std::move(clock)) {
  if (!clock_) clock_ = [] { return steady_clock::now(); };
}

QuotaGate::Ask QuotaGate::CreateAsk(const CreateSandboxAction& a, int64_t vcpus,
                                    int64_t memory_mib) {
  Ask ask{.sandboxes = 1, .vcpus = vcpus, .memory_mib = memory_mib, .creates = 1};
  // As the store keeps them; an empty map is "{}".
  ask.metadata_bytes = static_cast<int64_t>(json(a.metadata).dump().size());
  ask.env_vars_bytes = static_cast<int64_t>(json(a.env_vars).dump().size());
  return ask;
}

std::deque<steady_clock::time_point>& QuotaGate::RecentCreates(const std::string& team_id) {
  auto& times = creates_[team_id];
  auto oldest = clock_() - kRateWindow;
  while (!times.empty() && times.front() <= oldest) times.pop_front();
  return times;
}

Result<QuotaGate::Hold> QuotaGate::Admit(const std::string& team_id, const Ask& ask) {
  std::lock_guard lock(mu_);
  MOAT_ASSIGN_OR_RETURN(auto settings, store_.GetTeamQuotas(team_id));
  TeamQuotas q = EffectiveQuotas(settings);
  if (ask.metadata_bytes > q.max_metadata_bytes) {
    return Exceeded(
        "maxMetadataBytes", q.max_metadata_bytes,
        "and this create's metadata is " + std::to_string(ask.metadata_bytes) + " bytes of JSON");
  }
  if (ask.env_vars_bytes > q.max_metadata_bytes) {
    return Exceeded(
        "maxMetadataBytes", q.max_metadata_bytes,
        "and this create's envVars are " + std::to_string(ask.env_vars_bytes) + " bytes of JSON");
  }
  MOAT_ASSIGN_OR_RETURN(store::TeamUsage used, store_.RunningUsage(team_id));
  if (auto it = in_flight_.find(team_id); it != in_flight_.end()) {
    used.sandboxes += it->second.sandboxes;
    used.vcpus += it->second.vcpus;
    used.memory_mib += it->second.memory_mib;
  }
  if (ask.sandboxes > 0 && used.sandboxes + ask.sandboxes > q.max_sandboxes) {
    return Exceeded("maxSandboxes", q.max_sandboxes,
                    "the team has " + std::to_string(used.sandboxes) +
                        " running or starting sandboxes and " + More(ask.sandboxes, "") +
                        (used.sandboxes > 0 ? "; kill or pause one, or ask an admin to raise it"
                                            : "; ask an admin to raise it"));
  }
  if (ask.vcpus > 0 && used.vcpus + ask.vcpus > q.max_vcpus) {
    return Exceeded("maxVcpus", q.max_vcpus,
                    "the team's running sandboxes have " + std::to_string(used.vcpus) +
                        " vCPUs and " + More(ask.vcpus, "vCPUs"));
  }
  if (ask.memory_mib > 0 && used.memory_mib + ask.memory_mib > q.max_memory_mib) {
    return Exceeded("maxMemoryMiB", q.max_memory_mib,
                    "the team's running sandboxes have " + std::to_string(used.memory_mib) +
                        " MiB and " + More(ask.memory_mib, "MiB"));
  }
  if (ask.creates > 0) {
    auto& times = RecentCreates(team_id);
    auto made = static_cast<int64_t>(times.size());
    if (made + ask.creates > q.max_creates_per_minute) {
      // When the oldest create leaves the window (which frees one; an ask for more may wait
      // longer).
      auto wait = times.empty() ? kRateWindow : times.front() + kRateWindow - clock_();
      auto secs = std::chrono::ceil<std::chrono::seconds>(wait).count();
      if (times.empty()) creates_.erase(team_id);
      return Exceeded("maxCreatesPerMinute", q.max_creates_per_minute,
                      "the team created " + std::to_string(made) +
                          " sandboxes in the last 60 s and " + More(ask.creates, "") +
                          "; try again in " + std::to_string(secs) + " s");
    }
    for (int64_t i = 0; i < ask.creates; ++i) times.push_back(clock_());
  }
  store::TeamUsage& held = in_flight_[team_id];
  held.sandboxes += ask.sandboxes;
  held.vcpus += ask.vcpus;
  held.memory_mib += ask.memory_mib;
  return Hold(this, team_id, ask);
}

int64_t QuotaGate::CreatesInLastMinute(const std::string& team_id) {
  std::lock_guard lock(mu_);
  auto n = static_cast<int64_t>(RecentCreates(team_id).size());
  if (n == 0) creates_.erase(team_id);
  return n;
}

void QuotaGate::Forget(const std::string& team_id, const Ask& ask) {
  std::lock_guard lock(mu_);
  auto it = in_flight_.find(team_id);
  if (it == in_flight_.end()) return;
  it->second.sandboxes -= ask.sandboxes;
  it->second.vcpus -= ask.vcpus;
  it->second.memory_mib -= ask.memory_mib;
  if (it->second.sandboxes <= 0 && it->second.vcpus <= 0 && it->second.memory_mib <= 0) {
    in_flight_.erase(it);
  }
}

QuotaGate::Hold::Hold(Hold&& other) noexcept
    : gate_(std::exchange(other.gate_, nullptr)),
      team_id_(std::move(other.team_id_)),
      ask_(other.ask_) {}

QuotaGate::Hold& QuotaGate::Hold::operator=(Hold&& other) noexcept {
  if (this != &other) {
    Release();
    gate_ = std::exchange(other.gate_, nullptr);
    team_id_ = std::move(other.team_id_);
    ask_ = other.ask_;
  }
  return *this;
}

QuotaGate::Hold::~Hold() {
  Release();
}

void QuotaGate::Hold::Release() {
  if (gate_ != nullptr) gate_->Forget(team_id_, ask_);
  gate_ = nullptr;
}

}  // namespace moat::api
