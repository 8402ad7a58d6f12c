// moatd: the moat server. `moatd serve` is the all-in-one role (API + local agent).
//
// The HTTP API is not implemented yet (it is the API issue). Until then `serve` does what it
// honestly can: chooses the accelerator (and says why), starts the agent (cleaning up what an
// earlier run left), boot-checks the `base` guest — cold boot, moat-guest ready, one command run
// inside — prints what it did, and exits. It never pretends to serve.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>

#include "agent/agent.h"
#include "api/moatd_config.h"
#include "common/log.h"

namespace moat::api {
namespace {

int BootCheck(MoatdConfig config) {
  Status valid = ValidateConfig(config);
  if (!valid.ok()) {
    std::fprintf(stderr, "moatd: %s\n", valid.message().c_str());
    return 2;
  }
  vmm::qemu::AccelProbeOptions probe;
  probe.kernel_path = config.guest_dir + "/vmlinux";
  auto accel = vmm::qemu::ResolveAccel(config.accel, probe);
  if (!accel.ok()) {
    std::fprintf(stderr, "moatd: --accel: %s\n", accel.status().message().c_str());
    return 2;
  }
  LogInfo("moatd.accel",
          {{"accel", std::string(vmm::AccelName(accel->accel))}, {"reason", accel->reason}});

  agent::AgentConfig ac;
  ac.data_dir = config.data_dir;
  ac.base.kernel_path = config.guest_dir + "/vmlinux";
  ac.base.rootfs_path = config.guest_dir + "/rootfs.ext4";
  ac.accel = accel->accel;
  auto agent = agent::Agent::Start(ac);
  if (!agent.ok()) {
    std::fprintf(stderr, "moatd: %s\n", agent.status().ToString().c_str());
    return 1;
  }
  auto sb = (*agent)->Create("base", {});
  if (!sb.ok()) {
    std::fprintf(stderr, "moatd: boot check failed: %s\n", sb.status().ToString().c_str());
    return 1;
  }
  auto guest = (*sb)->Guest();
  if (!guest.ok()) {
    std::fprintf(stderr, "moatd: boot check failed: %s\n", guest.status().ToString().c_str());
    return 1;
  }
  auto run = (*guest)->Run({.cmd = "uname -sr; python3 --version; id -un"},
                           channel::GuestClient::Clock::now() + std::chrono::seconds(30));
  if (!run.ok() || run->exit_code != 0) {
    std::fprintf(stderr, "moatd: boot check command failed: %s\n",
                 run.ok() ? run->stderr_data.c_str() : run.status().ToString().c_str());
    return 1;
  }
  std::printf(
      "moatd: boot check passed\n"
      "  accelerator:        %s (%s)\n"
      "  sandbox:            %s, cold boot to moat-guest ready in %ld ms\n"
      "  inside the guest:   %s",
      std::string(vmm::AccelName(accel->accel)).c_str(), accel->reason.c_str(), (*sb)->id().c_str(),
      static_cast<long>((*sb)->boot_time().count()), run->stdout_data.c_str());
  (void)(*agent)->Kill((*sb)->id());
  std::printf(
      "moatd: the HTTP API (%s) is not implemented yet — it is the next issue; the sandbox was "
      "killed and moatd exits here.\n",
      config.listen.c_str());
  return 0;
}

}  // namespace
}  // namespace moat::api

int main(int argc, char** argv) {
  CLI::App app{"moatd: the moat sandbox server"};
  app.set_version_flag("--version", "moatd 0.1.0");
  app.require_subcommand(1);
  moat::api::MoatdConfig config;
  std::string accel = "auto";
  auto* serve = app.add_subcommand("serve", "API + scheduler + local agent on embedded defaults");
  serve->add_option("--listen", config.listen, "HOST:PORT to listen on")->capture_default_str();
  serve->add_option("--data-dir", config.data_dir, "state directory")->capture_default_str();
  serve->add_option("--accel", accel, "auto|kvm|tcg")->capture_default_str();
  serve->add_option("--guest-dir", config.guest_dir, "directory with vmlinux and rootfs.ext4");
  CLI11_PARSE(app, argc, argv);
  auto mode = moat::vmm::qemu::ParseAccelMode(accel);
  if (!mode.ok()) {
    std::fprintf(stderr, "moatd: --accel: %s\n", mode.status().message().c_str());
    return 2;
  }
  config.accel = *mode;
  if (serve->parsed()) return moat::api::BootCheck(config);
  return 2;
}
