// The guest's operations as typed calls: each sends its proto:: request and decodes the reply,
// so no caller reads the channel's JSON. A reply that breaks the protocol fails the call with
// GuestProtocolError and is reported to the client (GuestClient::ReportViolation).
#pragma once

#include <vector>

#include "channel/guest_client.h"
#include "channel/protocol.h"

namespace moat::channel::ops {

using Deadline = GuestClient::Deadline;

// A decode result checked: an error is reported as a violation and returned.
template <class T>
Result<T> Checked(GuestClient& guest, Result<T> decoded) {
  if (!decoded.ok()) guest.ReportViolation(decoded.status());
  return decoded;
}

// Ops whose reply is only END (signal, close_stdin, resize, remove, identity, network, …).
Status Unary(GuestClient& guest, const proto::Request& request, Deadline deadline);

Result<std::vector<proto::ProcessInfo>> Processes(GuestClient& guest, Deadline deadline);
Result<proto::FileEntry> Stat(GuestClient& guest, const proto::StatOp& op, Deadline deadline);
Result<std::vector<proto::FileEntry>> List(GuestClient& guest, const proto::ListOp& op,
                                           Deadline deadline);
// Whether it was created (false: it existed).
Result<bool> Mkdir(GuestClient& guest, const proto::MkdirOp& op, Deadline deadline);
Result<proto::FileEntry> Move(GuestClient& guest, const proto::MoveOp& op, Deadline deadline);
Result<proto::Health> Health(GuestClient& guest, Deadline deadline);
Result<proto::GuestMetrics> Metrics(GuestClient& guest, Deadline deadline);

}  // namespace moat::channel::ops
