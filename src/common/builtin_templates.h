// The built-in templates beyond `base`, as the control plane and the host agent both know them.
#pragma once

#include <cstdint>

namespace moat {

// E2B's code interpreter (docs/code-interpreter.md): the @e2b/code-interpreter client's default
// template. Its image is guest/build-rootfs.sh's `code-interpreter` variant, beside the base
// image in the guest dir; its snapshot is baked with the interpreter server on port 49999
// running and the default Python kernel started.
inline constexpr const char* kCodeInterpreterTemplate = "code-interpreter-v1";
inline constexpr const char* kCodeInterpreterImage = "code-interpreter.ext4";
inline constexpr uint32_t kCodeInterpreterVcpus = 2;
inline constexpr uint32_t kCodeInterpreterMemoryMib = 1024;
inline constexpr uint32_t kCodeInterpreterDiskMib = 4096;
inline constexpr uint16_t kCodeInterpreterPort = 49999;

}  // namespace moat
