#include "common/socket.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

namespace moat {
namespace {

Result<sockaddr_un> UnixAddr(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) {
    return InvalidArgument("unix socket path too long (" + std::to_string(path.size()) +
                           " bytes, max " + std::to_string(sizeof addr.sun_path - 1) +
                           "): " + path);
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

}  // namespace

Result<UniqueFd> ConnectUnix(const std::string& path, std::chrono::milliseconds timeout) {
  MOAT_ASSIGN_OR_RETURN(sockaddr_un addr, UnixAddr(path));
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) return ErrnoError("socket(AF_UNIX)");
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) return fd;
    int err = errno;
    if ((err != ENOENT && err != ECONNREFUSED && err != EINTR) ||
        std::chrono::steady_clock::now() >= deadline) {
      return ErrnoError("connect(" + path + ")", err);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(500));
  }
}

Result<UniqueFd> ListenUnix(const std::string& path, int backlog) {
  MOAT_ASSIGN_OR_RETURN(sockaddr_un addr, UnixAddr(path));
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return ErrnoError("socket(AF_UNIX)");
  ::unlink(path.c_str());
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
    return ErrnoError("bind(" + path + ")");
  }
  if (::listen(fd.get(), backlog) < 0) return ErrnoError("listen(" + path + ")");
  return fd;
}

Status WriteAll(int fd, std::string_view data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == ENOTSOCK) n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("write");
    }
    off += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status ReadExact(int fd, void* buf, size_t len) {
  auto* p = static_cast<char*>(buf);
  size_t off = 0;
  while (off < len) {
    ssize_t n = ::read(fd, p + off, len - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("read");
    }
    if (n == 0) return Unavailable("read: unexpected end of stream");
    off += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status SendWithFd(int sock, std::string_view data, int fd_to_send) {
  if (data.empty()) return InvalidArgument("SendWithFd: need at least one byte of data");
  iovec iov{const_cast<char*>(data.data()), data.size()};
  // The control buffer must be aligned for cmsghdr; a union guarantees it.
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    cmsghdr align;
  } control{};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.buf;
  msg.msg_controllen = sizeof control.buf;
  cmsghdr* cm = CMSG_FIRSTHDR(&msg);
  cm->cmsg_level = SOL_SOCKET;
  cm->cmsg_type = SCM_RIGHTS;
  cm->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(cm), &fd_to_send, sizeof(int));
  ssize_t n;
  do {
    n = ::sendmsg(sock, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return ErrnoError("sendmsg(SCM_RIGHTS)");
  if (static_cast<size_t>(n) < data.size()) {
    return WriteAll(sock, data.substr(static_cast<size_t>(n)));
  }
  return Status::Ok();
}

}  // namespace moat
