// What moat-guest does as PID 1 before serving: the mounts a Linux userland expects, the
// console as stdio, the hostname and the loopback interface.
#pragma once

#include "common/status.h"

namespace moat::guest {

// Idempotent: already-mounted filesystems are fine. Failures are logged and set-up goes on (a
// guest without /dev/shm still serves the host); the returned status is the first failure.
Status InitSystem();

}  // namespace moat::guest
