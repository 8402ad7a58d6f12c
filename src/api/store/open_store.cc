#include "api/store/open_store.h"

#include "api/store/pg_store.h"
#include "api/store/sqlite_store.h"
#include "common/log.h"

namespace moat::api::store {

bool IsPostgresUri(const std::string& location) {
  return location.rfind("postgresql://", 0) == 0 || location.rfind("postgres://", 0) == 0;
}

Result<std::unique_ptr<Store>> OpenStore(const std::string& location, const std::string& data_dir) {
  if (location.empty()) {
    std::string path = data_dir + "/moat.db";
    MOAT_ASSIGN_OR_RETURN(auto sqlite, SqliteStore::Open(path));
    LogInfo("moatd.store", {{"kind", "sqlite"}, {"path", path}});
    return std::unique_ptr<Store>(std::move(sqlite));
  }
  if (!IsPostgresUri(location)) {
    return InvalidArgument(
        "--store: expected a postgresql:// URI (or nothing, for SQLite in the data dir)");
  }
  MOAT_ASSIGN_OR_RETURN(auto pg, PgStore::Open(location));
  LogInfo("moatd.store", {{"kind", "postgresql"}, {"schema_version", pg->schema_version()}});
  return std::unique_ptr<Store>(std::move(pg));
}

}  // namespace moat::api::store
