// `moat exec [-i] [-t] ID [--env K=V] [--cwd DIR] [--user U] -- CMD ARGS...`: runs a command in the
// sandbox through envd's `process.Process/Start` (a Connect server stream, E2B-WIRE §4, §6),
// writes its output to ours as each chunk arrives, and exits with its exit status. Closing the
// CLI leaves the command running, as E2B's client does. When moat itself fails (no sandbox, lost
// stream) the status is 125, as `docker exec` does, so that it is not mistaken for the command's.
//
// -i forwards our stdin with `SendInput` (its end closes the command's stdin); -t gives the
// command a PTY of our terminal's size, puts our terminal in raw mode while it runs (when stdin
// is one) and forwards window resizes with `Update`. Without -i, stdin is not forwarded.
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "api/codec/connect.h"
#include "api/codec/protojson.h"
#include "cli/api_client.h"
#include "cli/commands.h"
#include "cli/output.h"
#include "cli/process_stream.h"
#include "cli/terminal.h"
#include "common/unique_fd.h"

namespace moat::cli {
namespace {

using Headers = std::vector<std::pair<std::string, std::string>>;

struct ExecOptions {
  std::string id;
  std::vector<std::string> envs;
  std::string cwd;
  std::string user;
  bool interactive = false;
  bool tty = false;
  std::vector<std::string> argv;
};

Status WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError(fd == 1 ? "writing stdout" : "writing stderr");
    data.remove_prefix(static_cast<size_t>(n));
  }
  return Status::Ok();
}

// A unary process.Process call (Connect JSON) to the sandbox.
Status Unary(ApiClient& api, const Headers& headers, const std::string& method, const json& body) {
  HttpRequest req{.method = "POST",
                  .target = "/process.Process/" + method,
                  .headers = headers,
                  .body = body.dump()};
  req.headers.emplace_back("Content-Type", "application/json");
  req.headers.emplace_back("Connect-Protocol-Version", "1");
  MOAT_ASSIGN_OR_RETURN(HttpResponse resp, api.Send(req));
  if (resp.status != 200) return ResponseError(resp);
  return Status::Ok();
}

// Forwards stdin (with -i) and window resizes (with -t) to the running process from a thread of
// its own, while the main thread relays the output stream. Stop() ends it and joins.
class InputPump {
 public:
  InputPump(ApiClient& api, Headers headers, const ExecOptions& o, WinchPipe* winch)
      : api_(api), headers_(std::move(headers)), options_(o), winch_(winch) {}
  ~InputPump() { Stop(); }
  InputPump(const InputPump&) = delete;
  InputPump& operator=(const InputPump&) = delete;

  Status Start(uint32_t pid) {
    if (thread_.joinable()) return Status::Ok();  // `start` arrives once; be safe anyway
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) return ErrnoError("pipe2");
    stop_read_.Reset(fds[0]);
    stop_write_.Reset(fds[1]);
    pid_ = pid;
    thread_ = std::thread([this] { Loop(); });
    return Status::Ok();
  }

  void Stop() {
    if (!thread_.joinable()) return;
    char byte = 0;
    (void)!::write(stop_write_.get(), &byte, 1);
    thread_.join();
  }

 private:
  void Loop() {
    bool stdin_open = options_.interactive;
    for (;;) {
      std::vector<pollfd> fds = {{stop_read_.get(), POLLIN, 0}};
      if (winch_ != nullptr) fds.push_back({winch_->fd(), POLLIN, 0});
      if (stdin_open) fds.push_back({STDIN_FILENO, POLLIN, 0});
      if (::poll(fds.data(), fds.size(), -1) < 0) {
        if (errno == EINTR) continue;
        return;
      }
      if (fds[0].revents != 0) return;
      for (size_t i = 1; i < fds.size(); ++i) {
        if (fds[i].revents == 0) continue;
        if (fds[i].fd == STDIN_FILENO) {
          if (!ForwardStdin()) stdin_open = false;
        } else if (winch_->Drain()) {
          auto size = TerminalSize(STDOUT_FILENO);
          if (!size) size = TerminalSize(STDIN_FILENO);
          // A failed resize changes nothing the user could act on; the command goes on.
          if (size)
            (void)Unary(api_, headers_, "Update", ResizeRequest(pid_, {size->cols, size->rows}));
        }
      }
    }
  }

  // False once stdin is done: at its end, or when the process no longer takes input.
  bool ForwardStdin() {
    char buf[16 * 1024];
    ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return true;
    if (n <= 0) {
      // Our stdin ended. A PTY has no stdin to close: ^D is what ends its input, as at a
      // terminal (the remote line discipline turns it into end-of-file).
      if (options_.tty) {
        (void)Unary(api_, headers_, "SendInput", SendInputRequest(pid_, "\x04", true));
      } else {
        (void)Unary(api_, headers_, "CloseStdin", CloseStdinRequest(pid_));
      }
      return false;
    }
    Status sent =
        Unary(api_, headers_, "SendInput",
              SendInputRequest(pid_, std::string_view(buf, static_cast<size_t>(n)), options_.tty));
    return sent.ok();
  }

  ApiClient& api_;
  Headers headers_;
  const ExecOptions& options_;
  WinchPipe* winch_;
  uint32_t pid_ = 0;
  UniqueFd stop_read_;
  UniqueFd stop_write_;
  std::thread thread_;
};

// What the stream has told us so far.
struct StreamState {
  EnvelopeReader reader;
  std::optional<int> exit_code;  // set by the `end` event
  std::optional<Status> end_stream;
  InputPump* pump = nullptr;  // started by the `start` event, when input is forwarded
};

Status HandleEvent(StreamState& state, const json& message) {
  const json* event = api::codec::Field(message, "event");
  if (event == nullptr || !event->is_object()) return Status::Ok();  // unknown: skip
  if (const json* data = api::codec::Field(*event, "data"); data != nullptr) {
    for (auto [name, fd] : {std::pair{"stdout", 1}, std::pair{"stderr", 2}, std::pair{"pty", 1}}) {
      MOAT_ASSIGN_OR_RETURN(auto bytes, api::codec::BytesField(*data, name));
      if (bytes) MOAT_RETURN_IF_ERROR(WriteAll(fd, *bytes));
    }
  } else if (const json* start = api::codec::Field(*event, "start"); start != nullptr) {
    if (state.pump != nullptr) {
      MOAT_ASSIGN_OR_RETURN(auto pid, api::codec::IntField(*start, "pid", 1, UINT32_MAX));
      if (!pid) return Internal("process stream: the start event has no pid");
      MOAT_RETURN_IF_ERROR(state.pump->Start(static_cast<uint32_t>(*pid)));
    }
  } else if (const json* end = api::codec::Field(*event, "end"); end != nullptr) {
    state.exit_code = ExitCodeFromEnd(*end);
  }
  return Status::Ok();  // keepalive carries nothing to show
}

Status Consume(StreamState& state, std::string_view chunk) {
  state.reader.Append(chunk);
  while (true) {
    MOAT_ASSIGN_OR_RETURN(auto envelope, state.reader.Next());
    if (!envelope) return Status::Ok();
    json message = json::parse(envelope->message, nullptr, /*allow_exceptions=*/false);
    if (message.is_discarded()) return Internal("process stream: a message is not JSON");
    if (envelope->flags & api::codec::kEnvelopeEndStream) {
      state.end_stream = EndStreamStatus(message);
    } else {
      MOAT_RETURN_IF_ERROR(HandleEvent(state, message));
    }
  }
}

constexpr int kExecFailed = 125;

int Fail(const Status& status) {
  ReportError(status);
  return kExecFailed;
}

int Run(const ExecOptions& o) {
  auto envs = ParseKeyValues(o.envs, "--env");
  if (!envs.ok()) return Fail(envs.status());
  auto config = ApiConfigFromEnv();
  if (!config.ok()) return Fail(config.status());
  ApiClient api(std::move(*config));
  auto headers = api.EnvdHeaders(o.id, o.user);
  if (!headers.ok()) return Fail(headers.status());

  std::optional<PtySize> pty;
  std::unique_ptr<WinchPipe> winch;
  if (o.tty) {
    auto size = TerminalSize(STDOUT_FILENO);
    if (!size) size = TerminalSize(STDIN_FILENO);
    pty = size ? PtySize{size->cols, size->rows} : PtySize{};
    if (size) {
      auto installed = WinchPipe::Install();
      if (!installed.ok()) return Fail(installed.status());
      winch = std::move(*installed);
    }
  }
  // Declared before the pump, so that it is restored after the pump has stopped reading stdin.
  RawTerminal raw;
  std::unique_ptr<InputPump> pump;
  if (o.interactive || winch) pump = std::make_unique<InputPump>(api, *headers, o, winch.get());

  HttpRequest req{.method = "POST",
                  .target = "/process.Process/Start",
                  .headers = std::move(*headers),
                  .body = api::codec::EncodeEnvelope(
                      0, StartRequest(o.argv, *envs, o.cwd, o.interactive, pty).dump())};
  req.headers.emplace_back("Content-Type", "application/connect+json");
  req.headers.emplace_back("Connect-Protocol-Version", "1");
  // No Connect-Timeout-Ms: a command run from the CLI may take as long as it takes.
  req.headers.emplace_back("Keepalive-Ping-Interval", "50");

  if (o.tty && o.interactive && ::isatty(STDIN_FILENO)) {
    if (Status s = raw.Enter(STDIN_FILENO); !s.ok()) return Fail(s);
  }
  StreamState state;
  state.pump = pump.get();
  auto resp = api.Send(req, [&state](std::string_view chunk) { return Consume(state, chunk); });
  if (pump) pump->Stop();
  raw.Restore();
  if (!resp.ok()) return Fail(resp.status());
  if (resp->status != 200) return Fail(ResponseError(*resp));
  if (state.end_stream && !state.end_stream->ok()) return Fail(*state.end_stream);
  if (!state.end_stream || state.reader.pending() != 0) {
    return Fail(Unavailable("the process stream ended early (connection lost?)"));
  }
  if (!state.exit_code) return Fail(Internal("the process exited without a result"));
  return *state.exit_code;
}

}  // namespace

Runner AddExec(CLI::App& app) {
  auto o = std::make_shared<ExecOptions>();
  auto* cmd = app.add_subcommand("exec", "run a command in a sandbox: moat exec ID -- CMD ARGS...");
  cmd->add_option("id", o->id, "sandbox ID")->required();
  cmd->add_option("command", o->argv, "the command and its arguments (after --)")->required();
  AddRepeatedOption(*cmd, "--env", o->envs, "KEY=VALUE for the command's environment");
  cmd->add_option("--cwd", o->cwd, "working directory (default: the user's home)");
  cmd->add_option("--user", o->user, "Linux user to run as (default: user)");
  cmd->add_flag("-i,--interactive", o->interactive, "forward stdin to the command");
  cmd->add_flag("-t,--tty", o->tty,
                "give the command a terminal (PTY); with -i, ours is raw while it runs");
  return [o] { return Run(*o); };
}

}  // namespace moat::cli
