#include "guest/process_table.h"

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/log.h"

namespace moat::guest {
namespace {

using channel::SubChannel;

constexpr size_t kReadChunk = 64 * 1024;
// After exit, output pipes still held open by a background grandchild are closed once they
// have nothing left to read; checked this often.
constexpr auto kExitGrace = std::chrono::milliseconds(100);
// A finished process nobody is attached to is kept this long for a late attach.
constexpr auto kRetention = std::chrono::seconds(60);
constexpr size_t kMaxRetained = 128;
constexpr size_t kMaxOrphanPipes = 512;

RateLimiter g_proc_log(2, 10);

}  // namespace

ProcessTable::~ProcessTable() {
  for (auto& [id, fd] : orphan_pipes_) loop_.Remove(id);
  for (auto& [pid, p] : procs_) {
    for (int i = 0; i < 2; ++i) loop_.Remove(p.out_reg[i]);
    loop_.Remove(p.in_reg);
    loop_.CancelTimer(p.timeout_timer);
    loop_.CancelTimer(p.grace_timer);
    loop_.CancelTimer(p.retention_timer);
  }
}

Result<pid_t> ProcessTable::Start(const ExecSpec& spec, uint32_t stream) {
  MOAT_ASSIGN_OR_RETURN(SpawnedProcess sp, SpawnExec(spec));
  Process& p = procs_[sp.pid];
  p.pid = sp.pid;
  p.tag = spec.tag;
  p.argv = spec.request_argv;
  p.cmd = spec.cmd;
  p.cwd = spec.cwd;
  p.pty = spec.pty.has_value();
  p.out[0] = std::move(sp.stdout_fd);
  p.out[1] = std::move(sp.stderr_fd);
  p.in = std::move(sp.stdin_fd);
  p.stream = stream;
  pid_t pid = sp.pid;
  if (spec.timeout_ms > 0) {
    p.timeout_timer = loop_.AddTimer(std::chrono::milliseconds(spec.timeout_ms), [this, pid] {
      Process* proc = Find(pid);
      if (proc == nullptr) return;
      proc->timeout_timer = 0;
      if (proc->wait_status) return;
      proc->timed_out = true;
      // The process leads its own session: kill everything it started, then it.
      ::kill(-pid, SIGKILL);
      ::kill(pid, SIGKILL);
    });
  }
  UpdateOutputInterest(p);
  return pid;
}

Process* ProcessTable::Find(pid_t pid) {
  auto it = procs_.find(pid);
  return it == procs_.end() ? nullptr : &it->second;
}

Process* ProcessTable::FindByTag(const std::string& tag) {
  Process* finished = nullptr;
  for (auto& [pid, p] : procs_) {
    if (p.tag != tag) continue;
    if (!p.finished) return &p;
    finished = &p;
  }
  return finished;
}

bool ProcessTable::TagInUse(const std::string& tag) const {
  return std::any_of(procs_.begin(), procs_.end(),
                     [&](const auto& kv) { return !kv.second.finished && kv.second.tag == tag; });
}

uint32_t ProcessTable::Attach(Process& p, uint32_t stream) {
  uint32_t old = p.stream;
  p.stream = stream;
  UpdateOutputInterest(p);
  return old;
}

void ProcessTable::Detach(pid_t pid, uint32_t stream) {
  Process* p = Find(pid);
  if (p == nullptr || p->stream != stream) return;
  p->stream = 0;
  UpdateOutputInterest(*p);
  MaybeFinish(*p);
}

void ProcessTable::DetachAll() {
  std::vector<pid_t> pids;
  for (auto& [pid, p] : procs_) {
    if (p.stream != 0) pids.push_back(pid);
  }
  for (pid_t pid : pids) {
    Process* p = Find(pid);
    if (p != nullptr) Detach(pid, p->stream);
  }
}

void ProcessTable::Forget(pid_t pid) {
  Erase(pid);
}

void ProcessTable::RefreshAll() {
  for (auto& [pid, p] : procs_) UpdateOutputInterest(p);
}

void ProcessTable::Refresh(pid_t pid) {
  if (Process* p = Find(pid)) UpdateOutputInterest(*p);
}

void ProcessTable::UpdateOutputInterest(Process& p) {
  // Level-triggered, and registered only while we want to read: a closed pipe reports EPOLLHUP
  // whatever the event mask, so an idle registration would spin.
  bool want = p.stream == 0 || sink_.Credit(p.stream) > 0;
  for (int i = 0; i < 2; ++i) {
    if (!p.out[i]) continue;
    if (want && p.out_reg[i] == 0) {
      pid_t pid = p.pid;
      auto id = loop_.Add(p.out[i].get(), EPOLLIN, [this, pid, i](uint32_t) { OnOutput(pid, i); });
      if (id.ok()) {
        p.out_reg[i] = *id;
      } else if (g_proc_log.Allow()) {
        LogError("guest.epoll_add_failed", {{"error", id.status().ToString()}});
      }
    } else if (!want && p.out_reg[i] != 0) {
      loop_.Remove(p.out_reg[i]);
      p.out_reg[i] = 0;
    }
  }
}

void ProcessTable::OnOutput(pid_t pid, int index) {
  Process* p = Find(pid);
  if (p == nullptr || !p->out[index]) return;
  size_t want = kReadChunk;
  if (p->stream != 0) want = std::min(want, sink_.Credit(p->stream));
  if (want == 0) {
    UpdateOutputInterest(*p);
    return;
  }
  static thread_local char buf[kReadChunk];
  ssize_t n = ::read(p->out[index].get(), buf, want);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (n <= 0) {
    // EOF, or EIO from a PTY master once the terminal's last user is gone.
    CloseOutput(*p, index);
    MaybeFinish(*p);
    return;
  }
  if (p->stream != 0) {
    auto ch = index == 0 ? SubChannel::kStdout : SubChannel::kStderr;
    sink_.Data(p->stream, ch, std::string_view(buf, static_cast<size_t>(n)));
    // Data() may have ended the stream; look the process up again.
    if (Process* again = Find(pid)) UpdateOutputInterest(*again);
  }
}

void ProcessTable::CloseOutput(Process& p, int index, bool drain) {
  if (p.out_reg[index] != 0) loop_.Remove(p.out_reg[index]);
  p.out_reg[index] = 0;
  if (!p.out[index]) return;
  if (drain) {
    UniqueFd fd = std::move(p.out[index]);
    // The handler learns its own registration id once Add() has returned it.
    auto self = std::make_shared<EventLoop::Id>(0);
    auto id = loop_.Add(fd.get(), EPOLLIN, [this, self](uint32_t) { OnOrphanOutput(*self); });
    if (id.ok()) {
      *self = *id;
      orphan_pipes_.emplace(*id, std::move(fd));
      while (orphan_pipes_.size() > kMaxOrphanPipes) {
        loop_.Remove(orphan_pipes_.begin()->first);
        orphan_pipes_.erase(orphan_pipes_.begin());
      }
    }
  }
  p.out[index].Reset();
  if (p.stream != 0) {
    sink_.Eof(p.stream, index == 0 ? SubChannel::kStdout : SubChannel::kStderr);
  }
}

void ProcessTable::OnOrphanOutput(EventLoop::Id id) {
  auto it = orphan_pipes_.find(id);
  if (it == orphan_pipes_.end()) return;
  static thread_local char buf[kReadChunk];
  ssize_t n = ::read(it->second.get(), buf, sizeof buf);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (n <= 0) {
    loop_.Remove(id);
    orphan_pipes_.erase(it);
  }
}

Status ProcessTable::WriteStdin(pid_t pid, uint32_t stream, std::string bytes) {
  Process* p = Find(pid);
  if (p == nullptr || p->finished) return NotFound("no process " + std::to_string(pid));
  if (!p->in || p->in_eof_requested) {
    return FailedPrecondition("stdin of process " + std::to_string(pid) + " is closed");
  }
  p->pending_in.emplace_back(stream, std::move(bytes));
  FlushStdin(*p);
  return Status::Ok();
}

Status ProcessTable::CloseStdin(pid_t pid) {
  Process* p = Find(pid);
  if (p == nullptr || p->finished) return NotFound("no process " + std::to_string(pid));
  if (!p->in || p->in_eof_requested) return Status::Ok();
  p->in_eof_requested = true;
  // A terminal has no end of input; ^D is what a shell reading it takes as one.
  if (p->pty) p->pending_in.emplace_back(0, "\x04");
  FlushStdin(*p);
  return Status::Ok();
}

void ProcessTable::FlushStdin(Process& p) {
  while (p.in && !p.pending_in.empty()) {
    auto& [stream, bytes] = p.pending_in.front();
    ssize_t n = ::write(p.in.get(), bytes.data() + p.pending_off, bytes.size() - p.pending_off);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      DropStdin(p);  // EPIPE: the process closed its stdin
      return;
    }
    p.pending_off += static_cast<size_t>(n);
    if (stream != 0) sink_.StdinConsumed(stream, static_cast<size_t>(n));
    if (p.pending_off == bytes.size()) {
      p.pending_in.pop_front();
      p.pending_off = 0;
    }
  }
  bool want = p.in && !p.pending_in.empty();
  if (want && p.in_reg == 0) {
    pid_t pid = p.pid;
    auto id = loop_.Add(p.in.get(), EPOLLOUT, [this, pid](uint32_t) {
      if (Process* proc = Find(pid)) FlushStdin(*proc);
    });
    if (id.ok()) {
      p.in_reg = *id;
    } else {
      DropStdin(p);
    }
  } else if (!want && p.in_reg != 0) {
    loop_.Remove(p.in_reg);
    p.in_reg = 0;
  }
  if (p.in && p.pending_in.empty() && p.in_eof_requested && !p.pty) p.in.Reset();
}

void ProcessTable::DropStdin(Process& p) {
  // Credit the dropped bytes back: the host's window must not shrink for bytes nobody reads.
  for (auto& [stream, bytes] : p.pending_in) {
    size_t left = bytes.size() - p.pending_off;
    p.pending_off = 0;
    if (stream != 0 && left > 0) sink_.StdinConsumed(stream, left);
  }
  p.pending_in.clear();
  if (p.in_reg != 0) loop_.Remove(p.in_reg);
  p.in_reg = 0;
  p.in.Reset();
}

Status ProcessTable::Signal(pid_t pid, int sig) {
  Process* p = Find(pid);
  if (p == nullptr || p->wait_status) return NotFound("no running process " + std::to_string(pid));
  if (::kill(pid, sig) < 0) return ErrnoError("kill(" + std::to_string(pid) + ")");
  return Status::Ok();
}

Status ProcessTable::Resize(pid_t pid, PtySize size) {
  Process* p = Find(pid);
  if (p == nullptr || p->wait_status) return NotFound("no running process " + std::to_string(pid));
  if (!p->pty || !p->in) {
    return FailedPrecondition("process " + std::to_string(pid) + " has no terminal");
  }
  return SetPtySize(p->in.get(), size);
}

void ProcessTable::ReapChildren() {
  for (;;) {
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid <= 0) return;  // 0: others still running; -1 ECHILD: none left
    Process* p = Find(pid);
    if (p != nullptr && !p->wait_status) OnExit(*p, status);
    // Anything else is an orphan re-parented to PID 1: reaping it is all there is to do.
  }
}

void ProcessTable::OnExit(Process& p, int status) {
  p.wait_status = status;
  loop_.CancelTimer(p.timeout_timer);
  p.timeout_timer = 0;
  DropStdin(p);
  pid_t pid = p.pid;
  MaybeFinish(p);  // may erase p
  if (Process* again = Find(pid); again != nullptr && !again->finished) {
    again->grace_timer = loop_.AddTimer(kExitGrace, [this, pid] { CheckAfterExit(pid); });
  }
}

void ProcessTable::CheckAfterExit(pid_t pid) {
  Process* p = Find(pid);
  if (p == nullptr || p->finished) return;
  p->grace_timer = 0;
  for (int i = 0; i < 2; ++i) {
    if (!p->out[i]) continue;
    pollfd pfd{p->out[i].get(), POLLIN, 0};
    // Still holding unread bytes (waiting for credit): keep it. Empty but open: a background
    // child of the process holds the write end; do not wait for it.
    if (::poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLIN)) continue;
    CloseOutput(*p, i, /*drain=*/(pfd.revents & POLLHUP) == 0);
  }
  MaybeFinish(*p);
  if (Process* again = Find(pid); again != nullptr && !again->finished) {
    again->grace_timer = loop_.AddTimer(kExitGrace, [this, pid] { CheckAfterExit(pid); });
  }
}

Json ProcessTable::ExitMessage(const Process& p) {
  Json m = {{"type", "exit"}};
  int st = p.wait_status.value_or(-1);
  if (st >= 0 && WIFSIGNALED(st)) {
    m["signal"] = WTERMSIG(st);
  } else if (st >= 0 && WIFEXITED(st)) {
    m["exit_code"] = WEXITSTATUS(st);
  } else {
    m["exit_code"] = -1;
  }
  if (p.timed_out) m["timed_out"] = true;
  return m;
}

void ProcessTable::MaybeFinish(Process& p) {
  if (!p.wait_status || p.out[0] || p.out[1]) return;
  if (p.stream != 0) {
    uint32_t stream = p.stream;
    Json exit = ExitMessage(p);
    Erase(p.pid);
    sink_.Finished(stream, exit);
    return;
  }
  if (p.finished) return;
  p.finished = true;
  loop_.CancelTimer(p.grace_timer);
  p.grace_timer = 0;
  pid_t pid = p.pid;
  p.retention_timer = loop_.AddTimer(kRetention, [this, pid] {
    if (Process* proc = Find(pid)) proc->retention_timer = 0;
    Erase(pid);
  });
  EvictFinished();
}

void ProcessTable::EvictFinished() {
  size_t finished = 0;
  for (auto& [pid, p] : procs_) finished += p.finished ? 1 : 0;
  // Oldest pids first is a good enough approximation of oldest exits.
  for (auto it = procs_.begin(); it != procs_.end() && finished > kMaxRetained;) {
    pid_t pid = it->first;
    bool drop = it->second.finished;
    ++it;
    if (drop) {
      Erase(pid);
      --finished;
    }
  }
}

void ProcessTable::Erase(pid_t pid) {
  auto it = procs_.find(pid);
  if (it == procs_.end()) return;
  Process& p = it->second;
  for (int i = 0; i < 2; ++i) loop_.Remove(p.out_reg[i]);
  loop_.Remove(p.in_reg);
  loop_.CancelTimer(p.timeout_timer);
  loop_.CancelTimer(p.grace_timer);
  loop_.CancelTimer(p.retention_timer);
  procs_.erase(it);
}

Json ProcessTable::List() const {
  Json list = Json::array();
  for (const auto& [pid, p] : procs_) {
    if (p.finished || p.wait_status) continue;
    list.push_back({{"pid", pid},
                    {"tag", p.tag},
                    {"argv", p.argv},
                    {"cmd", p.cmd},
                    {"cwd", p.cwd},
                    {"pty", p.pty}});
  }
  return list;
}

}  // namespace moat::guest
