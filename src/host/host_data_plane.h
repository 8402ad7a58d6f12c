// The data plane of a fleet host (`moatd agent`): envd and port traffic that the API replicas
// relay to it, served by api::LocalDataPlane over this host's sandboxes. A sandbox is served
// only while the shared store has it running on this host; a guest that breaks the protocol is
// recorded as `error` by compare-and-set on (running, this host).
#pragma once

#include <memory>

#include "agent/agent.h"
#include "api/metrics.h"
#include "api/store/store.h"
#include "host/in_process_host_agent.h"
#include "host/local_data_plane.h"
#include "host/port_proxy.h"

namespace moat::host {

// `network`: the host gives sandboxes network slots (else port traffic answers 502).
// `max_body_bytes`: the agent server's body limit (streamed uploads).
std::unique_ptr<api::LocalDataPlane> FleetHostDataPlane(api::store::Store& store,
                                                        InProcessHostAgent& host,
                                                        agent::Agent& agent, api::Metrics& metrics,
                                                        api::PortProxyOptions proxy_options,
                                                        size_t max_body_bytes, bool network,
                                                        api::HistoryLog* history);

}  // namespace moat::host
