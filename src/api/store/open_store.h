// Opens the store a moatd role was given: `--store postgresql://…` (or postgres://) is a
// PostgreSQL database (a fleet's one source of truth, shared/FLEET.md §2); nothing is SQLite in
// the data dir (moatd serve's embedded default). Anything else is refused, naming the flag.
#pragma once

#include <memory>
#include <string>

#include "api/store/store.h"

namespace moat::api::store {

// `location`: the --store value; `data_dir`: where the SQLite file lives when it is empty.
// Logs which store it opened (never a password).
Result<std::unique_ptr<Store>> OpenStore(const std::string& location, const std::string& data_dir);

// True for a postgresql:// or postgres:// URI.
bool IsPostgresUri(const std::string& location);

}  // namespace moat::api::store
