#include "cli/api_client.h"

#include <algorithm>
#include <cstdlib>

#include "api/codec/protojson.h"
#include "api/codec/query.h"
#include "cli/output.h"

namespace moat::cli {
namespace {

ErrorCode CodeForHttpStatus(int status) {
  switch (status) {
    case 400:
    case 413: return ErrorCode::kInvalidArgument;
    case 401: return ErrorCode::kUnauthenticated;
    case 403: return ErrorCode::kPermissionDenied;
    case 404: return ErrorCode::kNotFound;
    case 409: return ErrorCode::kFailedPrecondition;
    case 429: return ErrorCode::kResourceExhausted;
    case 502:
    case 503: return ErrorCode::kUnavailable;
    case 504: return ErrorCode::kDeadlineExceeded;
    default: return ErrorCode::kInternal;
  }
}

}  // namespace

int RunControlCall(bool as_json, const ControlCall& call,
                   const std::function<int(const json&)>& exit_code) {
  auto config = ApiConfigFromEnv();
  if (!config.ok()) return ReportError(config.status());
  ApiClient api(std::move(*config));
  std::string text;
  Result<json> r = call(api, &text);
  if (!r.ok()) return ReportError(r.status());
  PrintResult(*r, as_json, text);
  return exit_code ? exit_code(*r) : 0;
}

Result<ApiConfig> ApiConfigFromEnv() {
  const char* url = std::getenv("MOAT_API_URL");
  const char* key = std::getenv("MOAT_API_KEY");
  MOAT_ASSIGN_OR_RETURN(BaseUrl base, ParseBaseUrl(url && *url ? url : kDefaultApiUrl));
  return ApiConfig{.base = std::move(base), .api_key = key ? key : ""};
}

Status ResponseError(const HttpResponse& response) {
  std::string message;
  json body = json::parse(response.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_object()) {
    if (auto it = body.find("message"); it != body.end() && it->is_string()) message = *it;
  }
  if (message.empty()) message = "HTTP " + std::to_string(response.status);
  return Status(CodeForHttpStatus(response.status), std::move(message));
}

Result<json> ApiClient::ListAll(const std::string& path, const std::string& query) {
  json all = json::array();
  std::string next;
  do {
    std::string target = path + query;
    if (!next.empty()) target += "&nextToken=" + api::codec::PercentEncode(next);
    MOAT_ASSIGN_OR_RETURN(json page, Control("GET", target, nullptr, &next));
    if (!page.is_array()) return Internal("GET " + path + ": expected a JSON array");
    for (auto& item : page) all.push_back(std::move(item));
  } while (!next.empty());
  return all;
}

Result<json> ApiClient::ListItems(const std::string& path, const std::string& query, int limit) {
  constexpr int kMaxPage = 1000;  // moatd's largest limit on these routes
  json items = json::array();
  std::string next;
  bool empty_page = false;
  do {
    int want = std::min(kMaxPage, limit - static_cast<int>(items.size()));
    std::string target =
        path + query + (query.empty() ? "?" : "&") + "limit=" + std::to_string(want);
    if (!next.empty()) target += "&nextToken=" + api::codec::PercentEncode(next);
    MOAT_ASSIGN_OR_RETURN(json page, Control("GET", target));
    if (!page.is_object() || !page.contains("items") || !page["items"].is_array()) {
      return Internal("GET " + path + ": expected {\"items\":[…]}");
    }
    // A page with no items ends the walk even if it names a next one: never ask forever.
    empty_page = page["items"].empty();
    for (auto& item : page["items"]) {
      if (static_cast<int>(items.size()) < limit) items.push_back(std::move(item));
    }
    auto token = page.find("nextToken");
    next = token != page.end() && token->is_string() ? token->get<std::string>() : "";
  } while (!next.empty() && !empty_page && static_cast<int>(items.size()) < limit);
  return json{{"items", std::move(items)}, {"nextToken", next}};
}

Result<std::string> ApiClient::GetText(const std::string& target) {
  HttpRequest req{.method = "GET", .target = target, .headers = {}, .body = {}};
  req.headers.emplace_back("X-API-Key", config_.api_key);
  MOAT_ASSIGN_OR_RETURN(HttpResponse resp, SendHttp(config_.base, req));
  if (resp.status < 200 || resp.status >= 300) return ResponseError(resp);
  return std::move(resp.body);
}

Result<json> ApiClient::Control(const std::string& method, const std::string& target,
                                const json& body, std::string* next_token) {
  HttpRequest req{.method = method, .target = target, .headers = {}, .body = {}};
  req.headers.emplace_back("X-API-Key", config_.api_key);
  if (!body.is_null()) {
    req.headers.emplace_back("Content-Type", "application/json");
    req.body = body.dump();
  }
  MOAT_ASSIGN_OR_RETURN(HttpResponse resp, SendHttp(config_.base, req));
  if (resp.status < 200 || resp.status >= 300) return ResponseError(resp);
  if (next_token != nullptr) *next_token = resp.next_token;
  if (resp.body.empty()) return json(nullptr);
  json parsed = json::parse(resp.body, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    return Internal(method + " " + target + ": the response is not JSON");
  }
  return parsed;
}

Result<std::vector<std::pair<std::string, std::string>>> ApiClient::EnvdHeaders(
    const std::string& id, const std::string& user) {
  MOAT_ASSIGN_OR_RETURN(json info, Control("GET", "/sandboxes/" + api::codec::PercentEncode(id)));
  std::vector<std::pair<std::string, std::string>> headers = {
      {"E2b-Sandbox-Id", id},
      {"E2b-Sandbox-Port", kEnvdPort},
  };
  if (info.is_object()) {
    if (auto it = info.find("envdAccessToken"); it != info.end() && it->is_string()) {
      headers.emplace_back("X-Access-Token", it->get<std::string>());
    }
  }
  if (!user.empty()) {
    headers.emplace_back("Authorization", "Basic " + api::codec::Base64Encode(user + ":"));
  }
  return headers;
}

}  // namespace moat::cli
