// The processes moat-guest started: their pipes, the stream (if any) their output goes to,
// stdin forwarding, timeouts and exit. Output is read only while the attached stream has send
// credit, so a process that writes faster than the host consumes blocks on its pipe; a detached
// process's output is read and dropped so that it never blocks.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "channel/frame.h"
#include "common/status.h"
#include "common/unique_fd.h"
#include "guest/event_loop.h"
#include "guest/exec.h"
#include "guest/request.h"

namespace moat::guest {

// Where a process's output goes: implemented by the server, which owns the streams.
class ProcessSink {
 public:
  virtual ~ProcessSink() = default;
  // DATA bytes `stream` may carry now (0: no window, or the outbound queue is full).
  virtual size_t Credit(uint32_t stream) = 0;
  virtual void Data(uint32_t stream, channel::SubChannel ch, std::string_view bytes) = 0;
  virtual void Eof(uint32_t stream, channel::SubChannel ch) = 0;
  // The process is done (exited and its output drained): send `exit_message` and end `stream`.
  virtual void Finished(uint32_t stream, const Json& exit_message) = 0;
  // Bytes that `stream` delivered for stdin were written to the process: return credit.
  virtual void StdinConsumed(uint32_t stream, size_t bytes) = 0;
};

struct Process {
  pid_t pid = -1;
  std::string tag;
  std::vector<std::string> argv;
  std::string cmd;
  std::string cwd;
  bool pty = false;

  // [0] stdout (or the PTY master), [1] stderr.
  UniqueFd out[2];
  EventLoop::Id out_reg[2] = {0, 0};
  UniqueFd in;
  EventLoop::Id in_reg = 0;
  // Input waiting for the pipe, with the stream each chunk came from (for credit).
  std::deque<std::pair<uint32_t, std::string>> pending_in;
  size_t pending_off = 0;
  bool in_eof_requested = false;

  uint32_t stream = 0;  // 0: detached
  std::optional<int> wait_status;
  bool timed_out = false;
  bool finished = false;  // exited and drained, kept only for a late attach
  EventLoop::Id timeout_timer = 0;
  EventLoop::Id grace_timer = 0;
  EventLoop::Id retention_timer = 0;
};

class ProcessTable {
 public:
  ProcessTable(EventLoop& loop, ProcessSink& sink) : loop_(loop), sink_(sink) {}
  ~ProcessTable();
  ProcessTable(const ProcessTable&) = delete;
  ProcessTable& operator=(const ProcessTable&) = delete;

  // Spawns the process with its output going to `stream`.
  Result<pid_t> Start(const ExecSpec& spec, uint32_t stream);
  Process* Find(pid_t pid);
  // Prefers a running process over a finished one with the same tag.
  Process* FindByTag(const std::string& tag);
  bool TagInUse(const std::string& tag) const;

  // Sends `pid`'s output to `stream` from now on; returns the stream it was attached to (0 if
  // none), which the caller must end.
  uint32_t Attach(Process& p, uint32_t stream);
  void Detach(pid_t pid, uint32_t stream);
  void DetachAll();
  // Removes a finished process (after its exit was delivered to a late attach).
  void Forget(pid_t pid);
  // Re-evaluates which pipes to read (after WINDOW credit, or the outbound queue drained).
  void RefreshAll();
  void Refresh(pid_t pid);

  Status WriteStdin(pid_t pid, uint32_t stream, std::string bytes);
  Status CloseStdin(pid_t pid);
  Status Signal(pid_t pid, int sig);
  Status Resize(pid_t pid, PtySize size);
  // Reaps every exited child (as PID 1, orphans too); called on SIGCHLD.
  void ReapChildren();

  Json List() const;
  static Json ExitMessage(const Process& p);
  size_t size() const { return procs_.size(); }

 private:
  void UpdateOutputInterest(Process& p);
  void OnOutput(pid_t pid, int index);
  // Ends the stream's sub-channel. With `drain`, the pipe is still held by a background child
  // of the exited process: keep reading (and dropping) it so that the child never sees EPIPE.
  void CloseOutput(Process& p, int index, bool drain = false);
  void OnOrphanOutput(EventLoop::Id id);
  void FlushStdin(Process& p);
  void DropStdin(Process& p);
  void OnExit(Process& p, int status);
  void CheckAfterExit(pid_t pid);
  void MaybeFinish(Process& p);
  void Erase(pid_t pid);
  void EvictFinished();

  EventLoop& loop_;
  ProcessSink& sink_;
  std::map<pid_t, Process> procs_;
  // Output pipes outliving their process (see CloseOutput), oldest first.
  std::map<EventLoop::Id, UniqueFd> orphan_pipes_;
};

}  // namespace moat::guest
