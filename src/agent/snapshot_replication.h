// SnapshotReplication: how a host's agent shares its snapshots with the rest of a fleet through
// an object store (docs/snapshots.md "Across hosts"). The agent tells it of every snapshot it
// completes, and asks it for a template's snapshot before baking one. Implemented on the host
// side (host/snapshot_replicator.h); absent (null) where no store is configured: everything stays
// local, as on a single host.
#pragma once

#include <string>

#include "common/status.h"

namespace moat::agent {

class SnapshotReplication {
 public:
  virtual ~SnapshotReplication() = default;

  // A snapshot directory was completed (its manifest written): `kind` "paused" (owner: the
  // sandbox id), "named" (the snapshot id) or "template" (owner: "<template name>/<build id>").
  // Records it and queues its upload in the background; never fails the caller (it logs).
  virtual void Written(const std::string& kind, const std::string& owner_id,
                       const std::string& dir) = 0;
  // Fills the empty directory `dir` with the snapshot of template `name`'s build `build` from
  // the store (manifest last): true if it did, false if the store has none (bake it then).
  virtual Result<bool> FetchTemplate(const std::string& name, const std::string& build,
                                     const std::string& dir) = 0;
};

}  // namespace moat::agent
