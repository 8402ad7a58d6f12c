// moat: the command-line client. `version` and `doctor` work on their own; `sandbox`, `exec`,
// `cp`, `snapshot`, `template`, `keys`, `team` and `host` talk to moatd's public API at
// MOAT_API_URL with MOAT_API_KEY.
#include <CLI/CLI.hpp>

#include "cli/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"moat: open, self-hosted microVM sandboxes"};
  app.require_subcommand(1);
  std::vector<std::pair<CLI::App*, moat::cli::Runner>> commands;
  for (auto add : {moat::cli::AddVersion, moat::cli::AddDoctor, moat::cli::AddSandbox,
                   moat::cli::AddExec, moat::cli::AddCp, moat::cli::AddSnapshot, moat::cli::AddKeys,
                   moat::cli::AddTemplate, moat::cli::AddTeam, moat::cli::AddHost}) {
    auto run = add(app);
    commands.emplace_back(app.get_subcommands({}).back(), run);
  }
  CLI11_PARSE(app, argc, argv);
  for (auto& [sub, run] : commands) {
    if (sub->parsed()) return run();
  }
  return 2;
}
