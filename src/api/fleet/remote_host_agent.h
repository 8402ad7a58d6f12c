// RemoteHostAgent: the HostAgent of a host the control plane reaches over HTTP — its `moatd
// agent` (api/agent-api.md). Every call is one signed request (fleet_auth.h) with the same
// values; the agent's errors come back as the same Status codes, so the control plane cannot
// tell a remote host from a local one. A host that cannot be reached, that closes the
// connection or that does not answer in time is `unavailable`, naming the host id and its
// endpoint (for a call that changes something, its outcome is then unknown: the control plane
// reconciles from Inventory/Probe, as after a crash). A 401 from the agent (another fleet token,
// a clock off by more than the window, or an agent with another host id at that address) is
// also `unavailable`: it is the fleet's configuration that is wrong, not the caller's request.
//
// Control-plane code: no agent/, vmm/, channel/ or net/ includes. Thread-safe; keep-alive
// connections are pooled and reused (http::Client).
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "api/fleet/fleet_auth.h"
#include "api/host_agent.h"
#include "api/http/client.h"

namespace moat::api::fleet {

struct RemoteHostAgentOptions {
  std::chrono::milliseconds connect_timeout{2000};
  // Reads, kill, delete, egress.
  std::chrono::milliseconds call_timeout{10000};
  // Create, pause, resume, fork and snapshot: restores and snapshots of a large guest take long
  // under TCG.
  std::chrono::milliseconds slow_call_timeout{120000};
  size_t max_idle_connections = 16;
  // A template build polled for longer than this is given up on (deadline_exceeded).
  std::chrono::milliseconds build_timeout{std::chrono::hours(6)};
  // How often a build that logs nothing new is polled.
  std::chrono::milliseconds build_poll_interval{200};
};

class RemoteHostAgent : public HostAgent {
 public:
  // The agent of host `host_id` at `endpoint` ("http://10.0.0.2:7070"); invalid_argument for an
  // endpoint that is not http://host:port. Nothing is sent until the first call.
  static Result<std::unique_ptr<RemoteHostAgent>> ForEndpoint(std::string host_id,
                                                              std::string_view endpoint,
                                                              FleetToken token,
                                                              RemoteHostAgentOptions options = {});

  const std::string& host_id() const override { return host_id_; }
  // The host's template, fetched once and then cached (it is fixed for an agent's life). While it
  // cannot be fetched this answers a HostTemplateInfo with an empty name and zero sizes (logged,
  // rate-limited), and the next call tries again; FetchTemplate() gives the error.
  HostTemplateInfo base_template() override;
  Result<HostTemplateInfo> FetchTemplate();

  Result<HostInventory> Inventory() override;
  Result<HostSandboxStatus> Probe(const std::string& id) override;
  Status Create(const HostSandboxStart& start) override;
  Status Kill(const std::string& id) override;
  Status Pause(const std::string& id, bool keep_memory = true) override;
  Status Resume(const std::string& id, const std::string& from_store = "") override;
  Result<std::string> ExportFork(const std::string& id) override;
  Status Fork(const std::string& id, const std::vector<std::string>& child_ids) override;
  Result<std::string> CreateSnapshot(const std::string& id, const std::string& name) override;
  Status DeleteSnapshot(const std::string& snapshot_id) override;
  Status SetEgress(const std::string& id, const nlohmann::json& egress) override;
  Result<HostSandboxUsage> Usage(const std::string& id) override;
  Result<std::string> ConsoleLog(const std::string& id, size_t max_bytes) override;
  // failed_precondition: a remote sandbox's ports are reached through its agent (the data-plane
  // relay, not built yet), never by dialling a host-local address from here.
  Result<HostPortEndpoint> ResolvePort(const std::string& id, uint16_t port) override;
  // The uploads it needs go to the agent first (those it lacks, in pieces); then the build
  // starts there and is polled until it ends, its log handed on as it comes.
  Result<HostTemplateBuilt> BuildTemplate(const HostTemplateBuild& build,
                                          const std::function<void(const HostBuildLog&)>& log,
                                          std::string* failed_step) override;
  Status DeleteTemplateBuild(const std::string& build_id) override;

  // GET /healthz: ok when the agent there answers as an agent with this host id.
  Status CheckHealth();
  const std::string& endpoint() const { return client_->endpoint().url; }

 private:
  RemoteHostAgent(std::string host_id, FleetToken token, std::unique_ptr<http::Client> client,
                  RemoteHostAgentOptions options);

  struct Call {
    std::string method;
    std::string target;
    std::string body;  // JSON, or empty
    bool slow = false;
    int expect = 200;  // the success status
    std::string content_type = "application/json";
  };
  // Sends a signed call; the answer's body on `expect`, the agent's error otherwise.
  Result<std::string> Send(const Call& call);
  // The JSON answer of a call.
  Result<nlohmann::json> SendForJson(const Call& call);
  // Sends the file at `path` as the team's upload `hash`, unless the agent has it.
  Status SendTemplateFile(const std::string& team, const std::string& hash,
                          const std::string& path);
  // Where a failure happened, for messages: "host h1 (http://…)".
  std::string Where() const;

  std::string host_id_;
  FleetToken token_;
  std::unique_ptr<http::Client> client_;
  RemoteHostAgentOptions options_;
  std::mutex template_mu_;
  std::optional<HostTemplateInfo> template_;
};

}  // namespace moat::api::fleet
