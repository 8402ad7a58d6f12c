// Router: maps (method, path pattern) to a handler. Patterns are literal segments and
// `{name}` parameters ("/sandboxes/{sandboxID}/timeout"); a parameter matches one non-empty
// segment. Literal segments win over parameters, so registration order does not matter.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "api/http/message.h"

namespace moat::api::http {

using Handler = std::function<void(Request&, ResponseWriter&)>;

struct Route {
  std::string method;
  std::string pattern;
  std::vector<std::string> segments;  // pattern split on '/'
  Handler handler;
};

class Router {
 public:
  // Registers a route; a duplicate (method, pattern) is a programming error and aborts.
  void Add(std::string method, std::string pattern, Handler handler);

  struct Match {
    const Route* route = nullptr;               // null: nothing matched
    bool path_known = false;                    // some route has this path (another method)
    std::map<std::string, std::string> params;  // percent-decoded parameter values
  };
  Match Find(std::string_view method, std::string_view path) const;
  const std::vector<Route>& routes() const { return routes_; }

 private:
  std::vector<Route> routes_;
};

// "a/b//c" → {"a","b","","c"} without the leading empty segment of "/a".
std::vector<std::string> SplitPath(std::string_view path);

}  // namespace moat::api::http
