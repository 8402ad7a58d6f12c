// moatd's configuration: one typed struct, validated at start-up; a bad value is an error that
// names the flag.
#pragma once

#include <string>

#include "common/status.h"
#include "vmm/qemu/accel_probe.h"

namespace moat::api {

struct MoatdConfig {
  std::string listen = "127.0.0.1:3000";
  std::string data_dir = "./.moat";
  vmm::qemu::AccelMode accel = vmm::qemu::AccelMode::kAuto;
  // Where the base template's vmlinux and rootfs.ext4 are; default: <moatd's dir>/../guest.
  std::string guest_dir;
};

// Checks every field: listen is host:port with a port in 1..65535, the data dir is creatable,
// the guest dir holds both artifacts. Fills in defaults that depend on the environment.
Status ValidateConfig(MoatdConfig& config);

}  // namespace moat::api
