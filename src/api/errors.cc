#include "api/errors.h"

#include <nlohmann/json.hpp>

#include "api/codec/connect.h"

namespace moat::api {

using nlohmann::json;

int RestHttpStatus(ErrorCode code) {
  switch (code) {
    case ErrorCode::kOk: return 200;
    case ErrorCode::kInvalidArgument: return 400;
    case ErrorCode::kNotFound: return 404;
    case ErrorCode::kAlreadyExists: return 409;
    case ErrorCode::kPermissionDenied: return 403;
    case ErrorCode::kFailedPrecondition: return 409;
    case ErrorCode::kResourceExhausted: return 429;
    case ErrorCode::kDeadlineExceeded: return 504;
    case ErrorCode::kUnavailable: return 503;
    case ErrorCode::kCancelled: return 499;
    case ErrorCode::kAborted: return 409;
    case ErrorCode::kInternal: return 500;
    case ErrorCode::kUnauthenticated: return 401;
  }
  return 500;
}

namespace {

std::string Dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace

void SendRestError(http::ResponseWriter& w, const Status& status, int http_status) {
  int code = http_status != 0 ? http_status : RestHttpStatus(status.code());
  SendJson(w, code, Dump({{"code", code}, {"message", status.message()}}));
}

void SendConnectUnaryError(http::ResponseWriter& w, const Status& status) {
  json body = {{"code", std::string(codec::ConnectCodeName(status.code()))},
               {"message", status.message()}};
  SendJson(w, codec::ConnectHttpStatus(status.code()), Dump(body));
}

void SendSandboxNotRunning(http::ResponseWriter& w, const std::string& sandbox_id) {
  SendJson(
      w, 502,
      Dump({{"sandboxId", sandbox_id}, {"message", "The sandbox was not found"}, {"code", 502}}));
}

void SendJson(http::ResponseWriter& w, int http_status, const std::string& body,
              http::Headers extra) {
  extra["Content-Type"] = "application/json";
  (void)w.Send(http_status, std::move(extra), body);
}

void SendNoContent(http::ResponseWriter& w) {
  (void)w.Send(204, {}, "");
}

}  // namespace moat::api
