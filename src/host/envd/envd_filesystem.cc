// filesystem.Filesystem over the Connect protocol (E2B-WIRE §7), mapped onto the guest
// channel's file ops: stat, list, mkdir, move, remove, watch. Every op runs as the call's user;
// relative paths resolve against that user's home (the guest does that).
#include <chrono>

#include "api/codec/protojson.h"
#include "api/routes/routes.h"
#include "channel/guest_ops.h"
#include "host/envd/envd_routes.h"

namespace moat::api::routes {
namespace {

using channel::StreamEvent;
namespace ops = channel::ops;
namespace proto = channel::proto;
using Clock = std::chrono::steady_clock;

constexpr auto kUnaryTimeout = std::chrono::seconds(30);

std::string FileType(proto::FileType type) {
  switch (type) {
    case proto::FileType::kFile: return "FILE_TYPE_FILE";
    case proto::FileType::kDir: return "FILE_TYPE_DIRECTORY";
    case proto::FileType::kSymlink: return "FILE_TYPE_SYMLINK";
    case proto::FileType::kOther: break;
  }
  return "FILE_TYPE_UNSPECIFIED";
}

}  // namespace

// The guest's entry as an EntryInfo (zero values omitted, int64 as strings). A symlink shows as
// envd shows it: its own name, path, size and permissions ("Lrwxrwxrwx"), the type and mode of
// what it leads to (type unspecified when it leads nowhere, and clients then skip it), and
// symlinkTarget the destination's absolute path with every link resolved (its own path when
// there is none).
json EntryInfo(const proto::FileEntry& e, bool resolved_links) {
  // A moat-guest from before envd 0.6 semantics says only that it is a link, and its text.
  bool link = resolved_links && e.type == proto::FileType::kSymlink;
  std::string type = link
                         ? (e.target ? FileType(e.target->type) : FileType(proto::FileType::kOther))
                         : FileType(e.type);
  uint32_t mode = link ? (e.target ? e.target->mode : 0) : e.mode;
  json out = {{"name", e.name}, {"type", type}, {"path", e.path}};
  if (e.size != 0) out["size"] = std::to_string(e.size);
  if ((mode & 07777) != 0) out["mode"] = mode & 07777;
  if (!e.permissions.empty()) {
    out["permissions"] =
        link && e.permissions[0] == 'l' ? "L" + e.permissions.substr(1) : e.permissions;
  }
  if (!e.owner.empty()) out["owner"] = e.owner;
  if (!e.group.empty()) out["group"] = e.group;
  if (e.mtime_ns != 0) out["modifiedTime"] = codec::Rfc3339(e.mtime_ns);
  if (link) {
    out["symlinkTarget"] = e.target ? e.target->path : e.path;
  } else if (e.symlink_target) {
    out["symlinkTarget"] = *e.symlink_target;
  }
  if (!e.metadata.empty()) out["metadata"] = e.metadata;
  return out;
}

namespace {

Result<std::string> PathField(const json& req, std::string_view name = "path") {
  MOAT_ASSIGN_OR_RETURN(auto p, codec::StringField(req, name));
  if (!p || p->empty()) return InvalidArgument("field \"" + std::string(name) + "\" is required");
  return *p;
}

bool Envd06(const channel::GuestClient& guest) {
  return guest.guest_hello().Has(proto::kFeatureEnvd06);
}

Result<json> Stat(EnvdCall& call, const json& req) {
  MOAT_ASSIGN_OR_RETURN(std::string path, PathField(req));
  MOAT_ASSIGN_OR_RETURN(auto guest, call.Guest());
  MOAT_ASSIGN_OR_RETURN(auto e, ops::Stat(*guest, {path, call.user}, Clock::now() + kUnaryTimeout));
  return json{{"entry", EntryInfo(e, Envd06(*guest))}};
}

Result<json> ListDir(EnvdCall& call, const json& req) {
  MOAT_ASSIGN_OR_RETURN(std::string path, PathField(req));
  MOAT_ASSIGN_OR_RETURN(auto depth, codec::IntField(req, "depth", 0, 64));
  MOAT_ASSIGN_OR_RETURN(auto guest, call.Guest());
  // Listing a file is invalid_argument (the guest's ENOTDIR says so already).
  proto::ListOp op{path, call.user, static_cast<int>(std::max<int64_t>(1, depth.value_or(1)))};
  MOAT_ASSIGN_OR_RETURN(auto list, ops::List(*guest, op, Clock::now() + kUnaryTimeout));
  json entries = json::array();
  bool resolved_links = Envd06(*guest);
  for (const auto& e : list) entries.push_back(EntryInfo(e, resolved_links));
  return json{{"entries", entries}};
}

Result<json> MakeDir(EnvdCall& call, const json& req) {
  MOAT_ASSIGN_OR_RETURN(std::string path, PathField(req));
  MOAT_ASSIGN_OR_RETURN(auto guest, call.Guest());
  auto deadline = Clock::now() + kUnaryTimeout;
  MOAT_ASSIGN_OR_RETURN(bool created, ops::Mkdir(*guest, {path, call.user}, deadline));
  if (!created) return Status(ErrorCode::kAlreadyExists, "directory " + path + " already exists");
  MOAT_ASSIGN_OR_RETURN(auto e, ops::Stat(*guest, {path, call.user}, deadline));
  return json{{"entry", EntryInfo(e, Envd06(*guest))}};
}

Result<json> Move(EnvdCall& call, const json& req) {
  MOAT_ASSIGN_OR_RETURN(std::string from, PathField(req, "source"));
  MOAT_ASSIGN_OR_RETURN(std::string to, PathField(req, "destination"));
  MOAT_ASSIGN_OR_RETURN(auto guest, call.Guest());
  MOAT_ASSIGN_OR_RETURN(auto e,
                        ops::Move(*guest, {from, to, call.user}, Clock::now() + kUnaryTimeout));
  return json{{"entry", EntryInfo(e, Envd06(*guest))}};
}

Result<json> Remove(EnvdCall& call, const json& req) {
  MOAT_ASSIGN_OR_RETURN(std::string path, PathField(req));
  MOAT_ASSIGN_OR_RETURN(auto guest, call.Guest());
  Status s = ops::Unary(*guest, proto::RemoveOp{path, call.user}, Clock::now() + kUnaryTimeout);
  // Removing what is not there is not an error for envd.
  if (!s.ok() && s.code() != ErrorCode::kNotFound) return s;
  return json::object();
}

std::string EventType(proto::WatchEvent::Type type) {
  switch (type) {
    case proto::WatchEvent::Type::kCreate: return "EVENT_TYPE_CREATE";
    case proto::WatchEvent::Type::kWrite: return "EVENT_TYPE_WRITE";
    case proto::WatchEvent::Type::kRemove: return "EVENT_TYPE_REMOVE";
    case proto::WatchEvent::Type::kRename: return "EVENT_TYPE_RENAME";
    case proto::WatchEvent::Type::kChmod: return "EVENT_TYPE_CHMOD";
    case proto::WatchEvent::Type::kStart: break;
  }
  return "EVENT_TYPE_UNSPECIFIED";
}

Status WatchDir(EnvdCall& call, const json& req, const StreamLimits& limits, StreamSink& sink) {
  MOAT_ASSIGN_OR_RETURN(std::string path, PathField(req));
  MOAT_ASSIGN_OR_RETURN(auto recursive, codec::BoolField(req, "recursive"));
  MOAT_ASSIGN_OR_RETURN(auto include_entry, codec::BoolField(req, "includeEntry"));
  MOAT_ASSIGN_OR_RETURN(auto allow_network_mounts, codec::BoolField(req, "allowNetworkMounts"));
  MOAT_ASSIGN_OR_RETURN(auto guest, call.Guest());
  if ((include_entry.value_or(false) || allow_network_mounts.value_or(false)) && !Envd06(*guest)) {
    return FailedPrecondition(
        "this sandbox runs a guest agent from before entries in watch events and network-mount "
        "watches (it was restored from an older snapshot); create it anew to use them");
  }
  MOAT_ASSIGN_OR_RETURN(auto stream,
                        guest->Open(proto::WatchOp{path, call.user, recursive.value_or(false),
                                                   include_entry.value_or(false),
                                                   allow_network_mounts.value_or(false)}));
  bool started = false;
  for (;;) {
    auto wait_until = started ? sink.KeepaliveDue() : Clock::now() + kUnaryTimeout;
    if (limits.deadline && *limits.deadline < wait_until) wait_until = *limits.deadline;
    auto ev = stream->Next(wait_until);
    if (!ev.ok()) {
      if (ev.status().code() != ErrorCode::kDeadlineExceeded) return ev.status();
      if (limits.deadline && Clock::now() >= *limits.deadline) {
        return DeadlineExceeded("the request's Connect-Timeout-Ms passed");
      }
      if (!started) return DeadlineExceeded("the guest did not start watching " + path);
      if (!sink.KeepaliveIfDue()) return Status::Ok();
      continue;
    }
    if (ev->kind == StreamEvent::Kind::kEnd) return ev->status;
    if (ev->kind != StreamEvent::Kind::kMessage) continue;
    auto event = channel::ops::Checked(*guest, proto::DecodeWatchEvent(ev->message));
    if (!event.ok()) return event.status();  // the stream's destructor cancels the watch
    bool sent;
    if (event->type == proto::WatchEvent::Type::kStart) {
      started = true;
      sent = sink.Send({{"start", json::object()}});
    } else {
      json fs = {{"name", event->name}, {"type", EventType(event->type)}};
      if (event->entry) fs["entry"] = EntryInfo(*event->entry, true);
      sent = sink.Send({{"filesystem", fs}});
    }
    if (!sent) return Status::Ok();  // client gone; the stream's destructor cancels the watch
  }
}

}  // namespace

void RegisterEnvdFilesystemRoutes(http::Router& router, EnvdContext& ctx) {
  router.Add("POST", "/filesystem.Filesystem/Stat", ConnectUnary(ctx, Stat));
  router.Add("POST", "/filesystem.Filesystem/ListDir", ConnectUnary(ctx, ListDir));
  router.Add("POST", "/filesystem.Filesystem/MakeDir", ConnectUnary(ctx, MakeDir));
  router.Add("POST", "/filesystem.Filesystem/Move", ConnectUnary(ctx, Move));
  router.Add("POST", "/filesystem.Filesystem/Remove", ConnectUnary(ctx, Remove));
  router.Add("POST", "/filesystem.Filesystem/WatchDir",
             ConnectServerStream(ctx, {{"keepalive", json::object()}}, WatchDir));
}

}  // namespace moat::api::routes
