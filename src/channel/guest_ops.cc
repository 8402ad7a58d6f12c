#include "channel/guest_ops.h"

namespace moat::channel::ops {
namespace {

// Runs `request` to its END, handing each MESSAGE to `on_message` (which may fail the call).
// DATA is consumed (credited) and ignored.
Status Drive(GuestClient& guest, const proto::Request& request, Deadline deadline,
             const std::function<Status(const nlohmann::json&)>& on_message) {
  MOAT_ASSIGN_OR_RETURN(auto stream, guest.Open(request));
  for (;;) {
    MOAT_ASSIGN_OR_RETURN(StreamEvent ev, stream->Next(deadline));  // the destructor cancels
    if (ev.kind == StreamEvent::Kind::kMessage) {
      MOAT_RETURN_IF_ERROR(on_message(ev.message));
    } else if (ev.kind == StreamEvent::Kind::kEnd) {
      return ev.status;
    }
  }
}

// A unary op whose result is its one MESSAGE, decoded by `decode`.
template <class T, class Decode>
Result<T> One(GuestClient& guest, const proto::Request& request, Deadline deadline, Decode decode) {
  std::optional<T> out;
  Status s = Drive(guest, request, deadline, [&](const nlohmann::json& m) -> Status {
    if (out) {
      return Checked(guest, Result<T>(proto::GuestProtocolError(proto::OpName(request),
                                                                "more than one result message")))
          .status();
    }
    auto decoded = Checked(guest, decode(m));
    if (!decoded.ok()) return decoded.status();
    out = std::move(*decoded);
    return Status::Ok();
  });
  MOAT_RETURN_IF_ERROR(s);
  if (!out) {
    return Checked(
        guest, Result<T>(proto::GuestProtocolError(proto::OpName(request), "no result message")));
  }
  return std::move(*out);
}

// What a decoded item holds, roughly: its strings and a fixed overhead per item and string.
size_t ApproxBytes(const proto::FileEntry& e) {
  size_t n = 128 + e.name.size() + e.path.size() + e.permissions.size() + e.owner.size() +
             e.group.size() + (e.symlink_target ? e.symlink_target->size() : 0) +
             (e.target ? 32 + e.target->path.size() : 0);
  for (const auto& [k, v] : e.metadata) n += 64 + k.size() + v.size();
  return n;
}
size_t ApproxBytes(const proto::ProcessInfo& p) {
  size_t n = 128 + p.tag.size() + p.cmd.size() + p.cwd.size();
  for (const auto& a : p.argv) n += 32 + a.size();
  return n;
}

// An op whose result may be split over several MESSAGEs, concatenated and bounded in total
// (entries and bytes).
template <class T, class Decode>
Result<std::vector<T>> Many(GuestClient& guest, const proto::Request& request, Deadline deadline,
                            Decode decode) {
  std::vector<T> out;
  size_t bytes = 0;
  Status s = Drive(guest, request, deadline, [&](const nlohmann::json& m) -> Status {
    auto part = Checked(guest, decode(m));
    if (!part.ok()) return part.status();
    for (const auto& item : *part) bytes += ApproxBytes(item);
    if (out.size() + part->size() > proto::kMaxListEntries || bytes > proto::kMaxResultBytes) {
      return Checked(guest, Result<T>(proto::GuestProtocolError(
                                proto::OpName(request), "more entries or bytes than the limit")))
          .status();
    }
    for (auto& item : *part) out.push_back(std::move(item));
    return Status::Ok();
  });
  MOAT_RETURN_IF_ERROR(s);
  return out;
}

}  // namespace

Status Unary(GuestClient& guest, const proto::Request& request, Deadline deadline) {
  return Drive(guest, request, deadline, [](const nlohmann::json&) { return Status::Ok(); });
}

Result<std::vector<proto::ProcessInfo>> Processes(GuestClient& guest, Deadline deadline) {
  return Many<proto::ProcessInfo>(guest, proto::ProcessesOp{}, deadline, proto::DecodeProcesses);
}

Result<proto::FileEntry> Stat(GuestClient& guest, const proto::StatOp& op, Deadline deadline) {
  return One<proto::FileEntry>(guest, op, deadline, [](const nlohmann::json& m) {
    return proto::DecodeFileEntry(m, "stat");
  });
}

Result<std::vector<proto::FileEntry>> List(GuestClient& guest, const proto::ListOp& op,
                                           Deadline deadline) {
  return Many<proto::FileEntry>(guest, op, deadline, proto::DecodeEntries);
}

Result<bool> Mkdir(GuestClient& guest, const proto::MkdirOp& op, Deadline deadline) {
  return One<bool>(guest, op, deadline, proto::DecodeMkdirCreated);
}

Result<proto::FileEntry> Move(GuestClient& guest, const proto::MoveOp& op, Deadline deadline) {
  return One<proto::FileEntry>(guest, op, deadline, [](const nlohmann::json& m) {
    return proto::DecodeFileEntry(m, "move");
  });
}

Result<proto::Health> Health(GuestClient& guest, Deadline deadline) {
  return One<proto::Health>(guest, proto::HealthOp{}, deadline, proto::DecodeHealth);
}

Result<proto::GuestMetrics> Metrics(GuestClient& guest, Deadline deadline) {
  return One<proto::GuestMetrics>(guest, proto::MetricsOp{}, deadline, proto::DecodeMetrics);
}

}  // namespace moat::channel::ops
