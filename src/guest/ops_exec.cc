// Process ops: exec, attach, processes, signal, stdin, close_stdin, resize.
#include <signal.h>

#include "guest/server.h"

namespace moat::guest {
namespace {

constexpr int64_t kMaxPid = (1 << 22);

}  // namespace

Result<Server::OpOutcome> Server::OpExec(uint32_t id, const Json& req) {
  UserTable users = UserTable::Load();
  MOAT_ASSIGN_OR_RETURN(ExecSpec spec, ParseExecRequest(req, defaults_, users));
  if (!spec.tag.empty() && procs_.TagInUse(spec.tag)) {
    return Status(ErrorCode::kAlreadyExists,
                  "a running process already has tag \"" + spec.tag + "\"");
  }
  // The stream exists before the process so that its output has somewhere to go.
  NewStream(id, Stream::Kind::kExec);
  MOAT_ASSIGN_OR_RETURN(pid_t pid, procs_.Start(spec, id));
  FindStream(id)->pid = pid;
  SendMessage(id, Json{{"type", "start"}, {"pid", pid}});
  return OpOutcome::kOpen;
}

Result<Server::OpOutcome> Server::OpAttach(uint32_t id, const Json& req) {
  MOAT_ASSIGN_OR_RETURN(auto pid, OptInt(req, "pid", 1, kMaxPid));
  MOAT_ASSIGN_OR_RETURN(auto tag, OptString(req, "tag"));
  Process* p = nullptr;
  if (pid) {
    p = procs_.Find(static_cast<pid_t>(*pid));
  } else if (tag) {
    p = procs_.FindByTag(*tag);
  } else {
    return InvalidArgument("field \"pid\" or \"tag\" is required");
  }
  if (p == nullptr) {
    return NotFound(pid ? "no process " + std::to_string(*pid) : "no process tagged " + *tag);
  }
  pid_t target = p->pid;
  SendMessage(id, Json{{"type", "start"}, {"pid", target}});
  if (p->finished) {
    // It ended while nobody was attached: report how, once.
    SendMessage(id, ProcessTable::ExitMessage(*p));
    procs_.Forget(target);
    return OpOutcome::kDone;
  }
  NewStream(id, Stream::Kind::kExec).pid = target;
  uint32_t previous = procs_.Attach(*p, id);
  if (previous != 0) {
    EndStream(previous, Status(ErrorCode::kAborted,
                               "another stream attached to process " + std::to_string(target)));
  }
  return OpOutcome::kOpen;
}

Result<Server::OpOutcome> Server::OpProcesses(uint32_t id, const Json&) {
  SendArrayMessages(id, "processes", procs_.List());
  return OpOutcome::kDone;
}

Result<Server::OpOutcome> Server::OpSignal(uint32_t id, const Json& req) {
  (void)id;
  MOAT_ASSIGN_OR_RETURN(int64_t pid, RequiredInt(req, "pid", 1, kMaxPid));
  MOAT_ASSIGN_OR_RETURN(int64_t sig, RequiredInt(req, "signal", 1, SIGRTMAX));
  MOAT_RETURN_IF_ERROR(procs_.Signal(static_cast<pid_t>(pid), static_cast<int>(sig)));
  return OpOutcome::kDone;
}

Result<Server::OpOutcome> Server::OpStdin(uint32_t id, const Json& req) {
  MOAT_ASSIGN_OR_RETURN(int64_t pid, RequiredInt(req, "pid", 1, kMaxPid));
  Process* p = procs_.Find(static_cast<pid_t>(pid));
  if (p == nullptr || p->finished) return NotFound("no process " + std::to_string(pid));
  if (!p->in || p->in_eof_requested) {
    return FailedPrecondition("stdin of process " + std::to_string(pid) + " is not open");
  }
  NewStream(id, Stream::Kind::kStdin).pid = static_cast<pid_t>(pid);
  return OpOutcome::kOpen;
}

Result<Server::OpOutcome> Server::OpCloseStdin(uint32_t id, const Json& req) {
  (void)id;
  MOAT_ASSIGN_OR_RETURN(int64_t pid, RequiredInt(req, "pid", 1, kMaxPid));
  MOAT_RETURN_IF_ERROR(procs_.CloseStdin(static_cast<pid_t>(pid)));
  return OpOutcome::kDone;
}

Result<Server::OpOutcome> Server::OpResize(uint32_t id, const Json& req) {
  (void)id;
  MOAT_ASSIGN_OR_RETURN(int64_t pid, RequiredInt(req, "pid", 1, kMaxPid));
  MOAT_ASSIGN_OR_RETURN(int64_t cols, RequiredInt(req, "cols", 1, 65535));
  MOAT_ASSIGN_OR_RETURN(int64_t rows, RequiredInt(req, "rows", 1, 65535));
  MOAT_RETURN_IF_ERROR(procs_.Resize(
      static_cast<pid_t>(pid), PtySize{static_cast<uint16_t>(cols), static_cast<uint16_t>(rows)}));
  return OpOutcome::kDone;
}

}  // namespace moat::guest
