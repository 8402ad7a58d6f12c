// What both stores do alike to the records of store/history.h on their way in and out (private to
// the store implementations): text made storable, and the page tokens of history and audit.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "common/status.h"
#include "common/utf8.h"

namespace moat::api::store {

// Text as both stores keep it: valid UTF-8 (bad bytes become U+FFFD), without NUL characters.
// PostgreSQL refuses both in TEXT, and a command's output or a console log may hold any byte; the
// SQLite store cleans the same way so that the two give back the same text.
inline std::string StoredText(std::string_view text) {
  std::string out = ValidUtf8(text);
  std::erase(out, '\0');
  return out;
}

// The command line a CommandRecord keeps: at most kMaxCommandBytes, cut before a UTF-8 sequence
// that would not fit whole.
inline constexpr size_t kMaxCommandBytes = 4096;
inline std::string StoredCommand(std::string_view command) {
  std::string out = StoredText(command);
  if (out.size() <= kMaxCommandBytes) return out;
  size_t cut = kMaxCommandBytes;
  while (cut > 0 && (static_cast<unsigned char>(out[cut]) & 0xC0) == 0x80) --cut;
  out.resize(cut);
  return out;
}

// History pages: "<created_at_ms>.<sandbox_id>" of the last item of the previous page (as the
// sandbox and snapshot lists' tokens).
struct HistoryCursor {
  int64_t created_at_ms = 0;
  std::string sandbox_id;
};

inline Result<HistoryCursor> ParseHistoryToken(const std::string& token) {
  size_t dot = token.find('.');
  char* end = nullptr;
  long long ms = std::strtoll(token.c_str(), &end, 10);
  if (dot == std::string::npos || dot == 0 || end != token.c_str() + dot) {
    return InvalidArgument("nextToken: malformed cursor \"" + token + "\"");
  }
  return HistoryCursor{ms, token.substr(dot + 1)};
}

inline std::string HistoryToken(int64_t created_at_ms, const std::string& sandbox_id) {
  return std::to_string(created_at_ms) + "." + sandbox_id;
}

// Audit pages: the seq of the last record of the previous page, in decimal.
inline Result<int64_t> ParseAuditToken(const std::string& token) {
  bool digits = !token.empty() && token.size() <= 18;
  for (char c : token) digits = digits && c >= '0' && c <= '9';
  if (!digits) return InvalidArgument("nextToken: malformed cursor \"" + token + "\"");
  return static_cast<int64_t>(std::strtoll(token.c_str(), nullptr, 10));
}

// Page sizes of ListHistory and ListAudit: 1 to 1000 (the routes bound what clients ask).
inline int HistoryPageLimit(int limit) {
  return limit < 1 ? 1 : (limit > 1000 ? 1000 : limit);
}

// What LoadUsageInput reads of network buckets before `from`: the hour that holds it.
inline constexpr int64_t kHourMs = 3600 * 1000;

// A failed command, as the history's "failed only" filter and the logs route see it: a non-zero
// exit, an error of a command that ended (one whose client left runs on: not a failure), or a
// signal — except for a PTY session (the web terminal's shell is killed when its page leaves).
inline constexpr const char* kFailedCommand =
    "(c.exit_code <> 0 OR (c.error <> '' AND c.ended_at_ms <> 0) OR (c.signal <> '' AND c.kind "
    "<> 'pty'))";

// A reading of a sandbox's network counters and the slot generation it was read from.
struct NetReading {
  int64_t egress = 0, ingress = 0, generation = 0;
};
struct NetDelta {
  bool changed = false;             // something to write
  int64_t egress = 0, ingress = 0;  // what to add
  NetReading kept;                  // the reading to keep for the next one
};
// What a reading adds after `last`: all of it from a new slot (another generation); otherwise
// what each counter grew by — a counter lower than the last reading's is a stale reading that
// lost a race with a newer one, and adds nothing (the newer value is kept).
inline NetDelta NetDeltaOf(const NetReading& last, const NetReading& now) {
  NetDelta d;
  if (now.generation != last.generation) {
    d.egress = now.egress;
    d.ingress = now.ingress;
    d.kept = now;
    d.changed = true;
    return d;
  }
  d.egress = now.egress > last.egress ? now.egress - last.egress : 0;
  d.ingress = now.ingress > last.ingress ? now.ingress - last.ingress : 0;
  d.kept = {std::max(now.egress, last.egress), std::max(now.ingress, last.ingress), now.generation};
  d.changed = d.egress != 0 || d.ingress != 0;
  return d;
}

}  // namespace moat::api::store
