#include "api/sandbox_actions.h"

#include <nlohmann/json.hpp>

#include "api/codec/protojson.h"

namespace moat::api {

using nlohmann::json;

namespace {

Result<json> ParseObject(std::string_view body) {
  if (body.empty()) return json::object();
  json j;
  // nlohmann's exceptions stop here; its message says where the JSON broke.
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {
    return InvalidArgument(std::string("malformed JSON body: ") + e.what());
  }
  if (!j.is_object()) return InvalidArgument("request body must be a JSON object");
  return j;
}

Result<int64_t> TimeoutField(const json& body, std::string_view field, int64_t default_s) {
  MOAT_ASSIGN_OR_RETURN(auto v, codec::IntField(body, field, INT64_MIN, INT64_MAX));
  if (!v) return default_s;
  if (*v <= 0)
    return InvalidArgument("\"" + std::string(field) + "\" must be a positive number of seconds");
  if (*v > kMaxTimeoutSeconds) {
    return InvalidArgument("\"" + std::string(field) + "\" must be at most " +
                           std::to_string(kMaxTimeoutSeconds) + " seconds");
  }
  return *v;
}

Result<int> LimitParam(const codec::QueryParams& q) {
  auto l = codec::QueryValue(q, "limit");
  if (!l || l->empty()) return 100;
  char* end = nullptr;
  long v = std::strtol(l->c_str(), &end, 10);
  if (*end != '\0' || v < 1 || v > 100) {
    return InvalidArgument("limit: must be 1..100, got \"" + *l + "\"");
  }
  return static_cast<int>(v);
}

}  // namespace

Result<CreateSandboxAction> ParseCreateSandbox(std::string_view text, int64_t default_timeout_s) {
  MOAT_ASSIGN_OR_RETURN(json body, ParseObject(text));
  CreateSandboxAction a;
  MOAT_ASSIGN_OR_RETURN(auto tmpl, codec::StringField(body, "templateID"));
  if (tmpl) {
    if (tmpl->empty()) return InvalidArgument("\"templateID\" must not be empty");
    a.template_id = *tmpl;
  }
  MOAT_ASSIGN_OR_RETURN(a.timeout_s, TimeoutField(body, "timeout", default_timeout_s));
  MOAT_ASSIGN_OR_RETURN(a.metadata, codec::StringMapField(body, "metadata"));
  MOAT_ASSIGN_OR_RETURN(a.env_vars, codec::StringMapField(body, "envVars"));
  MOAT_ASSIGN_OR_RETURN(auto auto_pause, codec::BoolField(body, "autoPause"));
  a.auto_pause = auto_pause.value_or(false);
  MOAT_ASSIGN_OR_RETURN(auto internet, codec::BoolField(body, "allow_internet_access"));
  const json* network = codec::Field(body, "network");
  MOAT_ASSIGN_OR_RETURN(a.egress,
                        net::EgressPolicy::FromE2b(network ? *network : json(nullptr), internet));
  if (network != nullptr && network->is_object() && network->contains("allowPublicTraffic")) {
    const json& v = (*network)["allowPublicTraffic"];
    if (!v.is_boolean()) return InvalidArgument("\"network.allowPublicTraffic\" must be a boolean");
    a.allow_public_traffic = v.get<bool>();
  }
  for (const auto& [k, v] : a.env_vars) {
    if (k.empty() || k.find('=') != std::string::npos || k.find('\0') != std::string::npos) {
      return InvalidArgument("\"envVars\": bad variable name \"" + k + "\"");
    }
  }
  MOAT_ASSIGN_OR_RETURN(auto keep_memory, codec::BoolField(body, "autoPauseMemory"));
  a.options.auto_pause_memory = keep_memory.value_or(true);
  if (const json* resume = codec::Field(body, "autoResume"); resume != nullptr) {
    // {"enabled": bool}, as the SDK sends it; a bare bool is taken too.
    const json* enabled = resume->is_object() ? codec::Field(*resume, "enabled") : resume;
    if (enabled == nullptr || !enabled->is_boolean()) {
      return InvalidArgument("\"autoResume\" must be {\"enabled\": true|false}");
    }
    a.options.auto_resume = enabled->get<bool>();
  }
  if (a.options.auto_resume && !a.auto_pause) {
    return InvalidArgument(
        "\"autoResume\" needs \"autoPause\": a sandbox resumes on traffic "
        "only when its timeout pauses it");
  }
  if (a.options.auto_resume && !a.options.auto_pause_memory) {
    return InvalidArgument(
        "\"autoResume\" cannot be combined with \"autoPauseMemory\": false "
        "(a filesystem-only pause reboots; it is resumed explicitly)");
  }
  if (network != nullptr && network->is_object()) {
    MOAT_ASSIGN_OR_RETURN(auto mask, codec::StringField(*network, "maskRequestHost"));
    if (mask && !mask->empty()) {
      // It becomes a header line: printable ASCII, no spaces, a host name's length.
      bool ok = mask->size() <= 255;
      for (unsigned char c : *mask) ok = ok && c > 0x20 && c < 0x7f;
      if (!ok) {
        return InvalidArgument(
            "\"network.maskRequestHost\": not a host name (printable ASCII "
            "without spaces, at most 255 bytes)");
      }
      a.options.mask_request_host = *mask;
    }
  }
  return a;
}

Result<net::EgressPolicy> ParseNetworkUpdate(std::string_view text) {
  MOAT_ASSIGN_OR_RETURN(json body, ParseObject(text));
  MOAT_ASSIGN_OR_RETURN(auto internet, codec::BoolField(body, "allow_internet_access"));
  // The update body is the `network` object itself, plus allow_internet_access.
  json network = body;
  network.erase("allow_internet_access");
  return net::EgressPolicy::FromE2b(network, internet);
}

Result<bool> ParsePauseKeepsMemory(std::string_view text) {
  MOAT_ASSIGN_OR_RETURN(json body, ParseObject(text));
  MOAT_ASSIGN_OR_RETURN(auto memory, codec::BoolField(body, "memory"));
  return memory.value_or(true);
}

Result<int64_t> ParseSeconds(std::string_view text, std::string_view field,
                             std::optional<int64_t> default_s) {
  MOAT_ASSIGN_OR_RETURN(json body, ParseObject(text));
  if (!default_s && codec::Field(body, field) == nullptr) {
    return InvalidArgument("\"" + std::string(field) + "\" is required");
  }
  return TimeoutField(body, field, default_s.value_or(0));
}

Result<store::SandboxFilter> ParseListQuery(const codec::QueryParams& q, bool v2) {
  store::SandboxFilter f;
  if (auto m = codec::QueryValue(q, "metadata"); m && !m->empty()) {
    MOAT_ASSIGN_OR_RETURN(f.metadata, codec::ParseMetadataFilter(*m));
  }
  if (!v2) {
    f.states = StatesShownAs("running");
    f.limit = 100;
    return f;
  }
  if (auto s = codec::QueryValue(q, "state"); s && !s->empty()) {
    size_t start = 0;
    for (;;) {
      size_t comma = s->find(',', start);
      std::string st = s->substr(start, comma == std::string::npos ? comma : comma - start);
      if (st != "running" && st != "paused" && st != "error") {
        return InvalidArgument("state: expected running, paused or error, got \"" + st + "\"");
      }
      for (SandboxState state : StatesShownAs(st)) f.states.push_back(state);
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  }
  if (auto t = codec::QueryValue(q, "template"); t) f.template_id = *t;
  if (auto o = codec::QueryValue(q, "order"); o && !o->empty()) {
    if (*o != "asc" && *o != "desc")
      return InvalidArgument("order: expected asc or desc, got \"" + *o + "\"");
    f.ascending = *o == "asc";
  }
  MOAT_ASSIGN_OR_RETURN(f.limit, LimitParam(q));
  if (auto t = codec::QueryValue(q, "nextToken"); t) f.next_token = *t;
  if (auto a = codec::QueryValue(q, "startedAfter"); a && !a->empty()) {
    auto secs = codec::ParseRfc3339(*a);
    if (!secs.ok()) return secs.status().Annotate("startedAfter");
    f.started_after_ms = *secs * 1000;
  }
  return f;
}

Result<MetricsRange> ParseMetricsQuery(const codec::QueryParams& q) {
  MetricsRange r;
  for (auto [name, field] : {std::pair{"start", &r.start_s}, std::pair{"end", &r.end_s}}) {
    auto v = codec::QueryValue(q, name);
    if (!v || v->empty()) continue;
    char* end = nullptr;
    errno = 0;
    long long secs = std::strtoll(v->c_str(), &end, 10);
    if (*end != '\0' || errno != 0 || secs < 0) {
      return InvalidArgument(std::string(name) + ": expected unix seconds, got \"" + *v + "\"");
    }
    *field = secs;
  }
  if (r.start_s && r.end_s && *r.start_s > *r.end_s) {
    return InvalidArgument("start is after end");
  }
  return r;
}

Result<CreateSnapshotAction> ParseCreateSnapshot(std::string_view text) {
  MOAT_ASSIGN_OR_RETURN(json body, ParseObject(text));
  CreateSnapshotAction a;
  MOAT_ASSIGN_OR_RETURN(auto name, codec::StringField(body, "name"));
  if (!name) return a;
  if (name->empty() || name->size() > 128) {
    return InvalidArgument("\"name\" must be 1 to 128 characters long");
  }
  for (char c : *name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '/' || c == '-';
    if (!ok) {
      return InvalidArgument("\"name\" may hold only letters, digits and . _ : / - (got \"" +
                             *name + "\")");
    }
  }
  if (*name == "base") return InvalidArgument("\"name\": \"base\" is the built-in template");
  a.name = *name;
  return a;
}

Result<store::SnapshotFilter> ParseSnapshotListQuery(const codec::QueryParams& q) {
  store::SnapshotFilter f;
  if (auto s = codec::QueryValue(q, "sandboxID")) f.sandbox_id = *s;
  if (auto n = codec::QueryValue(q, "name")) f.name = *n;
  MOAT_ASSIGN_OR_RETURN(f.limit, LimitParam(q));
  if (auto t = codec::QueryValue(q, "nextToken")) f.next_token = *t;
  return f;
}

}  // namespace moat::api
