// SandboxController: executes the control API's actions against the store and the host agent
// (api/host_agent.h: the boundary; nothing here touches a VM), and enforces every sandbox's end
// time (the reaper). The store is the record of which team owns which sandbox and which named
// snapshot, and of each sandbox's lifecycle state (api/lifecycle.h), changed only by
// compare-and-set; the host owns the VMs and the snapshot files. A sandbox or snapshot of
// another team is not_found.
#pragma once

#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_set>

#include "api/data_plane.h"
#include "api/history.h"
#include "api/host_agent.h"
#include "api/host_directory.h"
#include "api/metrics.h"
#include "api/sandbox_actions.h"
#include "api/store/store.h"
#include "api/team_quotas.h"
#include "api/templates.h"

namespace moat::api {

struct ControllerOptions {
  std::chrono::milliseconds reap_interval{500};
  // `moatd serve`: at start, reconcile the store with its one host (the records of sandboxes
  // it no longer has go, VMs without a record are killed). A fleet's agents do this for their
  // own hosts.
  bool reconcile_at_start = true;
  // Custom templates (api/templates.h); unset: not offered (the routes answer 503).
  std::optional<TemplateOptions> templates;
  // History, audit and usage (api/history.h): recorded unless off (moatd --history=false).
  bool history = true;
  // Ended sandboxes' history, audit records and usage buckets older than this are pruned.
  std::chrono::hours history_retention{24 * 30};
  // How often running sandboxes' network counters are metered (and the prune runs, hourly).
  std::chrono::milliseconds usage_interval{60000};
};

class SandboxController {
 public:
  // Reconciles the store with the agent (records of sandboxes the agent does not have — an
  // earlier moatd's, cleaned up by the agent's recovery — are dropped, and so are records of
  // snapshots whose files are gone) and starts the reaper.
  // One host (`moatd serve`): a SingleHostDirectory over it, owned by the controller.
  static Result<std::unique_ptr<SandboxController>> Start(HostAgent& single_host,
                                                          store::Store& store, Metrics& metrics,
                                                          ControllerOptions options);
  static Result<std::unique_ptr<SandboxController>> Start(HostDirectory& hosts, store::Store& store,
                                                          Metrics& metrics,
                                                          ControllerOptions options);
  // Stops the reaper (sandboxes are the agent's to kill).
  ~SandboxController();
  SandboxController(const SandboxController&) = delete;
  SandboxController& operator=(const SandboxController&) = delete;

  // The template is `base`, or one of the team's snapshots by id or (the newest by) name.
  Result<store::SandboxRecord> Create(const store::TeamRecord& team,
                                      const CreateSandboxAction& action);
  Result<store::SandboxRecord> Get(const std::string& team_id, const std::string& id);
  Result<store::SandboxPage> List(const store::SandboxFilter& filter);
  Status Kill(const std::string& team_id, const std::string& id);
  // end = now + timeout (may shorten).
  Status SetTimeout(const std::string& team_id, const std::string& id, int64_t timeout_s);
  // Replaces a running sandbox's egress policy; failed_precondition while paused.
  // `egress` is the policy's canonical JSON (net::EgressPolicy::ToJson).
  Status UpdateNetwork(const std::string& team_id, const std::string& id,
                       const nlohmann::json& egress);
  // Where moatd's port proxy connects for `port` of a running sandbox (any team: port traffic
  // is public, as in E2B). failed_precondition if it has no network.
  // It is moatd's PortResolver.
  Result<SandboxEndpoint> ResolvePort(const std::string& id, uint16_t port);
  // end = max(end, now + timeout). A paused sandbox is resumed first (*resumed = true).
  Result<store::SandboxRecord> Connect(const std::string& team_id, const std::string& id,
                                       int64_t timeout_s, bool* resumed = nullptr);
  // failed_precondition ("already paused") for a paused sandbox: the routes answer 409.
  // `keep_memory` false keeps only its filesystem: the resume boots it.
  Status Pause(const std::string& team_id, const std::string& id, bool keep_memory = true);
  // Traffic for a port of sandbox `id` arrived (with `traffic_token`, the request's
  // e2b-traffic-access-token): if it was created with auto-resume and is paused (or pausing, or
  // being resumed), it is resumed — or the resume in flight is waited for — before the request
  // goes on; a sandbox with private ports only for its token. Any other sandbox: nothing (one
  // store read, once: options never change).
  Status WakeForTraffic(const std::string& id, std::string_view traffic_token = {});
  // aborted if it is running (409); end = now + timeout.
  Result<store::SandboxRecord> Resume(const std::string& team_id, const std::string& id,
                                      int64_t timeout_s);
  // `count` children of a running sandbox, recorded for the same team with the parent's
  // metadata; each its own end time (now + timeout).
  Result<std::vector<store::SandboxRecord>> Fork(const std::string& team_id, const std::string& id,
                                                 int count, int64_t timeout_s);

  // Where a named snapshot lives beyond its host's disk: its record in the object store's
  // state ("local-only", "uploading", "uploaded"), or "local" when there is none (no store).
  Result<std::string> SnapshotStorage(const std::string& snapshot_id);
  // A named snapshot of a running sandbox, which keeps running; owned by the sandbox's team.
  // failed_precondition (409) for a paused sandbox.
  Result<store::SnapshotRecord> CreateSnapshot(const std::string& team_id,
                                               const std::string& sandbox_id,
                                               const CreateSnapshotAction& action);
  Result<store::SnapshotPage> ListSnapshots(const store::SnapshotFilter& filter);
  // Removes the snapshot's files and record; sandboxes created from it are not affected.
  Status DeleteSnapshot(const std::string& team_id, const std::string& snapshot_id);

  // envd: a running sandbox's record by id, whatever its team (envd requests carry no API key;
  // the access token guards them). not_found if it is not running.
  Result<store::SandboxRecord> FindRunning(const std::string& id);
  // Its host found its guest breaking the protocol: the record becomes `error` (only from
  // running: a pause or kill racing this keeps its own state).
  void ReportFault(const std::string& id, const std::string& fault);

  // GET /sandboxes/{id}/metrics: one sample of what the sandbox costs the host now (E2B keeps a
  // series; moat samples on request). Empty for a paused sandbox or a range that excludes now.
  // cpu_used_pct is over the time since the previous request for this sandbox (the first: since
  // it started).
  struct MetricSample {
    int64_t unix_ms = 0;
    HostSandboxUsage usage;
    double cpu_used_pct = 0;
  };
  Result<std::vector<MetricSample>> SampleUsage(const std::string& team_id, const std::string& id,
                                                std::optional<int64_t> start_s,
                                                std::optional<int64_t> end_s);

  // Custom templates; null when not enabled.
  TemplateService* templates() { return templates_.get(); }

  // Per-team quotas: create, resume (connect to a paused sandbox) and fork are admitted here.
  QuotaGate& quotas() { return quotas_; }
  HistoryLog& history() { return history_; }
  // `moatd serve` stopping without keeping its sandboxes: the history of every sandbox that
  // holds resources ends now (its last network reading and console kept), as they are about to
  // be killed.
  void EndAtShutdown();
  // The running sandbox's console log as its host has it now (its last HistoryLog::kConsoleKeep
  // bytes).
  Result<std::string> ConsoleLog(const std::string& team_id, const std::string& id);
  // Meters every running sandbox's network counters once (the usage loop's pass; tests call
  // it), and prunes history past the retention period when `prune`.
  void MeterOnce(bool prune);

  // What /metrics reads from the store: sandboxes per state, fleet-wide and per host, and the
  // registered hosts (capacity, reservations, state, heartbeat). On a store error, what could be
  // read (a scrape never fails for it).
  StoreGauges Gauges();
  // One reaper pass (tests call it directly), made only by the process that leads "reaper"
  // (Store::Lead: one replica of a fleet): kills expired sandboxes, drops records of VMs
  // that died.
  void ReapOnce();
  // The fleet's janitor (FLEET.md §4): records still `creating` that started more than
  // `older_than` ago belong to a replica that died mid-create. Each is abandoned — killing, its
  // host asked to kill whatever started, its reservation given back, the record deleted.
  // Returns how many it reclaimed.
  int ReclaimStaleCreating(std::chrono::milliseconds older_than);

 private:
  SandboxController(HostDirectory& hosts, store::Store& store, Metrics& metrics,
                    ControllerOptions options)
      : hosts_(hosts),
        store_(store),
        metrics_(metrics),
        options_(options),
        quotas_(store),
        history_(&store, options.history) {}
  // Reconciles the store with the single host (ControllerOptions::reconcile_at_start).
  Status Reconcile(HostAgent& host);
  void ReaperLoop();
  void UsageLoop();
  // Reads the sandbox's network counters into its usage (history on).
  void MeterNet(HostAgent& host, const store::SandboxRecord& r);
  // Before its VM goes: the sandbox's last network reading and its console log (the host's
  // tail of it) go to its history.
  void KeepConsole(HostAgent& host, const store::SandboxRecord& r);
  // Moves the record to killing (from the state it was read in), has the agent kill the VM (or
  // delete a paused sandbox's snapshot), then deletes the record.
  Status Release(const store::SandboxRecord& r, const char* why);
  // A create or fork child that failed to start (or whose record failed): killing, the agent
  // asked to kill whatever started, the record deleted. Logs; never fails.
  void Abandon(const store::SandboxRecord& r, const char* why);
  Result<HostAgent*> HostOf(const store::SandboxRecord& r);
  Result<HostSandboxStatus> ProbeOnHost(const store::SandboxRecord& r);
  static Reservation ReservationOf(const store::SandboxRecord& r);
  Status PauseRecord(const store::SandboxRecord& r, bool keep_memory);
  // A fork whose children go to other hosts (the parent's cannot take them): the parent's
  // snapshot is uploaded to the object store, each child is placed anywhere else and restored
  // from it there. failed_precondition where the parent's host has no object store.
  Result<std::vector<store::SandboxRecord>> ForkElsewhere(const store::SandboxRecord& parent,
                                                          HostAgent& host, int count,
                                                          int64_t timeout_s);
  // Reserves `need` on that very host (where a snapshot is): the placement, or why not.
  Result<Placement> PlaceOn(const std::string& host_id, const Reservation& need);
  Result<bool> Transition(const std::string& id, SandboxState from, SandboxState to);
  Result<store::SandboxRecord> ResumeRecord(store::SandboxRecord r, int64_t timeout_s);
  // What a create's templateID names: "base", the id of the team's snapshot (or the newest of
  // that name), or one of the team's custom templates (its build for the tag).
  struct TemplateChoice {
    std::string record_id;  // the sandbox record's template_id
    std::string host_name;  // the host's name for it: "base", a snapshot id, a build id
    std::string host_id;    // the host it must go to ("" any)
    uint32_t vcpus = 0, memory_mib = 0, disk_mib = 0;
    std::string default_user;
    bool custom = false;
    bool snapshot = false;  // record_id is a named snapshot
  };
  Result<TemplateChoice> ResolveTemplate(const std::string& team_id,
                                         const std::string& template_id);

  std::unique_ptr<HostDirectory> owned_hosts_;  // Start(HostAgent&): its directory
  HostDirectory& hosts_;
  store::Store& store_;
  Metrics& metrics_;
  ControllerOptions options_;
  QuotaGate quotas_;
  std::unique_ptr<TemplateService> templates_;
  HistoryLog history_;

  // The previous CPU reading per sandbox, for cpu_used_pct.
  struct CpuReading {
    pid_t vmm_pid = 0;
    uint64_t vmm_start_time = 0;
    double age_seconds = 0;  // the VMM's age at the reading
    double cpu_seconds = 0;
  };
  std::mutex cpu_mu_;
  std::map<std::string, CpuReading> last_cpu_;
  // Sandboxes seen without auto-resume: WakeForTraffic need not read them again (bounded).
  std::mutex sleepless_mu_;
  std::unordered_set<std::string> sleepless_;

  // When the reaper first saw each record in `killing` (a kill in flight is left alone).
  static constexpr std::chrono::seconds kKillingGrace{30};
  std::map<std::string, std::chrono::steady_clock::time_point> killing_seen_;

  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread reaper_;
  std::thread usage_;
};

int64_t UnixMillisNow();

}  // namespace moat::api
