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
  // Request bodies above this are refused with 413 (file uploads are the large ones).
  size_t max_body_bytes = 256u * 1024 * 1024;

  // Filled in by ValidateConfig from `listen`.
  std::string listen_host;
  uint16_t listen_port = 0;
};

// Checks every field: listen is host:port with a port in 0..65535 (0: any free port), the data dir
// is creatable, the guest dir holds both artifacts. Fills in defaults that depend on the
// environment.
Status ValidateConfig(MoatdConfig& config);

}  // namespace moat::api
