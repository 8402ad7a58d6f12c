#include "host/envd/envd_call.h"

#include <strings.h>

#include "api/auth.h"
#include "api/codec/connect.h"
#include "api/codec/protojson.h"
#include "api/errors.h"
#include "common/log.h"

namespace moat::api::routes {
namespace {

constexpr size_t kMaxConnectMessage = 16 * 1024 * 1024;

std::string ContentTypeBase(const http::Request& req) {
  std::string ct = req.Header("Content-Type");
  return ct.substr(0, ct.find(';'));
}

}  // namespace

http::Handler WithSandbox(EnvdContext& ctx, EnvdErrors errors, EnvdAuth auth,
                          std::function<void(EnvdCall&, http::ResponseWriter&)> handler) {
  return [&ctx, errors, auth, handler = std::move(handler)](http::Request& req,
                                                            http::ResponseWriter& w) {
    auto fail = [&](const Status& s) {
      if (errors == EnvdErrors::kConnect) {
        SendConnectUnaryError(w, s);
      } else {
        SendRestError(w, s);
      }
    };
    auto target = EnvdTargetOf(req);
    if (!target) return fail(InvalidArgument("missing E2b-Sandbox-Id header"));
    if (target->port != kEnvdPort) {
      // ApiServer sends these to the port proxy; envd's routes never see them.
      return SendRestError(w,
                           InvalidArgument("port " + std::to_string(target->port) + " of sandbox " +
                                           target->sandbox_id + " is not envd's"),
                           400);
    }
    auto running = ctx.find_running(target->sandbox_id);
    if (!running.ok()) return SendSandboxNotRunning(w, target->sandbox_id);
    bool signature_ok = auth == EnvdAuth::kTokenOrSignature;
    if (auth != EnvdAuth::kNone) {
      Status s = CheckEnvdAccess(req, running->access_token, signature_ok);
      if (!s.ok()) return fail(s);
    }
    auto user = BasicAuthUser(req);
    if (!user.ok()) return fail(user.status());
    // A signed URL acts as the user it was signed for (its `username`, which FileUser reads;
    // none: the default user), never as one an unsigned Authorization header names.
    if (IsSignedRequest(req, signature_ok)) user = std::string();
    // Its host's view: gone (released meanwhile), or its guest broke the protocol (recorded as
    // `error`; it stays inspectable and killable) — not running, either way.
    if (auto guest = ctx.guest_of(target->sandbox_id); !guest.ok()) {
      if (guest.status().code() == ErrorCode::kFailedPrecondition) {
        ctx.report_fault(target->sandbox_id, guest.status().message());
      }
      return SendSandboxNotRunning(w, target->sandbox_id);
    }
    // No user named: the sandbox's template's default user (a custom template's last USER).
    if (user->empty()) {
      user = running->options.default_user.empty() ? std::string(kDefaultUser)
                                                   : running->options.default_user;
    }
    EnvdCall call{req, std::move(*running), *user, *ctx.metrics, ctx.guest_of, ctx.history};
    handler(call, w);
  };
}

http::Handler ConnectUnary(EnvdContext& ctx, UnaryFn fn) {
  return WithSandbox(ctx, EnvdErrors::kConnect, EnvdAuth::kToken,
                     [fn = std::move(fn)](EnvdCall& call, http::ResponseWriter& w) {
                       if (ContentTypeBase(call.req) != "application/json") {
                         return SendConnectUnaryError(
                             w, InvalidArgument("unary calls take Content-Type application/json"));
                       }
                       auto msg = codec::ParseMessage(call.req.body);
                       if (!msg.ok()) return SendConnectUnaryError(w, msg.status());
                       auto res = fn(call, *msg);
                       if (!res.ok()) return SendConnectUnaryError(w, res.status());
                       SendJson(w, 200, res->dump(-1, ' ', false, json::error_handler_t::replace));
                     });
}

bool StreamSink::Begin() {
  if (begun_) return !gone_;
  begun_ = true;
  if (!w_.BeginStream(200, {{"Content-Type", "application/connect+json"}}).ok()) gone_ = true;
  return !gone_;
}

bool StreamSink::Send(const json& message) {
  if (!Begin()) return false;
  std::string text = message.dump(-1, ' ', false, json::error_handler_t::replace);
  if (!w_.WriteChunk(codec::EncodeEnvelope(0, text)).ok()) {
    gone_ = true;
    return false;
  }
  last_ = std::chrono::steady_clock::now();
  return true;
}

bool StreamSink::KeepaliveIfDue() {
  if (std::chrono::steady_clock::now() < KeepaliveDue()) return !gone_;
  return Send(keepalive_message_);
}

bool StreamSink::Cut() {
  if (!begun_ || gone_) return false;
  gone_ = true;  // nothing more is written: the server closes the unfinished response
  return true;
}

void StreamSink::Finish(const Status& status) {
  if (!Begin()) return;
  if (!w_.WriteChunk(
             codec::EncodeEnvelope(codec::kEnvelopeEndStream, codec::EndStreamMessage(status)))
           .ok() ||
      !w_.EndStream().ok()) {
    gone_ = true;
  }
}

StreamLimits StreamLimitsOf(const http::Request& req) {
  StreamLimits l;
  std::string t = req.Header("Connect-Timeout-Ms");
  if (!t.empty()) {
    char* end = nullptr;
    long long ms = std::strtoll(t.c_str(), &end, 10);
    if (*end == '\0' && ms > 0) {
      l.timeout_ms = ms;
      l.deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    }
  }
  std::string k = req.Header("Keepalive-Ping-Interval");
  if (!k.empty()) {
    long s = std::strtol(k.c_str(), nullptr, 10);
    if (s >= 1 && s <= 3600) l.keepalive = std::chrono::seconds(s);
  }
  return l;
}

http::Handler ConnectServerStream(EnvdContext& ctx, json keepalive_message, StreamFn fn) {
  return WithSandbox(
      ctx, EnvdErrors::kConnect, EnvdAuth::kToken,
      [fn = std::move(fn), keepalive_message = std::move(keepalive_message)](
          EnvdCall& call, http::ResponseWriter& w) {
        StreamLimits limits = StreamLimitsOf(call.req);
        StreamSink sink(w, keepalive_message, limits.keepalive);
        if (ContentTypeBase(call.req) != "application/connect+json") {
          return SendConnectUnaryError(
              w, InvalidArgument("streaming calls take Content-Type application/connect+json"));
        }
        auto envelopes = codec::DecodeEnvelopes(call.req.body, kMaxConnectMessage);
        if (!envelopes.ok()) return sink.Finish(envelopes.status());
        if (envelopes->size() != 1 || (*envelopes)[0].flags != 0) {
          return sink.Finish(InvalidArgument("expected exactly one request message"));
        }
        auto msg = codec::ParseMessage((*envelopes)[0].message);
        if (!msg.ok()) return sink.Finish(msg.status());
        Status s = fn(call, *msg, limits, sink);
        if (!sink.client_gone()) sink.Finish(s);
      });
}

}  // namespace moat::api::routes
