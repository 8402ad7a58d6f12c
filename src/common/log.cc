#include "common/log.h"

#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <ctime>

#include "common/utf8.h"

namespace moat {
namespace {

std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
std::atomic<int> g_fd{STDERR_FILENO};
std::atomic<int> g_format{static_cast<int>(LogFormat::kText)};
thread_local LogContext tls_context;

void AppendJsonString(std::string& out, std::string_view raw) {
  // Valid UTF-8 goes out as it is (invalid bytes become U+FFFD): always valid JSON, and readable.
  std::string v = ValidUtf8(raw);
  out += '"';
  for (char ch : v) {
    unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += ch;
        }
    }
  }
  out += '"';
}

std::string_view LevelName(LogLevel l) {
  switch (l) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarn: return "warn";
    case LogLevel::kError: return "error";
  }
  return "info";
}

void AppendValue(std::string& out, std::string_view v) {
  bool quote = v.empty();
  for (char c : v) {
    if (c == ' ' || c == '"' || c == '=' || c == '\n' || c == '\\' || c == '\t') quote = true;
  }
  if (!quote) {
    out += v;
    return;
  }
  out += '"';
  for (char c : v) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += ' ';
    } else {
      out += c;
    }
  }
  out += '"';
}

}  // namespace

void SetLogLevel(LogLevel level) {
  g_level = static_cast<int>(level);
}
void SetLogFd(int fd) {
  g_fd = fd;
}
void SetLogFormat(LogFormat format) {
  g_format = static_cast<int>(format);
}

ScopedLogContext::ScopedLogContext(LogContext ctx) : previous_(std::move(tls_context)) {
  tls_context = std::move(ctx);
}
ScopedLogContext::~ScopedLogContext() {
  tls_context = std::move(previous_);
}
void ScopedLogContext::SetSandbox(std::string_view sandbox) {
  tls_context.sandbox = std::string(sandbox);
}

void Log(LogLevel level, std::string_view event, std::initializer_list<LogField> fields) {
  if (static_cast<int>(level) < g_level.load()) return;
  timeval tv{};
  gettimeofday(&tv, nullptr);
  tm t{};
  gmtime_r(&tv.tv_sec, &t);
  char ts[64];
  std::snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", t.tm_year + 1900,
                t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec,
                static_cast<int>(tv.tv_usec / 1000));
  bool has_sandbox = false, has_request = false;
  for (const auto& f : fields) {
    if (f.key == "sandbox") has_sandbox = true;
    if (f.key == "request_id") has_request = true;
  }
  const LogContext& ctx = tls_context;
  std::string line;
  if (g_format.load() == static_cast<int>(LogFormat::kJson)) {
    line = "{\"ts\":\"";
    line += ts;
    line += "\",\"level\":\"";
    line += LevelName(level);
    line += "\",\"event\":";
    AppendJsonString(line, event);
    auto field = [&](std::string_view k, std::string_view v) {
      line += ',';
      AppendJsonString(line, k);
      line += ':';
      AppendJsonString(line, v);
    };
    for (const auto& f : fields) field(f.key, f.value);
    if (!has_sandbox && !ctx.sandbox.empty()) field("sandbox", ctx.sandbox);
    if (!has_request && !ctx.request_id.empty()) field("request_id", ctx.request_id);
    line += "}\n";
  } else {
    line = "ts=";
    line += ts;
    line += " level=";
    line += LevelName(level);
    line += " event=";
    AppendValue(line, event);
    auto field = [&](std::string_view k, std::string_view v) {
      line += ' ';
      line += k;
      line += '=';
      AppendValue(line, v);
    };
    for (const auto& f : fields) field(f.key, f.value);
    if (!has_sandbox && !ctx.sandbox.empty()) field("sandbox", ctx.sandbox);
    if (!has_request && !ctx.request_id.empty()) field("request_id", ctx.request_id);
    line += '\n';
  }
  // One write(2) per line keeps lines from different threads whole.
  ssize_t unused = ::write(g_fd.load(), line.data(), line.size());
  (void)unused;
}

bool RateLimiter::Allow(unsigned long* suppressed) {
  std::lock_guard lock(mu_);
  auto now = std::chrono::steady_clock::now();
  double elapsed = std::chrono::duration<double>(now - last_).count();
  last_ = now;
  tokens_ = std::min(burst_, tokens_ + elapsed * rate_);
  if (tokens_ < 1.0) {
    ++dropped_;
    return false;
  }
  tokens_ -= 1.0;
  if (suppressed) *suppressed = dropped_;
  dropped_ = 0;
  return true;
}

}  // namespace moat
