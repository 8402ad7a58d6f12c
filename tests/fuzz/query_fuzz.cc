// libFuzzer target for query strings (every control-API and envd route's `?...`) and what is
// parsed from them: the list filter (metadata, state, limit, startedAfter), the metrics range
// and the snapshot list. Checks that nothing crashes or throws, that percent-encoding
// round-trips, and that parsed values stay within the ranges their parsers promise.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "api/codec/query.h"
#include "api/lifecycle.h"
#include "api/sandbox_actions.h"

namespace codec = moat::api::codec;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);  // bytes as chars

  if (codec::PercentDecode(codec::PercentEncode(in), false) != in) std::abort();
  if (codec::PercentDecode(codec::PercentEncode(in), true) != in) std::abort();
  if (codec::PercentDecode(in, true).size() > in.size()) std::abort();

  codec::QueryParams q = codec::ParseQuery(in);
  for (const auto& [k, v] : q) {
    if (k.size() + v.size() > in.size()) std::abort();
  }
  (void)codec::ParseMetadataFilter(in);

  for (bool v2 : {false, true}) {
    auto f = moat::api::ParseListQuery(q, v2);
    if (f.ok() && (f->limit < 1 || f->limit > 100)) std::abort();
    if (f.ok()) {
      for (const auto& s : f->states) {
        // Only states clients can see (api/lifecycle.h): never killing, killed or lost.
        if (!moat::api::WireState(s)) std::abort();
      }
    }
  }
  auto m = moat::api::ParseMetricsQuery(q);
  if (m.ok() && m->start_s && m->end_s && *m->start_s > *m->end_s) std::abort();
  auto s = moat::api::ParseSnapshotListQuery(q);
  if (s.ok() && (s->limit < 1 || s->limit > 100)) std::abort();
  return 0;
}
