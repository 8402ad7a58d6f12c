// libFuzzer target for the control API's JSON bodies (E2B-WIRE §2): POST /sandboxes (template,
// timeout, metadata, envVars, autoPause, allow_internet_access, network), PUT .../network, the
// {"timeout"} / {"duration"} bodies, POST .../snapshots and POST /keys. Every body comes from a
// client. Checks that no parser throws or crashes, that parsed values keep the bounds their
// parsers promise, and that an egress policy survives its record (ToJson, FromJson) unchanged.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string_view>

#include "api/key_admin.h"
#include "api/sandbox_actions.h"
#include "common/egress_policy.h"

namespace api = moat::api;
namespace net = moat::net;

namespace {

void CheckPolicy(const net::EgressPolicy& p) {
  if (p.allow_out.size() > net::kMaxPolicyEntries || p.deny_out.size() > net::kMaxPolicyEntries ||
      p.allow_domains.size() > net::kMaxPolicyEntries) {
    std::abort();
  }
  if (net::NormalizeCidrs(p.allow_out) != p.allow_out) std::abort();
  if (net::NormalizeCidrs(p.deny_out) != p.deny_out) std::abort();
  for (const auto& d : p.allow_domains) {
    auto n = net::NormalizeDomain(d);
    if (!n.ok() || *n != d) std::abort();
    if (!p.AllowsDomain(d.starts_with("*.") ? "x" + d.substr(1) : d)) std::abort();
  }
  auto again = net::EgressPolicy::FromJson(p.ToJson());
  if (!again.ok() || !(*again == p)) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  // The first byte picks the route (its value mod 8, so '0'..'7' in the seeds), the rest is the
  // body: one parse per input keeps the campaign fast. 0/1: create (v2, v1), 2: network
  // update, 3/4: timeout (required) and duration (defaulted), 5: snapshot, 6: key, 7: a stored
  // egress policy record.
  std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);  // bytes as chars
  switch (data[0] % 8) {
    case 0:
    case 1: {
      auto a = api::ParseCreateSandbox(in, data[0] % 8 == 1 ? 15 : 300);
      if (!a.ok()) break;
      if (a->template_id.empty()) std::abort();
      if (a->timeout_s < 1 || a->timeout_s > api::kMaxTimeoutSeconds) std::abort();
      for (const auto& [k, v] : a->env_vars) {
        if (k.empty() || k.find('=') != std::string::npos) std::abort();
      }
      CheckPolicy(a->egress);
      break;
    }
    case 2: {
      auto update = api::ParseNetworkUpdate(in);
      if (update.ok()) CheckPolicy(*update);
      break;
    }
    case 3: {
      auto s = api::ParseSeconds(in, "timeout", std::nullopt);
      if (s.ok() && (*s < 1 || *s > api::kMaxTimeoutSeconds)) std::abort();
      break;
    }
    case 4: {
      auto d = api::ParseSeconds(in, "duration", 0);
      if (d.ok() && (*d < 0 || *d > api::kMaxTimeoutSeconds)) std::abort();
      break;
    }
    case 5: {
      auto snap = api::ParseCreateSnapshot(in);
      if (snap.ok() && (snap->name.size() > 128 || snap->name == "base")) std::abort();
      break;
    }
    case 6: {
      auto key = api::ParseCreateKey(in);
      if (key.ok() &&
          (key->name.empty() || key->name.size() > 128 || (key->new_team && key->team_id))) {
        std::abort();
      }
      break;
    }
    case 7: {
      // A record as the agent reads it back from disk (slot records are written by moat, but
      // a corrupt one must be an error, not a crash).
      auto j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
      auto p = net::EgressPolicy::FromJson(j);
      if (p.ok()) CheckPolicy(*p);
      break;
    }
  }
  return 0;
}
