// The byte pipe to the host: the virtio-serial port (in a VM) or a unix socket
// (--listen-unix, for tests). Frames in through a resynchronising decoder, frames out through a
// bounded-by-the-caller outbound queue written without blocking.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "channel/frame.h"
#include "common/status.h"
#include "common/unique_fd.h"
#include "guest/event_loop.h"

namespace moat::guest {

// Above this many queued outbound bytes producers (process pipes, file readers, watches) pause.
inline constexpr size_t kOutboundHighWater = 1024 * 1024;

class Transport {
 public:
  struct Callbacks {
    std::function<void(channel::Frame)> on_frame;
    // The host went away (port hang-up or socket closed/replaced).
    std::function<void()> on_disconnect;
    // The outbound queue drained below kOutboundHighWater.
    std::function<void()> on_drained;
  };

  // Serves on an opened virtio-serial port device.
  static Result<std::unique_ptr<Transport>> ForPort(EventLoop& loop, UniqueFd port,
                                                    Callbacks callbacks);
  // Listens on a unix socket; one connection at a time, a new one replaces the old.
  static Result<std::unique_ptr<Transport>> ListenUnix(EventLoop& loop, const std::string& path,
                                                       Callbacks callbacks);
  ~Transport();
  Transport(const Transport&) = delete;
  Transport& operator=(const Transport&) = delete;

  void Send(channel::FrameType type, uint8_t flags, uint32_t stream, std::string_view payload);
  size_t queued() const { return out_.size() - out_off_; }
  bool has_room() const { return queued() < kOutboundHighWater; }
  // Drops queued output (a new host connection: the host resynchronises on our HELLO).
  void DropOutput();

 private:
  enum class Kind { kPort, kUnix };
  Transport(EventLoop& loop, Kind kind, Callbacks callbacks)
      : loop_(loop), kind_(kind), cb_(std::move(callbacks)) {}

  Status Register();
  void OnConnEvents(uint32_t events);
  void OnAccept();
  void ReadInput();
  void Flush();
  void UpdateInterest();
  void Disconnected();
  void PortHangup();

  EventLoop& loop_;
  Kind kind_;
  Callbacks cb_;
  UniqueFd listen_fd_;
  EventLoop::Id listen_id_ = 0;
  UniqueFd conn_;
  EventLoop::Id conn_id_ = 0;
  EventLoop::Id retry_timer_ = 0;
  EventLoop::Id broken_timer_ = 0;
  bool port_hung_up_ = false;
  channel::FrameDecoder decoder_{channel::FrameDecoder::Mode::kResync};
  std::string out_;
  size_t out_off_ = 0;
};

// Finds the virtio-serial port named `name` under /sys/class/virtio-ports (there is no udev to
// create /dev/virtio-ports/<name>) and returns its /dev path.
Result<std::string> FindVirtioPort(const std::string& sysfs_root, const std::string& name);
// Waits (bounded, logging) for the port to appear, then opens it non-blocking.
Result<UniqueFd> OpenVirtioPort(const std::string& name, int attempts);

}  // namespace moat::guest
