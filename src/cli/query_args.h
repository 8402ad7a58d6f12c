// The query strings of the CLI's list and report commands (`sandbox list`, `audit`, `usage`,
// `history`): times given on the command line, E2B's doubly encoded metadata filter, and a
// builder that percent-encodes every value it is given.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "common/status.h"

namespace moat::cli {

// The exit status of a command whose arguments are wrong (found before any request is made);
// a failed request is 1, as for every control command.
inline constexpr int kUsageError = 2;
// Prints "moat: <message>" on stderr and returns kUsageError.
int ReportUsageError(const Status& status);

// A --from/--to argument as RFC 3339 for the API: RFC 3339 itself (sent as given), a date
// ("2026-01-02", midnight UTC), or a duration before `now_unix_s` made of <N><unit> pieces
// (s, m, h, d, w: "30m", "24h", "7d", "1h30m"). Anything else is invalid_argument naming `flag`.
Result<std::string> ParseTimeArg(std::string_view arg, std::string_view flag, int64_t now_unix_s);

// Now, for ParseTimeArg.
int64_t NowUnixSeconds();

class QueryString;
// --from and --to (each may be empty: not sent) as the `from` and `to` query parameters.
Status AddTimeRange(QueryString& query, std::string_view from, std::string_view to,
                    int64_t now_unix_s);

// The metadata filter of E2B's list routes: each key and value percent-encoded, joined as a form,
// and the whole encoded once more as the query value (E2B-WIRE §2.2).
std::string MetadataQuery(const std::map<std::string, std::string>& metadata);

// "?a=1&b=x%20y": names are taken as they are, values percent-encoded (Add) or already encoded
// (AddEncoded). Empty until something is added.
class QueryString {
 public:
  QueryString& Add(std::string_view name, std::string_view value);
  QueryString& AddEncoded(std::string_view name, std::string_view encoded_value);
  const std::string& str() const { return query_; }

 private:
  std::string query_;
};

}  // namespace moat::cli
