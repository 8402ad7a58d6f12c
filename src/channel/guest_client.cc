#include "channel/guest_client.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <unordered_map>

#include "common/guarded.h"
#include "common/log.h"
#include "common/socket.h"

namespace moat::channel {
namespace {

using nlohmann::json;

constexpr auto kHelloInterval = std::chrono::milliseconds(200);
// What one stream may hold in MESSAGEs before it is cut off (the guest floods, or the consumer
// stopped reading a watch): the stream ends with ResourceExhausted and is cancelled.
constexpr size_t kMaxQueuedMessages = 4096;
constexpr size_t kMaxQueuedMessageBytes = 16 * 1024 * 1024;
// All streams together; beyond this the guest is disconnected. DATA is already bounded by the
// windows we grant, so only a misbehaving guest gets here.
constexpr size_t kMaxTotalQueuedBytes = 512 * 1024 * 1024;
constexpr size_t kReadBuffer = 256 * 1024;

RateLimiter g_protocol_log(1, 5);

}  // namespace

proto::ExecOp ExecRequest::ToOp() const {
  proto::ExecOp op;
  op.argv = argv;
  op.cmd = cmd;
  op.env = env;
  op.cwd = cwd;
  op.user = user;
  op.stdin_open = stdin_data.has_value() || static_cast<bool>(stdin_source);
  op.tag = tag;
  op.timeout_ms = timeout_ms;
  return op;
}

struct GuestClient::Stream::State {
  std::string op;  // the request's op, for errors
  // Each event with the bytes it counts against the limits (DATA and MESSAGE payloads).
  std::deque<std::pair<StreamEvent, size_t>> queue;
  size_t queued_messages = 0;
  size_t queued_message_bytes = 0;
  uint64_t recv_outstanding = 0;  // DATA bytes received and not yet credited back
  uint64_t send_window = kInitialWindow;
  bool closed = false;  // no more frames will be queued (END, cancel, connection lost)
  std::optional<StreamEvent> final_end;
  std::condition_variable cv;
};

struct GuestClient::Stream::Shared {
  std::mutex mu;  // guards everything below but the fd
  std::unordered_map<uint32_t, std::shared_ptr<State>> streams;
  uint32_t next_id = 1;
  bool alive = true;
  size_t total_queued = 0;

  std::mutex violation_mu;
  uint64_t violations = 0;
  std::function<void(const Status&)> on_violation;

  std::mutex write_mu;  // one frame at a time on the fd
  UniqueFd fd;
  UniqueFd wake;  // eventfd: tells the reader to stop
  FrameDecoder decoder{FrameDecoder::Mode::kResync};

  Status Send(FrameType type, uint8_t flags, uint32_t stream, std::string_view payload) {
    std::string frame = EncodeFrame(type, flags, stream, payload);
    Status s;
    {
      std::lock_guard lock(write_mu);
      s = WriteAll(fd.get(), frame);
    }
    if (!s.ok()) {
      Fail(Unavailable("guest connection lost: " + s.message()));
      return Unavailable("guest connection lost: " + s.message());
    }
    return s;
  }

  // Ends every stream with `why` and stops the reader. Idempotent.
  void Fail(const Status& why) {
    std::unique_lock lock(mu);
    if (!alive) return;
    alive = false;
    for (auto& [id, st] : streams) {
      StreamEvent end;
      end.kind = StreamEvent::Kind::kEnd;
      end.status = why;
      st->queue.emplace_back(std::move(end), 0);
      st->closed = true;
      st->cv.notify_all();
    }
    streams.clear();
    lock.unlock();
    uint64_t one = 1;
    ssize_t unused = ::write(wake.get(), &one, sizeof one);
    (void)unused;
  }

  // The reader's dispatch; returns an error for a protocol violation. Called with `mu` held.
  // Violations that do not close the connection go to `violations`, reported by the caller
  // once `mu` is released.
  Status Dispatch(Frame& f, std::vector<uint32_t>* to_cancel, std::vector<Status>* violations);
  void EndLocally(uint32_t id, const std::shared_ptr<State>& st, Status why,
                  std::vector<uint32_t>* to_cancel) {
    StreamEvent end;
    end.kind = StreamEvent::Kind::kEnd;
    end.status = std::move(why);
    st->queue.emplace_back(std::move(end), 0);
    st->closed = true;
    st->cv.notify_all();
    streams.erase(id);
    to_cancel->push_back(id);
  }
};

Status GuestClient::Stream::Shared::Dispatch(Frame& f, std::vector<uint32_t>* to_cancel,
                                             std::vector<Status>* violations) {
  switch (f.type) {
    case FrameType::kHello:
    case FrameType::kPong: return Status::Ok();  // repeated answers to our repeated HELLOs
    case FrameType::kPing:
      to_cancel->push_back(0);  // 0: answer with PONG (below, outside the lock)
      return Status::Ok();
    case FrameType::kRequest:
    case FrameType::kCancel:
      return InvalidArgument(std::string(FrameTypeName(f.type)) + " frame from the guest");
    default: break;
  }
  auto it = streams.find(f.stream);
  if (it == streams.end()) {
    // Frames still in flight for a stream we cancelled or ended are expected; a stream we never
    // opened is not.
    if (f.stream >= next_id)
      return InvalidArgument("frame for unopened stream " + std::to_string(f.stream));
    return Status::Ok();
  }
  uint32_t id = f.stream;
  std::shared_ptr<State> st = it->second;
  StreamEvent ev;
  switch (f.type) {
    case FrameType::kWindow: {
      MOAT_ASSIGN_OR_RETURN(uint32_t credit, DecodeWindowCredit(f.payload));
      st->send_window = std::min<uint64_t>(st->send_window + credit, uint64_t{1} << 32);
      st->cv.notify_all();
      return Status::Ok();
    }
    case FrameType::kData: {
      st->recv_outstanding += f.payload.size();
      if (st->recv_outstanding > kInitialWindow) {
        return InvalidArgument("guest overran the window of stream " + std::to_string(id));
      }
      total_queued += f.payload.size();
      ev.kind = StreamEvent::Kind::kData;
      ev.channel = static_cast<SubChannel>(f.flags);
      ev.data = std::move(f.payload);
      size_t bytes = ev.data.size();
      st->queue.emplace_back(std::move(ev), bytes);
      st->cv.notify_all();
      break;
    }
    case FrameType::kEof:
      ev.kind = StreamEvent::Kind::kEof;
      ev.channel = static_cast<SubChannel>(f.flags);
      st->queue.emplace_back(std::move(ev), 0);
      st->cv.notify_all();
      break;
    case FrameType::kMessage: {
      json m = json::parse(f.payload, nullptr, false);
      if (m.is_discarded() || !m.is_object()) {
        Status bad = proto::GuestProtocolError(st->op, "a MESSAGE that is not a JSON object");
        // Counted now, before the stream's end is visible; logged and handled by the caller.
        {
          std::lock_guard count(violation_mu);
          ++this->violations;
        }
        violations->push_back(bad);
        EndLocally(id, st, std::move(bad), to_cancel);
        return Status::Ok();
      }
      if (st->queued_messages + 1 > kMaxQueuedMessages ||
          st->queued_message_bytes + f.payload.size() > kMaxQueuedMessageBytes) {
        EndLocally(id, st, ResourceExhausted("too many unread messages on the stream"), to_cancel);
        return Status::Ok();
      }
      st->queued_messages += 1;
      st->queued_message_bytes += f.payload.size();
      total_queued += f.payload.size();
      ev.kind = StreamEvent::Kind::kMessage;
      ev.message = std::move(m);
      st->queue.emplace_back(std::move(ev), f.payload.size());
      st->cv.notify_all();
      break;
    }
    case FrameType::kEnd: {
      MOAT_ASSIGN_OR_RETURN(proto::End end, proto::DecodeEnd(f.payload));
      ev.kind = StreamEvent::Kind::kEnd;
      ev.status = std::move(end.result);
      st->queue.emplace_back(std::move(ev), 0);
      st->closed = true;
      st->cv.notify_all();
      streams.erase(id);
      return Status::Ok();
    }
    default: return InvalidArgument("unexpected frame");
  }
  if (total_queued > kMaxTotalQueuedBytes) {
    return ResourceExhausted("guest exceeded the host's buffer limit");
  }
  return Status::Ok();
}

Result<std::unique_ptr<GuestClient>> GuestClient::Connect(UniqueFd fd,
                                                          std::chrono::milliseconds timeout) {
  auto shared = std::make_shared<Stream::Shared>();
  shared->fd = std::move(fd);
  shared->wake.Reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!shared->wake) return ErrnoError("eventfd");
  std::unique_ptr<GuestClient> client(new GuestClient(shared));
  auto deadline = Clock::now() + timeout;
  auto next_hello = Clock::now();
  std::string hello = EncodeHello(json{{"version", kVersion}, {"min_version", kMinVersion}}.dump());
  std::string buf(kReadBuffer, '\0');
  for (;;) {
    auto now = Clock::now();
    if (now >= deadline) {
      return DeadlineExceeded("no HELLO from the guest within " + std::to_string(timeout.count()) +
                              " ms");
    }
    if (now >= next_hello) {
      MOAT_RETURN_IF_ERROR(WriteAll(shared->fd.get(), hello).Annotate("sending HELLO"));
      next_hello = now + kHelloInterval;
    }
    auto wait = std::min(deadline, next_hello) - now;
    pollfd p{shared->fd.get(), POLLIN, 0};
    int ms = static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(wait).count());
    int r = ::poll(&p, 1, ms);
    if (r < 0 && errno != EINTR) return ErrnoError("poll(guest channel)");
    if (r <= 0) continue;
    ssize_t n = ::read(shared->fd.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("read(guest channel)");
    if (n == 0) return Unavailable("guest channel closed during the handshake");
    shared->decoder.Feed(std::string_view(buf.data(), static_cast<size_t>(n)));
    for (;;) {
      auto next = shared->decoder.Next();
      if (!next.ok() || !next->has_value()) break;
      Frame& f = **next;
      if (f.type != FrameType::kHello) continue;  // leftovers from before our HELLO
      auto hello = proto::DecodeHello(f.payload);
      if (!hello.ok()) return hello.status();
      uint64_t guest_version = hello->version;
      uint64_t guest_min = hello->min_version;
      uint64_t agreed = std::min<uint64_t>(kVersion, guest_version);
      if (agreed < kMinVersion || agreed < guest_min) {
        return FailedPrecondition("channel version mismatch: host speaks " +
                                  std::to_string(kMinVersion) + ".." + std::to_string(kVersion) +
                                  ", guest " + std::to_string(guest_min) + ".." +
                                  std::to_string(guest_version));
      }
      client->guest_hello_ = std::move(*hello);
      // From here on a bad frame is a protocol error, not noise to skip.
      shared->decoder.SetMode(FrameDecoder::Mode::kStrict);
      client->reader_ = GuardedThread(
          "guest channel reader", [c = client.get()] { c->ReaderLoop(); },
          [sh = client->shared_](const Status& why) { sh->Fail(Unavailable(why.message())); });
      return client;
    }
  }
}

GuestClient::~GuestClient() {
  shared_->Fail(Unavailable("guest client closed"));
  // Unblocks a reader or writer stuck in a write to a guest that stopped reading.
  ::shutdown(shared_->fd.get(), SHUT_RDWR);
  if (reader_.joinable()) reader_.join();
}

void GuestClient::Shutdown() {
  shared_->Fail(Unavailable("guest client shut down"));
  ::shutdown(shared_->fd.get(), SHUT_RDWR);
}

bool GuestClient::alive() const {
  std::lock_guard lock(shared_->mu);
  return shared_->alive;
}

void GuestClient::ReaderLoop() {
  Stream::Shared& s = *shared_;
  std::string buf(kReadBuffer, '\0');
  std::vector<uint32_t> actions;
  std::vector<Status> violations;
  // The frames that arrived with the guest's HELLO are already buffered: decode them first.
  for (bool first = true;; first = false) {
    if (!first) {
      pollfd fds[2] = {{s.fd.get(), POLLIN, 0}, {s.wake.get(), POLLIN, 0}};
      int r = ::poll(fds, 2, -1);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) {
        s.Fail(ErrnoError("poll(guest channel)"));
        return;
      }
      if (fds[1].revents != 0) return;  // closing
      ssize_t n = ::read(s.fd.get(), buf.data(), buf.size());
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) {
        s.Fail(Unavailable(n == 0 ? "guest channel closed" : "guest channel read failed"));
        return;
      }
      s.decoder.Feed(std::string_view(buf.data(), static_cast<size_t>(n)));
    }
    for (;;) {
      auto next = s.decoder.Next();
      Status bad;
      if (!next.ok()) {
        bad = next.status();
      } else if (!next->has_value()) {
        break;
      } else {
        Frame frame = std::move(**next);
        std::string ping = frame.type == FrameType::kPing ? frame.payload : std::string();
        actions.clear();
        violations.clear();
        {
          std::lock_guard lock(s.mu);
          if (!s.alive) return;
          bad = s.Dispatch(frame, &actions, &violations);
        }
        for (const Status& v : violations) NotifyViolation(v);
        // Replies go out without the stream lock held: a write may block.
        for (uint32_t id : actions) {
          if (id == 0) {
            (void)s.Send(FrameType::kPong, 0, 0, ping);
          } else {
            (void)s.Send(FrameType::kCancel, 0, id, "");
          }
        }
      }
      if (!bad.ok()) {
        ReportViolation(bad);
        s.Fail(Unavailable("guest channel protocol error: " + bad.message()));
        return;
      }
    }
  }
}

Result<std::unique_ptr<GuestClient::Stream>> GuestClient::Open(const proto::Request& request) {
  return Open(proto::Encode(request));
}

Result<json> GuestClient::Call(const proto::Request& request, Deadline deadline) {
  return Call(proto::Encode(request), deadline);
}

void GuestClient::ReportViolation(const Status& why) {
  {
    std::lock_guard lock(shared_->violation_mu);
    ++shared_->violations;
  }
  NotifyViolation(why);
}

void GuestClient::NotifyViolation(const Status& why) {
  std::function<void(const Status&)> handler;
  {
    std::lock_guard lock(shared_->violation_mu);
    handler = shared_->on_violation;
  }
  unsigned long suppressed = 0;
  if (g_protocol_log.Allow(&suppressed)) {
    LogWarn("channel.guest_violation", {{"error", why.ToString()}, {"suppressed", suppressed}});
  }
  if (handler) handler(why);
}

uint64_t GuestClient::violations() const {
  std::lock_guard lock(shared_->violation_mu);
  return shared_->violations;
}

void GuestClient::SetViolationHandler(std::function<void(const Status&)> handler) {
  std::lock_guard lock(shared_->violation_mu);
  shared_->on_violation = std::move(handler);
}

Result<std::unique_ptr<GuestClient::Stream>> GuestClient::Open(const json& request) {
  std::string payload = request.dump(-1, ' ', false, json::error_handler_t::replace);
  if (payload.size() > kMaxJsonPayload) {
    return InvalidArgument("request of " + std::to_string(payload.size()) +
                           " bytes exceeds the JSON payload limit");
  }
  auto state = std::make_shared<Stream::State>();
  if (auto op = request.find("op"); op != request.end() && op->is_string()) {
    state->op = op->get<std::string>();
  }
  uint32_t id;
  {
    std::lock_guard lock(shared_->mu);
    if (!shared_->alive) return Unavailable("guest connection is closed");
    if (shared_->streams.size() >= kMaxStreams) {
      return ResourceExhausted("more than " + std::to_string(kMaxStreams) + " open streams");
    }
    id = shared_->next_id++;
    shared_->streams[id] = state;
  }
  MOAT_RETURN_IF_ERROR(shared_->Send(FrameType::kRequest, 0, id, payload));
  return std::unique_ptr<Stream>(new Stream(shared_, state, id));
}

GuestClient::Stream::~Stream() {
  Cancel();
}

Result<StreamEvent> GuestClient::Stream::Next(std::optional<Deadline> deadline) {
  uint32_t credit = 0;
  StreamEvent ev;
  {
    std::unique_lock lock(shared_->mu);
    if (state_->final_end) return *state_->final_end;
    auto ready = [&] { return !state_->queue.empty(); };
    if (deadline) {
      if (!state_->cv.wait_until(lock, *deadline, ready)) {
        return DeadlineExceeded("no event on stream " + std::to_string(id_) + " by the deadline");
      }
    } else {
      state_->cv.wait(lock, ready);
    }
    size_t bytes = state_->queue.front().second;
    ev = std::move(state_->queue.front().first);
    state_->queue.pop_front();
    shared_->total_queued -= std::min(shared_->total_queued, bytes);
    switch (ev.kind) {
      case StreamEvent::Kind::kData:
        credit = static_cast<uint32_t>(ev.data.size());
        state_->recv_outstanding -= std::min<uint64_t>(state_->recv_outstanding, credit);
        if (state_->closed) credit = 0;  // the guest forgot the stream: nobody to credit
        break;
      case StreamEvent::Kind::kMessage:
        state_->queued_messages -= 1;
        state_->queued_message_bytes -= std::min(state_->queued_message_bytes, bytes);
        break;
      case StreamEvent::Kind::kEnd: state_->final_end = ev; break;
      case StreamEvent::Kind::kEof: break;
    }
  }
  // Credit goes back only now that the caller has the bytes: a slow consumer slows the guest.
  if (credit > 0) {
    std::string payload = EncodeWindow(id_, credit).substr(kHeaderSize);
    (void)shared_->Send(FrameType::kWindow, 0, id_, payload);
  }
  return ev;
}

Status GuestClient::Stream::Write(SubChannel ch, std::string_view data,
                                  std::optional<Deadline> deadline) {
  while (!data.empty()) {
    size_t n;
    {
      std::unique_lock lock(shared_->mu);
      auto ready = [&] { return state_->closed || state_->send_window > 0; };
      if (deadline) {
        if (!state_->cv.wait_until(lock, *deadline, ready)) {
          return DeadlineExceeded("no send credit on stream " + std::to_string(id_));
        }
      } else {
        state_->cv.wait(lock, ready);
      }
      if (state_->closed) {
        if (!shared_->alive) return Unavailable("guest connection is closed");
        return FailedPrecondition("stream " + std::to_string(id_) + " has ended");
      }
      n = static_cast<size_t>(
          std::min<uint64_t>({data.size(), state_->send_window, uint64_t{kMaxPayload}}));
      state_->send_window -= n;
    }
    MOAT_RETURN_IF_ERROR(
        shared_->Send(FrameType::kData, static_cast<uint8_t>(ch), id_, data.substr(0, n)));
    data.remove_prefix(n);
  }
  return Status::Ok();
}

Status GuestClient::Stream::CloseWrite(SubChannel ch) {
  {
    std::lock_guard lock(shared_->mu);
    if (state_->closed) return FailedPrecondition("stream " + std::to_string(id_) + " has ended");
  }
  return shared_->Send(FrameType::kEof, static_cast<uint8_t>(ch), id_, "");
}

void GuestClient::Stream::Cancel() {
  {
    std::lock_guard lock(shared_->mu);
    if (state_->closed) return;
    state_->closed = true;
    shared_->streams.erase(id_);
    // Give back what the dropped queue held.
    for (const auto& [ev, bytes] : state_->queue) {
      shared_->total_queued -= std::min(shared_->total_queued, bytes);
    }
    state_->queue.clear();
    StreamEvent end;
    end.kind = StreamEvent::Kind::kEnd;
    end.status = Status(ErrorCode::kCancelled, "stream cancelled");
    state_->queue.emplace_back(std::move(end), 0);
    state_->cv.notify_all();
  }
  (void)shared_->Send(FrameType::kCancel, 0, id_, "");
}

Result<json> GuestClient::Call(const json& request, Deadline deadline) {
  MOAT_ASSIGN_OR_RETURN(auto stream, Open(request));
  json result = json::object();
  bool have = false;
  for (;;) {
    auto ev = stream->Next(deadline);
    if (!ev.ok()) return ev.status();  // the destructor cancels
    switch (ev->kind) {
      case StreamEvent::Kind::kMessage: {
        bool merged = false;
        for (const char* key : {"entries", "processes"}) {
          if (have && result.contains(key) && result[key].is_array() && ev->message.contains(key) &&
              ev->message[key].is_array()) {
            for (auto& item : ev->message[key]) result[key].push_back(std::move(item));
            merged = true;
          }
        }
        if (!merged) result = std::move(ev->message);
        have = true;
        break;
      }
      case StreamEvent::Kind::kEnd:
        if (!ev->status.ok()) return ev->status;
        return result;
      default: break;  // DATA is consumed (and credited) and ignored
    }
  }
}

Result<ExecResult> GuestClient::Run(const ExecRequest& request, Deadline deadline) {
  MOAT_ASSIGN_OR_RETURN(auto stream, Open(proto::Request(request.ToOp())));
  // Input is written on its own thread: a process may fill its output before reading all of it.
  std::thread writer;
  if (request.stdin_data) {
    writer = std::thread([&stream, &request, deadline] {
      if (stream->Write(SubChannel::kStdin, *request.stdin_data, deadline).ok()) {
        (void)stream->CloseWrite(SubChannel::kStdin);
      }
    });
  } else if (request.stdin_source) {
    writer = std::thread([&stream, &request, deadline] {
      std::string buf(1 << 20, '\0');
      for (;;) {
        auto n = request.stdin_source(buf.data(), buf.size());
        if (!n.ok() || *n == 0) break;  // a read error ends the input early: the process fails
        if (!stream->Write(SubChannel::kStdin, std::string_view(buf.data(), *n), deadline).ok()) {
          return;
        }
      }
      (void)stream->CloseWrite(SubChannel::kStdin);
    });
  }
  ExecResult result;
  Status status;
  for (bool done = false; !done;) {
    auto ev = stream->Next(deadline);
    if (!ev.ok()) {
      status = ev.status();
      break;
    }
    switch (ev->kind) {
      case StreamEvent::Kind::kData:
        if (request.on_output) {
          request.on_output(ev->channel, ev->data);
          break;
        }
        (ev->channel == SubChannel::kStderr ? result.stderr_data : result.stdout_data)
            .append(ev->data);
        if (result.stdout_data.size() + result.stderr_data.size() > request.max_output_bytes) {
          status = ResourceExhausted("process output exceeds " +
                                     std::to_string(request.max_output_bytes) + " bytes");
          done = true;
        }
        break;
      case StreamEvent::Kind::kMessage: {
        auto event = proto::DecodeExecEvent(ev->message);
        if (!event.ok()) {
          ReportViolation(event.status());
          status = event.status();
          done = true;
        } else if (auto* started = std::get_if<proto::ExecStarted>(&*event)) {
          result.pid = static_cast<pid_t>(started->pid);
        } else if (auto* exited = std::get_if<proto::ExecExited>(&*event)) {
          result.exit_code = exited->exit_code;
          result.signal = exited->signal;
          result.timed_out = exited->timed_out;
        }
        break;
      }
      case StreamEvent::Kind::kEnd:
        status = ev->status;
        done = true;
        break;
      case StreamEvent::Kind::kEof: break;
    }
  }
  stream->Cancel();  // unblocks the writer if the process ended before reading its input
  if (writer.joinable()) writer.join();
  MOAT_RETURN_IF_ERROR(status);
  return result;
}

}  // namespace moat::channel
