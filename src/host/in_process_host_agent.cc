#include "host/in_process_host_agent.h"

#include <sys/stat.h>

#include "common/egress_policy.h"
#include "host/snapshot_replicator.h"

namespace moat::host {
namespace {

Result<net::EgressPolicy> PolicyOf(const nlohmann::json& egress) {
  if (egress.is_null()) return net::EgressPolicy{};
  return net::EgressPolicy::FromJson(egress);
}

}  // namespace

api::HostTemplateInfo InProcessHostAgent::base_template() {
  const auto& base = agent_.config().base;
  api::HostTemplateInfo t{
      .name = base.name, .vcpus = base.vcpus, .memory_mib = static_cast<uint32_t>(base.memory_mib)};
  struct stat st {};
  if (::stat(base.rootfs_path.c_str(), &st) == 0) {
    t.disk_mib = static_cast<uint32_t>(st.st_size / (1024 * 1024));
  }
  return t;
}

Result<api::HostInventory> InProcessHostAgent::Inventory() {
  api::HostInventory inv;
  for (const auto& sb : agent_.List()) inv.running.push_back(sb->id());
  for (const auto& m : agent_.ListPaused()) inv.paused.push_back(m.sandbox_id);
  for (const auto& m : agent_.ListSnapshots()) inv.snapshots.push_back(m.sandbox_id);
  inv.cleaned = agent_.recovery().cleaned;
  return inv;
}

Result<api::HostSandboxStatus> InProcessHostAgent::Probe(const std::string& id) {
  api::HostSandboxStatus s;
  if (auto sb = agent_.Get(id); sb.ok()) {
    s.kind = api::HostSandboxStatus::Kind::kRunning;
    s.fault = (*sb)->Fault();
  } else if (agent_.IsPaused(id)) {
    s.kind = api::HostSandboxStatus::Kind::kPaused;
  }
  return s;
}

Status InProcessHostAgent::Create(const api::HostSandboxStart& start) {
  nlohmann::json egress_json = start.egress;
  if (!start.from_store.empty()) {
    if (replicator_ == nullptr) {
      return FailedPrecondition("this host has no snapshot store: it cannot restore snapshot " +
                                start.from_store);
    }
    if (start.template_id != start.from_store) {
      return InvalidArgument("a create from the store names its snapshot as its template");
    }
    MOAT_RETURN_IF_ERROR(replicator_->MaterializeNamed(start.from_store, start.template_id));
    // A fork's child keeps its parent's policy (recorded in the snapshot) unless told otherwise.
    if (egress_json.is_null()) {
      auto m = agent::ReadManifest(agent_.config().data_dir + "/snapshots/" + start.template_id);
      if (m.ok()) egress_json = m->egress;
    }
  }
  MOAT_ASSIGN_OR_RETURN(net::EgressPolicy egress, PolicyOf(egress_json));
  agent::CreateRequest req{.id = start.id, .template_name = start.template_id, .egress = egress};
  req.identity.env = start.env_vars;
  return agent_.Create(req).status();
}

Result<agent::TemplateBuildSpec> InProcessHostAgent::BuildSpecOf(
    const api::HostTemplateBuild& build) {
  const nlohmann::json& j = build.start;
  if (!j.is_object()) return InvalidArgument("the build spec is not an object");
  agent::TemplateBuildSpec spec;
  spec.build_id = build.build_id;
  spec.template_id = build.template_id;
  spec.team_id = build.team_id;
  spec.vcpus = build.vcpus;
  spec.memory_mib = build.memory_mib;
  spec.min_free_disk_mib = build.min_free_disk_mib;
  spec.files = build.files;
  try {
    spec.from_template = j.value("fromTemplate", "");
    spec.from_image = j.value("fromImage", "");
    if (auto reg = j.find("fromImageRegistry"); reg != j.end() && reg->is_object()) {
      std::string type = reg->value("type", "registry");
      if (type != "registry") {
        return InvalidArgument("registry credentials of type \"" + type +
                               "\" are not supported (only \"registry\": username and password)");
      }
      spec.registry =
          agent::RegistryCredentials{reg->value("username", ""), reg->value("password", "")};
    }
    if (auto st = j.find("startCmd"); st != j.end() && st->is_string()) spec.start_cmd = *st;
    if (auto rd = j.find("readyCmd"); rd != j.end() && rd->is_string()) spec.ready_cmd = *rd;
    spec.force = j.value("force", false);
    for (const auto& step : j.value("steps", nlohmann::json::array())) {
      agent::TemplateStep s;
      s.type = step.value("type", "");
      for (auto& c : s.type) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      for (const auto& a : step.value("args", nlohmann::json::array())) {
        s.args.push_back(a.is_string() ? a.get<std::string>() : a.dump());
      }
      s.force = step.value("force", false);
      s.files_hash = step.value("filesHash", "");
      spec.steps.push_back(std::move(s));
    }
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgument(std::string("the build spec: ") + e.what());
  }
  return spec;
}

Result<api::HostTemplateBuilt> InProcessHostAgent::BuildTemplate(
    const api::HostTemplateBuild& build, const std::function<void(const api::HostBuildLog&)>& log,
    std::string* failed_step) {
  auto spec = BuildSpecOf(build);
  if (!spec.ok()) {
    if (failed_step != nullptr) *failed_step = "base";
    return spec.status();
  }
  agent::BuildFailure failure;
  // Nothing a build meets (guest output, an image's config) may take the process down.
  Result<agent::TemplateBuildResult> r = Internal("the build did not run");
  try {
    r = agent_.BuildTemplate(
        *spec,
        [&log](const agent::BuildLogLine& l) {
          if (log) log(api::HostBuildLog{l.unix_ms, l.level, l.step, l.message});
        },
        &failure);
  } catch (const std::exception& e) {
    r = Internal(std::string("the build failed unexpectedly: ") + e.what());
  }
  if (!r.ok()) {
    if (failed_step != nullptr) *failed_step = failure.step.empty() ? "base" : failure.step;
    return r.status();
  }
  return api::HostTemplateBuilt{static_cast<uint32_t>(r->disk_mib), r->ToJson()};
}

Status InProcessHostAgent::DeleteTemplateBuild(const std::string& build_id) {
  return agent_.DeleteTemplateBuild(build_id);
}

Status InProcessHostAgent::Kill(const std::string& id) {
  return agent_.Kill(id);
}

Status InProcessHostAgent::Pause(const std::string& id, bool keep_memory) {
  return agent_.Pause(id, keep_memory);
}

Status InProcessHostAgent::Resume(const std::string& id, const std::string& from_store) {
  if (from_store.empty()) return agent_.Resume(id).status();
  if (replicator_ == nullptr) {
    return FailedPrecondition("this host has no snapshot store: it cannot resume sandbox " + id +
                              " from another host's snapshot");
  }
  // A copy of this sandbox this host still holds is not the pause the control plane resumes
  // (an earlier pause here, or an earlier restore that failed): it goes.
  if (agent_.IsPaused(id) && replicator_->StoreKeyOfPaused(id) != from_store) {
    MOAT_RETURN_IF_ERROR(agent_.Kill(id).Annotate("dropping a stale copy of sandbox " + id));
  }
  // Laid out here (RAM paged in lazily by memfs), then resumed as one of this host's own.
  if (!agent_.IsPaused(id)) MOAT_RETURN_IF_ERROR(replicator_->MaterializePaused(from_store, id));
  auto resumed = agent_.Resume(id);
  // A failed restore keeps nothing here: the sandbox stays paused on its own host, and the next
  // try lays it out again (from this host's cache).
  if (!resumed.ok()) (void)agent_.Kill(id);
  return resumed.status();
}

Status InProcessHostAgent::Fork(const std::string& id, const std::vector<std::string>& child_ids) {
  return agent_.Fork(id, child_ids).status();
}

Result<std::string> InProcessHostAgent::ExportFork(const std::string& id) {
  if (replicator_ == nullptr) {
    return FailedPrecondition("this host has no snapshot store: forks stay on their host");
  }
  MOAT_ASSIGN_OR_RETURN(auto manifest, agent_.CreateSnapshot(id, "fork of " + id));
  const std::string& key = manifest.sandbox_id;  // the snapshot's id
  Status up =
      replicator_->UploadNow("named", key, key, agent_.config().data_dir + "/snapshots/" + key);
  if (!up.ok()) {
    (void)agent_.DeleteSnapshot(key);
    return up.Annotate("uploading the fork of " + id);
  }
  return key;
}

Result<std::string> InProcessHostAgent::CreateSnapshot(const std::string& id,
                                                       const std::string& name) {
  MOAT_ASSIGN_OR_RETURN(auto manifest, agent_.CreateSnapshot(id, name));
  return manifest.sandbox_id;  // the snapshot's id
}

Status InProcessHostAgent::DeleteSnapshot(const std::string& snapshot_id) {
  return agent_.DeleteSnapshot(snapshot_id);
}

Status InProcessHostAgent::SetEgress(const std::string& id, const nlohmann::json& egress) {
  MOAT_ASSIGN_OR_RETURN(net::EgressPolicy policy, PolicyOf(egress));
  return agent_.SetEgress(id, policy);
}

Result<std::string> InProcessHostAgent::ConsoleLog(const std::string& id, size_t max_bytes) {
  MOAT_ASSIGN_OR_RETURN(auto sb, agent_.Get(id));
  return sb->ConsoleTail(max_bytes);
}

Result<api::HostSandboxUsage> InProcessHostAgent::Usage(const std::string& id) {
  MOAT_ASSIGN_OR_RETURN(auto sb, agent_.Get(id));
  auto usage = sb->Usage();
  if (!usage.ok()) {
    // Its VMM just went away (killed, paused, exited).
    if (usage.status().code() == ErrorCode::kNotFound || !agent_.Get(id).ok() ||
        sb->vmm_pid() <= 0) {
      return NotFound("sandbox \"" + id + "\" is not running");
    }
    return usage.status();
  }
  const agent::SandboxUsage& u = *usage;
  return api::HostSandboxUsage{.pss_bytes = u.pss_bytes,
                               .pss_file_bytes = u.pss_file_bytes,
                               .rss_bytes = u.rss_bytes,
                               .memory_total_bytes = u.memory_total_bytes,
                               .disk_bytes = u.disk_bytes,
                               .disk_total_bytes = u.disk_total_bytes,
                               .vcpus = u.vcpus,
                               .cpu_seconds = u.cpu_seconds,
                               .vmm_age_seconds = u.vmm_age_seconds,
                               .vmm_pid = u.vmm_pid,
                               .vmm_start_time = u.vmm_start_time,
                               .net_egress_bytes = u.net_egress_bytes,
                               .net_ingress_bytes = u.net_ingress_bytes};
}

Result<api::HostPortEndpoint> InProcessHostAgent::ResolvePort(const std::string& id,
                                                              uint16_t port) {
  MOAT_ASSIGN_OR_RETURN(auto sb, agent_.Get(id));
  MOAT_ASSIGN_OR_RETURN(net::Ipv4Address address, sb->NetworkAddress());
  return api::HostPortEndpoint{address.ToString(), port};
}

std::function<Result<std::shared_ptr<channel::GuestClient>>(const std::string&)> GuestLookupOf(
    agent::Agent& agent) {
  return [&agent](const std::string& id) -> Result<std::shared_ptr<channel::GuestClient>> {
    MOAT_ASSIGN_OR_RETURN(auto sb, agent.Get(id));
    return sb->Guest();
  };
}

}  // namespace moat::host
