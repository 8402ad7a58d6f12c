// The E2B template build API as the official SDK drives it (shared/E2B-TEMPLATES.md §1), for
// benchmarks: register (POST /v3/templates), upload the COPY files the server lacks (GET
// files/{hash}, PUT to the signed URL), start (POST /v2/templates/{id}/builds/{buildID}), poll the
// status every 200 ms until ready and the log is drained. The build's log comes back with times
// relative to the register call, and BuildTimeline turns it into phases.
#pragma once

#include <openssl/sha.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.h"
#include "common/fs.h"
#include "common/status.h"
#include "connect_client.h"

namespace moat::bench {

using nlohmann::json;

inline int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// "2026-08-22T10:00:01.123Z" → unix ms; -1 if it does not parse.
inline int64_t ParseTimestamp(const std::string& s) {
  std::tm tm{};
  const char* rest = ::strptime(s.c_str(), "%Y-%m-%dT%H:%M:%S", &tm);
  if (rest == nullptr) return -1;
  int64_t ms = static_cast<int64_t>(::timegm(&tm)) * 1000;
  if (*rest == '.') {
    int64_t scale = 100;
    for (++rest; *rest >= '0' && *rest <= '9'; ++rest) {
      ms += (*rest - '0') * scale;
      scale /= 10;
    }
  }
  return ms;
}

inline std::string Sha256Hex(const std::string& data) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  ::SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), md);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : md) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 15]);
  }
  return out;
}

struct UploadFile {
  std::string hash;  // 64 hex
  std::string path;  // the tar.gz on this machine
};

// One build as the SDK sees it, with its log relative to POST /v3/templates.
struct BuildRun {
  std::string template_id, build_id;
  double total_ms = 0;  // POST /v3/templates → status ready seen
  double upload_ms = 0;
  int uploads = 0;
  json entries = json::array();  // {t_ms, level, step, message}
};

class TemplateApi {
 public:
  TemplateApi(uint16_t port, std::string key) : port_(port), key_(std::move(key)) {}

  Result<json> Call(const std::string& method, const std::string& target, const json& body,
                    int expect) {
    return ControlCall("127.0.0.1", port_, key_, method, target, body, expect);
  }

  // The SDK's Template.build(): register, upload what is not present, start, poll every 200 ms
  // until ready (and drain the log).
  Result<BuildRun> Build(const std::string& name, int cpu_count, int memory_mb, const json& start,
                         const std::vector<UploadFile>& files) {
    BuildRun b;
    auto t0 = Clock::now();
    int64_t wall0 = NowUnixMs();
    MOAT_ASSIGN_OR_RETURN(
        json reg, Call("POST", "/v3/templates",
                       {{"name", name}, {"cpuCount", cpu_count}, {"memoryMB", memory_mb}}, 202));
    if (!reg.value("templateID", json()).is_string() || !reg.value("buildID", json()).is_string()) {
      return Internal("POST /v3/templates: " + reg.dump());
    }
    b.template_id = reg["templateID"];
    b.build_id = reg["buildID"];
    templates_.insert(b.template_id);
    auto tu = Clock::now();
    for (const auto& f : files) {
      MOAT_ASSIGN_OR_RETURN(bool uploaded, Upload(b.template_id, f));
      b.uploads += uploaded ? 1 : 0;
    }
    b.upload_ms = Ms(Clock::now() - tu);
    MOAT_RETURN_IF_ERROR(
        Call("POST", "/v2/templates/" + b.template_id + "/builds/" + b.build_id, start, 202)
            .status());
    size_t offset = 0;
    std::string status;
    auto deadline = Clock::now() + std::chrono::minutes(10);
    json reason;
    for (;;) {
      MOAT_ASSIGN_OR_RETURN(json st, Call("GET",
                                          "/templates/" + b.template_id + "/builds/" + b.build_id +
                                              "/status?logsOffset=" + std::to_string(offset),
                                          nullptr, 200));
      const json& page = st.value("logEntries", json::array());
      for (const auto& e : page) {
        int64_t ts = ParseTimestamp(e.value("timestamp", ""));
        b.entries.push_back({{"t_ms", ts < 0 ? -1 : ts - wall0},
                             {"level", e.value("level", "")},
                             {"step", e.value("step", "")},
                             {"message", e.value("message", "").substr(0, 300)}});
      }
      offset += page.size();
      status = st.value("status", "");
      if (status == "ready" && b.total_ms == 0) b.total_ms = Ms(Clock::now() - t0);
      if (status == "error") reason = st.value("reason", json());
      if (status != "ready" && status != "error" && status != "building" && status != "waiting") {
        return Internal("build " + b.build_id + ": unknown status " + st.dump());
      }
      // As the SDK: once finished, on until a page brings no entries (the log is drained).
      if ((status == "ready" || status == "error") && page.empty()) break;
      if (Clock::now() > deadline) return DeadlineExceeded("build " + b.build_id + " ran 10 min");
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    if (status != "ready") {
      std::string last;
      for (const auto& e : b.entries) last = e["message"];
      return Internal("build " + b.build_id + " of " + name + " failed: " + reason.dump() +
                      " (last log: " + last + ")");
    }
    return b;
  }

  Result<std::string> DeleteTemplates() {
    std::string errors;
    for (auto it = templates_.begin(); it != templates_.end();) {
      auto d = Call("DELETE", "/templates/" + *it, nullptr, 204);
      if (!d.ok()) {
        errors += d.status().ToString() + "; ";
        ++it;
      } else {
        it = templates_.erase(it);
      }
    }
    return errors;
  }

 private:
  // GET the files URL (with the Host the SDK would send, so the URL names this port) and PUT the
  // archive when the server does not have it. Whether it uploaded.
  Result<bool> Upload(const std::string& template_id, const UploadFile& f) {
    std::string host = "127.0.0.1:" + std::to_string(port_);
    HttpConnection conn;
    MOAT_RETURN_IF_ERROR(conn.Connect("127.0.0.1", port_));
    MOAT_ASSIGN_OR_RETURN(HttpResult r,
                          conn.Exchange("GET", "/templates/" + template_id + "/files/" + f.hash,
                                        {{"X-API-Key", key_}, {"Host", host}}, ""));
    json j = json::parse(r.body, nullptr, false);
    if (r.status != 201 || !j.is_object()) {
      return Internal("GET files/" + f.hash + ": HTTP " + std::to_string(r.status) + " " + r.body);
    }
    if (j.value("present", false) || !j.value("url", json()).is_string()) return false;
    std::string url = j["url"];
    std::string prefix = "http://" + host;
    if (url.rfind(prefix + "/", 0) != 0) return Internal("upload URL not on this port: " + url);
    MOAT_ASSIGN_OR_RETURN(std::string body, ReadFile(f.path));
    HttpConnection put;
    MOAT_RETURN_IF_ERROR(put.Connect("127.0.0.1", port_));
    MOAT_ASSIGN_OR_RETURN(HttpResult p,
                          put.Exchange("PUT", url.substr(prefix.size()), {{"Host", host}}, body));
    if (p.status / 100 != 2) {
      return Internal("PUT upload: HTTP " + std::to_string(p.status) + " " + p.body);
    }
    return true;
  }

  uint16_t port_;
  std::string key_;
  std::set<std::string> templates_;  // registered and not yet deleted
};

// The build's timeline from its log: the time of the first entry matching `pred`, or -1.
template <typename Pred>
inline double FirstAt(const json& entries, Pred pred) {
  for (const auto& e : entries) {
    if (pred(e)) return e["t_ms"].get<double>();
  }
  return -1;
}

inline bool StartsWith(const std::string& s, const char* p) {
  return s.rfind(p, 0) == 0;
}

// Number after `prefix` in the first message starting with it; -1 if none.
inline double NumberAfter(const json& entries, const std::string& prefix) {
  for (const auto& e : entries) {
    const std::string& m = e["message"].get_ref<const std::string&>();
    if (m.rfind(prefix, 0) == 0) return std::atof(m.c_str() + prefix.size());
  }
  return -1;
}

// Phases between the log's landmarks (ms): queue (POST → the build's first entry), base and
// builder boot, builder preparation (tmp, default user), the steps that ran (or the cache lookup
// when none did), flatten (+ e2fsck, /.e2b) and bake (moatd's template.baked), recording the
// result, and the poll's lag. Also the step timings the builder logs.
inline json BuildTimeline(const BuildRun& b, double bake_ms) {
  const json& e = b.entries;
  auto msg = [](const json& x) -> const std::string& {
    return x["message"].get_ref<const std::string&>();
  };
  double started = FirstAt(e, [&](const json& x) {
    return StartsWith(msg(x), "Build ") && msg(x).find(" started") != std::string::npos;
  });
  double vm =
      FirstAt(e, [&](const json& x) { return StartsWith(msg(x), "Builder VM started in"); });
  double first_run = FirstAt(e, [&](const json& x) {
    const std::string& s = x["step"].get_ref<const std::string&>();
    return !s.empty() && s != "base" && s != "finalize" && !StartsWith(msg(x), "CACHED ");
  });
  double flatten = FirstAt(e, [&](const json& x) { return msg(x) == "Flattening the disk"; });
  double snap =
      FirstAt(e, [&](const json& x) { return StartsWith(msg(x), "Template snapshot ready"); });
  double ready = FirstAt(e, [&](const json& x) {
    return StartsWith(msg(x), "Build ") && msg(x).size() > 9 &&
           msg(x).compare(msg(x).size() - 9, 9, " is ready") == 0;
  });
  json p = json::object();
  auto span = [&](const char* name, double a, double z) {
    if (a >= 0 && z >= 0) p[name] = z - a;
  };
  span("queue_ms", 0, started);
  if (vm >= 0) {
    span("base_and_builder_boot_ms", started, vm);
    span("builder_prepare_ms", vm, first_run);
    span("steps_ms", first_run, flatten);
  } else {
    span("cache_lookup_ms", started, flatten);
  }
  if (flatten >= 0 && snap >= 0) {
    if (bake_ms >= 0) {
      p["flatten_ms"] = snap - flatten - bake_ms;
      p["bake_ms"] = bake_ms;
    } else {
      p["flatten_and_bake_ms"] = snap - flatten;
    }
  }
  span("record_ms", snap, ready);
  if (ready >= 0) p["poll_lag_ms"] = b.total_ms - ready;
  json out = {{"total_ms", b.total_ms}, {"phases", p}};
  if (b.uploads > 0 || b.upload_ms > 1) {
    out["upload_ms"] = b.upload_ms;
    out["uploads"] = b.uploads;
  }
  double boot = NumberAfter(e, "Builder VM started in ");
  if (boot >= 0) out["builder_vm_boot_ms"] = boot;
  json steps = json::array(), cached = json::array();
  for (const auto& x : e) {
    const std::string& m = msg(x);
    if (StartsWith(m, "CACHED ")) cached.push_back(x["step"]);
    size_t took = m.find(" took ");
    if (StartsWith(m, "step ") && took != std::string::npos) {
      steps.push_back({{"step", x["step"]}, {"ms", std::atof(m.c_str() + took + 6)}});
    }
  }
  out["step_took_ms"] = steps;
  out["cached_steps"] = cached;
  std::string dominant;
  double most = -1;
  for (const auto& [k, v] : p.items()) {
    if (v.get<double>() > most) {
      most = v.get<double>();
      dominant = k;
    }
  }
  out["dominant_phase"] = dominant;
  out["log"] = b.entries;
  return out;
}

}  // namespace moat::bench
