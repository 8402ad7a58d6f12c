#include "net/egress_policy.h"

#include <algorithm>

namespace moat::net {
namespace {

Result<std::vector<Ipv4Cidr>> ParseList(const nlohmann::json& network, const char* key) {
  std::vector<Ipv4Cidr> out;
  if (!network.contains(key) || network[key].is_null()) return out;
  const auto& list = network[key];
  if (!list.is_array()) return InvalidArgument(std::string("network.") + key + " must be an array");
  if (list.size() > kMaxPolicyEntries) {
    return InvalidArgument(std::string("network.") + key + " has more than " +
                           std::to_string(kMaxPolicyEntries) + " entries");
  }
  for (const auto& item : list) {
    if (!item.is_string()) {
      return InvalidArgument(std::string("network.") + key + " entries must be strings");
    }
    const std::string& text = item.get_ref<const std::string&>();
    auto cidr = Ipv4Cidr::Parse(text);
    if (!cidr.ok()) {
      bool looks_like_domain = std::any_of(text.begin(), text.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '*';
      });
      if (looks_like_domain) {
        return InvalidArgument(std::string("network.") + key + ": domain names (\"" +
                               text.substr(0, 128) +
                               "\") are not supported yet; give IPv4 addresses or CIDRs");
      }
      return cidr.status().Annotate(std::string("network.") + key);
    }
    out.push_back(*cidr);
  }
  return NormalizeCidrs(std::move(out));
}

}  // namespace

std::vector<Ipv4Cidr> NormalizeCidrs(std::vector<Ipv4Cidr> cidrs) {
  // Wider prefixes first among equal addresses, so that a contained entry follows its
  // container and is dropped.
  std::sort(cidrs.begin(), cidrs.end(), [](const Ipv4Cidr& a, const Ipv4Cidr& b) {
    if (a.address.value != b.address.value) return a.address.value < b.address.value;
    return a.prefix < b.prefix;
  });
  std::vector<Ipv4Cidr> out;
  for (const auto& c : cidrs) {
    if (!out.empty() && out.back().Contains(c.address) && out.back().prefix <= c.prefix) continue;
    out.push_back(c);
  }
  return out;
}

Result<EgressPolicy> EgressPolicy::FromE2b(const nlohmann::json& network,
                                           std::optional<bool> allow_internet_access) {
  EgressPolicy p;
  p.allow_internet_access = allow_internet_access.value_or(true);
  if (network.is_null()) return p;
  if (!network.is_object()) return InvalidArgument("network must be an object");
  MOAT_ASSIGN_OR_RETURN(p.allow_out, ParseList(network, "allowOut"));
  MOAT_ASSIGN_OR_RETURN(p.deny_out, ParseList(network, "denyOut"));
  return p;
}

nlohmann::json EgressPolicy::ToJson() const {
  auto list = [](const std::vector<Ipv4Cidr>& cidrs) {
    nlohmann::json a = nlohmann::json::array();
    for (const auto& c : cidrs) a.push_back(c.ToString());
    return a;
  };
  return {{"allow_internet_access", allow_internet_access},
          {"allow_out", list(allow_out)},
          {"deny_out", list(deny_out)}};
}

Result<EgressPolicy> EgressPolicy::FromJson(const nlohmann::json& j) {
  if (!j.is_object() || !j.contains("allow_internet_access") ||
      !j["allow_internet_access"].is_boolean()) {
    return InvalidArgument("egress policy: allow_internet_access (bool) is required");
  }
  nlohmann::json network = {{"allowOut", j.value("allow_out", nlohmann::json::array())},
                            {"denyOut", j.value("deny_out", nlohmann::json::array())}};
  return FromE2b(network, j["allow_internet_access"].get<bool>());
}

}  // namespace moat::net
