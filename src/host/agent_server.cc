#include "host/agent_server.h"

#include <nlohmann/json.hpp>
#include <optional>

#include "api/envd_target.h"
#include "api/fleet/agent_wire.h"
#include "common/log.h"

namespace moat::host {
namespace {

namespace http = api::http;
namespace fleet = api::fleet;
using nlohmann::json;

void SendError(http::ResponseWriter& w, const Status& status, int http_status = 0) {
  int code = http_status != 0 ? http_status : fleet::AgentHttpStatus(status.code());
  (void)w.Send(code, {{"Content-Type", "application/json"}}, fleet::ErrorBody(status));
}

void SendJson(http::ResponseWriter& w, int http_status, const json& body) {
  (void)w.Send(http_status, {{"Content-Type", "application/json"}}, fleet::DumpJson(body));
}

// 204 on success, the error otherwise.
void SendDone(http::ResponseWriter& w, const Status& status) {
  if (!status.ok()) return SendError(w, status);
  (void)w.Send(204, {}, "");
}

// 201 {} on success, the error otherwise.
void SendCreated(http::ResponseWriter& w, const Status& status) {
  if (!status.ok()) return SendError(w, status);
  SendJson(w, 201, json::object());
}

// The path parameter `{id}` when it is a sandbox id; otherwise answers 400 and gives nothing.
std::optional<std::string> SandboxIdOf(const http::Request& req, http::ResponseWriter& w) {
  std::string id = req.Param("id");
  if (!fleet::IsSandboxId(id)) {
    SendError(w, InvalidArgument("\"" + id + "\" is not a sandbox id ([a-z0-9]{20})"));
    return std::nullopt;
  }
  return id;
}

// The request's JSON body; otherwise answers 400 and gives nothing.
std::optional<json> BodyOf(const http::Request& req, http::ResponseWriter& w) {
  auto j = fleet::ParseJsonBody(req.body);
  if (!j.ok()) {
    SendError(w, j.status());
    return std::nullopt;
  }
  return std::move(j).value();
}

// What the signature covers: the target as the client sent it.
std::string TargetOf(const http::Request& req) {
  return req.raw_query.empty() ? req.path : req.path + "?" + req.raw_query;
}

RateLimiter& RefusedLogLimiter() {
  static RateLimiter limiter(1, 10);
  return limiter;
}

RateLimiter& ErrorLogLimiter() {
  static RateLimiter limiter(5, 20);
  return limiter;
}

}  // namespace

AgentServer::AgentServer(api::HostAgent& agent, fleet::FleetToken token, api::DataPlane* data_plane)
    : agent_(agent), token_(std::move(token)), data_plane_(data_plane) {}

AgentServer::~AgentServer() {
  if (http_) {
    Shutdown();
    http_->Wait();
  }
}

Result<std::unique_ptr<AgentServer>> AgentServer::Start(api::HostAgent& agent,
                                                        fleet::FleetToken token,
                                                        http::ServerOptions options,
                                                        api::DataPlane* data_plane) {
  std::unique_ptr<AgentServer> s(new AgentServer(agent, std::move(token), data_plane));
  s->RegisterRoutes();
  AgentServer* self = s.get();
  MOAT_ASSIGN_OR_RETURN(
      s->http_,
      http::HttpServer::Start(
          std::move(options),
          [self](http::Request& req, http::ResponseWriter& w) { self->Handle(req, w); },
          [](const Status& st, int code, http::ResponseWriter& w) { SendError(w, st, code); },
          [self](http::Request& req, bool has_body, http::ResponseWriter& w) {
            return self->Admit(req, has_body, w);
          }));
  LogInfo("agent.api_listening", {{"host_id", agent.host_id()}, {"port", s->port()}});
  return s;
}

http::Admission AgentServer::Admit(http::Request& req, bool has_body, http::ResponseWriter& w) {
  http::Admission a;
  a.body_limit = fleet::kAgentBodyLimit;
  auto target = api::routes::EnvdTargetOf(req);
  if (req.path == "/healthz" && !target) return a;  // no token: load balancers probe it
  // Data-plane traffic is signed for the sandbox and port it names, control calls for the host.
  std::string subject =
      target ? fleet::DataPlaneSubject(agent_.host_id(), target->sandbox_id, target->port)
             : agent_.host_id();
  Status signed_for_us = token_.Verify(req.Header(fleet::kFleetHeader), req.method, TargetOf(req),
                                       subject, fleet::UnixNow());
  if (!signed_for_us.ok()) {
    unsigned long suppressed = 0;
    if (RefusedLogLimiter().Allow(&suppressed)) {
      LogWarn("agent.request_refused", {{"method", req.method},
                                        {"path", req.path},
                                        {"peer", req.peer},
                                        {"why", signed_for_us.message()},
                                        {"suppressed", suppressed}});
    }
    SendError(w, signed_for_us);
    return a;
  }
  if (target && data_plane_ != nullptr) {
    api::DataPlaneAnswer answer;
    a = data_plane_->Admit(req, *target, has_body, w, &answer);
    a.authenticated = true;  // the replica is: the connection may use the reserve
    if (answer.status != 0) {
      LogDebug("agent.request", {{"route", answer.route}, {"status", answer.status}});
    }
    return a;
  }
  a.authenticated = true;
  return a;
}

void AgentServer::Handle(http::Request& req, http::ResponseWriter& w) {
  auto started = std::chrono::steady_clock::now();
  auto target = api::routes::EnvdTargetOf(req);
  http::StatusRecorder rec(w);
  std::string route = "(unmatched)";
  auto match = router_.Find(req.method, req.path);
  if (target) {
    if (data_plane_ != nullptr) {
      api::DataPlaneAnswer answer = data_plane_->Handle(req, *target, w);
      route = answer.route;
      if (answer.warn && ErrorLogLimiter().Allow()) {
        LogWarn("agent.request", {{"route", route}, {"status", answer.status}});
      } else {
        LogDebug("agent.request", {{"route", route}, {"status", answer.status}});
      }
      return;
    }
    SendError(rec, NotFound("this agent serves no data plane"));
  } else if (match.route == nullptr) {
    if (match.path_known) {
      SendError(rec, InvalidArgument(req.method + " is not allowed on " + req.path), 405);
    } else {
      SendError(rec, NotFound("no route " + req.method + " " + req.path));
    }
  } else {
    route = match.route->method + " " + match.route->pattern;
    req.params = std::move(match.params);
    match.route->handler(req, rec);
  }
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                                  started)
                .count();
  if (rec.status() >= 500 && ErrorLogLimiter().Allow()) {
    LogWarn("agent.request", {{"route", route}, {"status", rec.status()}, {"ms", ms}});
  } else {
    LogDebug("agent.request", {{"route", route}, {"status", rec.status()}, {"ms", ms}});
  }
}

void AgentServer::RegisterRoutes() {
  api::HostAgent& agent = agent_;
  router_.Add("GET", "/healthz", [&agent](http::Request&, http::ResponseWriter& w) {
    SendJson(w, 200, {{"role", "agent"}, {"hostID", agent.host_id()}});
  });
  router_.Add("GET", "/v1/template", [&agent](http::Request&, http::ResponseWriter& w) {
    SendJson(w, 200, fleet::TemplateToJson(agent.base_template()));
  });
  router_.Add("GET", "/v1/inventory", [&agent](http::Request&, http::ResponseWriter& w) {
    auto inv = agent.Inventory();
    if (!inv.ok()) return SendError(w, inv.status());
    SendJson(w, 200, fleet::InventoryToJson(*inv));
  });

  router_.Add("POST", "/v1/sandboxes", [&agent](http::Request& req, http::ResponseWriter& w) {
    auto body = BodyOf(req, w);
    if (!body) return;
    auto start = fleet::StartFromJson(*body);
    if (!start.ok()) return SendError(w, start.status());
    SendCreated(w, agent.Create(*start));
  });
  router_.Add("GET", "/v1/sandboxes/{id}", [&agent](http::Request& req, http::ResponseWriter& w) {
    auto id = SandboxIdOf(req, w);
    if (!id) return;
    auto probe = agent.Probe(*id);
    if (!probe.ok()) return SendError(w, probe.status());
    SendJson(w, 200, fleet::ProbeToJson(*probe));
  });
  router_.Add("DELETE", "/v1/sandboxes/{id}",
              [&agent](http::Request& req, http::ResponseWriter& w) {
                if (auto id = SandboxIdOf(req, w)) SendDone(w, agent.Kill(*id));
              });
  router_.Add("POST", "/v1/sandboxes/{id}/pause",
              [&agent](http::Request& req, http::ResponseWriter& w) {
                auto id = SandboxIdOf(req, w);
                if (!id) return;
                // An empty body keeps memory; {"memory": false} keeps the filesystem only.
                bool keep_memory = true;
                if (!req.body.empty()) {
                  auto body = BodyOf(req, w);
                  if (!body) return;
                  auto memory = body->is_object() ? body->find("memory") : body->end();
                  if (memory == body->end() || !memory->is_boolean()) {
                    return SendError(w, InvalidArgument("pause: expected {\"memory\": bool}"));
                  }
                  keep_memory = memory->get<bool>();
                }
                SendDone(w, agent.Pause(*id, keep_memory));
              });
  router_.Add("POST", "/v1/sandboxes/{id}/resume",
              [&agent](http::Request& req, http::ResponseWriter& w) {
                if (auto id = SandboxIdOf(req, w)) SendDone(w, agent.Resume(*id));
              });
  router_.Add("POST", "/v1/sandboxes/{id}/fork",
              [&agent](http::Request& req, http::ResponseWriter& w) {
                auto id = SandboxIdOf(req, w);
                if (!id) return;
                auto body = BodyOf(req, w);
                if (!body) return;
                auto children = fleet::ForkFromJson(*body);
                if (!children.ok()) return SendError(w, children.status());
                SendCreated(w, agent.Fork(*id, *children));
              });
  router_.Add("POST", "/v1/sandboxes/{id}/snapshots",
              [&agent](http::Request& req, http::ResponseWriter& w) {
                auto id = SandboxIdOf(req, w);
                if (!id) return;
                auto body = BodyOf(req, w);
                if (!body) return;
                std::string name;
                if (body->is_object() && body->contains("name") && !(*body)["name"].is_null()) {
                  auto n = fleet::StringField(*body, "name");
                  if (!n.ok()) return SendError(w, n.status());
                  name = std::move(n).value();
                } else if (!body->is_object()) {
                  return SendError(w, InvalidArgument("a snapshot request must be an object"));
                }
                auto snap = agent.CreateSnapshot(*id, name);
                if (!snap.ok()) return SendError(w, snap.status());
                SendJson(w, 201, {{"snapshotID", *snap}});
              });
  router_.Add("PUT", "/v1/sandboxes/{id}/egress",
              [&agent](http::Request& req, http::ResponseWriter& w) {
                auto id = SandboxIdOf(req, w);
                if (!id) return;
                auto body = BodyOf(req, w);
                if (!body) return;
                SendDone(w, agent.SetEgress(*id, *body));
              });
  router_.Add("GET", "/v1/sandboxes/{id}/usage",
              [&agent](http::Request& req, http::ResponseWriter& w) {
                auto id = SandboxIdOf(req, w);
                if (!id) return;
                auto usage = agent.Usage(*id);
                if (!usage.ok()) return SendError(w, usage.status());
                SendJson(w, 200, fleet::UsageToJson(*usage));
              });
  router_.Add("DELETE", "/v1/snapshots/{id}",
              [&agent](http::Request& req, http::ResponseWriter& w) {
                std::string id = req.Param("id");
                if (!fleet::IsSnapshotId(id)) {
                  return SendError(w, InvalidArgument("\"" + id + "\" is not a snapshot id"));
                }
                SendDone(w, agent.DeleteSnapshot(id));
              });
}

}  // namespace moat::host
