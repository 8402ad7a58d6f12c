// moat: the command-line client. Subcommands over the public API (sandbox, exec, cp, ...) come
// with the API server; `version` and `doctor` work on their own.
#include <CLI/CLI.hpp>

#include "cli/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"moat: open, self-hosted microVM sandboxes"};
  app.require_subcommand(1);
  std::vector<std::pair<CLI::App*, moat::cli::Runner>> commands;
  auto version = moat::cli::AddVersion(app);
  commands.emplace_back(app.get_subcommands({}).back(), version);
  auto doctor = moat::cli::AddDoctor(app);
  commands.emplace_back(app.get_subcommands({}).back(), doctor);
  CLI11_PARSE(app, argc, argv);
  for (auto& [sub, run] : commands) {
    if (sub->parsed()) return run();
  }
  return 2;
}
