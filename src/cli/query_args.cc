#include "cli/query_args.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <optional>
#include <utility>

#include "api/codec/protojson.h"
#include "api/codec/query.h"
#include "cli/output.h"

namespace moat::cli {
namespace {

using api::codec::PercentEncode;

bool IsDigit(char c) {
  return c >= '0' && c <= '9';
}

// Seconds in "30m", "1h30m", ...; nullopt unless the whole text is <N><unit> pieces.
std::optional<int64_t> RelativeSeconds(std::string_view text) {
  if (text.empty()) return std::nullopt;
  int64_t total = 0;
  size_t i = 0;
  while (i < text.size()) {
    size_t start = i;
    int64_t n = 0;
    while (i < text.size() && IsDigit(text[i]) && i - start < 9) n = n * 10 + (text[i++] - '0');
    if (i == start || i == text.size()) return std::nullopt;
    int64_t unit = 0;
    switch (text[i++]) {
      case 's': unit = 1; break;
      case 'm': unit = 60; break;
      case 'h': unit = 3600; break;
      case 'd': unit = 86400; break;
      case 'w': unit = 7 * 86400; break;
      default: return std::nullopt;
    }
    total += n * unit;  // at most 9 digits a piece: no overflow for any sane number of pieces
    if (total > std::numeric_limits<int64_t>::max() / 4) return std::nullopt;
  }
  return total;
}

bool IsDate(std::string_view text) {
  if (text.size() != 10 || text[4] != '-' || text[7] != '-') return false;
  for (size_t i : {0, 1, 2, 3, 5, 6, 8, 9}) {
    if (!IsDigit(text[i])) return false;
  }
  return true;
}

}  // namespace

int ReportUsageError(const Status& status) {
  ReportError(status);
  return kUsageError;
}

Result<std::string> ParseTimeArg(std::string_view arg, std::string_view flag, int64_t now_unix_s) {
  if (auto seconds = RelativeSeconds(arg)) {
    return api::codec::Rfc3339Seconds(std::max<int64_t>(0, now_unix_s - *seconds));
  }
  std::string text(arg);
  if (IsDate(text)) text += "T00:00:00Z";
  if (api::codec::ParseRfc3339(text).ok()) return text;
  return InvalidArgument(std::string(flag) + ": \"" + std::string(arg) +
                         "\" is neither a time (RFC 3339, 2026-01-02T15:04:05Z, or a date, "
                         "2026-01-02) nor a duration before now (30m, 24h, 7d, 1h30m)");
}

int64_t NowUnixSeconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Status AddTimeRange(QueryString& query, std::string_view from, std::string_view to,
                    int64_t now_unix_s) {
  for (auto [flag, arg] : {std::pair<std::string_view, std::string_view>{"--from", from},
                           std::pair<std::string_view, std::string_view>{"--to", to}}) {
    if (arg.empty()) continue;
    MOAT_ASSIGN_OR_RETURN(std::string time, ParseTimeArg(arg, flag, now_unix_s));
    query.Add(flag.substr(2), time);
  }
  return Status::Ok();
}

std::string MetadataQuery(const std::map<std::string, std::string>& metadata) {
  std::string form;
  for (const auto& [k, v] : metadata) {
    if (!form.empty()) form += "&";
    form += PercentEncode(k) + "=" + PercentEncode(v);
  }
  return PercentEncode(form);
}

QueryString& QueryString::Add(std::string_view name, std::string_view value) {
  return AddEncoded(name, PercentEncode(value));
}

QueryString& QueryString::AddEncoded(std::string_view name, std::string_view encoded_value) {
  query_ += query_.empty() ? "?" : "&";
  query_ += name;
  query_ += "=";
  query_ += encoded_value;
  return *this;
}

}  // namespace moat::cli
