// HostDirectory: which hosts the control plane can use and how it reaches each one. The
// controller asks it for the host that runs a sandbox (by the host id its record names) and to
// place a new sandbox (pick a host and reserve its vCPUs and memory there). `moatd serve` has
// one host and reserves nothing (SingleHostDirectory); a fleet's replicas place by free
// capacity with one conditional update per try, so two replicas never overbook a host
// (api/fleet/, shared/FLEET.md §2).
#pragma once

#include <string>

#include "api/host_agent.h"
#include "common/status.h"

namespace moat::api {

// What a sandbox takes from its host while it holds resources (api/lifecycle.h HoldsResources).
struct Reservation {
  int64_t vcpus = 0;
  int64_t memory_mib = 0;
  // A create of the base template: a host with a warm clone ready serves it first.
  bool base_template = false;
};

struct Placement {
  std::string host_id;
  HostAgent* host = nullptr;
};

class HostDirectory {
 public:
  virtual ~HostDirectory() = default;

  // The host with this id; unavailable when it is not known (or lost), naming it.
  virtual Result<HostAgent*> Host(const std::string& host_id) = 0;
  // The base template every host offers (what a create reserves).
  virtual HostTemplateInfo base_template() = 0;
  // Picks a host for `need` and reserves it there; `except`: a host not to pick (the one a
  // start just failed on). resource_exhausted when no host has room.
  virtual Result<Placement> Place(const Reservation& need, const std::string& except = "") = 0;
  // Reserves `need` on that very host (a resume goes to the host holding the snapshot).
  virtual Status Reserve(const std::string& host_id, const Reservation& need) = 0;
  // Gives a reservation back (a failed start, a kill, a pause). Never fails the caller: logs.
  virtual void Release(const std::string& host_id, const Reservation& need) = 0;
};

// `moatd serve`: its one in-process host, no reservations (the team quotas bound it).
class SingleHostDirectory : public HostDirectory {
 public:
  explicit SingleHostDirectory(HostAgent& host) : host_(host) {}
  Result<HostAgent*> Host(const std::string& host_id) override {
    // Records made before hosts had ids name none: they are this host's.
    if (host_id.empty() || host_id == host_.host_id()) return &host_;
    return Unavailable("host \"" + host_id + "\" is not this moatd's (it runs \"" +
                       host_.host_id() + "\")");
  }
  HostTemplateInfo base_template() override { return host_.base_template(); }
  Result<Placement> Place(const Reservation&, const std::string&) override {
    return Placement{host_.host_id(), &host_};
  }
  Status Reserve(const std::string&, const Reservation&) override { return Status::Ok(); }
  void Release(const std::string&, const Reservation&) override {}

 private:
  HostAgent& host_;
};

}  // namespace moat::api
