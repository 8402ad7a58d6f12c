// InProcessHostAgent: the HostAgent of `moatd serve` (and, behind its HTTP API, of `moatd
// agent`): the control plane's calls go straight to this host's agent::Agent, no hop. It is the
// host side of the boundary (api/host_agent.h): it may include agent/, net/, vmm/ and channel/.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "agent/agent.h"
#include "api/host_agent.h"

namespace moat::host {

class SnapshotReplicator;

class InProcessHostAgent : public api::HostAgent {
 public:
  InProcessHostAgent(std::string host_id, agent::Agent& agent)
      : host_id_(std::move(host_id)), agent_(agent) {}

  const std::string& host_id() const override { return host_id_; }
  api::HostTemplateInfo base_template() override;
  Result<api::HostInventory> Inventory() override;
  Result<api::HostSandboxStatus> Probe(const std::string& id) override;
  int64_t WarmReady() override { return static_cast<int64_t>(agent_.warm_ready()); }
  Status Create(const api::HostSandboxStart& start) override;
  Status Kill(const std::string& id) override;
  Status Pause(const std::string& id, bool keep_memory = true) override;
  Status Resume(const std::string& id, const std::string& from_store = "") override;
  // Snapshots across hosts (null: none configured; a resume from the store is refused).
  void SetReplicator(SnapshotReplicator* replicator) { replicator_ = replicator; }
  Status Fork(const std::string& id, const std::vector<std::string>& child_ids) override;
  Result<std::string> ExportFork(const std::string& id) override;
  Result<std::string> CreateSnapshot(const std::string& id, const std::string& name) override;
  Status DeleteSnapshot(const std::string& snapshot_id) override;
  Status SetEgress(const std::string& id, const nlohmann::json& egress) override;
  Result<api::HostSandboxUsage> Usage(const std::string& id) override;
  Result<std::string> ConsoleLog(const std::string& id, size_t max_bytes) override;
  Result<api::HostPortEndpoint> ResolvePort(const std::string& id, uint16_t port) override;
  Result<api::HostTemplateBuilt> BuildTemplate(
      const api::HostTemplateBuild& build, const std::function<void(const api::HostBuildLog&)>& log,
      std::string* failed_step) override;
  Status DeleteTemplateBuild(const std::string& build_id) override;

  agent::Agent& agent() { return agent_; }

  // E2B's TemplateBuildStartV2 (as HostTemplateBuild::start carries it) as the builder's spec.
  static Result<agent::TemplateBuildSpec> BuildSpecOf(const api::HostTemplateBuild& build);

 private:
  std::string host_id_;
  agent::Agent& agent_;
  SnapshotReplicator* replicator_ = nullptr;
};

// The envd routes' way to a running sandbox's guest channel on this host (routes::GuestLookup):
// not_found once it is not running, failed_precondition once its guest broke the protocol.
std::function<Result<std::shared_ptr<channel::GuestClient>>(const std::string&)> GuestLookupOf(
    agent::Agent& agent);

}  // namespace moat::host
