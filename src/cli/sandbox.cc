// `moat sandbox create|list|info|kill|timeout|pause|resume|fork`: the control API (E2B-WIRE §2)
// with `X-API-Key`. Tables by default; --json prints the API's response as it came.
#include <memory>
#include <string>
#include <vector>

#include "api/codec/query.h"
#include "cli/api_client.h"
#include "cli/commands.h"
#include "cli/output.h"
#include "cli/query_args.h"

namespace moat::cli {
namespace {

using api::codec::PercentEncode;

struct SandboxOptions {
  bool json = false;
  std::string id;
  std::string template_id = "base";
  int64_t timeout = 0;  // seconds; 0 = the server's default
  int count = 1;
  std::vector<std::string> envs;
  std::vector<std::string> metadata;
  bool filesystem_only = false;  // pause --filesystem-only
};

std::string SandboxPath(const std::string& id, std::string_view suffix = {}) {
  return "/sandboxes/" + PercentEncode(id) + std::string(suffix);
}

Result<json> Create(ApiClient& api, const SandboxOptions& o) {
  json body = {{"templateID", o.template_id}};
  if (o.timeout > 0) body["timeout"] = o.timeout;
  MOAT_ASSIGN_OR_RETURN(auto envs, ParseKeyValues(o.envs, "--env"));
  MOAT_ASSIGN_OR_RETURN(auto metadata, ParseKeyValues(o.metadata, "--metadata"));
  if (!envs.empty()) body["envVars"] = envs;
  if (!metadata.empty()) body["metadata"] = metadata;
  return api.Control("POST", "/v2/sandboxes", body);
}

Result<json> List(ApiClient& api, const SandboxOptions& o) {
  MOAT_ASSIGN_OR_RETURN(auto metadata, ParseKeyValues(o.metadata, "--metadata"));
  std::string query = "?limit=100";
  if (!metadata.empty()) query += "&metadata=" + MetadataQuery(metadata);
  return api.ListAll("/v2/sandboxes", query);
}

// Every subcommand shares one options struct; each leaf gets --json.
CLI::App* Leaf(CLI::App& parent, const char* name, const char* help, SandboxOptions& o,
               bool takes_id) {
  auto* cmd = AddJsonLeaf(parent, name, help, o.json);
  if (takes_id) cmd->add_option("id", o.id, "sandbox ID")->required();
  return cmd;
}

}  // namespace

Runner AddSandbox(CLI::App& app) {
  auto o = std::make_shared<SandboxOptions>();
  auto* sandbox = app.add_subcommand("sandbox", "create, list, inspect and control sandboxes");
  sandbox->require_subcommand(1);

  auto* create = Leaf(*sandbox, "create", "create a sandbox and print it", *o, false);
  create->add_option("--template", o->template_id, "template or snapshot ID")
      ->capture_default_str();
  create->add_option("--timeout", o->timeout, "seconds until the sandbox is killed")
      ->check(CLI::PositiveNumber);
  AddRepeatedOption(*create, "--env", o->envs, "KEY=VALUE for every command in the sandbox");
  AddRepeatedOption(*create, "--metadata", o->metadata, "KEY=VALUE attached to the sandbox");

  auto* list = Leaf(*sandbox, "list", "list running and paused sandboxes", *o, false);
  AddRepeatedOption(*list, "--metadata", o->metadata, "only sandboxes with this KEY=VALUE");

  auto* info = Leaf(*sandbox, "info", "show one sandbox", *o, true);
  auto* kill = Leaf(*sandbox, "kill", "kill a sandbox (running or paused)", *o, true);
  auto* timeout = Leaf(*sandbox, "timeout", "kill the sandbox SECONDS from now", *o, true);
  timeout->add_option("seconds", o->timeout, "new time to live")
      ->required()
      ->check(CLI::PositiveNumber);
  auto* pause = Leaf(*sandbox, "pause", "pause a sandbox (snapshot and stop it)", *o, true);
  pause->add_flag("--filesystem-only", o->filesystem_only,
                  "keep only the disk: cheaper to keep, and the resume reboots it");
  auto* resume = Leaf(*sandbox, "resume", "resume a paused sandbox", *o, true);
  resume->add_option("--timeout", o->timeout, "seconds to live after resuming")
      ->check(CLI::PositiveNumber);
  auto* fork = Leaf(*sandbox, "fork", "copy a running sandbox into new ones", *o, true);
  fork->add_option("--count", o->count, "how many forks")->check(CLI::Range(1, 100));

  return [=] {
    // A fork that failed is reported in its row; the command as a whole then fails too.
    auto exit_code = [fork](const json& r) {
      if (!fork->parsed() || !r.is_array()) return 0;
      for (const auto& f : r) {
        if (f.is_object() && f.contains("error")) return 1;
      }
      return 0;
    };
    return RunControlCall(
        o->json,
        [&](ApiClient& api, std::string* text) -> Result<json> {
          // Each branch yields the response to print and how to print it for people.
          Result<json> r = json(nullptr);
          if (create->parsed()) {
            r = Create(api, *o);
            if (r.ok()) *text = FormatSandboxFields(*r);
          } else if (list->parsed()) {
            r = List(api, *o);
            if (r.ok()) *text = FormatSandboxList(*r);
          } else if (info->parsed()) {
            r = api.Control("GET", SandboxPath(o->id));
            if (r.ok()) *text = FormatSandboxFields(*r);
          } else if (kill->parsed()) {
            r = api.Control("DELETE", SandboxPath(o->id));
            *text = "killed " + o->id + "\n";
          } else if (timeout->parsed()) {
            r = api.Control("POST", SandboxPath(o->id, "/timeout"), {{"timeout", o->timeout}});
            *text = o->id + " now ends in " + std::to_string(o->timeout) + "s\n";
          } else if (pause->parsed()) {
            json body = json::object();
            if (o->filesystem_only) body["memory"] = false;
            r = api.Control("POST", SandboxPath(o->id, "/pause"), body);
            *text = "paused " + o->id + "\n";
          } else if (resume->parsed()) {
            json body = json::object();
            if (o->timeout > 0) body["timeout"] = o->timeout;
            r = api.Control("POST", SandboxPath(o->id, "/resume"), body);
            if (r.ok()) *text = FormatSandboxFields(*r);
          } else if (fork->parsed()) {
            r = api.Control("POST", SandboxPath(o->id, "/fork"), {{"count", o->count}});
            if (r.ok()) *text = FormatForks(*r);
          }
          return r;
        },
        exit_code);
  };
}

}  // namespace moat::cli
