#include <cstdio>

#include "cli/commands.h"

namespace moat::cli {

Runner AddVersion(CLI::App& app) {
  app.add_subcommand("version", "print moat's version");
  return [] {
    std::printf("moat 0.1.0\n");
    return 0;
  };
}

}  // namespace moat::cli
