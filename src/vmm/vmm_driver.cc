#include "vmm/vmm_driver.h"

namespace moat::vmm {

std::string_view AccelName(Accel accel) {
  return accel == Accel::kKvm ? "kvm" : "tcg";
}

std::string_view VmStateName(VmState state) {
  switch (state) {
    case VmState::kStarting: return "starting";
    case VmState::kPaused: return "paused";
    case VmState::kRunning: return "running";
    case VmState::kExited: return "exited";
  }
  return "unknown";
}

}  // namespace moat::vmm
