// SqliteStore's private kit, shared by its source files (not part of the Store interface): a
// prepared statement and a transaction, each closed by its destructor, and the clock and ids the
// records get.
#pragma once

#include <sqlite3.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

namespace moat::api::store::sqlite {

inline int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

inline std::string RandomId(size_t bytes) {
  static thread_local std::random_device rd;
  static const char* kHex = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < bytes; ++i) {
    unsigned v = rd() & 0xff;
    s.push_back(kHex[v >> 4]);
    s.push_back(kHex[v & 15]);
  }
  return s;
}

// One prepared statement; finalized on destruction.
class Statement {
 public:
  Statement(sqlite3* db, const std::string& sql) : db_(db) {
    rc_ = sqlite3_prepare_v2(db, sql.c_str(), static_cast<int>(sql.size()), &stmt_, nullptr);
  }
  ~Statement() { sqlite3_finalize(stmt_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  Status status() const {
    if (rc_ == SQLITE_OK) return Status::Ok();
    return Internal(std::string("sqlite prepare: ") + sqlite3_errmsg(db_));
  }
  Statement& Bind(int i, const std::string& v) {
    sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Statement& Bind(int i, int64_t v) {
    sqlite3_bind_int64(stmt_, i, v);
    return *this;
  }
  // Named apart from Bind: an int argument would be ambiguous between int64_t and double.
  Statement& BindDouble(int i, double v) {
    sqlite3_bind_double(stmt_, i, v);
    return *this;
  }
  // NULL when unset.
  Statement& Bind(int i, const std::optional<int64_t>& v) {
    if (v) return Bind(i, *v);
    sqlite3_bind_null(stmt_, i);
    return *this;
  }
  // A BLOB of `size` bytes (an empty one, not NULL, for size 0). Not copied: `data` must stay
  // unchanged until the statement has run (Step) or is reset.
  Statement& BindBlob(int i, const void* data, size_t size) {
    static const char kEmpty = 0;
    sqlite3_bind_blob64(stmt_, i, size == 0 ? &kEmpty : data, size, SQLITE_STATIC);
    return *this;
  }
  // Ready to run again (with new bindings).
  void Reset() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
  // SQLITE_ROW → true, SQLITE_DONE → false, else an error.
  Result<bool> Step() {
    int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return Internal(std::string("sqlite step: ") + sqlite3_errmsg(db_));
  }
  Status Run() {
    auto r = Step();
    return r.ok() ? Status::Ok() : r.status();
  }
  std::string Text(int col) {
    const unsigned char* t = sqlite3_column_text(stmt_, col);
    return t == nullptr ? std::string()
                        : std::string(reinterpret_cast<const char*>(t),
                                      static_cast<size_t>(sqlite3_column_bytes(stmt_, col)));
  }
  // A BLOB column's bytes, valid until the next Step or Reset.
  std::string_view Blob(int col) {
    const void* b = sqlite3_column_blob(stmt_, col);
    return b == nullptr ? std::string_view()
                        : std::string_view(static_cast<const char*>(b),
                                           static_cast<size_t>(sqlite3_column_bytes(stmt_, col)));
  }
  int64_t Int(int col) { return sqlite3_column_int64(stmt_, col); }
  std::optional<int64_t> OptionalInt(int col) {
    if (sqlite3_column_type(stmt_, col) == SQLITE_NULL) return std::nullopt;
    return Int(col);
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  int rc_;
};

// Commits on Commit(), rolls back otherwise.
class Transaction {
 public:
  explicit Transaction(sqlite3* db) : db_(db) {
    ok_ = sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK;
  }
  ~Transaction() {
    if (ok_ && !done_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  Status Commit() {
    if (!ok_) return Internal(std::string("sqlite begin: ") + sqlite3_errmsg(db_));
    done_ = true;
    if (sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK) {
      return Internal(std::string("sqlite commit: ") + sqlite3_errmsg(db_));
    }
    return Status::Ok();
  }

 private:
  sqlite3* db_;
  bool ok_ = false;
  bool done_ = false;
};

// Builds a query whose parameters are numbered as they are added, so that text and integer
// binds can mix freely.
class QueryBuilder {
 public:
  explicit QueryBuilder(std::string sql) : sql_(std::move(sql)) {}
  std::string Text(const std::string& v) {
    texts_.emplace_back(++count_, v);
    return "?" + std::to_string(count_);
  }
  std::string Int(int64_t v) {
    ints_.emplace_back(++count_, v);
    return "?" + std::to_string(count_);
  }
  std::string& sql() { return sql_; }
  void BindAll(Statement& s) const {
    for (const auto& [i, v] : texts_) s.Bind(i, v);
    for (const auto& [i, v] : ints_) s.Bind(i, v);
  }

 private:
  std::string sql_;
  int count_ = 0;
  std::vector<std::pair<int, std::string>> texts_;
  std::vector<std::pair<int, int64_t>> ints_;
};

}  // namespace moat::api::store::sqlite
