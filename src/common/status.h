// Status and Result<T>: errors are values that carry a code and a message with context
// ("open(/dev/kvm): Permission denied"). No exception crosses a module boundary.
#pragma once

#include <cerrno>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace moat {

enum class ErrorCode {
  kOk = 0,
  kInvalidArgument,
  kNotFound,
  kAlreadyExists,
  kPermissionDenied,
  kFailedPrecondition,
  kResourceExhausted,
  kDeadlineExceeded,
  kUnavailable,
  kCancelled,
  kAborted,
  kInternal,
  kUnauthenticated,  // no or wrong credentials (HTTP 401)
};

std::string_view ErrorCodeName(ErrorCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(ErrorCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return {}; }
  bool ok() const { return code_ == ErrorCode::kOk; }
  ErrorCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "not_found: open(/x): No such file or directory"
  std::string ToString() const;
  // Prefixes the message with more context: "starting vmm: <old message>".
  Status Annotate(std::string_view context) const;

 private:
  ErrorCode code_ = ErrorCode::kOk;
  std::string message_;
};

Status InvalidArgument(std::string message);
Status NotFound(std::string message);
Status FailedPrecondition(std::string message);
Status Internal(std::string message);
Status Unavailable(std::string message);
Status DeadlineExceeded(std::string message);
Status ResourceExhausted(std::string message);
Status Unauthenticated(std::string message);
// An error from a failed system call: "<context>: <strerror(err)>", code derived from errno.
Status ErrnoError(std::string_view context, int err = errno);
ErrorCode ErrorCodeFromErrno(int err);

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}         // NOLINT(google-explicit-constructor)
  Result(Status status) : v_(std::move(status)) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  T&& operator*() && { return std::move(*this).value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace moat

#define MOAT_CONCAT_INNER_(a, b) a##b
#define MOAT_CONCAT_(a, b) MOAT_CONCAT_INNER_(a, b)

#define MOAT_RETURN_IF_ERROR(expr)        \
  do {                                    \
    ::moat::Status moat_status_ = (expr); \
    if (!moat_status_.ok()) {             \
      return moat_status_;                \
    }                                     \
  } while (0)

#define MOAT_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) {                                  \
    return tmp.status();                            \
  }                                                 \
  lhs = std::move(tmp).value()

#define MOAT_ASSIGN_OR_RETURN(lhs, expr) \
  MOAT_ASSIGN_OR_RETURN_IMPL_(MOAT_CONCAT_(moat_result_, __LINE__), lhs, expr)
