// `moatd memfs`: the host's lazy snapshot-memory filesystem (docs/snapshots.md, "Lazy memory").
// Its flags and its run, apart from the other roles' wiring.
#pragma once

#include <CLI/CLI.hpp>

#include "memfs/memfs_server.h"

namespace moat::api {

struct MemfsCommand {
  CLI::App* app = nullptr;
  memfs::MemfsServerConfig config;
};

// Adds the subcommand; `command` must outlive the parse (CLI11 writes the flags into it).
void AddMemfsCommand(CLI::App& app, MemfsCommand& command);
int RunMemfsCommand(const MemfsCommand& command);

}  // namespace moat::api
