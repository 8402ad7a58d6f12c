// The moat CLI's subcommands, one file each. Each registers itself on the app and returns the
// function that runs it once parsed.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

namespace moat::cli {

using Runner = std::function<int()>;

Runner AddVersion(CLI::App& app);
Runner AddDoctor(CLI::App& app);
// Over the public API (MOAT_API_URL, MOAT_API_KEY):
Runner AddSandbox(CLI::App& app);   // sandbox create|list|info|kill|timeout|pause|resume|fork
Runner AddExec(CLI::App& app);      // process.Process/Start streamed, exit code propagated; -i, -t
Runner AddRunCode(CLI::App& app);   // the code interpreter's POST /execute (port 49999), streamed
Runner AddCp(CLI::App& app);        // envd GET/POST /files
Runner AddSnapshot(CLI::App& app);  // snapshot create|list|delete
Runner AddKeys(CLI::App& app);      // keys create|list|revoke (/keys)
Runner AddTeam(CLI::App& app);      // team quotas [--set NAME=N] (/teams/{teamID}/quotas)
Runner AddHost(CLI::App& app);      // host list|drain|undrain (/hosts; admin key)
Runner AddTemplate(CLI::App& app);  // template build|list|info|delete (E2B-TEMPLATES)
Runner AddAudit(CLI::App& app);     // the audit log of control actions (/audit)
Runner AddUsage(CLI::App& app);     // usage report, table, JSON or CSV (/usage)
Runner AddHistory(CLI::App& app);   // sandboxes past and present, one's timeline (/history)

// A repeatable `--flag K=V` collected into `values`. It is a scalar option fired on each use,
// not a vector option, because CLI11 ends a vector option's values at `--`, which `exec` needs
// to keep as the start of the command.
inline CLI::Option* AddRepeatedOption(CLI::App& cmd, const std::string& name,
                                      std::vector<std::string>& values, const std::string& help) {
  return cmd
      .add_option_function<std::string>(
          name, [&values](const std::string& v) { values.push_back(v); }, help)
      ->trigger_on_parse();
}

// A leaf subcommand of a resource command (`sandbox create`, `keys list`, ...): every one takes
// --json, which prints the API's response instead of the table.
inline CLI::App* AddJsonLeaf(CLI::App& parent, const char* name, const char* help, bool& json) {
  auto* cmd = parent.add_subcommand(name, help);
  cmd->add_flag("--json", json, "print the API's JSON response");
  return cmd;
}

}  // namespace moat::cli
