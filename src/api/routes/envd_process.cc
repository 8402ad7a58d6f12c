// process.Process over the Connect protocol (E2B-WIRE §6), mapped onto the guest channel's
// process ops (api/guest-channel.md): exec, attach, processes, stdin, close_stdin, signal,
// resize.
#include <signal.h>

#include <chrono>

#include "api/codec/protojson.h"
#include "api/routes/routes.h"
#include "common/log.h"

namespace moat::api::routes {
namespace {

using channel::GuestClient;
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
json EndEvent(const json& exit) {
  json end = json::object();
  if (exit.contains("exit_code") && exit["exit_code"].is_number_integer()) {
    int code = exit["exit_code"].get<int>();
    std::string status = "exit status " + std::to_string(code);
    if (code != 0) {
      end["exitCode"] = code;
      end["error"] = status;
    }
    end["exited"] = true;
    end["status"] = status;
  } else {
    int sig = exit.value("signal", json(0)).is_number_integer() ? exit.value("signal", 0) : 0;
    std::string status = "signal: " + SignalText(sig);
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
  MOAT_ASSIGN_OR_RETURN(json list,
                        guest->Call({{"op", "processes"}}, Clock::now() + kUnaryTimeout));
  for (const auto& p : list.value("processes", json::array())) {
    if (p.value("tag", json("")) == *tag && p.contains("pid")) return p["pid"].get<int64_t>();
  }
  return NotFound("no process tagged \"" + *tag + "\"");
}

// Relays an exec or attach stream to the client until the process ends, the deadline passes or
// the client goes away (then the process keeps running, detached).
Status Relay(EnvdCall& call, GuestClient::Stream& stream, const StreamLimits& limits,
             StreamSink& sink, bool is_start, bool pty) {
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
      if (ev.status().code() != ErrorCode::kDeadlineExceeded) return ev.status();
      if (hard_deadline && Clock::now() >= *hard_deadline) {
        stream.Cancel();
        return DeadlineExceeded("the request's Connect-Timeout-Ms passed");
      }
      if (started && !sink.KeepaliveIfDue()) break;
      continue;
    }
    switch (ev->kind) {
      case StreamEvent::Kind::kMessage: {
        std::string type =
            ev->message.value("type", json("")).is_string() ? ev->message.value("type", "") : "";
        if (type == "start") {
          started = true;
          if (is_start) {
            call.metrics.exec_start_latency().Observe(
                std::chrono::duration<double>(Clock::now() - opened).count());
          }
          if (!sink.Send({{"event", {{"start", {{"pid", ev->message.value("pid", 0)}}}}}})) break;
        } else if (type == "exit") {
          if (ev->message.value("timed_out", json(false)) == json(true)) {
            timed_out = true;
          } else if (!sink.Send(EndEvent(ev->message))) {
            break;
          }
        }
        continue;
      }
      case StreamEvent::Kind::kData: {
        const char* key = pty ? "pty" : ev->channel == SubChannel::kStderr ? "stderr" : "stdout";
        if (!sink.Send({{"event", {{"data", {{key, codec::Base64Encode(ev->data)}}}}}})) break;
        continue;
      }
      case StreamEvent::Kind::kEof: continue;
      case StreamEvent::Kind::kEnd: {
        if (timed_out) return DeadlineExceeded("the command ran past its timeout and was killed");
        Status s = ev->status;
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
  json argv = json::array({*cmd});
  if (const json* args = codec::Field(*proc, "args"); args != nullptr) {
    if (!args->is_array()) return InvalidArgument("field \"process.args\" must be an array");
    for (const auto& a : *args) {
      if (!a.is_string()) return InvalidArgument("field \"process.args\" must hold strings");
      argv.push_back(a);
    }
  }
  MOAT_ASSIGN_OR_RETURN(auto envs, codec::StringMapField(*proc, "envs"));
  MOAT_ASSIGN_OR_RETURN(auto cwd, codec::StringField(*proc, "cwd"));
  MOAT_ASSIGN_OR_RETURN(auto tag, codec::StringField(req, "tag"));
  MOAT_ASSIGN_OR_RETURN(auto stdin_open, codec::BoolField(req, "stdin"));
  json exec = {{"op", "exec"}, {"argv", argv}, {"user", call.user}};
  // The sandbox's envVars first, the request's envs over them (E2B-WIRE §6).
  std::map<std::string, std::string> env = call.target.record.env_vars;
  for (auto& [k, v] : envs) env[k] = v;
  if (!env.empty()) exec["env"] = env;
  if (cwd && !cwd->empty()) exec["cwd"] = *cwd;
  if (tag) exec["tag"] = *tag;
  // Without a PTY, stdin stays unconnected unless asked for (`commands.run` sends false).
  const json* pty = codec::Field(req, "pty");
  if (pty != nullptr) {
    const json* size = codec::Field(*pty, "size");
    if (size == nullptr) return InvalidArgument("field \"pty.size\" is required");
    MOAT_ASSIGN_OR_RETURN(auto cols, codec::IntField(*size, "cols", 1, 65535));
    MOAT_ASSIGN_OR_RETURN(auto rows, codec::IntField(*size, "rows", 1, 65535));
    if (!cols || !rows) return InvalidArgument("field \"pty.size\" needs cols and rows");
    exec["pty"] = {{"cols", *cols}, {"rows", *rows}};
    exec["stdin"] = true;
  } else {
    exec["stdin"] = stdin_open.value_or(false);
  }
  if (limits.timeout_ms > 0) exec["timeout_ms"] = limits.timeout_ms;
  MOAT_ASSIGN_OR_RETURN(auto guest, call.Guest());
  MOAT_ASSIGN_OR_RETURN(auto stream, guest->Open(exec));
  return Relay(call, *stream, limits, sink, true, pty != nullptr);
}

Status ConnectProcess(EnvdCall& call, const json& req, const StreamLimits& limits,
                      StreamSink& sink) {
  const json* sel = codec::Field(req, "process");
  if (sel == nullptr || !sel->is_object()) return InvalidArgument("field \"process\" is required");
  json attach = {{"op", "attach"}};
  MOAT_ASSIGN_OR_RETURN(auto pid, codec::IntField(*sel, "pid", 1, (1 << 22)));
  MOAT_ASSIGN_OR_RETURN(auto tag, codec::StringField(*sel, "tag"));
  if (pid) {
    attach["pid"] = *pid;
  } else if (tag) {
    attach["tag"] = *tag;
  } else {
    return InvalidArgument("field \"process\" needs \"pid\" or \"tag\"");
  }
  MOAT_ASSIGN_OR_RETURN(auto guest, call.Guest());
  // A PTY's output goes out as `data.pty`: ask the guest whether this process has one.
  bool pty = false;
  MOAT_ASSIGN_OR_RETURN(json list,
                        guest->Call({{"op", "processes"}}, Clock::now() + kUnaryTimeout));
  for (const auto& p : list.value("processes", json::array())) {
    bool match =
        pid ? p.value("pid", json(0)) == json(*pid) : p.value("tag", json("")) == json(*tag);
    if (match) pty = p.contains("pty") && !p["pty"].is_null() && p["pty"] != json(false);
  }
  MOAT_ASSIGN_OR_RETURN(auto stream, guest->Open(attach));
  return Relay(call, *stream, limits, sink, false, pty);
}

Result<json> List(EnvdCall& call, const json&) {
  MOAT_ASSIGN_OR_RETURN(auto guest, call.Guest());
  MOAT_ASSIGN_OR_RETURN(json list,
                        guest->Call({{"op", "processes"}}, Clock::now() + kUnaryTimeout));
  json out = json::array();
  for (const auto& p : list.value("processes", json::array())) {
    json config = {{"cmd", ""}, {"args", json::array()}, {"envs", json::object()}};
    if (p.contains("argv") && p["argv"].is_array() && !p["argv"].empty()) {
      config["cmd"] = p["argv"][0];
      for (size_t i = 1; i < p["argv"].size(); ++i) config["args"].push_back(p["argv"][i]);
    } else if (p.contains("cmd") && p["cmd"].is_string()) {
      config["cmd"] = "/bin/bash";
      config["args"] = {"-l", "-c", p["cmd"]};
    }
    if (p.contains("cwd") && p["cwd"].is_string()) config["cwd"] = p["cwd"];
    json info = {{"config", config}, {"pid", p.value("pid", 0)}};
    if (p.contains("tag") && p["tag"].is_string() && !p["tag"].get<std::string>().empty()) {
      info["tag"] = p["tag"];
    }
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
  MOAT_ASSIGN_OR_RETURN(auto stream, guest->Open({{"op", "stdin"}, {"pid", pid}}));
  MOAT_RETURN_IF_ERROR(stream->Write(SubChannel::kStdin, *data, deadline));
  // The guest handles frames in order: once a later request on another stream has been
  // answered, it has taken (or refused) this one's bytes, and a refusal is already queued.
  MOAT_RETURN_IF_ERROR(guest->Call({{"op", "health"}}, deadline).status());
  auto ev = stream->Next(Clock::now());
  if (ev.ok() && ev->kind == StreamEvent::Kind::kEnd && !ev->status.ok()) return ev->status;
  stream->Cancel();  // leaves the process's stdin open for later input
  return json::object();
}

Result<json> CloseStdin(EnvdCall& call, const json& req) {
  MOAT_ASSIGN_OR_RETURN(int64_t pid, SelectPid(call, req));
  MOAT_ASSIGN_OR_RETURN(auto guest, call.Guest());
  MOAT_RETURN_IF_ERROR(
      guest->Call({{"op", "close_stdin"}, {"pid", pid}}, Clock::now() + kUnaryTimeout).status());
  return json::object();
}

Result<json> SendSignal(EnvdCall& call, const json& req) {
  MOAT_ASSIGN_OR_RETURN(int64_t pid, SelectPid(call, req));
  MOAT_ASSIGN_OR_RETURN(auto sig, codec::EnumField(req, "signal", kSignals));
  if (!sig || *sig <= 0 || *sig > 64) return InvalidArgument("field \"signal\" is required");
  MOAT_ASSIGN_OR_RETURN(auto guest, call.Guest());
  MOAT_RETURN_IF_ERROR(
      guest->Call({{"op", "signal"}, {"pid", pid}, {"signal", *sig}}, Clock::now() + kUnaryTimeout)
          .status());
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
  MOAT_RETURN_IF_ERROR(
      guest
          ->Call({{"op", "resize"}, {"pid", pid}, {"cols", *cols}, {"rows", *rows}},
                 Clock::now() + kUnaryTimeout)
          .status());
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
