// filesystem.Filesystem over the Connect protocol (E2B-WIRE §7), mapped onto the guest
// channel's file ops: stat, list, mkdir, move, remove, watch. Every op runs as the call's user;
// relative paths resolve against that user's home (the guest does that).
#include <chrono>

#include "api/codec/protojson.h"
#include "api/routes/routes.h"

namespace moat::api::routes {
namespace {

using channel::StreamEvent;
using Clock = std::chrono::steady_clock;

constexpr auto kUnaryTimeout = std::chrono::seconds(30);

std::string FileType(const std::string& guest_type) {
  if (guest_type == "file") return "FILE_TYPE_FILE";
  if (guest_type == "dir") return "FILE_TYPE_DIRECTORY";
  if (guest_type == "symlink") return "FILE_TYPE_SYMLINK";
  return "FILE_TYPE_UNSPECIFIED";
}

}  // namespace

// The guest's entry as an EntryInfo (zero values omitted, int64 as strings).
json EntryInfo(const json& e) {
  json out = {{"name", e.value("name", "")},
              {"type", FileType(e.value("type", ""))},
              {"path", e.value("path", "")}};
  int64_t size = e.value("size", json(0)).is_number() ? e.value("size", int64_t{0}) : 0;
  if (size != 0) out["size"] = std::to_string(size);
  int64_t mode = e.value("mode", json(0)).is_number() ? e.value("mode", int64_t{0}) : 0;
  if ((mode & 07777) != 0) out["mode"] = mode & 07777;
  for (const char* k : {"permissions", "owner", "group"}) {
    if (e.contains(k) && e[k].is_string() && !e[k].get<std::string>().empty()) out[k] = e[k];
  }
  if (e.contains("mtime_ns") && e["mtime_ns"].is_number_integer()) {
    out["modifiedTime"] = codec::Rfc3339(e["mtime_ns"].get<int64_t>());
  }
  if (e.contains("symlink_target") && e["symlink_target"].is_string()) {
    out["symlinkTarget"] = e["symlink_target"];
  }
  return out;
}

namespace {

Result<std::string> PathField(const json& req, std::string_view name = "path") {
  MOAT_ASSIGN_OR_RETURN(auto p, codec::StringField(req, name));
  if (!p || p->empty()) return InvalidArgument("field \"" + std::string(name) + "\" is required");
  return *p;
}

Result<json> GuestCall(EnvdCall& call, json op) {
  MOAT_ASSIGN_OR_RETURN(auto guest, call.Guest());
  op["user"] = call.user;
  return guest->Call(op, Clock::now() + kUnaryTimeout);
}

Result<json> Stat(EnvdCall& call, const json& req) {
  MOAT_ASSIGN_OR_RETURN(std::string path, PathField(req));
  MOAT_ASSIGN_OR_RETURN(json e, GuestCall(call, {{"op", "stat"}, {"path", path}}));
  return json{{"entry", EntryInfo(e)}};
}

Result<json> ListDir(EnvdCall& call, const json& req) {
  MOAT_ASSIGN_OR_RETURN(std::string path, PathField(req));
  MOAT_ASSIGN_OR_RETURN(auto depth, codec::IntField(req, "depth", 0, 64));
  // Listing a file is invalid_argument (the guest's ENOTDIR says so already).
  MOAT_ASSIGN_OR_RETURN(json r,
                        GuestCall(call, {{"op", "list"},
                                         {"path", path},
                                         {"depth", std::max<int64_t>(1, depth.value_or(1))}}));
  json entries = json::array();
  for (const auto& e : r.value("entries", json::array())) entries.push_back(EntryInfo(e));
  return json{{"entries", entries}};
}

Result<json> MakeDir(EnvdCall& call, const json& req) {
  MOAT_ASSIGN_OR_RETURN(std::string path, PathField(req));
  MOAT_ASSIGN_OR_RETURN(json r, GuestCall(call, {{"op", "mkdir"}, {"path", path}}));
  if (r.value("created", json(false)) != json(true)) {
    return Status(ErrorCode::kAlreadyExists, "directory " + path + " already exists");
  }
  MOAT_ASSIGN_OR_RETURN(json e, GuestCall(call, {{"op", "stat"}, {"path", path}}));
  return json{{"entry", EntryInfo(e)}};
}

Result<json> Move(EnvdCall& call, const json& req) {
  MOAT_ASSIGN_OR_RETURN(std::string from, PathField(req, "source"));
  MOAT_ASSIGN_OR_RETURN(std::string to, PathField(req, "destination"));
  MOAT_ASSIGN_OR_RETURN(json e, GuestCall(call, {{"op", "move"}, {"from", from}, {"to", to}}));
  return json{{"entry", EntryInfo(e)}};
}

Result<json> Remove(EnvdCall& call, const json& req) {
  MOAT_ASSIGN_OR_RETURN(std::string path, PathField(req));
  auto r = GuestCall(call, {{"op", "remove"}, {"path", path}});
  // Removing what is not there is not an error for envd.
  if (!r.ok() && r.status().code() != ErrorCode::kNotFound) return r.status();
  return json::object();
}

std::string EventType(const std::string& guest_type) {
  if (guest_type == "create") return "EVENT_TYPE_CREATE";
  if (guest_type == "write") return "EVENT_TYPE_WRITE";
  if (guest_type == "remove") return "EVENT_TYPE_REMOVE";
  if (guest_type == "rename") return "EVENT_TYPE_RENAME";
  if (guest_type == "chmod") return "EVENT_TYPE_CHMOD";
  return "EVENT_TYPE_UNSPECIFIED";
}

Status WatchDir(EnvdCall& call, const json& req, const StreamLimits& limits, StreamSink& sink) {
  MOAT_ASSIGN_OR_RETURN(std::string path, PathField(req));
  MOAT_ASSIGN_OR_RETURN(auto recursive, codec::BoolField(req, "recursive"));
  MOAT_ASSIGN_OR_RETURN(auto guest, call.Guest());
  MOAT_ASSIGN_OR_RETURN(auto stream, guest->Open({{"op", "watch"},
                                                  {"path", path},
                                                  {"recursive", recursive.value_or(false)},
                                                  {"user", call.user}}));
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
    std::string type =
        ev->message.value("type", json("")).is_string() ? ev->message.value("type", "") : "";
    bool sent;
    if (type == "start") {
      started = true;
      sent = sink.Send({{"start", json::object()}});
    } else {
      sent =
          sink.Send({{"filesystem",
                      {{"name", ev->message.value("name", json(""))}, {"type", EventType(type)}}}});
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
