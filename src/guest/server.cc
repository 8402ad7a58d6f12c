#include "guest/server.h"

#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#include "channel/protocol.h"
#include "common/fs.h"
#include "common/log.h"
#include "guest/files.h"
#include "guest/fs_credentials.h"

namespace moat::guest {
namespace {

using channel::Frame;
using channel::FrameType;
using channel::SubChannel;

// Log lines about what the host sends are rate-limited: the host is a peer, not a trusted one.
RateLimiter g_host_log(2, 10);

// MESSAGEs are split below the JSON payload limit with room to spare for the wrapper.
constexpr size_t kMessageBudget = channel::kMaxJsonPayload - 1024;

void LogHostInput(std::string_view event, std::initializer_list<LogField> fields) {
  unsigned long suppressed = 0;
  if (!g_host_log.Allow(&suppressed)) return;
  if (suppressed > 0) LogWarn("guest.log_suppressed", {{"count", suppressed}});
  LogWarn(event, fields);
}

std::string BootId() {
  auto id = ReadFile("/proc/sys/kernel/random/boot_id");
  if (!id.ok()) return "";
  std::string s = *id;
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

}  // namespace

int64_t UptimeMs() {
  timespec ts{};
  ::clock_gettime(CLOCK_BOOTTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

Server::Server(EventLoop& loop, ServerOptions options)
    : loop_(loop), options_(std::move(options)), procs_(loop, *this) {
  loop_.AddIdle([this] { PumpDownloads(); });
}

Server::~Server() {
  // Streams hold watches and registrations that refer to the loop; drop them first.
  streams_.clear();
  transport_.reset();
}

Status Server::Start() {
  Transport::Callbacks cb;
  cb.on_frame = [this](Frame f) { OnFrame(std::move(f)); };
  cb.on_disconnect = [this] {
    LogInfo("guest.host_disconnected", {{"streams", streams_.size()}});
    ResetConnection();
    hello_seen_ = false;
  };
  cb.on_drained = [this] { OnDrained(); };
  if (!options_.listen_unix.empty()) {
    MOAT_ASSIGN_OR_RETURN(transport_, Transport::ListenUnix(loop_, options_.listen_unix, cb));
    LogInfo("guest.listening", {{"path", options_.listen_unix}});
    return Status::Ok();
  }
  // Up to ~60 s for the port to appear (the virtio driver probes asynchronously).
  MOAT_ASSIGN_OR_RETURN(UniqueFd port, OpenVirtioPort(options_.port_name, 3000));
  MOAT_ASSIGN_OR_RETURN(transport_, Transport::ForPort(loop_, std::move(port), cb));
  return Status::Ok();
}

void Server::OnFrame(Frame frame) {
  if (frame.type == FrameType::kHello) {
    OnHello(frame);
    return;
  }
  // Leftovers of an earlier connection until the host says HELLO.
  if (!hello_seen_) return;
  switch (frame.type) {
    case FrameType::kRequest: OnRequest(frame); return;
    case FrameType::kData: OnData(frame); return;
    case FrameType::kEof: OnEof(frame); return;
    case FrameType::kWindow: OnWindow(frame); return;
    case FrameType::kCancel: CloseStream(frame.stream); return;
    case FrameType::kPing: transport_->Send(FrameType::kPong, 0, 0, frame.payload); return;
    case FrameType::kPong: return;
    case FrameType::kMessage:
      // No op takes MESSAGEs from the host (yet); an unknown one is not worth ending a stream.
      return;
    default:
      LogHostInput("guest.unexpected_frame",
                   {{"type", FrameTypeName(frame.type)}, {"stream", frame.stream}});
      return;
  }
}

void Server::OnHello(const Frame& frame) {
  Json hello = Json::parse(frame.payload, nullptr, false);
  if (hello.is_discarded() || !hello.is_object()) {
    LogHostInput("guest.bad_hello", {{"bytes", frame.payload.size()}});
    return;
  }
  // Every HELLO starts a new connection: the host does not know our old streams.
  ResetConnection();
  hello_seen_ = true;
  Json reply = {{"version", channel::kVersion},
                {"min_version", channel::kMinVersion},
                {"boot_id", BootId()},
                {"uptime_ms", UptimeMs()},
                {"pid1", ::getpid() == 1},
                {"features", Json::array({std::string(channel::proto::kFeatureEnvd06)})}};
  transport_->Send(FrameType::kHello, 0, 0, std::string(channel::kHelloMagic) + DumpJson(reply));
  LogInfo("guest.host_connected");
}

void Server::ResetConnection() {
  std::vector<uint32_t> ids;
  for (const auto& [id, s] : streams_) ids.push_back(id);
  for (uint32_t id : ids) CloseStream(id);
  transport_->DropOutput();
}

Server::Stream* Server::FindStream(uint32_t id) {
  auto it = streams_.find(id);
  return it == streams_.end() ? nullptr : &it->second;
}

Server::Stream& Server::NewStream(uint32_t id, Stream::Kind kind) {
  Stream& s = streams_[id];
  s.kind = kind;
  return s;
}

void Server::OnRequest(const Frame& frame) {
  uint32_t id = frame.stream;
  if (streams_.count(id) != 0) {
    LogHostInput("guest.duplicate_stream", {{"stream", id}});
    return;
  }
  Json req = Json::parse(frame.payload, nullptr, false);
  if (req.is_discarded() || !req.is_object()) {
    LogHostInput("guest.bad_request", {{"stream", id}});
    transport_->Send(FrameType::kEnd, 0, id,
                     DumpJson(EndJson(InvalidArgument("request is not a JSON object"))));
    return;
  }
  if (streams_.size() >= channel::kMaxStreams) {
    transport_->Send(FrameType::kEnd, 0, id,
                     DumpJson(EndJson(ResourceExhausted(
                         "more than " + std::to_string(channel::kMaxStreams) + " open streams"))));
    return;
  }
  auto op = RequiredString(req, "op");
  Result<OpOutcome> outcome = op.ok() ? Dispatch(id, *op, req) : Result<OpOutcome>(op.status());
  if (!outcome.ok()) {
    streams_.erase(id);  // a handler may have created it before failing
    transport_->Send(FrameType::kEnd, 0, id, DumpJson(EndJson(outcome.status())));
    return;
  }
  if (*outcome == OpOutcome::kDone) {
    streams_.erase(id);
    transport_->Send(FrameType::kEnd, 0, id, "{}");
  }
}

Result<Server::OpOutcome> Server::Dispatch(uint32_t id, const std::string& op, const Json& req) {
  if (op == "exec") return OpExec(id, req);
  if (op == "attach") return OpAttach(id, req);
  if (op == "processes") return OpProcesses(id, req);
  if (op == "signal") return OpSignal(id, req);
  if (op == "stdin") return OpStdin(id, req);
  if (op == "close_stdin") return OpCloseStdin(id, req);
  if (op == "resize") return OpResize(id, req);
  if (op == "read_file") return OpReadFile(id, req);
  if (op == "write_file") return OpWriteFile(id, req);
  if (op == "stat") return OpStat(id, req);
  if (op == "list") return OpList(id, req);
  if (op == "mkdir") return OpMkdir(id, req);
  if (op == "move") return OpMove(id, req);
  if (op == "remove") return OpRemove(id, req);
  if (op == "watch") return OpWatch(id, req);
  if (op == "identity") return OpIdentity(id, req);
  if (op == "network") return OpNetwork(id, req);
  if (op == "health") return OpHealth(id, req);
  if (op == "metrics") return OpMetrics(id, req);
  std::string shown = op.size() > 64 ? op.substr(0, 64) + "..." : op;
  return InvalidArgument("unknown op \"" + shown + "\"");
}

void Server::OnData(const Frame& frame) {
  Stream* s = FindStream(frame.stream);
  if (s == nullptr) return;  // cancelled or ended: the host may still have had bytes in flight
  uint32_t id = frame.stream;
  size_t n = frame.payload.size();
  s->recv_outstanding += n;
  if (s->recv_outstanding > channel::kInitialWindow) {
    LogHostInput("guest.window_exceeded", {{"stream", id}});
    EndStream(id, ResourceExhausted("host sent more DATA than its window"));
    return;
  }
  if (frame.flags != static_cast<uint8_t>(SubChannel::kStdin)) {
    StdinConsumed(id, n);  // nothing to do with host bytes on ch1/ch2: credit and drop
    return;
  }
  switch (s->kind) {
    case Stream::Kind::kExec: {
      if (Status st = procs_.WriteStdin(s->pid, id, frame.payload); !st.ok()) {
        StdinConsumed(id, n);  // stdin not kept open, or closed: drop
      }
      return;
    }
    case Stream::Kind::kStdin: {
      if (Status st = procs_.WriteStdin(s->pid, id, frame.payload); !st.ok()) EndStream(id, st);
      return;
    }
    case Stream::Kind::kWriteFile: {
      if (Status st = s->upload->Write(frame.payload); !st.ok()) {
        EndStream(id, st);
        return;
      }
      StdinConsumed(id, n);
      return;
    }
    default: StdinConsumed(id, n); return;
  }
}

void Server::OnEof(const Frame& frame) {
  Stream* s = FindStream(frame.stream);
  if (s == nullptr || frame.flags != static_cast<uint8_t>(SubChannel::kStdin)) return;
  uint32_t id = frame.stream;
  switch (s->kind) {
    case Stream::Kind::kExec: (void)procs_.CloseStdin(s->pid); return;
    case Stream::Kind::kStdin: EndStream(id, procs_.CloseStdin(s->pid)); return;
    case Stream::Kind::kWriteFile: {
      if (Status st = s->upload->Commit(); !st.ok()) {
        EndStream(id, st);
        return;
      }
      UserTable users = UserTable::Load();
      Result<Json> entry = Internal("unreachable");
      {
        auto creds = FsCredentials::Assume(s->user);
        entry = creds.ok() ? StatPath(s->upload->path(), users) : Result<Json>(creds.status());
      }
      if (entry.ok()) SendMessage(id, *entry);
      EndStream(id, entry.status());
      return;
    }
    default: return;
  }
}

void Server::OnWindow(const Frame& frame) {
  Stream* s = FindStream(frame.stream);
  if (s == nullptr) return;
  auto credit = channel::DecodeWindowCredit(frame.payload);
  if (!credit.ok()) return;
  // Capped: a host that keeps granting credit must not overflow the counter.
  s->send_window = std::min<uint64_t>(s->send_window + *credit, uint64_t{1} << 32);
  if (s->kind == Stream::Kind::kExec) procs_.Refresh(s->pid);
}

void Server::OnDrained() {
  procs_.RefreshAll();
  for (auto& [id, s] : streams_) {
    if (s.watch) s.watch->Refresh();
  }
}

void Server::PumpDownloads() {
  if (!transport_) return;
  std::vector<uint32_t> ids;
  for (const auto& [id, s] : streams_) {
    if (s.kind == Stream::Kind::kReadFile) ids.push_back(id);
  }
  for (uint32_t id : ids) {
    for (;;) {
      Stream* s = FindStream(id);
      if (s == nullptr) break;
      size_t credit = Credit(id);
      if (credit == 0) break;
      auto chunk = s->download->Read(credit);
      if (!chunk.ok()) {
        EndStream(id, chunk.status());
        break;
      }
      if (chunk->empty()) {
        transport_->Send(FrameType::kEof, static_cast<uint8_t>(SubChannel::kStdout), id, "");
        EndStream(id, Status::Ok());
        break;
      }
      Data(id, SubChannel::kStdout, *chunk);
    }
  }
}

size_t Server::Credit(uint32_t stream) {
  Stream* s = FindStream(stream);
  if (s == nullptr || !transport_->has_room()) return 0;
  return static_cast<size_t>(std::min<uint64_t>(s->send_window, channel::kMaxPayload));
}

void Server::Data(uint32_t stream, SubChannel ch, std::string_view bytes) {
  Stream* s = FindStream(stream);
  if (s == nullptr) return;
  s->send_window -= std::min<uint64_t>(s->send_window, bytes.size());
  transport_->Send(FrameType::kData, static_cast<uint8_t>(ch), stream, bytes);
}

void Server::Eof(uint32_t stream, SubChannel ch) {
  if (FindStream(stream) == nullptr) return;
  transport_->Send(FrameType::kEof, static_cast<uint8_t>(ch), stream, "");
}

void Server::Finished(uint32_t stream, const Json& exit_message) {
  if (FindStream(stream) == nullptr) return;
  SendMessage(stream, exit_message);
  streams_.erase(stream);  // the process is gone already: nothing to detach
  transport_->Send(FrameType::kEnd, 0, stream, "{}");
}

void Server::StdinConsumed(uint32_t stream, size_t bytes) {
  Stream* s = FindStream(stream);
  if (s == nullptr || bytes == 0) return;
  s->recv_outstanding -= std::min<uint64_t>(s->recv_outstanding, bytes);
  transport_->Send(
      FrameType::kWindow, 0, stream,
      channel::EncodeWindow(stream, static_cast<uint32_t>(bytes)).substr(channel::kHeaderSize));
}

void Server::SendMessage(uint32_t id, const Json& message) {
  std::string text = DumpJson(message);
  if (text.size() > channel::kMaxJsonPayload) {
    // Ops keep their messages small (lists are split); this is a bug, not host input.
    LogError("guest.message_too_large", {{"stream", id}, {"bytes", text.size()}});
    text = DumpJson(EndJson(Internal("message too large")));
  }
  transport_->Send(FrameType::kMessage, 0, id, text);
}

void Server::SendArrayMessages(uint32_t id, const std::string& key, const Json& items) {
  Json batch = Json::array();
  size_t batch_bytes = 0;
  bool sent_any = false;
  for (const auto& item : items) {
    size_t item_bytes = DumpJson(item).size() + 1;
    if (!batch.empty() && batch_bytes + item_bytes > kMessageBudget) {
      SendMessage(id, Json{{key, std::move(batch)}});
      sent_any = true;
      batch = Json::array();
      batch_bytes = 0;
    }
    batch.push_back(item);
    batch_bytes += item_bytes;
  }
  if (!batch.empty() || !sent_any) SendMessage(id, Json{{key, std::move(batch)}});
}

void Server::EndStream(uint32_t id, const Status& status) {
  CloseStream(id);
  transport_->Send(FrameType::kEnd, 0, id, DumpJson(EndJson(status)));
}

void Server::CloseStream(uint32_t id) {
  auto it = streams_.find(id);
  if (it == streams_.end()) return;
  Stream s = std::move(it->second);
  streams_.erase(it);
  // The process keeps running; with nobody attached its output is drained and dropped.
  if (s.kind == Stream::Kind::kExec) procs_.Detach(s.pid, id);
}

}  // namespace moat::guest
