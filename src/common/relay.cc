#include "common/relay.h"

#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <climits>
#include <memory>

namespace moat {
namespace {

enum class Io { kProgress, kWouldBlock, kEof, kError };

constexpr size_t kMaxResponseHead = 64 * 1024;

// One direction: bytes read from `from` wait here until `to` takes them. Queued bytes (the
// request; response heads as filtered) go out before anything read after them.
class Pipe {
 public:
  // `on_written`: null, or called with each run of bytes written to `to`.
  Pipe(int from, int to, size_t capacity, std::string queued = {},
       const std::function<void(std::string_view)>* on_written = nullptr)
      : from_(from),
        to_(to),
        queued_(std::move(queued)),
        buf_(new char[capacity]),
        cap_(capacity),
        on_written_(on_written) {}

  bool eof() const { return eof_; }
  bool empty() const { return Pending().empty(); }

  // Reads once; call only when empty().
  Io Fill() {
    begin_ = end_ = 0;
    for (;;) {
      ssize_t n = ::recv(from_, buf_.get(), cap_, MSG_DONTWAIT);
      if (n > 0) {
        end_ = static_cast<size_t>(n);
        return Io::kProgress;
      }
      if (n == 0) {
        eof_ = true;
        return Io::kEof;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return Io::kWouldBlock;
      return Io::kError;
    }
  }

  // What the last Fill read, taken out of the pipe.
  std::string_view TakeRead() {
    std::string_view read(buf_.get() + begin_, end_ - begin_);
    begin_ = end_ = 0;
    return read;
  }
  void Queue(std::string_view bytes) { queued_.append(bytes); }

  // Writes what is pending until the peer would block.
  Io Flush(uint64_t* written) {
    Io result = Io::kWouldBlock;
    for (std::string_view p = Pending(); !p.empty(); p = Pending()) {
      // MSG_NOSIGNAL: a peer that went away is an error here, not a SIGPIPE.
      ssize_t n = ::send(to_, p.data(), p.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n > 0) {
        if (on_written_ != nullptr) (*on_written_)(p.substr(0, static_cast<size_t>(n)));
        Consume(static_cast<size_t>(n));
        *written += static_cast<uint64_t>(n);
        result = Io::kProgress;
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return result;
      return Io::kError;
    }
    return Io::kProgress;
  }

 private:
  std::string_view Pending() const {
    if (queued_off_ < queued_.size()) {
      return {queued_.data() + queued_off_, queued_.size() - queued_off_};
    }
    return {buf_.get() + begin_, end_ - begin_};
  }
  void Consume(size_t n) {
    if (queued_off_ < queued_.size()) {
      queued_off_ += n;
      if (queued_off_ == queued_.size()) {
        // A request body may be large: let it go once sent.
        std::string().swap(queued_);
        queued_off_ = 0;
      }
    } else {
      begin_ += n;
    }
  }

  int from_;
  int to_;
  std::string queued_;
  size_t queued_off_ = 0;
  std::unique_ptr<char[]> buf_;
  size_t cap_;
  size_t begin_ = 0;
  size_t end_ = 0;
  bool eof_ = false;
  const std::function<void(std::string_view)>* on_written_;
};

// Collects the upstream's response heads and passes each through the filter.
class HeadReader {
 public:
  explicit HeadReader(const ResponseHeadFilter& filter) : filter_(filter), done_(!filter) {}
  bool done() const { return done_; }

  // Takes what was read from the upstream; queues for the client whatever may go out now.
  Status Take(std::string_view read, Pipe& to_client, bool* mute_client) {
    buffer_.append(read);
    while (!done_) {
      size_t end = buffer_.find("\r\n\r\n");
      if (end == std::string::npos) {
        if (buffer_.size() > kMaxResponseHead) {
          return Unavailable("the response head exceeds " + std::to_string(kMaxResponseHead) +
                             " bytes");
        }
        return Status::Ok();
      }
      auto decision = filter_(std::string_view(buffer_).substr(0, end + 4));
      if (!decision.ok()) return decision.status();
      to_client.Queue(decision->head);
      buffer_.erase(0, end + 4);
      *mute_client |= decision->mute_client;
      done_ = !decision->interim;
    }
    // The start of the body, or of what follows the 101.
    to_client.Queue(buffer_);
    std::string().swap(buffer_);
    return Status::Ok();
  }

 private:
  const ResponseHeadFilter& filter_;
  bool done_;
  std::string buffer_;
};

int PollMillis(std::chrono::steady_clock::duration left) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(left).count() + 1;
  return ms > INT_MAX ? INT_MAX : static_cast<int>(ms);
}

}  // namespace

const char* RelayEndName(RelayEnd end) {
  switch (end) {
    case RelayEnd::kUpstreamClosed: return "upstream_closed";
    case RelayEnd::kClientGone: return "client_gone";
    case RelayEnd::kUpstreamError: return "upstream_error";
    case RelayEnd::kBadResponse: return "bad_response";
    case RelayEnd::kIdleTimeout: return "idle_timeout";
  }
  return "?";
}

RelayStats Relay(int client_fd, int upstream_fd, std::string first_to_upstream,
                 const RelayOptions& options) {
  RelayStats st;
  Pipe up(client_fd, upstream_fd, options.buffer_bytes, std::move(first_to_upstream));
  Pipe down(upstream_fd, client_fd, options.buffer_bytes, {},
            options.on_client_bytes ? &options.on_client_bytes : nullptr);
  HeadReader heads(options.head_filter);
  bool client_muted = !options.forward_client;
  bool upstream_shut = false;
  auto last_moved = std::chrono::steady_clock::now();
  auto finish = [&st](RelayEnd end) {
    st.end = end;
    return st;
  };
  for (;;) {
    if (down.eof() && down.empty()) return finish(RelayEnd::kUpstreamClosed);
    if (up.eof() && up.empty() && !upstream_shut) {
      // The client is done sending; the upstream may still answer.
      ::shutdown(upstream_fd, SHUT_WR);
      upstream_shut = true;
    }
    short client_events = 0;
    short upstream_events = 0;
    if (client_muted) {
      client_events |= POLLRDHUP;
    } else if (!up.eof() && up.empty()) {
      client_events |= POLLIN;
    }
    if (!down.empty()) client_events |= POLLOUT;
    if (!down.eof() && down.empty()) upstream_events |= POLLIN;
    if (!up.empty()) upstream_events |= POLLOUT;
    // The client stays in the set even with no events: poll reports its hang-up or error
    // regardless. The upstream is left out then, or its hang-up (its half of a close we are
    // still relaying) would wake us in a loop.
    pollfd fds[2] = {{client_fd, client_events, 0},
                     {upstream_events != 0 ? upstream_fd : -1, upstream_events, 0}};
    auto left = options.idle_timeout - (std::chrono::steady_clock::now() - last_moved);
    if (left <= std::chrono::steady_clock::duration::zero()) {
      return finish(RelayEnd::kIdleTimeout);
    }
    int r = ::poll(fds, 2, PollMillis(left));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return finish(RelayEnd::kClientGone);
    if (r == 0) continue;  // the idle check above decides
    bool moved = false;
    short cr = fds[0].revents;
    short ur = fds[1].revents;
    constexpr short kFailed = POLLERR | POLLHUP | POLLNVAL;

    if ((client_events & POLLOUT) != 0 && (cr & (POLLOUT | kFailed)) != 0) {
      Io io = down.Flush(&st.to_client);
      if (io == Io::kError) return finish(RelayEnd::kClientGone);
      moved |= io == Io::kProgress;
    }
    if ((client_events & POLLIN) != 0 && (cr & (POLLIN | kFailed)) != 0) {
      Io io = up.Fill();
      if (io == Io::kError) return finish(RelayEnd::kClientGone);
      moved |= io != Io::kWouldBlock;
    }
    // Nothing read from the client, and it closed, reset, or was shut down (server shutdown).
    if ((client_events & POLLIN) == 0 && (cr & (POLLRDHUP | kFailed)) != 0) {
      return finish(RelayEnd::kClientGone);
    }
    if ((upstream_events & POLLOUT) != 0 && (ur & (POLLOUT | kFailed)) != 0) {
      Io io = up.Flush(&st.to_upstream);
      if (io == Io::kError) return finish(RelayEnd::kUpstreamError);
      moved |= io == Io::kProgress;
    }
    if ((upstream_events & POLLIN) != 0 && (ur & (POLLIN | kFailed)) != 0) {
      Io io = down.Fill();
      if (io == Io::kError) return finish(RelayEnd::kUpstreamError);
      moved |= io != Io::kWouldBlock;
      if (io == Io::kProgress && !heads.done()) {
        st.error = heads.Take(down.TakeRead(), down, &client_muted);
        if (!st.error.ok()) return finish(RelayEnd::kBadResponse);
      }
    }
    if (moved) last_moved = std::chrono::steady_clock::now();
  }
}

}  // namespace moat
