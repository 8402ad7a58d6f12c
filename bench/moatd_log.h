// moatd's structured log as a benchmark reads it (`ts=… level=… event=… key=value`, values
// quoted when needed): the warm clones each template has ready, whether a create got one, how
// long a template's bake took. moatd exposes none of these per template over HTTP.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

namespace moat::bench {

// moatd's log, one `ts=… level=… event=… key=value` line at a time (values quoted when needed).
using LogFields = std::map<std::string, std::string>;
inline std::vector<LogFields> ParseLog(const std::string& text) {
  std::vector<LogFields> out;
  size_t at = 0;
  while (at < text.size()) {
    size_t eol = text.find('\n', at);
    if (eol == std::string::npos) break;  // a line still being written
    LogFields f;
    size_t i = at;
    while (i < eol) {
      size_t eq = text.find('=', i);
      if (eq == std::string::npos || eq > eol) break;
      std::string k = text.substr(i, eq - i);
      std::string v;
      i = eq + 1;
      if (i < eol && text[i] == '"') {
        for (++i; i < eol && text[i] != '"'; ++i) {
          if (text[i] == '\\' && i + 1 < eol) ++i;
          v.push_back(text[i]);
        }
        ++i;
      } else {
        size_t sp = text.find(' ', i);
        if (sp == std::string::npos || sp > eol) sp = eol;
        v = text.substr(i, sp - i);
        i = sp;
      }
      f[k] = v;
      while (i < eol && text[i] == ' ') ++i;
    }
    out.push_back(std::move(f));
    at = eol + 1;
  }
  return out;
}

// Warm clones ready per template name ("base", or a build id) as moatd's log tells it.
inline std::map<std::string, int> PooledClones(const std::vector<LogFields>& log) {
  std::map<std::string, std::string> pooled;  // local id → template
  for (const auto& f : log) {
    auto ev = f.find("event");
    if (ev == f.end()) continue;
    if (ev->second == "agent.warm_clone_added" && f.count("template")) {
      pooled[f.count("sandbox") ? f.at("sandbox") : ""] = f.at("template");
    } else if (ev->second == "sandbox.claimed" && f.count("local_id")) {
      pooled.erase(f.at("local_id"));
    }
  }
  std::map<std::string, int> out;
  for (const auto& [id, t] : pooled) ++out[t];
  return out;
}

// The agent's own time (ms) to hand sandbox `sandbox_id` a warm clone (`sandbox.claimed`
// ready_us); -1 if it got none.
inline double WarmClaimMs(const std::vector<LogFields>& log, const std::string& sandbox_id) {
  for (const auto& f : log) {
    auto ev = f.find("event"), sb = f.find("sandbox"), us = f.find("ready_us");
    if (ev != f.end() && ev->second == "sandbox.claimed" && sb != f.end() &&
        sb->second == sandbox_id) {
      return us == f.end() ? 0 : std::atof(us->second.c_str()) / 1000.0;
    }
  }
  return -1;
}

// The `template.baked` line's ms for template `name`; -1 if none.
inline double BakeMs(const std::vector<LogFields>& log, const std::string& name) {
  for (const auto& f : log) {
    auto ev = f.find("event"), t = f.find("template"), ms = f.find("ms");
    if (ev != f.end() && ev->second == "template.baked" && t != f.end() && t->second == name &&
        ms != f.end()) {
      return std::atof(ms->second.c_str());
    }
  }
  return -1;
}

}  // namespace moat::bench
