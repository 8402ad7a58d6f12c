// process.Process over the Connect protocol (E2B-WIRE §6), mapped onto the guest channel's
// process ops (api/guest-channel.md): exec, attach, processes, stdin, close_stdin, signal,
// resize.
#include <signal.h>

#include <chrono>

#include "api/codec/protojson.h"
#include "api/routes/routes.h"
#include "channel/guest_ops.h"
#include "common/log.h"
#include "host/envd/envd_routes.h"

namespace moat::api::routes {
namespace {

using channel::GuestClient;
namespace ops = channel::ops;
namespace proto = channel::proto;
using channel::StreamEvent;
using channel::SubChannel;
using Clock = std::chrono::steady_clock;

constexpr auto kUnaryTimeout = std::chrono::seconds(30);

// Go's names for signals, as envd reports them ("signal: killed").
std::string SignalText(int sig) {
  switch (sig) {
    case SIGKILL: return "killed";
    case SIGTERM: return "terminated";
    case SIGINT: return "interrupt";
    case SIGHUP: return "hangup";
    case SIGQUIT: return "quit";
    case SIGABRT: return "aborted";
    case SIGSEGV: return "segmentation fault";
    case SIGPIPE: return "broken pipe";
    case SIGUSR1: return "user defined signal 1";
    case SIGUSR2: return "user defined signal 2";
    case SIGALRM: return "alarm clock";
    default: return "signal " + std::to_string(sig);
  }
}

const std::map<std::string, int64_t> kSignals = {
    {"SIGNAL_UNSPECIFIED", 0}, {"SIGNAL_SIGKILL", SIGKILL}, {"SIGNAL_SIGTERM", SIGTERM}};

// The guest's `exit` message as a ProcessEvent.end.
json EndEvent(const proto::ExecExited& exit) {
  json end = json::object();
  if (exit.exit_code) {
    int code = *exit.exit_code;
    std::string status = "exit status " + std::to_string(code);
    if (code != 0) {
      end["exitCode"] = code;
      end["error"] = status;
    }
    end["exited"] = true;
    end["status"] = status;
  } else {
    std::string status = "signal: " + SignalText(exit.signal.value_or(0));
    end["exitCode"] = -1;
    end["status"] = status;
    end["error"] = status;
  }
  return {{"event", {{"end", end}}}};
}

// A ProcessSelector to a pid: `pid` directly, `tag` through the guest's process list.
Result<int64_t> SelectPid(EnvdCall& call, const json& req) {
  const json* sel = codec::Field(req, "process");
  if (sel == nullptr || !sel->is_object()) return InvalidArgument("field \"process\" is required");
  MOAT_ASSIGN_OR_RETURN(auto pid, codec::IntField(*sel, "pid", 1, (1 << 22)));
  if (pid) return *pid;
  MOAT_ASSIGN_OR_RETURN(auto tag, codec::StringField(*sel, "tag"));
  if (!tag) return InvalidArgument("field \"process\" needs \"pid\" or \"tag\"");
  MOAT_ASSIGN_OR_RETURN(auto guest, call.Guest());
  MOAT_ASSIGN_OR_RETURN(auto list, ops::Processes(*guest, Clock::now() + kUnaryTimeout));
  for (const auto& p : list) {
    if (p.tag == *tag) return p.pid;
  }
  return NotFound("no process tagged \"" + *tag + "\"");
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// What the history keeps of a command started through envd (api/history.h): recorded when it
// starts, its output's head and tail gathered as the stream goes, how it ended recorded once.
class CommandCapture {
 public:
  CommandCapture(HistoryLog& log, const EnvdCall& call, const proto::ExecOp& exec) : log_(log) {
    rec_.sandbox_id = call.record.id;
    rec_.team_id = call.record.team_id;
    // A PTY is an interactive session (a terminal): its end by a signal is its close, not a
    // failure (store::kFailedCommand).
    if (exec.pty) rec_.kind = "pty";
    for (const auto& a : exec.argv) {
      if (!rec_.command.empty()) rec_.command += ' ';
      bool plain =
          !a.empty() && a.find_first_of(" \t\n'\"$`\\;&|<>()*?[]{}!#~") == std::string::npos;
      if (plain) {
        rec_.command += a;
      } else {
        rec_.command += '\'';
        for (char c : a) rec_.command += c == '\'' ? std::string("'\\''") : std::string(1, c);
        rec_.command += '\'';
      }
    }
    rec_.user = exec.user;
    rec_.cwd = exec.cwd;
    rec_.started_at_ms = NowMs();
    rec_.id = log_.CommandStarted(rec_);
  }
  ~CommandCapture() { Finish(Status::Ok(), /*detached=*/true); }
  CommandCapture(const CommandCapture&) = delete;
  CommandCapture& operator=(const CommandCapture&) = delete;

  void Output(bool is_stderr, std::string_view data) { (is_stderr ? err_ : out_).Append(data); }
  void Exited(const proto::ExecExited& exit) {
    if (exit.exit_code) rec_.exit_code = *exit.exit_code;
    if (exit.signal) rec_.signal = "signal: " + SignalText(*exit.signal);
    if (exit.timed_out) rec_.error = "the command ran past its timeout and was killed";
    exited_ = true;
  }
  // How the relay ended: the process's end (exited), an error, or the client leaving while it
  // still ran (detached: it runs on, its end unknown here).
  void Finish(const Status& s, bool detached) {
    if (finished_ || rec_.id == 0) return;
    finished_ = true;
    if (!exited_) {
      if (!s.ok()) {
        if (rec_.error.empty()) rec_.error = s.message();
        rec_.ended_at_ms = NowMs();
      } else if (detached) {
        rec_.error = "the client left while it ran; it runs on, detached";
      }
    } else {
      rec_.ended_at_ms = NowMs();
    }
    out_.Fill(&rec_.stdout_head, &rec_.stdout_tail, &rec_.stdout_bytes);
    err_.Fill(&rec_.stderr_head, &rec_.stderr_tail, &rec_.stderr_bytes);
    log_.CommandFinished(rec_);
  }

 private:
  HistoryLog& log_;
  store::CommandRecord rec_;
  OutputTail out_, err_;
  bool exited_ = false;
  bool finished_ = false;
};

// Relays an exec or attach stream to the client until the process ends, the deadline passes or
// the client goes away (then the process keeps running, detached).
Status Relay(EnvdCall& call, GuestClient& guest, GuestClient::Stream& stream,
             const StreamLimits& limits, StreamSink& sink, bool is_start, bool pty,
             CommandCapture* capture = nullptr) {
  auto opened = Clock::now();
  bool started = false;
  bool timed_out = false;
  // The guest enforces the exec's own timeout; this margin only guards against a guest that
  // does not answer.
  std::optional<Clock::time_point> hard_deadline;
  if (limits.deadline)
    hard_deadline =
        *limits.deadline + (is_start ? std::chrono::seconds(5) : std::chrono::seconds(0));
  for (;;) {
    auto wait_until = started ? sink.KeepaliveDue() : Clock::now() + std::chrono::seconds(60);
    if (hard_deadline && *hard_deadline < wait_until) wait_until = *hard_deadline;
    auto ev = stream.Next(wait_until);
    if (!ev.ok()) {
      if (ev.status().code() != ErrorCode::kDeadlineExceeded) {
        // The guest's channel is gone (the sandbox was killed, paused or died): the client's
        // connection drops, as envd's does with its VM.
        sink.Cut();
        return ev.status();
      }
      if (hard_deadline && Clock::now() >= *hard_deadline) {
        stream.Cancel();
        return DeadlineExceeded("the request's Connect-Timeout-Ms passed");
      }
      if (started && !sink.KeepaliveIfDue()) break;
      continue;
    }
    switch (ev->kind) {
      case StreamEvent::Kind::kMessage: {
        auto event = ops::Checked(guest, proto::DecodeExecEvent(ev->message));
        if (!event.ok()) {
          // The process runs on, detached; this request fails and says why.
          stream.Cancel();
          return event.status();
        }
        if (auto* start = std::get_if<proto::ExecStarted>(&*event)) {
          started = true;
          if (is_start) {
            call.metrics.exec_start_latency().Observe(
                std::chrono::duration<double>(Clock::now() - opened).count());
          }
          if (!sink.Send({{"event", {{"start", {{"pid", start->pid}}}}}})) break;
        } else if (auto* exit = std::get_if<proto::ExecExited>(&*event)) {
          if (capture != nullptr) capture->Exited(*exit);
          if (exit->timed_out) {
            timed_out = true;
          } else if (!sink.Send(EndEvent(*exit))) {
            break;
          }
        }
        continue;
      }
      case StreamEvent::Kind::kData: {
        const char* key = pty ? "pty" : ev->channel == SubChannel::kStderr ? "stderr" : "stdout";
        if (capture != nullptr)
          capture->Output(!pty && ev->channel == SubChannel::kStderr, ev->data);
        if (!sink.Send({{"event", {{"data", {{key, codec::Base64Encode(ev->data)}}}}}})) break;
        continue;
      }
      case StreamEvent::Kind::kEof: continue;
      case StreamEvent::Kind::kEnd: {
        if (timed_out) return DeadlineExceeded("the command ran past its timeout and was killed");
        Status s = ev->status;
        if (s.code() == ErrorCode::kUnavailable) {
          // The guest's channel closed under the stream (its sandbox was killed, paused or
          // died): the client's connection drops, as envd's does with its VM.
          sink.Cut();
          return s;
        }
        if (!s.ok() && is_start && !started) {
          // A spawn failure is the caller's: bad cwd, missing program, unknown user.
          if (s.message().rfind("user ", 0) == 0) return Unauthenticated(s.message());
          if (s.code() == ErrorCode::kNotFound) return InvalidArgument(s.message());
        }
        return s;
      }
    }
  }
  // The client went away: detach; the process keeps running.
  stream.Cancel();
  return Status::Ok();
}

Status Start(EnvdCall& call, const json& req, const StreamLimits& limits, StreamSink& sink) {
  const json* proc = codec::Field(req, "process");
  if (proc == nullptr || !proc->is_object())
    return InvalidArgument("field \"process\" is required");
  MOAT_ASSIGN_OR_RETURN(auto cmd, codec::StringField(*proc, "cmd"));
  if (!cmd || cmd->empty()) return InvalidArgument("field \"process.cmd\" is required");
  std::vector<std::string> argv = {*cmd};
  if (const json* args = codec::Field(*proc, "args"); args != nullptr) {
    if (!args->is_array()) return InvalidArgument("field \"process.args\" must be an array");
    for (const auto& a : *args) {
      if (!a.is_string()) return InvalidArgument("field \"process.args\" must hold strings");
      argv.push_back(a.get<std::string>());
    }
  }
  MOAT_ASSIGN_OR_RETURN(auto envs, codec::StringMapField(*proc, "envs"));
  MOAT_ASSIGN_OR_RETURN(auto cwd, codec::StringField(*proc, "cwd"));
  MOAT_ASSIGN_OR_RETURN(auto tag, codec::StringField(req, "tag"));
  MOAT_ASSIGN_OR_RETURN(auto stdin_open, codec::BoolField(req, "stdin"));
  proto::ExecOp exec;
  exec.argv = std::move(argv);
  exec.user = call.user;
  // The sandbox's envVars first, the request's envs over them (E2B-WIRE §6).
  exec.env = call.record.env_vars;
  for (auto& [k, v] : envs) exec.env[k] = v;
  if (cwd) exec.cwd = *cwd;
  if (tag) exec.tag = *tag;
  // Without a PTY, stdin stays unconnected unless asked for (`commands.run` sends false).
  const json* pty = codec::Field(req, "pty");
  if (pty != nullptr) {
    const json* size = codec::Field(*pty, "size");
    if (size == nullptr) return InvalidArgument("field \"pty.size\" is required");
    MOAT_ASSIGN_OR_RETURN(auto cols, codec::IntField(*size, "cols", 1, 65535));
    MOAT_ASSIGN_OR_RETURN(auto rows, codec::IntField(*size, "rows", 1, 65535));
    if (!cols || !rows) return InvalidArgument("field \"pty.size\" needs cols and rows");
    exec.pty = proto::PtySize{static_cast<int>(*cols), static_cast<int>(*rows)};
    exec.stdin_open = true;
  } else {
    exec.stdin_open = stdin_open.value_or(false);
  }
  exec.timeout_ms = limits.timeout_ms;
  MOAT_ASSIGN_OR_RETURN(auto guest, call.Guest());
  MOAT_ASSIGN_OR_RETURN(auto stream, guest->Open(exec));
  std::optional<CommandCapture> capture;
  if (call.history != nullptr && call.history->enabled())
    capture.emplace(*call.history, call, exec);
  Status relayed = Relay(call, *guest, *stream, limits, sink, true, pty != nullptr,
                         capture ? &*capture : nullptr);
  if (capture) capture->Finish(relayed, /*detached=*/true);
  return relayed;
}

Status ConnectProcess(EnvdCall& call, const json& req, const StreamLimits& limits,
                      StreamSink& sink) {
  const json* sel = codec::Field(req, "process");
  if (sel == nullptr || !sel->is_object()) return InvalidArgument("field \"process\" is required");
  proto::AttachOp attach;
  MOAT_ASSIGN_OR_RETURN(auto pid, codec::IntField(*sel, "pid", 1, (1 << 22)));
  MOAT_ASSIGN_OR_RETURN(auto tag, codec::StringField(*sel, "tag"));
  if (pid) {
    attach.pid = *pid;
  } else if (tag) {
    attach.tag = *tag;
  } else {
    return InvalidArgument("field \"process\" needs \"pid\" or \"tag\"");
  }
  MOAT_ASSIGN_OR_RETURN(auto guest, call.Guest());
  // A PTY's output goes out as `data.pty`: ask the guest whether this process has one.
  bool pty = false;
  MOAT_ASSIGN_OR_RETURN(auto list, ops::Processes(*guest, Clock::now() + kUnaryTimeout));
  for (const auto& p : list) {
    if (pid ? p.pid == *pid : p.tag == *tag) pty = p.pty;
  }
  MOAT_ASSIGN_OR_RETURN(auto stream, guest->Open(attach));
  return Relay(call, *guest, *stream, limits, sink, false, pty);
}

Result<json> List(EnvdCall& call, const json&) {
  MOAT_ASSIGN_OR_RETURN(auto guest, call.Guest());
  MOAT_ASSIGN_OR_RETURN(auto list, ops::Processes(*guest, Clock::now() + kUnaryTimeout));
  json out = json::array();
  for (const auto& p : list) {
    json config = {{"cmd", ""}, {"args", json::array()}, {"envs", json::object()}};
    if (!p.argv.empty()) {
      config["cmd"] = p.argv[0];
      for (size_t i = 1; i < p.argv.size(); ++i) config["args"].push_back(p.argv[i]);
    } else if (!p.cmd.empty()) {
      config["cmd"] = "/bin/bash";
      config["args"] = {"-l", "-c", p.cmd};
    }
    if (!p.cwd.empty()) config["cwd"] = p.cwd;
    json info = {{"config", config}, {"pid", p.pid}};
    if (!p.tag.empty()) info["tag"] = p.tag;
    out.push_back(std::move(info));
  }
  return json{{"processes", out}};
}

Result<json> SendInput(EnvdCall& call, const json& req) {
  MOAT_ASSIGN_OR_RETURN(int64_t pid, SelectPid(call, req));
  const json* input = codec::Field(req, "input");
  if (input == nullptr) return InvalidArgument("field \"input\" is required");
  MOAT_ASSIGN_OR_RETURN(auto data, codec::BytesField(*input, "stdin"));
  if (!data) {
    MOAT_ASSIGN_OR_RETURN(data, codec::BytesField(*input, "pty"));
  }
  if (!data) return InvalidArgument("field \"input\" needs \"stdin\" or \"pty\"");
  MOAT_ASSIGN_OR_RETURN(auto guest, call.Guest());
  auto deadline = Clock::now() + kUnaryTimeout;
  MOAT_ASSIGN_OR_RETURN(auto stream, guest->Open(proto::StdinOp{pid}));
  MOAT_RETURN_IF_ERROR(stream->Write(SubChannel::kStdin, *data, deadline));
  // The guest handles frames in order: once a later request on another stream has been
  // answered, it has taken (or refused) this one's bytes, and a refusal is already queued.
  MOAT_RETURN_IF_ERROR(ops::Health(*guest, deadline).status());
  auto ev = stream->Next(Clock::now());
  if (ev.ok() && ev->kind == StreamEvent::Kind::kEnd && !ev->status.ok()) return ev->status;
  stream->Cancel();  // leaves the process's stdin open for later input
  return json::object();
}

Result<json> CloseStdin(EnvdCall& call, const json& req) {
  MOAT_ASSIGN_OR_RETURN(int64_t pid, SelectPid(call, req));
  MOAT_ASSIGN_OR_RETURN(auto guest, call.Guest());
  MOAT_RETURN_IF_ERROR(ops::Unary(*guest, proto::CloseStdinOp{pid}, Clock::now() + kUnaryTimeout));
  return json::object();
}

Result<json> SendSignal(EnvdCall& call, const json& req) {
  MOAT_ASSIGN_OR_RETURN(int64_t pid, SelectPid(call, req));
  MOAT_ASSIGN_OR_RETURN(auto sig, codec::EnumField(req, "signal", kSignals));
  if (!sig || *sig <= 0 || *sig > 64) return InvalidArgument("field \"signal\" is required");
  MOAT_ASSIGN_OR_RETURN(auto guest, call.Guest());
  MOAT_RETURN_IF_ERROR(ops::Unary(*guest, proto::SignalOp{pid, static_cast<int>(*sig)},
                                  Clock::now() + kUnaryTimeout));
  return json::object();
}

Result<json> Update(EnvdCall& call, const json& req) {
  MOAT_ASSIGN_OR_RETURN(int64_t pid, SelectPid(call, req));
  const json* pty = codec::Field(req, "pty");
  if (pty == nullptr) return json::object();  // nothing to change
  const json* size = codec::Field(*pty, "size");
  if (size == nullptr) return InvalidArgument("field \"pty.size\" is required");
  MOAT_ASSIGN_OR_RETURN(auto cols, codec::IntField(*size, "cols", 1, 65535));
  MOAT_ASSIGN_OR_RETURN(auto rows, codec::IntField(*size, "rows", 1, 65535));
  if (!cols || !rows) return InvalidArgument("field \"pty.size\" needs cols and rows");
  MOAT_ASSIGN_OR_RETURN(auto guest, call.Guest());
  proto::ResizeOp resize{pid, {static_cast<int>(*cols), static_cast<int>(*rows)}};
  MOAT_RETURN_IF_ERROR(ops::Unary(*guest, resize, Clock::now() + kUnaryTimeout));
  return json::object();
}

}  // namespace

void RegisterEnvdProcessRoutes(http::Router& router, EnvdContext& ctx) {
  json keepalive = {{"event", {{"keepalive", json::object()}}}};
  router.Add("POST", "/process.Process/Start", ConnectServerStream(ctx, keepalive, Start));
  router.Add("POST", "/process.Process/Connect",
             ConnectServerStream(ctx, keepalive, ConnectProcess));
  router.Add("POST", "/process.Process/List", ConnectUnary(ctx, List));
  router.Add("POST", "/process.Process/SendInput", ConnectUnary(ctx, SendInput));
  router.Add("POST", "/process.Process/CloseStdin", ConnectUnary(ctx, CloseStdin));
  router.Add("POST", "/process.Process/SendSignal", ConnectUnary(ctx, SendSignal));
  router.Add("POST", "/process.Process/Update", ConnectUnary(ctx, Update));
}

}  // namespace moat::api::routes
