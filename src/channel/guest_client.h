// GuestClient: the host side of the host<->guest channel (api/guest-channel.md) over a
// connected stream fd (the VMM's chardev socket, or `moat-guest --listen-unix`).
//
// One reader thread per connection dispatches frames to streams; the API is blocking and
// thread-safe. Memory stays bounded whatever the guest sends: DATA is limited by the window we
// grant (credit goes back only as the caller consumes it), MESSAGEs per stream and the total of
// queued bytes are capped, and a guest that breaks the protocol is disconnected.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "channel/frame.h"
#include "channel/protocol.h"
#include "common/status.h"
#include "common/unique_fd.h"

namespace moat::channel {

// One item of a stream, in the order the guest sent it.
struct StreamEvent {
  enum class Kind { kData, kEof, kMessage, kEnd };
  Kind kind = Kind::kEnd;
  SubChannel channel = SubChannel::kStdout;  // kData, kEof
  std::string data;                          // kData
  nlohmann::json message;                    // kMessage
  Status status;                             // kEnd: the guest's result (or why the stream died)
};

struct ExecRequest {
  std::vector<std::string> argv;  // or
  std::string cmd;                // run by /bin/bash -l -c
  std::map<std::string, std::string> env;
  std::string cwd;
  std::string user;
  std::optional<std::string> stdin_data;  // written, then closed; none: no stdin
  // Or read from this as the process takes it (up to the size asked; 0: the end), then closed:
  // input too large to hold in memory.
  std::function<Result<size_t>(char* buf, size_t size)> stdin_source;
  std::string tag;
  int64_t timeout_ms = 0;
  // Run() fails with ResourceExhausted past this much stdout + stderr.
  size_t max_output_bytes = 64 * 1024 * 1024;
  // Set: Run() hands each piece of output to it as it arrives (kStdout or kStderr) instead of
  // collecting it (and no output limit applies).
  std::function<void(SubChannel, std::string_view)> on_output;

  proto::ExecOp ToOp() const;
};

struct ExecResult {
  pid_t pid = -1;
  std::string stdout_data;
  std::string stderr_data;
  std::optional<int> exit_code;
  std::optional<int> signal;
  bool timed_out = false;
};

using proto::ErrorCodeFromName;

class GuestClient {
 public:
  using Clock = std::chrono::steady_clock;
  using Deadline = Clock::time_point;

  class Stream {
   public:
    ~Stream();  // cancels the stream unless it ended
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;

    uint32_t id() const { return id_; }
    // The next event; DeadlineExceeded if none came by `deadline`. After the END event, returns
    // that END again. Consuming DATA returns its credit to the guest.
    Result<StreamEvent> Next(std::optional<Deadline> deadline = std::nullopt);
    // Sends DATA on `ch` (kStdin for process input and uploads), split into frames and blocking
    // while the guest has granted no credit.
    Status Write(SubChannel ch, std::string_view data,
                 std::optional<Deadline> deadline = std::nullopt);
    Status CloseWrite(SubChannel ch);
    // Abandons the stream (CANCEL): for exec/attach the process keeps running, detached.
    void Cancel();

   private:
    friend class GuestClient;
    struct State;
    struct Shared;
    Stream(std::shared_ptr<Shared> shared, std::shared_ptr<State> state, uint32_t id)
        : shared_(std::move(shared)), state_(std::move(state)), id_(id) {}
    std::shared_ptr<Shared> shared_;
    std::shared_ptr<State> state_;
    uint32_t id_;
  };

  // Handshake: HELLO every 200 ms until the guest's HELLO (bytes before it are skipped), then
  // starts the reader thread.
  static Result<std::unique_ptr<GuestClient>> Connect(UniqueFd fd,
                                                      std::chrono::milliseconds handshake_timeout);
  // Closes the connection (every open stream ends with Unavailable) and joins the reader.
  ~GuestClient();
  GuestClient(const GuestClient&) = delete;
  GuestClient& operator=(const GuestClient&) = delete;

  // Sends a REQUEST and returns its stream. Production code sends typed ops (channel/protocol.h)
  // and reads their replies with the proto::Decode functions (or channel/guest_ops.h); the JSON
  // overloads are for tests and tools that need to send what no typed op can.
  Result<std::unique_ptr<Stream>> Open(const proto::Request& request);
  Result<std::unique_ptr<Stream>> Open(const nlohmann::json& request);
  // A unary op: the last MESSAGE (`{}` if none), or the END's error. Ops whose result is split
  // over several MESSAGEs (`list` entries, `processes`) have their arrays concatenated.
  Result<nlohmann::json> Call(const proto::Request& request, Deadline deadline);
  Result<nlohmann::json> Call(const nlohmann::json& request, Deadline deadline);
  // Runs a process to completion, collecting its output.
  Result<ExecResult> Run(const ExecRequest& request, Deadline deadline);

  bool alive() const;

  // A reply that broke the protocol (a proto::Decode error): logged (rate-limited) and counted,
  // and passed to the violation handler. Frame-level protocol errors, which close the
  // connection, are counted too. Thread-safe.
  void ReportViolation(const Status& why);
  uint64_t violations() const;
  // Called (on the thread that saw it) for every violation; set before sharing the client.
  void SetViolationHandler(std::function<void(const Status&)> handler);
  // Ends every stream (Unavailable) and shuts the connection down now, for every holder of this
  // client at once: the guest's end (the VMM's chardev) sees it close and can take a new
  // connection. The object stays usable (every call fails) until its last holder drops it.
  void Shutdown();
  // The guest's HELLO: version, boot_id, uptime_ms, pid1.
  const proto::Hello& guest_hello() const { return guest_hello_; }

 private:
  explicit GuestClient(std::shared_ptr<Stream::Shared> shared) : shared_(std::move(shared)) {}
  void ReaderLoop();
  // Logs a violation already counted and passes it to the handler.
  void NotifyViolation(const Status& why);

  std::shared_ptr<Stream::Shared> shared_;
  proto::Hello guest_hello_;
  std::thread reader_;
};

}  // namespace moat::channel
