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
