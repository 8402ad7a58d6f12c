#include "api/http/router.h"

#include <cstdlib>

#include "api/codec/query.h"

namespace moat::api::http {

std::vector<std::string> SplitPath(std::string_view path) {
  std::vector<std::string> out;
  if (!path.empty() && path.front() == '/') path.remove_prefix(1);
  size_t start = 0;
  for (;;) {
    size_t slash = path.find('/', start);
    out.emplace_back(path.substr(start, slash - start));
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  return out;
}

void Router::Add(std::string method, std::string pattern, Handler handler) {
  for (const auto& r : routes_) {
    if (r.method == method && r.pattern == pattern) std::abort();  // registered twice: a bug
  }
  Route r{std::move(method), pattern, SplitPath(pattern), std::move(handler)};
  routes_.push_back(std::move(r));
}

namespace {

bool IsParam(const std::string& seg) {
  return seg.size() > 2 && seg.front() == '{' && seg.back() == '}';
}

// How well `route` matches `segs`: -1 no match, otherwise the number of literal segments (the
// more literal, the more specific).
int Score(const Route& route, const std::vector<std::string>& segs) {
  if (route.segments.size() != segs.size()) return -1;
  int literal = 0;
  for (size_t i = 0; i < segs.size(); ++i) {
    if (IsParam(route.segments[i])) {
      if (segs[i].empty()) return -1;
    } else if (route.segments[i] == segs[i]) {
      ++literal;
    } else {
      return -1;
    }
  }
  return literal;
}

}  // namespace

Router::Match Router::Find(std::string_view method, std::string_view path) const {
  Match m;
  std::vector<std::string> segs = SplitPath(path);
  int best = -1;
  for (const auto& r : routes_) {
    int s = Score(r, segs);
    if (s < 0) continue;
    m.path_known = true;
    if (r.method == method && s > best) {
      best = s;
      m.route = &r;
    }
  }
  if (m.route != nullptr) {
    for (size_t i = 0; i < segs.size(); ++i) {
      const std::string& seg = m.route->segments[i];
      if (IsParam(seg)) {
        m.params[seg.substr(1, seg.size() - 2)] = codec::PercentDecode(segs[i], false);
      }
    }
  }
  return m;
}

}  // namespace moat::api::http
