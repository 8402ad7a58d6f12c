#include "guest/transport.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "common/fs.h"
#include "common/log.h"
#include "common/socket.h"

namespace moat::guest {
namespace {

using channel::Frame;
using channel::FrameDecoder;
using channel::FrameType;

// While no host is connected the port polls POLLHUP continuously; look again this often.
constexpr auto kPortRetry = std::chrono::milliseconds(8);
constexpr size_t kReadChunk = 256 * 1024;

RateLimiter g_io_log(1, 5);

}  // namespace

Result<std::unique_ptr<Transport>> Transport::ForPort(EventLoop& loop, UniqueFd port,
                                                      Callbacks callbacks) {
  std::unique_ptr<Transport> t(new Transport(loop, Kind::kPort, std::move(callbacks)));
  t->conn_ = std::move(port);
  MOAT_RETURN_IF_ERROR(t->Register());
  return t;
}

Result<std::unique_ptr<Transport>> Transport::ListenUnix(EventLoop& loop, const std::string& path,
                                                         Callbacks callbacks) {
  std::unique_ptr<Transport> t(new Transport(loop, Kind::kUnix, std::move(callbacks)));
  MOAT_ASSIGN_OR_RETURN(t->listen_fd_, moat::ListenUnix(path, 4));
  Transport* self = t.get();
  MOAT_ASSIGN_OR_RETURN(t->listen_id_, loop.Add(t->listen_fd_.get(), EPOLLIN,
                                                [self](uint32_t) { self->OnAccept(); }));
  return t;
}

Transport::~Transport() {
  if (broken_timer_ != 0) loop_.CancelTimer(broken_timer_);
  if (retry_timer_ != 0) loop_.CancelTimer(retry_timer_);
  if (conn_id_ != 0) loop_.Remove(conn_id_);
  if (listen_id_ != 0) loop_.Remove(listen_id_);
}

Status Transport::Register() {
  MOAT_ASSIGN_OR_RETURN(conn_id_,
                        loop_.Add(conn_.get(), EPOLLIN, [this](uint32_t ev) { OnConnEvents(ev); }));
  UpdateInterest();
  return Status::Ok();
}

void Transport::OnAccept() {
  UniqueFd fd(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
  if (!fd) {
    if (g_io_log.Allow()) LogWarn("guest.accept_failed", {{"error", std::strerror(errno)}});
    return;
  }
  if (conn_) {
    LogInfo("guest.connection_replaced");
    Disconnected();
  }
  conn_ = std::move(fd);
  decoder_.Reset();
  DropOutput();
  if (Status s = Register(); !s.ok()) {
    LogError("guest.register_failed", {{"error", s.ToString()}});
    conn_.Reset();
    conn_id_ = 0;
  }
}

void Transport::Disconnected() {
  if (conn_id_ != 0) loop_.Remove(conn_id_);
  conn_id_ = 0;
  conn_.Reset();
  decoder_.Reset();
  DropOutput();
  if (cb_.on_disconnect) cb_.on_disconnect();
}

void Transport::PortHangup() {
  if (retry_timer_ != 0) return;  // already waiting for the host
  // No host on the other end of the port. The fd stays open; stop polling it (it would report
  // POLLHUP in a tight loop) and look again shortly.
  if (conn_id_ != 0) loop_.Remove(conn_id_);
  conn_id_ = 0;
  if (!port_hung_up_) {
    port_hung_up_ = true;
    decoder_.Reset();
    DropOutput();
    if (cb_.on_disconnect) cb_.on_disconnect();
  }
  retry_timer_ = loop_.AddTimer(kPortRetry, [this] {
    retry_timer_ = 0;
    if (Status s = Register(); !s.ok()) {
      if (g_io_log.Allow()) LogError("guest.port_register_failed", {{"error", s.ToString()}});
      PortHangup();
    }
  });
}

void Transport::OnConnEvents(uint32_t events) {
  if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
    ReadInput();
    if (!conn_ || conn_id_ == 0) return;
  }
  if (events & EPOLLOUT) Flush();
}

void Transport::ReadInput() {
  static thread_local std::string buf(kReadChunk, '\0');
  for (int round = 0; round < 4; ++round) {
    ssize_t n = ::read(conn_.get(), buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return;
      if (g_io_log.Allow()) LogWarn("guest.read_failed", {{"error", std::strerror(errno)}});
      n = 0;
    }
    if (n == 0) {
      if (kind_ == Kind::kPort) {
        PortHangup();
      } else {
        Disconnected();
      }
      return;
    }
    port_hung_up_ = false;
    decoder_.Feed(std::string_view(buf.data(), static_cast<size_t>(n)));
    for (;;) {
      auto next = decoder_.Next();
      // Resync mode never fails; garbage is skipped up to the next HELLO.
      if (!next.ok() || !next->has_value()) break;
      EventLoop::Id before = conn_id_;
      cb_.on_frame(std::move(**next));
      if (conn_id_ != before || !conn_) return;  // the handler dropped the connection
    }
    if (static_cast<size_t>(n) < buf.size()) return;
  }
}

void Transport::Send(FrameType type, uint8_t flags, uint32_t stream, std::string_view payload) {
  if (!conn_ || (kind_ == Kind::kPort && port_hung_up_)) return;  // nobody to send to
  if (out_off_ > 0 && out_off_ >= out_.size() / 2) {
    out_.erase(0, out_off_);
    out_off_ = 0;
  }
  channel::AppendFrame(out_, type, flags, stream, payload);
  Flush();
}

void Transport::DropOutput() {
  out_.clear();
  out_off_ = 0;
  UpdateInterest();
}

void Transport::Flush() {
  bool was_full = !has_room();
  while (conn_ && out_off_ < out_.size()) {
    ssize_t n = ::write(conn_.get(), out_.data() + out_off_, out_.size() - out_off_);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      if (g_io_log.Allow()) LogWarn("guest.write_failed", {{"error", std::strerror(errno)}});
      // Send() runs inside the server's handlers, which must not see their streams vanish
      // under them: tear the connection down from the loop's top level instead.
      DropOutput();
      if (broken_timer_ == 0) {
        broken_timer_ = loop_.AddTimer(std::chrono::nanoseconds(0), [this] {
          broken_timer_ = 0;
          if (kind_ == Kind::kPort) {
            if (conn_id_ != 0) PortHangup();
          } else if (conn_) {
            Disconnected();
          }
        });
      }
      return;
    }
    out_off_ += static_cast<size_t>(n);
  }
  if (out_off_ == out_.size()) {
    out_.clear();
    out_off_ = 0;
  }
  UpdateInterest();
  if (was_full && has_room() && cb_.on_drained) cb_.on_drained();
}

void Transport::UpdateInterest() {
  if (conn_id_ == 0) return;
  uint32_t events = EPOLLIN;
  if (queued() > 0) events |= EPOLLOUT;
  if (Status s = loop_.Modify(conn_id_, events); !s.ok() && g_io_log.Allow()) {
    LogError("guest.epoll_modify_failed", {{"error", s.ToString()}});
  }
}

Result<std::string> FindVirtioPort(const std::string& sysfs_root, const std::string& name) {
  DIR* dir = ::opendir(sysfs_root.c_str());
  if (dir == nullptr) return ErrnoError("opendir(" + sysfs_root + ")");
  std::string found;
  while (dirent* e = ::readdir(dir)) {
    std::string entry = e->d_name;
    if (entry == "." || entry == "..") continue;
    auto port_name = ReadFile(sysfs_root + "/" + entry + "/name");
    if (!port_name.ok()) continue;
    std::string n = *port_name;
    while (!n.empty() && (n.back() == '\n' || n.back() == ' ')) n.pop_back();
    if (n == name) {
      found = entry;
      break;
    }
  }
  ::closedir(dir);
  if (found.empty()) return NotFound("no virtio-serial port named " + name);
  return "/dev/" + found;
}

Result<UniqueFd> OpenVirtioPort(const std::string& name, int attempts) {
  Status last = NotFound("no virtio-serial port named " + name);
  for (int i = 0; i < attempts; ++i) {
    auto path = FindVirtioPort("/sys/class/virtio-ports", name);
    if (path.ok()) {
      UniqueFd fd(::open(path->c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
      if (fd) {
        LogInfo("guest.port_opened", {{"path", *path}});
        return fd;
      }
      last = ErrnoError("open(" + *path + ")");
    } else {
      last = path.status();
    }
    if (i % 100 == 0) LogWarn("guest.port_waiting", {{"error", last.ToString()}});
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return last;
}

}  // namespace moat::guest
