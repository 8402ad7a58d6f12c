// A HostAgent without VMs, for the control plane's tests: it keeps sets of running and paused
// ids, can be told to fail the next call of a kind, and can run a hook in the middle of a call
// (to race the controller against itself). Template builds are scripted: the log lines each
// emits, the result or failure it answers, and, on request, a pause in the middle until the test
// lets it go (to see which builds run at once). Thread-safe.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
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
  // The template id each sandbox was created from, by sandbox id.
  std::map<std::string, std::string> created_from;
  // What Usage reports of a sandbox's network counters (egress, ingress), and its console log.
  std::map<std::string, std::pair<uint64_t, uint64_t>> net;
  std::map<std::string, uint64_t> vmm_starts;
  std::string last_resume_from_store;  // Resume's from_store, the last time  // Usage's
                                       // vmm_start_time: bumped by Resume
  std::map<std::string, std::string> console;
  // Create refuses (not_found) a template that is not `tmpl`, one of `snapshots` or one of
  // `built`, as a real host does; off by default, as callers of the fake may name any.
  bool known_templates_only = false;

  // Template builds. Set these before a build starts; read them once it has finished.
  std::vector<api::HostTemplateBuild> builds_received;  // what BuildTemplate got, in call order
  std::vector<api::HostBuildLog> build_log;             // emitted by every build, in order
  api::HostTemplateBuilt build_result{
      .disk_mib = 2048, .result = {{"context", {{"user", "user"}, {"workdir", "/home/user"}}}}};
  // Not ok: every build fails with it, in `build_failed_step`, after its log.
  Status build_failure;
  std::string build_failed_step = "1";
  std::set<std::string> built;              // build ids built and not deleted since
  std::vector<std::string> deleted_builds;  // DeleteTemplateBuild's argument, per call
  size_t max_concurrent_builds = 0;         // the most builds inside BuildTemplate at once

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
    if (known_templates_only && start.template_id != tmpl.name &&
        snapshots.count(start.template_id) == 0 && built.count(start.template_id) == 0) {
      return NotFound("template " + start.template_id + " not found on this host");
    }
    running.insert(start.id);
    created_from[start.id] = start.template_id;
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
  Status Resume(const std::string& id, const std::string& from_store = "") override {
    MOAT_RETURN_IF_ERROR(Enter("resume", id));
    last_resume_from_store = from_store;
    std::lock_guard lock(mu_);
    if (paused.erase(id) == 0) return NotFound("sandbox " + id + " not found");
    running.insert(id);
    ++vmm_starts[id];  // a resumed sandbox runs in a new VMM, with a new network slot
    net.erase(id);
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
    api::HostSandboxUsage u{.vcpus = 2, .cpu_seconds = 1, .vmm_age_seconds = 2};
    u.vmm_start_time = vmm_starts[id];
    if (auto it = net.find(id); it != net.end()) {
      u.net_egress_bytes = it->second.first;
      u.net_ingress_bytes = it->second.second;
    }
    return u;
  }
  Result<std::string> ConsoleLog(const std::string& id, size_t max_bytes) override {
    std::lock_guard lock(mu_);
    if (running.count(id) == 0) return NotFound("sandbox " + id + " is not running");
    std::string text = console[id];
    if (text.size() > max_bytes) text.erase(0, text.size() - max_bytes);
    return text;
  }
  Result<api::HostPortEndpoint> ResolvePort(const std::string& id, uint16_t port) override {
    std::lock_guard lock(mu_);
    if (running.count(id) == 0) return NotFound("sandbox " + id + " is not running");
    return api::HostPortEndpoint{"10.0.0.1", port};
  }

  // The build's log, then its pause (while builds are held), then its answer. `fail_next["build"]`
  // fails it on entry, in step "base".
  Result<api::HostTemplateBuilt> BuildTemplate(
      const api::HostTemplateBuild& build, const std::function<void(const api::HostBuildLog&)>& log,
      std::string* failed_step) override {
    if (Status s = Enter("build", build.build_id); !s.ok()) {
      *failed_step = "base";
      return s;
    }
    std::vector<api::HostBuildLog> lines;
    {
      std::lock_guard lock(mu_);
      builds_received.push_back(build);
      lines = build_log;
      ++builds_entered_;
      max_concurrent_builds = std::max(max_concurrent_builds, ++builds_inside_);
      build_cv_.notify_all();
    }
    for (const auto& l : lines) log(l);
    std::unique_lock lock(mu_);
    // Bounded, so that a test that forgets to release its builds fails rather than hangs.
    bool released = build_cv_.wait_for(lock, std::chrono::seconds(30), [&] {
      return !hold_builds_ || released_builds_.count(build.build_id) != 0;
    });
    --builds_inside_;
    build_cv_.notify_all();
    if (!released) {
      *failed_step = "base";
      return DeadlineExceeded("the fake host's build " + build.build_id + " was never released");
    }
    if (!build_failure.ok()) {
      *failed_step = build_failed_step;
      return build_failure;
    }
    built.insert(build.build_id);
    return build_result;
  }
  Status DeleteTemplateBuild(const std::string& build_id) override {
    MOAT_RETURN_IF_ERROR(Enter("delete-build", build_id));
    std::lock_guard lock(mu_);
    deleted_builds.push_back(build_id);
    if (built.erase(build_id) == 0) return NotFound("build " + build_id + " not found");
    return Status::Ok();
  }

  // Held builds wait inside BuildTemplate, after their log, until released.
  void HoldBuilds() {
    std::lock_guard lock(mu_);
    hold_builds_ = true;
  }
  void ReleaseBuild(const std::string& build_id) {
    std::lock_guard lock(mu_);
    released_builds_.insert(build_id);
    build_cv_.notify_all();
  }
  // Lets every build go on, now and from now on.
  void ReleaseBuilds() {
    std::lock_guard lock(mu_);
    hold_builds_ = false;
    build_cv_.notify_all();
  }
  // Whether `n` builds have entered BuildTemplate (in all) within `timeout`.
  bool WaitForBuildsEntered(size_t n, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    return build_cv_.wait_for(lock, timeout, [&] { return builds_entered_ >= n; });
  }
  size_t builds_entered() {
    std::lock_guard lock(mu_);
    return builds_entered_;
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
  std::condition_variable build_cv_;
  bool hold_builds_ = false;
  std::set<std::string> released_builds_;
  size_t builds_entered_ = 0;
  size_t builds_inside_ = 0;
};

}  // namespace moat::test_support
