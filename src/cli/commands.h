// The moat CLI's subcommands, one file each. Each registers itself on the app and returns the
// function that runs it once parsed.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace moat::cli {

using Runner = std::function<int()>;

Runner AddVersion(CLI::App& app);
Runner AddDoctor(CLI::App& app);

}  // namespace moat::cli
