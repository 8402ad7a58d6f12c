#include "common/egress_policy.h"

#include <algorithm>

namespace moat::net {
namespace {

// One of the `network` lists. Domain names go to `domains` when it is given (allowOut), and
// are an error otherwise (denyOut takes addresses only, as in E2B).
Result<std::vector<Ipv4Cidr>> ParseList(const nlohmann::json& network, const char* key,
                                        std::vector<std::string>* domains) {
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
      if (!looks_like_domain) return cidr.status().Annotate(std::string("network.") + key);
      if (domains == nullptr) {
        return InvalidArgument(std::string("network.") + key + ": \"" + text.substr(0, 128) +
                               "\" is a domain name; only allowOut takes domain names");
      }
      auto domain = NormalizeDomain(text);
      if (!domain.ok()) return domain.status().Annotate(std::string("network.") + key);
      domains->push_back(std::move(*domain));
      continue;
    }
    out.push_back(*cidr);
  }
  if (domains != nullptr) {
    std::sort(domains->begin(), domains->end());
    domains->erase(std::unique(domains->begin(), domains->end()), domains->end());
  }
  return NormalizeCidrs(std::move(out));
}

bool IsLabelChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
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

std::string LowerAscii(std::string_view text) {
  std::string s(text);
  for (char& c : s) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return s;
}

Result<std::string> NormalizeDomain(std::string_view text) {
  std::string d = LowerAscii(text);
  if (!d.empty() && d.back() == '.') d.pop_back();
  const std::string quoted = "\"" + std::string(text.substr(0, 128)) + "\"";
  if (d.empty() || d.size() > 253)
    return InvalidArgument(quoted + ": a domain name has 1..253 characters");
  std::string_view rest = d;
  if (rest.starts_with("*.")) rest.remove_prefix(2);
  size_t start = 0;
  while (start <= rest.size()) {
    size_t end = rest.find('.', start);
    if (end == std::string_view::npos) end = rest.size();
    std::string_view label = rest.substr(start, end - start);
    if (label.empty() || label.size() > 63) {
      return InvalidArgument(quoted + ": each label of a domain name has 1..63 characters");
    }
    if (!std::all_of(label.begin(), label.end(), IsLabelChar)) {
      return InvalidArgument(quoted +
                             ": not a domain name (letters, digits, '-', '_'; \"*.\" only first)");
    }
    start = end + 1;
  }
  return d;
}

bool EgressPolicy::AllowsDomain(std::string_view host) const {
  std::string h = LowerAscii(host);
  if (!h.empty() && h.back() == '.') h.pop_back();
  if (h.empty()) return false;
  for (const std::string& d : allow_domains) {
    if (d.starts_with("*.")) {
      // "*.example.com" matches names under example.com, not example.com itself.
      std::string_view suffix = std::string_view(d).substr(1);  // ".example.com"
      if (h.size() > suffix.size() && h.ends_with(suffix)) return true;
    } else if (h == d) {
      return true;
    }
  }
  return false;
}

Result<EgressPolicy> EgressPolicy::FromE2b(const nlohmann::json& network,
                                           std::optional<bool> allow_internet_access) {
  EgressPolicy p;
  p.allow_internet_access = allow_internet_access.value_or(true);
  if (network.is_null()) return p;
  if (!network.is_object()) return InvalidArgument("network must be an object");
  // Options that would change where traffic goes or what it carries are refused rather than
  // ignored: a sandbox must never run with less control than its creator asked for.
  for (const char* unsupported : {"egressProxy", "rules"}) {
    auto it = network.find(unsupported);
    if (it != network.end() && !it->is_null() && !(it->is_object() && it->empty()) &&
        !(it->is_array() && it->empty())) {
      return InvalidArgument(std::string("network.") + unsupported + " is not supported by moat");
    }
  }
  MOAT_ASSIGN_OR_RETURN(p.allow_out, ParseList(network, "allowOut", &p.allow_domains));
  MOAT_ASSIGN_OR_RETURN(p.deny_out, ParseList(network, "denyOut", nullptr));
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
          {"deny_out", list(deny_out)},
          {"allow_domains", allow_domains}};
}

Result<EgressPolicy> EgressPolicy::FromJson(const nlohmann::json& j) {
  if (!j.is_object() || !j.contains("allow_internet_access") ||
      !j["allow_internet_access"].is_boolean()) {
    return InvalidArgument("egress policy: allow_internet_access (bool) is required");
  }
  // allowOut takes CIDRs and domain names alike; records written before domains existed have
  // no allow_domains.
  nlohmann::json allow = j.value("allow_out", nlohmann::json::array());
  nlohmann::json domains = j.value("allow_domains", nlohmann::json::array());
  if (!allow.is_array() || !domains.is_array()) {
    return InvalidArgument("egress policy: allow_out and allow_domains must be arrays");
  }
  allow.insert(allow.end(), domains.begin(), domains.end());
  nlohmann::json network = {{"allowOut", allow},
                            {"denyOut", j.value("deny_out", nlohmann::json::array())}};
  return FromE2b(network, j["allow_internet_access"].get<bool>());
}

}  // namespace moat::net
