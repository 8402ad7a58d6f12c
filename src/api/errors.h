// The one place where errors become HTTP responses (E2B-WIRE §2.1, §3, §4):
//  - REST (control API and envd's /files): HTTP status from the code, body {"code","message"}
//    with `code` the HTTP status;
//  - Connect unary: HTTP status from the Connect code, body {"code":"not_found","message"};
//  - Connect streams: HTTP 200 and the error in the end-stream message (codec/connect.h);
//  - an envd request for a sandbox that is not running: 502 {"sandboxId","message","code"}.
#pragma once

#include <string>

#include "api/http/message.h"
#include "common/status.h"

namespace moat::api {

// HTTP status of a REST error.
int RestHttpStatus(ErrorCode code);
// Sends a REST error; `http_status` 0 derives it from the code.
void SendRestError(http::ResponseWriter& w, const Status& status, int http_status = 0);
void SendConnectUnaryError(http::ResponseWriter& w, const Status& status);
void SendSandboxNotRunning(http::ResponseWriter& w, const std::string& sandbox_id);

// JSON success helpers, so that content types stay consistent.
void SendJson(http::ResponseWriter& w, int http_status, const std::string& body,
              http::Headers extra = {});
void SendNoContent(http::ResponseWriter& w);

}  // namespace moat::api
