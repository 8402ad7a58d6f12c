// A hostile stand-in for moat-guest on the guest end of a channel: it answers the host's HELLO
// and then, for every REQUEST, runs whatever the test scripts — malformed, wrong-typed,
// oversized, out-of-order and flooding replies. What a tenant that takes the channel over from
// inside its VM (DESIGN §1) can send, without needing one.
#pragma once

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "channel/frame.h"
#include "common/socket.h"
#include "common/unique_fd.h"

namespace moat::test_support {

class FakeGuestPeer {
 public:
  explicit FakeGuestPeer(UniqueFd fd) : fd_(std::move(fd)) {}

  // The next frame from the host; a kCancel frame on stream 0xffffffff when the host is gone.
  channel::Frame Read(int timeout_ms = 30000) {
    for (;;) {
      auto f = decoder_.Next();
      if (f.ok() && f->has_value()) return std::move(**f);
      pollfd p{fd_.get(), POLLIN, 0};
      if (::poll(&p, 1, timeout_ms) <= 0) return Closed();
      char buf[65536];
      ssize_t n = ::read(fd_.get(), buf, sizeof buf);
      if (n <= 0) return Closed();
      decoder_.Feed(std::string_view(buf, static_cast<size_t>(n)));
    }
  }
  channel::Frame ReadUntil(channel::FrameType type, int timeout_ms = 30000) {
    for (;;) {
      channel::Frame f = Read(timeout_ms);
      if (f.type == type || f.stream == kClosedStream) return f;
    }
  }
  // False once the host is gone.
  bool Send(std::string_view bytes) { return WriteAll(fd_.get(), bytes).ok(); }
  bool SendHello() { return Send(channel::EncodeHello(R"({"version":1,"boot_id":"fake"})")); }
  bool Message(uint32_t stream, const std::string& json_text) {
    return Send(channel::EncodeFrame(channel::FrameType::kMessage, 0, stream, json_text));
  }
  bool End(uint32_t stream, const std::string& json_text = "{}") {
    return Send(channel::EncodeFrame(channel::FrameType::kEnd, 0, stream, json_text));
  }
  int fd() const { return fd_.get(); }

  static constexpr uint32_t kClosedStream = 0xffffffff;

 private:
  static channel::Frame Closed() {
    return channel::Frame{channel::FrameType::kCancel, 0, kClosedStream, "closed"};
  }
  UniqueFd fd_;
  channel::FrameDecoder decoder_{channel::FrameDecoder::Mode::kResync};
};

// A fake guest listening on a unix socket path (where a VMM's guest.sock was): each connection
// is served on its own thread — HELLO answered, then `on_request(peer, stream, request)` for
// every REQUEST until the host goes away.
class FakeGuestServer {
 public:
  using OnRequest =
      std::function<void(FakeGuestPeer&, uint32_t stream, const nlohmann::json& request)>;

  FakeGuestServer(const std::string& path, OnRequest on_request)
      : on_request_(std::move(on_request)) {
    listen_.Reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    path.copy(addr.sun_path, sizeof addr.sun_path - 1);
    ::unlink(path.c_str());
    // sockaddr_un is the address type AF_UNIX sockets take.
    ok_ = ::bind(listen_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
          ::listen(listen_.get(), 8) == 0;
    if (ok_) accept_ = std::thread([this] { AcceptLoop(); });
  }
  ~FakeGuestServer() {
    stop_ = true;
    ::shutdown(listen_.get(), SHUT_RDWR);
    if (accept_.joinable()) accept_.join();
    {
      std::lock_guard lock(mu_);
      for (int fd : open_) ::shutdown(fd, SHUT_RDWR);
    }
    for (auto& t : conns_) t.join();
  }
  bool ok() const { return ok_; }
  int connections() const { return connections_.load(); }

 private:
  void AcceptLoop() {
    while (!stop_) {
      pollfd p{listen_.get(), POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      int fd = ::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      ++connections_;
      std::lock_guard lock(mu_);
      open_.push_back(fd);
      conns_.emplace_back([this, fd] {
        FakeGuestPeer peer{UniqueFd(fd)};
        // Destroyed before `peer` closes the fd: the destructor never shuts down a reused number.
        struct Forget {
          FakeGuestServer* server;
          int fd;
          ~Forget() {
            std::lock_guard lock(server->mu_);
            std::erase(server->open_, fd);
          }
        } forget{this, fd};
        if (peer.ReadUntil(channel::FrameType::kHello).stream == FakeGuestPeer::kClosedStream ||
            !peer.SendHello()) {
          return;
        }
        for (;;) {
          channel::Frame f = peer.Read(60000);
          if (f.stream == FakeGuestPeer::kClosedStream) return;
          if (f.type != channel::FrameType::kRequest) continue;
          auto request = nlohmann::json::parse(f.payload, nullptr, false);
          on_request_(peer, f.stream, request);
        }
      });
    }
  }

  OnRequest on_request_;
  UniqueFd listen_;
  bool ok_ = false;
  std::atomic<bool> stop_{false};
  std::atomic<int> connections_{0};
  std::thread accept_;
  std::mutex mu_;
  std::vector<int> open_;
  std::vector<std::thread> conns_;
};

}  // namespace moat::test_support
