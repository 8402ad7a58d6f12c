// moat: the command-line client. `version` and `doctor` work on their own; `sandbox`, `exec`,
// `run-code`, `cp`, `snapshot`, `template`, `keys`, `team`, `host`, `history`, `audit` and
// `usage` talk to moatd's public API at MOAT_API_URL with MOAT_API_KEY.
#include <CLI/CLI.hpp>

#include "cli/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"moat: open, self-hosted microVM sandboxes"};
  app.require_subcommand(1);
  std::vector<std::pair<CLI::App*, moat::cli::Runner>> commands;
  for (auto add :
       {moat::cli::AddVersion, moat::cli::AddDoctor, moat::cli::AddSandbox, moat::cli::AddExec,
        moat::cli::AddRunCode, moat::cli::AddCp, moat::cli::AddSnapshot, moat::cli::AddKeys,
        moat::cli::AddTemplate, moat::cli::AddTeam, moat::cli::AddHost, moat::cli::AddHistory,
        moat::cli::AddAudit, moat::cli::AddUsage}) {
    auto run = add(app);
    commands.emplace_back(app.get_subcommands({}).back(), run);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int status = app.exit(e);
    // run-code's 1 means "the code raised", so its usage errors are 2 as its other failures are.
    return status != 0 && app.get_subcommand("run-code")->parsed() ? 2 : status;
  }
  for (auto& [sub, run] : commands) {
    if (sub->parsed()) return run();
  }
  return 2;
}
