// `moat run-code ID [--language L | --context C] [--env K=V]... [--timeout S] [--output-dir DIR]
// [--json] [FILE|-]`: runs code in the sandbox's code interpreter the way @e2b/code-interpreter
// does (E2B-CODE-INTERPRETER §1-§4): `POST /execute` to guest port 49999 through moatd's port
// proxy, the NDJSON answer shown as it streams in (code_output.h).
//
// Exit status: 0 when the code ran, 1 when it raised (an `error` line), 2 when moat could not
// run it or show all of it (a usage error, an HTTP error, a broken stream, the timeout, a result
// that could not be saved). Ending the request (the timeout, ^C) closes the connection, which
// interrupts the kernel in the guest.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "api/codec/query.h"
#include "cli/api_client.h"
#include "cli/code_output.h"
#include "cli/code_stream.h"
#include "cli/commands.h"
#include "cli/output.h"
#include "common/unique_fd.h"

namespace moat::cli {
namespace {

struct RunCodeOptions {
  std::string id;
  std::string language;
  std::string context;
  std::vector<std::string> envs;
  int timeout_s = 300;
  std::string output_dir = ".";
  bool json = false;
  std::string file = "-";
};

// The guest's answer to a failed /execute is plain text ("Context x not found"); moatd's own
// (the proxy's 502) is {"code","message"}. Neither is trusted to be short or printable.
constexpr size_t kMaxErrorBody = 64 * 1024;

Result<std::string> ReadCode(const std::string& file) {
  UniqueFd owned;
  int fd = STDIN_FILENO;
  if (file != "-") {
    owned.Reset(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
    if (!owned) return ErrnoError("open(" + file + ")");
    fd = owned.get();
  }
  std::string code;
  char buf[64 * 1024];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("read(" + std::string(file == "-" ? "stdin" : file) + ")");
    if (n == 0) return code;
    code.append(buf, static_cast<size_t>(n));
  }
}

Status HttpStatusError(const HttpResponse& response) {
  std::string text;
  json body = json::parse(response.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_object()) {
    if (auto it = body.find("message"); it != body.end() && it->is_string()) text = *it;
  }
  if (text.empty()) text = response.body;
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) {
    text.pop_back();
  }
  std::string message = "POST /execute: HTTP " + std::to_string(response.status);
  if (!text.empty()) message += ": " + QuoteUntrusted(text, 2000);
  return Internal(std::move(message));
}

constexpr int kRaised = 1;
constexpr int kFailed = 2;

int Fail(const Status& status) {
  ReportError(status);
  return kFailed;
}

int Run(const RunCodeOptions& o) {
  // `moat run-code … | head`: a closed pipe is a write error (exit 2), not death by SIGPIPE.
  ::signal(SIGPIPE, SIG_IGN);
  if (!o.language.empty() && !o.context.empty()) {
    return Fail(InvalidArgument(
        "--language and --context are mutually exclusive: a context has its language"));
  }
  auto envs = ParseKeyValues(o.envs, "--env");
  if (!envs.ok()) return Fail(envs.status());
  UniqueFd dir(::open(o.output_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir) return Fail(ErrnoError("--output-dir: open(" + o.output_dir + ")"));
  auto code = ReadCode(o.file);
  if (!code.ok()) return Fail(code.status());
  auto body = ExecuteRequestBody({.code = std::move(*code),
                                  .language = o.language,
                                  .context_id = o.context,
                                  .env_vars = std::move(*envs)});
  if (!body.ok()) return Fail(body.status());

  auto config = ApiConfigFromEnv();
  if (!config.ok()) return Fail(config.status());
  ApiClient api(std::move(*config));
  // The sandbox's tokens; this also names a sandbox that does not exist before anything runs.
  auto info = api.Control("GET", "/sandboxes/" + api::codec::PercentEncode(o.id));
  if (!info.ok()) return Fail(info.status());

  HttpRequest req{.method = "POST",
                  .target = "/execute",
                  .headers = ExecuteHeaders(o.id, *info),
                  .body = std::move(*body),
                  .timeout = std::chrono::seconds(o.timeout_s),
                  .max_collected_body = kMaxErrorBody};
  CodeOutput output({.dir_fd = dir.get(), .dir_label = o.output_dir, .json = o.json});
  auto resp = api.Send(req, [&output](std::string_view chunk) { return output.Consume(chunk); });
  if (!resp.ok()) {
    if (resp.status().code() == ErrorCode::kDeadlineExceeded) {
      return Fail(DeadlineExceeded("the code ran past --timeout " + std::to_string(o.timeout_s) +
                                   " s and was interrupted"));
    }
    return Fail(resp.status());
  }
  if (resp->status < 200 || resp->status >= 300) return Fail(HttpStatusError(*resp));
  if (Status s = output.Finish(); !s.ok()) return Fail(s);
  if (output.failed()) return kFailed;
  return output.raised() ? kRaised : 0;
}

}  // namespace

Runner AddRunCode(CLI::App& app) {
  auto o = std::make_shared<RunCodeOptions>();
  auto* cmd = app.add_subcommand(
      "run-code", "run code in a sandbox's code interpreter: moat run-code ID [FILE|-]");
  cmd->add_option("id", o->id, "sandbox ID")->required();
  cmd->add_option("file", o->file, "file with the code; - or none: stdin");
  cmd->add_option("--language", o->language,
                  "the language's default context (python, javascript, r, java, bash, ...)");
  cmd->add_option("--context", o->context, "a context ID (from POST /contexts)");
  AddRepeatedOption(*cmd, "--env", o->envs, "KEY=VALUE for this run only");
  cmd->add_option("--timeout", o->timeout_s, "seconds before the run is interrupted; 0: none")
      ->check(CLI::Range(0, std::numeric_limits<int>::max()))
      ->default_val(300);
  cmd->add_option("--output-dir", o->output_dir,
                  "where images and PDFs are saved as result-N.<ext> (default: .)");
  cmd->add_flag("--json", o->json, "print the interpreter's NDJSON lines as they arrive");
  return [o] { return Run(*o); };
}

}  // namespace moat::cli
