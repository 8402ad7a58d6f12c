// AgentServer: the HTTP API of `moatd agent` (api/agent-api.md) over any api::HostAgent — the
// host's InProcessHostAgent in production, a fake in tests. It only parses: each route checks
// its ids and body and makes the one HostAgent call it stands for; the agent does the work.
//
// Every request but `GET /healthz` must carry a fleet signature for this host's id
// (fleet_auth.h); the check runs on the request's head, before any of its body is read, and a
// request that fails it is answered 401 without reaching the agent. Ids that are not ids are
// 400 before any call. Errors are {"code","message"} (api/fleet/agent_wire.h). Control bodies are
// JSON of at most kAgentBodyLimit.
//
// The data plane: a request that names a sandbox (E2b-Sandbox-Id, or Host <port>-<id>.<domain>,
// api/envd_target.h) is envd or port traffic an API replica relays (fleet::RelayDataPlane). Its
// signature must be for this host, that sandbox and that port (fleet::DataPlaneSubject); it is
// then served by the data plane given to Start (the host's LocalDataPlane), or 404 without one.
#pragma once

#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "api/data_plane.h"
#include "api/fleet/fleet_auth.h"
#include "api/host_agent.h"
#include "api/http/router.h"
#include "api/http/server.h"

namespace moat::host {

class AgentServer {
 public:
  // Listens on options.host:options.port (port 0: any free one; see port()) and serves `agent`,
  // which must outlive the server. `token`: the fleet token requests must be signed with.
  // `data_plane` (may be null), if given, must outlive the server too.
  // `template_files_dir`: where the uploads of template builds are kept (empty: this agent
  // builds no templates).
  static Result<std::unique_ptr<AgentServer>> Start(api::HostAgent& agent,
                                                    api::fleet::FleetToken token,
                                                    api::http::ServerOptions options,
                                                    api::DataPlane* data_plane = nullptr,
                                                    std::string template_files_dir = "");
  // Shutdown() and Wait().
  ~AgentServer();
  AgentServer(const AgentServer&) = delete;
  AgentServer& operator=(const AgentServer&) = delete;

  uint16_t port() const { return http_->port(); }
  // Stops accepting and closes the open connections; Wait() joins their threads once the calls
  // in progress return.
  void Shutdown() {
    http_->Shutdown();
    if (data_plane_ != nullptr) data_plane_->Shutdown();
  }
  void Wait() { http_->Wait(); }
  size_t open_connections() const { return http_->open_connections(); }
  // GET /metrics: Prometheus text of this host's own counters (the snapshot store's: chunk
  // cache, fetches, uploads), unsigned like /healthz — the agent listens on the fleet's private
  // network, and the text holds counts only. Unset: 404. Set before requests arrive.
  void SetMetrics(std::function<std::string()> render) {
    std::lock_guard lock(metrics_mu_);
    metrics_ = std::move(render);
  }

  // The server's admission hook: from the head alone, whether the request is signed for this
  // host (else 401 here), and its body limit.
  api::http::Admission Admit(api::http::Request& req, bool has_body, api::http::ResponseWriter& w);
  // Routes an admitted request to its handler.
  void Handle(api::http::Request& req, api::http::ResponseWriter& w);
  const api::http::Router& router() const { return router_; }

 private:
  AgentServer(api::HostAgent& agent, api::fleet::FleetToken token, api::DataPlane* data_plane);
  std::mutex metrics_mu_;
  std::function<std::string()> metrics_;  // metrics_mu_
  void RegisterRoutes();

  // Template builds run here in the background; the control plane polls them.
  struct RunningBuild {
    std::mutex mu;
    // The log lines not yet collected: logs[0] is line `first` of the build's log. A poll from
    // offset N drops the lines before N (the poller has them: N came from its last answer).
    std::deque<api::HostBuildLog> logs;
    int64_t first = 0;
    int64_t received = 0;  // lines the build logged, kept or not (the cap counts them)
    bool done = false;
    Status status;
    std::string step;
    std::optional<api::HostTemplateBuilt> built;
    std::chrono::steady_clock::time_point finished;
    // The build's thread; under builds_mu_. Joined once `done` (at the next StartBuild) or by
    // the destructor.
    std::thread thread;
  };
  // Adds a line to a build's log, bounded as the control plane bounds it (api/templates.cc):
  // past kMaxBuildLogLines lines only errors are kept, and one warning says so; a line is at
  // most kMaxBuildLogLine bytes.
  static void AppendLog(RunningBuild& run, const api::HostBuildLog& line);
  void RegisterTemplateRoutes();
  void StartBuild(api::HostTemplateBuild build, api::http::ResponseWriter& w);
  // Removes the build threads and entries that ended: threads joined, entries forgotten 30
  // minutes after they ended.
  void ReapBuilds();
  void ReportBuild(const std::string& id, int64_t offset, api::http::ResponseWriter& w);
  void PutFilePiece(api::http::Request& req, api::http::ResponseWriter& w);

  api::HostAgent& agent_;
  api::fleet::FleetToken token_;
  api::DataPlane* data_plane_;
  std::string files_dir_;
  std::mutex builds_mu_;
  std::map<std::string, std::shared_ptr<RunningBuild>> builds_;
  api::http::Router router_;
  std::unique_ptr<api::http::HttpServer> http_;  // last: its threads use the members above
};

}  // namespace moat::host
