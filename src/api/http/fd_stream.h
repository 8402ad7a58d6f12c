// FdStream: a blocking socket as a Beast SyncReadStream/SyncWriteStream, with a timeout on every
// wait (poll) so that an idle or stuck peer cannot hold a connection thread forever, and an
// optional deadline for reads that bounds a whole sequence of them (a request's head, its body):
// a client that sends a byte just before each timeout still runs out of time. Asio's own
// synchronous sockets cannot time out; this is why the connection does not use them.
#pragma once

#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <boost/asio/buffer.hpp>
#include <boost/asio/error.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/system/system_error.hpp>
#include <cerrno>
#include <chrono>
#include <optional>

namespace moat::api::http {

class FdStream {
 public:
  FdStream(int fd, std::chrono::milliseconds read_timeout, std::chrono::milliseconds write_timeout)
      : fd_(fd), read_timeout_(read_timeout), write_timeout_(write_timeout) {}

  template <class Buffers>
  size_t read_some(const Buffers& buffers, boost::system::error_code& ec) {
    iovec iov[kMaxIov];
    int n = Fill(buffers, iov);
    if (n == 0) return 0;
    if (!Wait(POLLIN, ReadWait(), ec)) return 0;
    for (;;) {
      ssize_t r = ::readv(fd_, iov, n);
      if (r > 0) return static_cast<size_t>(r);
      if (r == 0) {
        ec = boost::asio::error::eof;
        return 0;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN && Wait(POLLIN, ReadWait(), ec)) continue;
      if (!ec) ec = boost::system::error_code(errno, boost::system::system_category());
      return 0;
    }
  }
  template <class Buffers>
  size_t read_some(const Buffers& buffers) {
    boost::system::error_code ec;
    size_t n = read_some(buffers, ec);
    if (ec) throw boost::system::system_error(ec);
    return n;
  }

  template <class Buffers>
  size_t write_some(const Buffers& buffers, boost::system::error_code& ec) {
    iovec iov[kMaxIov];
    int n = Fill(buffers, iov);
    if (n == 0) return 0;
    for (;;) {
      if (!Wait(POLLOUT, write_timeout_, ec)) return 0;
      msghdr msg{};
      msg.msg_iov = iov;
      msg.msg_iovlen = static_cast<size_t>(n);
      // MSG_NOSIGNAL: a client that went away is an error here, not a SIGPIPE.
      ssize_t r = ::sendmsg(fd_, &msg, MSG_NOSIGNAL);
      if (r >= 0) return static_cast<size_t>(r);
      if (errno == EINTR || errno == EAGAIN) continue;
      ec = boost::system::error_code(errno, boost::system::system_category());
      return 0;
    }
  }
  template <class Buffers>
  size_t write_some(const Buffers& buffers) {
    boost::system::error_code ec;
    size_t n = write_some(buffers, ec);
    if (ec) throw boost::system::system_error(ec);
    return n;
  }

  void set_read_timeout(std::chrono::milliseconds t) { read_timeout_ = t; }
  // Reads past `deadline` fail with beast::error::timeout, however recently the last byte came;
  // nullopt: only the per-read timeout.
  void set_read_deadline(std::optional<std::chrono::steady_clock::time_point> deadline) {
    read_deadline_ = deadline;
  }

 private:
  static constexpr int kMaxIov = 16;

  // How long the next read may wait: the per-read timeout, cut short by the deadline.
  std::chrono::milliseconds ReadWait() const {
    if (!read_deadline_) return read_timeout_;
    auto left = std::chrono::ceil<std::chrono::milliseconds>(*read_deadline_ -
                                                             std::chrono::steady_clock::now());
    if (left < std::chrono::milliseconds(0)) left = std::chrono::milliseconds(0);
    return std::min(left, read_timeout_);
  }

  template <class Buffers>
  static int Fill(const Buffers& buffers, iovec* iov) {
    int n = 0;
    for (auto it = boost::asio::buffer_sequence_begin(buffers);
         it != boost::asio::buffer_sequence_end(buffers) && n < kMaxIov; ++it) {
      auto b = *it;
      if (b.size() == 0) continue;
      // readv/writev take non-const iovecs; for writes the kernel only reads from them.
      iov[n].iov_base = const_cast<void*>(static_cast<const void*>(b.data()));
      iov[n].iov_len = b.size();
      ++n;
    }
    return n;
  }

  bool Wait(short events, std::chrono::milliseconds timeout, boost::system::error_code& ec) {
    pollfd p{fd_, events, 0};
    for (;;) {
      int r = ::poll(&p, 1, static_cast<int>(timeout.count()));
      if (r > 0) return true;
      if (r == 0) {
        ec = boost::beast::error::timeout;
        return false;
      }
      if (errno != EINTR) {
        ec = boost::system::error_code(errno, boost::system::system_category());
        return false;
      }
    }
  }

  int fd_;
  std::chrono::milliseconds read_timeout_;
  std::chrono::milliseconds write_timeout_;
  std::optional<std::chrono::steady_clock::time_point> read_deadline_;
};

}  // namespace moat::api::http
