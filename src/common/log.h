// One logger facade for every binary: one structured line per event,
//   ts=2026-11-21T22:59:01.123Z level=info event=vmm.started sandbox=abc pid=123
// No secrets go into fields. Anything a guest or a client can trigger goes through a RateLimiter.
#pragma once

#include <chrono>
#include <initializer_list>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

namespace moat {

enum class LogLevel { kDebug = 0, kInfo, kWarn, kError };

struct LogField {
  LogField(std::string_view k, std::string_view v) : key(k), value(v) {}
  LogField(std::string_view k, const char* v) : key(k), value(v) {}
  LogField(std::string_view k, const std::string& v) : key(k), value(v) {}
  template <typename N, typename = decltype(std::to_string(N{}))>
  LogField(std::string_view k, N v) : key(k), value(std::to_string(v)) {}
  std::string_view key;
  std::string value;
};

void SetLogLevel(LogLevel level);
// kText: `ts=… level=… event=… k=v` (logfmt); kJson: one JSON object per line with the same
// keys ({"ts":…,"level":…,"event":…,"k":"v"}).
enum class LogFormat { kText, kJson };
void SetLogFormat(LogFormat format);

// What every line logged on this thread carries while it serves one request: its request id and
// the sandbox it names (each added unless the line has a field of that name already).
struct LogContext {
  std::string request_id;
  std::string sandbox;
};
// Sets this thread's context for its scope (the previous one comes back after).
class ScopedLogContext {
 public:
  explicit ScopedLogContext(LogContext ctx);
  ~ScopedLogContext();
  ScopedLogContext(const ScopedLogContext&) = delete;
  ScopedLogContext& operator=(const ScopedLogContext&) = delete;
  // Names the sandbox once it is known (after routing).
  static void SetSandbox(std::string_view sandbox);

 private:
  LogContext previous_;
};
// Where lines go: stderr by default; a file descriptor the caller keeps open otherwise.
void SetLogFd(int fd);
void Log(LogLevel level, std::string_view event, std::initializer_list<LogField> fields = {});

inline void LogInfo(std::string_view e, std::initializer_list<LogField> f = {}) {
  Log(LogLevel::kInfo, e, f);
}
inline void LogWarn(std::string_view e, std::initializer_list<LogField> f = {}) {
  Log(LogLevel::kWarn, e, f);
}
inline void LogError(std::string_view e, std::initializer_list<LogField> f = {}) {
  Log(LogLevel::kError, e, f);
}
inline void LogDebug(std::string_view e, std::initializer_list<LogField> f = {}) {
  Log(LogLevel::kDebug, e, f);
}

// Token bucket: at most `burst` events at once, refilled at `per_second`. Allow() says whether
// this event may be logged; suppressed events are counted and reported with the next one.
class RateLimiter {
 public:
  RateLimiter(double per_second, double burst) : rate_(per_second), burst_(burst), tokens_(burst) {}
  // Returns true if allowed; *suppressed receives how many were dropped since the last allow.
  bool Allow(unsigned long* suppressed = nullptr);

 private:
  std::mutex mu_;
  double rate_;
  double burst_;
  double tokens_;
  unsigned long dropped_ = 0;
  std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
};

}  // namespace moat
