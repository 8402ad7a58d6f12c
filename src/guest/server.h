// moat-guest's side of the channel (api/guest-channel.md): the connection, its streams, and the
// dispatch of requests to the ops. Single-threaded, driven by the EventLoop.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>

#include "channel/frame.h"
#include "common/status.h"
#include "guest/event_loop.h"
#include "guest/file_transfer.h"
#include "guest/identity.h"
#include "guest/metrics.h"
#include "guest/process_table.h"
#include "guest/request.h"
#include "guest/transport.h"
#include "guest/users.h"
#include "guest/watch.h"

namespace moat::guest {

struct ServerOptions {
  // Empty: serve on the virtio-serial port `port_name`.
  std::string listen_unix;
  std::string port_name = "moat.0";
  // Whether `identity` may set the clock, entropy and hostname (true when PID 1 of a VM).
  bool system = false;
};

class Server : public ProcessSink {
 public:
  Server(EventLoop& loop, ServerOptions options);
  ~Server() override;
  // Opens the port (waiting for it) or the listening socket.
  Status Start();
  void ReapChildren() { procs_.ReapChildren(); }

  // ProcessSink
  size_t Credit(uint32_t stream) override;
  void Data(uint32_t stream, channel::SubChannel ch, std::string_view bytes) override;
  void Eof(uint32_t stream, channel::SubChannel ch) override;
  void Finished(uint32_t stream, const Json& exit_message) override;
  void StdinConsumed(uint32_t stream, size_t bytes) override;

 private:
  struct Stream {
    enum class Kind { kExec, kStdin, kReadFile, kWriteFile, kWatch };
    Kind kind = Kind::kExec;
    uint64_t send_window = channel::kInitialWindow;
    uint64_t recv_outstanding = 0;  // DATA bytes received and not yet credited back
    pid_t pid = 0;
    std::unique_ptr<FileDownload> download;
    std::unique_ptr<FileUpload> upload;
    UserInfo user;
    std::unique_ptr<Watch> watch;
  };
  // What an op handler leaves behind: a finished unary op (END {} follows) or an open stream.
  enum class OpOutcome { kDone, kOpen };

  // Connection
  void OnFrame(channel::Frame frame);
  void OnHello(const channel::Frame& frame);
  void ResetConnection();
  void OnRequest(const channel::Frame& frame);
  void OnData(const channel::Frame& frame);
  void OnEof(const channel::Frame& frame);
  void OnWindow(const channel::Frame& frame);
  void OnDrained();
  void PumpDownloads();

  void SendMessage(uint32_t id, const Json& message);
  // Sends `{key: [...]}` split over as many MESSAGEs as the payload limit needs.
  void SendArrayMessages(uint32_t id, const std::string& key, const Json& items);
  // END (with `status`) and forget the stream.
  void EndStream(uint32_t id, const Status& status);
  // Forget the stream without an END (CANCEL, connection reset); processes detach.
  void CloseStream(uint32_t id);
  Stream* FindStream(uint32_t id);
  Stream& NewStream(uint32_t id, Stream::Kind kind);

  // Ops (ops_exec.cc, ops_files.cc, ops_system.cc). An error becomes the stream's END.
  Result<OpOutcome> Dispatch(uint32_t id, const std::string& op, const Json& req);
  Result<OpOutcome> OpExec(uint32_t id, const Json& req);
  Result<OpOutcome> OpAttach(uint32_t id, const Json& req);
  Result<OpOutcome> OpProcesses(uint32_t id, const Json& req);
  Result<OpOutcome> OpSignal(uint32_t id, const Json& req);
  Result<OpOutcome> OpStdin(uint32_t id, const Json& req);
  Result<OpOutcome> OpCloseStdin(uint32_t id, const Json& req);
  Result<OpOutcome> OpResize(uint32_t id, const Json& req);
  Result<OpOutcome> OpReadFile(uint32_t id, const Json& req);
  Result<OpOutcome> OpWriteFile(uint32_t id, const Json& req);
  Result<OpOutcome> OpStat(uint32_t id, const Json& req);
  Result<OpOutcome> OpList(uint32_t id, const Json& req);
  Result<OpOutcome> OpMkdir(uint32_t id, const Json& req);
  Result<OpOutcome> OpMove(uint32_t id, const Json& req);
  Result<OpOutcome> OpRemove(uint32_t id, const Json& req);
  Result<OpOutcome> OpWatch(uint32_t id, const Json& req);
  Result<OpOutcome> OpIdentity(uint32_t id, const Json& req);
  Result<OpOutcome> OpNetwork(uint32_t id, const Json& req);
  Result<OpOutcome> OpHealth(uint32_t id, const Json& req);
  Result<OpOutcome> OpMetrics(uint32_t id, const Json& req);

  // The request's user (or the default one) and `field` resolved against that user's home.
  Result<std::pair<UserInfo, std::string>> UserAndPath(const Json& req, std::string_view field,
                                                       const UserTable& users);

  EventLoop& loop_;
  ServerOptions options_;
  std::unique_ptr<Transport> transport_;
  ProcessTable procs_;
  MetricsCollector metrics_;
  Defaults defaults_;
  bool hello_seen_ = false;
  std::map<uint32_t, Stream> streams_;
};

// Milliseconds since boot (CLOCK_BOOTTIME).
int64_t UptimeMs();

}  // namespace moat::guest
