// URL query strings and the E2B metadata filter (E2B-WIRE §2.2): percent-decoding that never
// fails (a malformed escape is kept as it is, as browsers do), and `k=v&k2=v2` forms.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

namespace moat::api::codec {

// Decodes %XX escapes; with `plus_as_space`, '+' becomes ' ' (form encoding, for queries).
std::string PercentDecode(std::string_view s, bool plus_as_space);
// Escapes everything but unreserved characters (RFC 3986).
std::string PercentEncode(std::string_view s);

using QueryParams = std::vector<std::pair<std::string, std::string>>;
// "a=1&b=&c" → {a:1, b:"", c:""}, names and values decoded; order kept, repeats kept.
QueryParams ParseQuery(std::string_view raw);
// The first value of `name`, if present.
std::optional<std::string> QueryValue(const QueryParams& q, std::string_view name);

// The `metadata` filter of list: after query decoding it is `k=v&k2=v2` whose pieces were
// percent-encoded once more; split on '&' and '=' and decode each piece again. A piece
// without '=' or with an empty key is invalid_argument naming it.
Result<std::map<std::string, std::string>> ParseMetadataFilter(std::string_view decoded);

}  // namespace moat::api::codec
