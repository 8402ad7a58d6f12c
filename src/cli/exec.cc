// `moat exec ID [--env K=V] [--cwd DIR] [--user U] -- CMD ARGS...`: runs a command in the
// sandbox through envd's `process.Process/Start` (a Connect server stream, E2B-WIRE §4, §6),
// writes its stdout and stderr to ours as each chunk arrives, and exits with its exit status.
// stdin is not forwarded; closing the CLI leaves the command running, as E2B's client does. When
// moat itself fails (no sandbox, lost stream) the status is 125, as `docker exec` does, so that
// it is not mistaken for the command's own.
#include <unistd.h>

#include <cerrno>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "api/codec/connect.h"
#include "api/codec/protojson.h"
#include "cli/api_client.h"
#include "cli/commands.h"
#include "cli/output.h"
#include "cli/process_stream.h"

namespace moat::cli {
namespace {

struct ExecOptions {
  std::string id;
  std::vector<std::string> envs;
  std::string cwd;
  std::string user;
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

// What the stream has told us so far.
struct StreamState {
  EnvelopeReader reader;
  std::optional<int> exit_code;  // set by the `end` event
  std::optional<Status> end_stream;
};

Status HandleEvent(StreamState& state, const json& message) {
  const json* event = api::codec::Field(message, "event");
  if (event == nullptr || !event->is_object()) return Status::Ok();  // unknown: skip
  if (const json* data = api::codec::Field(*event, "data"); data != nullptr) {
    for (auto [name, fd] : {std::pair{"stdout", 1}, std::pair{"stderr", 2}}) {
      MOAT_ASSIGN_OR_RETURN(auto bytes, api::codec::BytesField(*data, name));
      if (bytes) MOAT_RETURN_IF_ERROR(WriteAll(fd, *bytes));
    }
  } else if (const json* end = api::codec::Field(*event, "end"); end != nullptr) {
    state.exit_code = ExitCodeFromEnd(*end);
  }
  return Status::Ok();  // start and keepalive carry nothing to show
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

  HttpRequest req{.method = "POST",
                  .target = "/process.Process/Start",
                  .headers = std::move(*headers),
                  .body = api::codec::EncodeEnvelope(0, StartRequest(o.argv, *envs, o.cwd).dump())};
  req.headers.emplace_back("Content-Type", "application/connect+json");
  req.headers.emplace_back("Connect-Protocol-Version", "1");
  // No Connect-Timeout-Ms: a command run from the CLI may take as long as it takes.
  req.headers.emplace_back("Keepalive-Ping-Interval", "50");

  StreamState state;
  auto resp = api.Send(req, [&state](std::string_view chunk) { return Consume(state, chunk); });
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
  return [o] { return Run(*o); };
}

}  // namespace moat::cli
