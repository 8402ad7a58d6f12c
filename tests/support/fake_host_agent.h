// A HostAgent without VMs, for the control plane's tests: it keeps sets of running and paused
// ids, can be told to fail the next call of a kind, and can run a hook in the middle of a call
// (to race the controller against itself). Thread-safe.
#pragma once

#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "api/host_agent.h"

namespace moat::test_support {

class FakeHostAgent : public api::HostAgent {
 public:
  explicit FakeHostAgent(std::string host_id = "fake") : host_id_(std::move(host_id)) {}

  // What the fake holds and was asked.
  std::set<std::string> running, paused, snapshots;
  std::set<std::string> paused_filesystem_only;  // paused with keep_memory false
  std::vector<std::string> calls;                // "create <id>", "kill <id>", …
  // A failure to return from the next call of that name ("create", "pause", …), once.
  std::map<std::string, Status> fail_next;
  // Runs inside the named call, before it changes anything (the store may be changed by it).
  std::map<std::string, std::function<void(const std::string& id)>> during;
  api::HostTemplateInfo tmpl{.name = "base", .vcpus = 2, .memory_mib = 512, .disk_mib = 1024};

  const std::string& host_id() const override { return host_id_; }
  api::HostTemplateInfo base_template() override { return tmpl; }
  Result<api::HostInventory> Inventory() override {
    std::lock_guard lock(mu_);
    return api::HostInventory{{running.begin(), running.end()},
                              {paused.begin(), paused.end()},
                              {snapshots.begin(), snapshots.end()},
                              {}};
  }
  Result<api::HostSandboxStatus> Probe(const std::string& id) override {
    std::lock_guard lock(mu_);
    api::HostSandboxStatus s;
    if (running.count(id) != 0) s.kind = api::HostSandboxStatus::Kind::kRunning;
    if (paused.count(id) != 0) s.kind = api::HostSandboxStatus::Kind::kPaused;
    return s;
  }
  Status Create(const api::HostSandboxStart& start) override {
    MOAT_RETURN_IF_ERROR(Enter("create", start.id));
    std::lock_guard lock(mu_);
    if (running.count(start.id) != 0 || paused.count(start.id) != 0) {
      return Status(ErrorCode::kAlreadyExists, "sandbox " + start.id + " exists");
    }
    running.insert(start.id);
    return Status::Ok();
  }
  Status Kill(const std::string& id) override {
    MOAT_RETURN_IF_ERROR(Enter("kill", id));
    std::lock_guard lock(mu_);
    if (running.erase(id) + paused.erase(id) == 0) return NotFound("sandbox " + id + " not found");
    return Status::Ok();
  }
  Status Pause(const std::string& id, bool keep_memory = true) override {
    MOAT_RETURN_IF_ERROR(Enter("pause", id));
    std::lock_guard lock(mu_);
    if (running.erase(id) == 0) return NotFound("sandbox " + id + " not found");
    paused.insert(id);
    if (!keep_memory) paused_filesystem_only.insert(id);
    return Status::Ok();
  }
  Status Resume(const std::string& id) override {
    MOAT_RETURN_IF_ERROR(Enter("resume", id));
    std::lock_guard lock(mu_);
    if (paused.erase(id) == 0) return NotFound("sandbox " + id + " not found");
    running.insert(id);
    return Status::Ok();
  }
  Status Fork(const std::string& id, const std::vector<std::string>& child_ids) override {
    MOAT_RETURN_IF_ERROR(Enter("fork", id));
    std::lock_guard lock(mu_);
    if (running.count(id) == 0) return NotFound("sandbox " + id + " not found");
    for (const auto& c : child_ids) running.insert(c);
    return Status::Ok();
  }
  Result<std::string> CreateSnapshot(const std::string& id, const std::string&) override {
    MOAT_RETURN_IF_ERROR(Enter("snapshot", id));
    std::lock_guard lock(mu_);
    std::string snap = "snap" + std::to_string(++snapshot_seq_) + "aaaaaaaaaaaaaaa";
    snapshots.insert(snap.substr(0, 20));
    return snap.substr(0, 20);
  }
  Status DeleteSnapshot(const std::string& snapshot_id) override {
    std::lock_guard lock(mu_);
    if (snapshots.erase(snapshot_id) == 0) return NotFound("snapshot not found");
    return Status::Ok();
  }
  Status SetEgress(const std::string& id, const nlohmann::json&) override {
    return Enter("egress", id);
  }
  Result<api::HostSandboxUsage> Usage(const std::string& id) override {
    std::lock_guard lock(mu_);
    if (running.count(id) == 0) return NotFound("sandbox " + id + " is not running");
    return api::HostSandboxUsage{.vcpus = 2, .cpu_seconds = 1, .vmm_age_seconds = 2};
  }
  Result<api::HostPortEndpoint> ResolvePort(const std::string& id, uint16_t port) override {
    std::lock_guard lock(mu_);
    if (running.count(id) == 0) return NotFound("sandbox " + id + " is not running");
    return api::HostPortEndpoint{"10.0.0.1", port};
  }

  int CountCalls(const std::string& prefix) {
    std::lock_guard lock(mu_);
    int n = 0;
    for (const auto& c : calls) n += c.rfind(prefix, 0) == 0 ? 1 : 0;
    return n;
  }

 private:
  Status Enter(const std::string& what, const std::string& id) {
    std::function<void(const std::string&)> hook;
    {
      std::lock_guard lock(mu_);
      calls.push_back(what + " " + id);
      if (auto it = fail_next.find(what); it != fail_next.end()) {
        Status s = it->second;
        fail_next.erase(it);
        return s;
      }
      if (auto it = during.find(what); it != during.end()) hook = it->second;
    }
    if (hook) hook(id);
    return Status::Ok();
  }

  std::string host_id_;
  std::mutex mu_;
  int snapshot_seq_ = 0;
};

}  // namespace moat::test_support
