// The CLI's view of moatd: where it is and with which key (MOAT_API_URL, MOAT_API_KEY), control
// calls with `X-API-Key`, and the headers an envd call needs for one sandbox (E2B-WIRE §1).
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "cli/http_client.h"
#include "common/status.h"

namespace moat::cli {

using nlohmann::json;

inline constexpr const char* kDefaultApiUrl = "http://127.0.0.1:3000";
inline constexpr const char* kEnvdPort = "49983";

struct ApiConfig {
  BaseUrl base;
  std::string api_key;
};

// MOAT_API_URL (default kDefaultApiUrl) and MOAT_API_KEY (may be empty: moatd then answers 401).
Result<ApiConfig> ApiConfigFromEnv();

// The error a non-2xx response stands for: the body's JSON `message` (control API, envd HTTP and
// Connect unary errors all carry one), else "HTTP <status>"; the code follows the status.
Status ResponseError(const HttpResponse& response);

class ApiClient;

// One control-API command of the CLI: `call` makes its request(s) with a client configured from
// the environment and sets `text`, what people see; the response is printed as JSON (--json) or
// as that text, an error reported. The exit status is 0, or what `exit_code` makes of the
// printed response.
using ControlCall = std::function<Result<json>(ApiClient& api, std::string* text)>;
int RunControlCall(bool as_json, const ControlCall& call,
                   const std::function<int(const json&)>& exit_code = nullptr);

class ApiClient {
 public:
  explicit ApiClient(ApiConfig config) : config_(std::move(config)) {}

  // A control route. `body` is sent as JSON unless null. Returns the parsed response body, or
  // null for an empty one (204). `next_token`, if given, receives the X-Next-Token header.
  Result<json> Control(const std::string& method, const std::string& target,
                       const json& body = nullptr, std::string* next_token = nullptr);

  // Every page of a paged list route (`path` + `query`, X-Next-Token), as one JSON array.
  Result<json> ListAll(const std::string& path, const std::string& query);

  // Up to `limit` items of a route that pages in its body ({"items":[…],"nextToken":"…"}:
  // /history, /audit), following nextToken; `query` is "" or "?…" without limit. Returns the same
  // shape: the items, and the token of the page after them ("" when there is none).
  Result<json> ListItems(const std::string& path, const std::string& query, int limit);

  // A GET whose 2xx body is not JSON (text/csv, text/plain), as it came.
  Result<std::string> GetText(const std::string& target);

  // Routing headers for sandbox `id`'s envd, its access token (looked up with GET
  // /sandboxes/{id}) and, when `user` is set, Basic auth naming that Linux user.
  Result<std::vector<std::pair<std::string, std::string>>> EnvdHeaders(const std::string& id,
                                                                       const std::string& user);

  Result<HttpResponse> Send(const HttpRequest& request, const BodySink& sink = nullptr) {
    return SendHttp(config_.base, request, sink);
  }

  const BaseUrl& base() const { return config_.base; }

 private:
  ApiConfig config_;
};

}  // namespace moat::cli
