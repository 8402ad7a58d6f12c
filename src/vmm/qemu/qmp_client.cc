#include "vmm/qemu/qmp_client.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "common/log.h"
#include "common/socket.h"

namespace moat::vmm::qemu {
namespace {

// Anything QEMU sends that we drop is logged at most this often: a compromised VMM could
// otherwise flood the agent's log.
RateLimiter& DropLogLimiter() {
  static RateLimiter limiter(1.0, 5.0);
  return limiter;
}

std::string Truncate(std::string s, size_t max) {
  if (s.size() > max) {
    s.resize(max);
    s += "...";
  }
  return s;
}

}  // namespace

Status QmpErrorStatus(std::string_view command, const Json& error) {
  std::string cls = "GenericError";
  std::string desc = "(no description)";
  if (error.is_object()) {
    if (auto it = error.find("class"); it != error.end() && it->is_string()) cls = *it;
    if (auto it = error.find("desc"); it != error.end() && it->is_string()) desc = *it;
  }
  ErrorCode code = ErrorCode::kAborted;
  if (cls == "CommandNotFound" || cls == "DeviceNotFound") code = ErrorCode::kNotFound;
  if (cls == "DeviceNotActive" || cls == "KVMMissingCap") code = ErrorCode::kFailedPrecondition;
  return Status(
      code, "qmp " + std::string(command) + ": " + Truncate(cls, 64) + ": " + Truncate(desc, 512));
}

QmpLine ParseQmpLine(std::string_view line, const QmpLimits& limits) {
  QmpLine out;
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.remove_suffix(1);
  if (line.empty()) return out;  // kInvalid, not worth a log line
  if (line.size() > limits.max_line_bytes || JsonDepth(line, limits.max_json_depth) < 0) {
    out.invalid_reason = "too large or deep";
    return out;
  }
  Json msg = Json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (msg.is_discarded() || !msg.is_object()) {
    out.invalid_reason = "not a JSON object";
    return out;
  }
  if (auto ev = msg.find("event"); ev != msg.end() && ev->is_string()) {
    out.kind = QmpLine::Kind::kEvent;
  } else if (auto id = msg.find("id"); id != msg.end() && id->is_number_unsigned()) {
    out.kind = QmpLine::Kind::kReply;
    out.id = id->get<uint64_t>();
  } else {
    out.kind = QmpLine::Kind::kOther;
  }
  out.message = std::move(msg);
  return out;
}

std::string QmpString(const Json& value, std::string_view key) {
  if (!value.is_object()) return {};
  auto it = value.find(std::string(key));
  return it != value.end() && it->is_string() ? it->get<std::string>() : std::string();
}

std::string QmpEventStatus(const Json& event) {
  if (!event.is_object()) return {};
  auto data = event.find("data");
  return data == event.end() ? std::string() : QmpString(*data, "status");
}

Result<Json> QmpReplyResult(std::string_view command, Json reply) {
  if (!reply.is_object())
    return Internal("qmp " + std::string(command) + ": reply is not an object");
  if (auto e = reply.find("error"); e != reply.end()) return QmpErrorStatus(command, *e);
  if (auto ret = reply.find("return"); ret != reply.end()) return Json(std::move(*ret));
  return Status(ErrorCode::kInternal,
                "qmp " + std::string(command) + ": reply has neither return nor error");
}

QmpClient::QmpClient(UniqueFd socket, QmpLimits limits)
    : socket_(std::move(socket)), limits_(limits) {}

QmpClient::~QmpClient() {
  Close();
}

Result<std::unique_ptr<QmpClient>> QmpClient::Connect(const std::string& socket_path,
                                                      std::chrono::milliseconds timeout,
                                                      QmpLimits limits) {
  auto start = std::chrono::steady_clock::now();
  MOAT_ASSIGN_OR_RETURN(UniqueFd fd, ConnectUnix(socket_path, timeout));
  auto left = timeout - std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::steady_clock::now() - start);
  if (left < std::chrono::milliseconds(100)) left = std::chrono::milliseconds(100);
  auto client = FromSocket(std::move(fd), left, limits);
  if (!client.ok()) return client.status().Annotate("qmp " + socket_path);
  return client;
}

Result<std::unique_ptr<QmpClient>> QmpClient::FromSocket(UniqueFd socket,
                                                         std::chrono::milliseconds timeout,
                                                         QmpLimits limits) {
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC | O_NONBLOCK) < 0) return ErrnoError("pipe2");
  // A VMM that stops reading must not block a writer forever: writes time out instead.
  timeval send_timeout{5, 0};
  if (::setsockopt(socket.get(), SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof send_timeout) < 0) {
    return ErrnoError("setsockopt(SO_SNDTIMEO)");
  }
  std::unique_ptr<QmpClient> c(new QmpClient(std::move(socket), limits));
  c->wake_read_.Reset(pipe_fds[0]);
  c->wake_write_.Reset(pipe_fds[1]);
  c->reader_ = std::thread([raw = c.get()] { raw->ReaderLoop(); });
  MOAT_RETURN_IF_ERROR(c->Handshake(timeout));
  return c;
}

Status QmpClient::Handshake(std::chrono::milliseconds timeout) {
  {
    std::unique_lock<std::mutex> lock(mu_);
    bool got = cv_.wait_for(lock, timeout, [this] { return greeting_ || closed_; });
    if (!got)
      return DeadlineExceeded("qmp: no greeting within " + std::to_string(timeout.count()) + " ms");
    if (!greeting_) return closed_->Annotate("qmp: waiting for the greeting");
  }
  auto r = Execute("qmp_capabilities", Json::object(), timeout);
  return r.ok() ? Status::Ok() : r.status();
}

Result<Json> QmpClient::Execute(std::string_view command, const Json& arguments,
                                std::chrono::milliseconds timeout) {
  return Send(command, arguments, -1, timeout);
}

Status QmpClient::GetFd(std::string_view name, int fd, std::chrono::milliseconds timeout) {
  auto r = Send("getfd", Json{{"fdname", std::string(name)}}, fd, timeout);
  return r.ok() ? Status::Ok() : r.status();
}

Json QmpClient::Greeting() const {
  std::lock_guard<std::mutex> lock(mu_);
  return greeting_.value_or(Json());
}

Result<int64_t> QmpClient::AddFd(int fd, std::chrono::milliseconds timeout) {
  MOAT_ASSIGN_OR_RETURN(Json r, Send("add-fd", Json::object(), fd, timeout));
  auto it = r.is_object() ? r.find("fdset-id") : r.end();
  if (!r.is_object() || it == r.end() || !it->is_number_integer() || it->get<int64_t>() < 0) {
    return Internal("qmp add-fd: the reply has no fdset-id: " + r.dump().substr(0, 200));
  }
  return it->get<int64_t>();
}

Status QmpClient::RemoveFdSet(int64_t fdset_id) {
  return Execute("remove-fd", Json{{"fdset-id", fdset_id}}).status();
}

Result<Json> QmpClient::Send(std::string_view command, const Json& arguments, int fd,
                             std::chrono::milliseconds timeout) {
  uint64_t id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return closed_->Annotate("qmp " + std::string(command));
    id = next_id_++;
    pending_[id].command = std::string(command);
  }
  Json request{{"execute", std::string(command)}, {"id", id}};
  if (!arguments.is_null() && !(arguments.is_object() && arguments.empty())) {
    request["arguments"] = arguments;
  }
  std::string line = request.dump() + "\n";
  Status sent;
  {
    std::lock_guard<std::mutex> lock(write_mu_);
    sent = fd >= 0 ? SendWithFd(socket_.get(), line, fd) : WriteAll(socket_.get(), line);
  }
  std::unique_lock<std::mutex> lock(mu_);
  if (!sent.ok()) {
    pending_.erase(id);
    return sent.Annotate("qmp " + std::string(command));
  }
  bool done = cv_.wait_for(lock, timeout, [&] { return pending_[id].reply.has_value(); });
  if (!done) {
    pending_.erase(id);
    return DeadlineExceeded("qmp " + std::string(command) + ": no reply within " +
                            std::to_string(timeout.count()) + " ms");
  }
  Result<Json> reply = std::move(*pending_[id].reply);
  pending_.erase(id);
  return reply;
}

uint64_t QmpClient::EventCursor() const {
  std::lock_guard<std::mutex> lock(mu_);
  return next_event_seq_;
}

Result<Json> QmpClient::WaitEvent(std::string_view name, uint64_t cursor,
                                  std::chrono::milliseconds timeout,
                                  const std::function<bool(const Json&)>& match,
                                  uint64_t* next_cursor) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    for (const auto& [seq, event] : events_) {
      if (seq < cursor) continue;
      cursor = seq + 1;
      if (event.value("event", "") == name && (!match || match(event))) {
        if (next_cursor) *next_cursor = cursor;
        return event;
      }
    }
    if (closed_) return closed_->Annotate("qmp: waiting for event " + std::string(name));
    if (cv_.wait_until(lock, deadline) == std::cv_status::timeout &&
        std::chrono::steady_clock::now() >= deadline) {
      return DeadlineExceeded("qmp: no " + std::string(name) + " event within " +
                              std::to_string(timeout.count()) + " ms");
    }
  }
}

bool QmpClient::connected() const {
  std::lock_guard<std::mutex> lock(mu_);
  return !closed_.has_value();
}

void QmpClient::Close() {
  if (wake_write_) {
    char b = 1;
    ssize_t unused = ::write(wake_write_.get(), &b, 1);
    (void)unused;
  }
  if (reader_.joinable()) reader_.join();
  FailAll(Unavailable("qmp: connection closed"));
  socket_.Reset();
}

void QmpClient::FailAll(const Status& status) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!closed_) closed_ = status;
  for (auto& [id, p] : pending_) {
    if (!p.reply) p.reply = closed_->Annotate("qmp " + p.command);
  }
  cv_.notify_all();
}

void QmpClient::ReaderLoop() {
  std::string buf;
  char chunk[16384];
  for (;;) {
    pollfd fds[2] = {{socket_.get(), POLLIN, 0}, {wake_read_.get(), POLLIN, 0}};
    int r = ::poll(fds, 2, -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      FailAll(ErrnoError("qmp: poll"));
      return;
    }
    if (fds[1].revents != 0) return;  // Close()
    ssize_t n = ::read(socket_.get(), chunk, sizeof chunk);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      FailAll(ErrnoError("qmp: read"));
      return;
    }
    if (n == 0) {
      FailAll(Unavailable("qmp: connection closed by QEMU"));
      return;
    }
    buf.append(chunk, static_cast<size_t>(n));
    size_t start = 0;
    for (size_t nl; (nl = buf.find('\n', start)) != std::string::npos; start = nl + 1) {
      HandleLine(std::string_view(buf).substr(start, nl - start));
    }
    buf.erase(0, start);
    if (buf.size() > limits_.max_line_bytes) {
      FailAll(Unavailable("qmp: protocol error: a message exceeds " +
                          std::to_string(limits_.max_line_bytes) + " bytes"));
      return;
    }
  }
}

void QmpClient::HandleLine(std::string_view line) {
  QmpLine parsed = ParseQmpLine(line, limits_);
  if (parsed.kind == QmpLine::Kind::kInvalid) {
    if (*parsed.invalid_reason != '\0' && DropLogLimiter().Allow()) {
      LogWarn("qmp.dropped", {{"reason", parsed.invalid_reason}});
    }
    return;
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (!greeting_) {
    if (parsed.message.contains("QMP")) {
      greeting_ = std::move(parsed.message);
      cv_.notify_all();
    }
    return;
  }
  if (parsed.kind == QmpLine::Kind::kEvent) {
    events_.emplace_back(next_event_seq_++, std::move(parsed.message));
    while (events_.size() > limits_.max_buffered_events) events_.pop_front();
    cv_.notify_all();
    return;
  }
  if (parsed.kind != QmpLine::Kind::kReply) {
    if (DropLogLimiter().Allow()) LogWarn("qmp.dropped", {{"reason", "reply without id"}});
    return;
  }
  auto p = pending_.find(parsed.id);
  if (p == pending_.end() || p->second.reply) {
    if (DropLogLimiter().Allow()) LogWarn("qmp.dropped", {{"reason", "reply to unknown id"}});
    return;
  }
  p->second.reply = QmpReplyResult(p->second.command, std::move(parsed.message));
  cv_.notify_all();
}

}  // namespace moat::vmm::qemu
