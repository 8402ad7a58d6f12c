// The store's schema: one list of migrations, each written for SQLite and for PostgreSQL, so
// both stores have the same tables, columns and version numbers (a database's version is the
// number of migrations applied). Never edit a migration that has shipped; append a new one.
#pragma once

#include <cstddef>
#include <string>

#include "api/lifecycle.h"

namespace moat::api::store {

struct Migration {
  const char* sqlite;
  const char* postgres;
};

extern const Migration kMigrations[];
extern const size_t kMigrationCount;

// "('creating', 'running', …)": the states for which `pred` holds, as an SQL list (the names
// are constants of api/lifecycle.h, never input).
std::string SqlStateList(bool (*pred)(SandboxState));

}  // namespace moat::api::store
