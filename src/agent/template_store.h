// TemplateStore: bakes a template's snapshot on first use and hands out its directory.
//
// Bake = cold-boot the template with guest RAM in a shared memory file, wait for moat-guest,
// save the device state, stop the VM. The build id hashes everything the snapshot depends on
// (kernel, rootfs, resources, accelerator, QEMU version), so a changed template gets a new
// snapshot. Concurrent creates of a template that is being baked wait for that one bake.
#pragma once

#include <atomic>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <string>

#include "agent/sandbox.h"
#include "common/status.h"

namespace moat::agent {

// The gid shared by every template's bake VM and its clones: the clones must open the
// template's memory file (QEMU 7.2 opens it read-write even to map it privately), and only
// that file of it is bound into each clone's jail. See docs/jail.md.
inline constexpr gid_t kTemplateGid = 899999;

// A memory file that VMs map share=off (a template's, a snapshot's): root's, readable by the
// sandboxes' group only; each VM opens it read-only (readonly=on,rom=off) and none may write it
// (docs/jail.md).
Status GiveMemoryFileToSandboxes(const std::string& path);

// The bake VM's name (and so its cgroup's): unique per bake directory
// (<templates>/<name>/.bake-XXXXXX), since the cgroup namespace is the host's and two agents
// (two data dirs) may bake a template of the same name at once.
std::string BakeVmName(const std::string& template_name, const std::string& bake_dir);

class TemplateStore {
 public:
  TemplateStore(std::string templates_dir, SandboxEnv env)
      : dir_(std::move(templates_dir)), env_(std::move(env)) {}

  // How a bake reports on a template's start and ready commands (level, message).
  using BakeLog = std::function<void(const std::string& level, const std::string& message)>;
  // The snapshot directory of the current build of `tmpl`, baked now if needed.
  Result<std::string> Ensure(const TemplateSpec& tmpl, const BakeLog& log = nullptr);
  // Bakes in progress give up at their next wait (their VMs are killed), and later ones fail
  // at once: for the agent's shutdown, which must not wait out a built-in template's bake.
  void Abort() { aborted_ = true; }
  // The build id `tmpl` has now (for tests and logs).
  Result<std::string> BuildId(const TemplateSpec& tmpl) const;

 private:
  Result<std::string> Bake(const TemplateSpec& tmpl, const std::string& build_dir,
                           const BakeLog& log);
  // The bake's set-up before the start command (TemplateSpec::bake_files, resize_root_fs).
  Status PrepareGuest(channel::GuestClient& guest, const TemplateSpec& tmpl);
  // Starts the template's start command in the bake VM and waits for its ready command.
  Status StartAndWait(channel::GuestClient& guest, const TemplateSpec& tmpl, const BakeLog& log);

  std::string dir_;
  SandboxEnv env_;
  std::atomic<bool> aborted_{false};
  std::mutex mu_;
  std::map<std::string, std::shared_future<Result<std::string>>> bakes_;  // by build dir
};

}  // namespace moat::agent
