// libFuzzer target for the Connect codec (E2B-WIRE §4, §5): the streaming envelopes of a request
// body, the JSON request message, and the protojson field getters that routes read it with.
// Every input comes from a client. Checks that nothing throws or crashes, that decoded envelopes
// re-encode to the bytes they came from, that no message exceeds the bound, and that base64
// and RFC 3339 round-trip.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>
#include <string_view>

#include "api/codec/connect.h"
#include "api/codec/protojson.h"

namespace codec = moat::api::codec;

namespace {

// Reads every field the envd routes read, with each getter, as they do.
void ReadFields(const codec::json& msg, int depth = 0) {
  static const std::map<std::string, int64_t> kSignals = {{"SIGNAL_SIGKILL", 9},
                                                          {"SIGNAL_SIGTERM", 15}};
  for (const char* name : {"path", "cmd", "pid", "tag", "stdin", "cols", "depth", "process", "envs",
                           "signal", "input", "data", "timeout"}) {
    (void)codec::StringField(msg, name, "snake_name");
    (void)codec::BoolField(msg, name);
    auto i = codec::IntField(msg, name, -1000, 1000);
    if (i.ok() && *i && (**i < -1000 || **i > 1000)) std::abort();
    (void)codec::IntField(msg, name, INT64_MIN, INT64_MAX);
    (void)codec::BytesField(msg, name);
    (void)codec::StringMapField(msg, name);
    (void)codec::EnumField(msg, name, kSignals);
    if (const codec::json* f = codec::Field(msg, name); f && f->is_object() && depth < 4) {
      ReadFields(*f, depth + 1);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  // The first byte picks what the rest is (its value mod 4, so '0'..'3' in the seeds): 0 a
  // streaming request body, 1 a unary request message, 2 base64, 3 an RFC 3339 time.
  std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);  // bytes as chars
  switch (data[0] % 4) {
    case 0: {
      // Envelopes: bounded, and a lossless split of the body.
      constexpr size_t kMax = 4096;
      auto envelopes = codec::DecodeEnvelopes(in, kMax);
      if (!envelopes.ok()) break;
      std::string again;
      for (const auto& e : *envelopes) {
        if (e.message.size() > kMax) std::abort();
        if (e.flags & codec::kEnvelopeCompressed) std::abort();
        again += codec::EncodeEnvelope(e.flags, e.message);
      }
      if (again != in) std::abort();
      for (const auto& e : *envelopes) {
        auto msg = codec::ParseMessage(e.message);
        if (msg.ok()) ReadFields(*msg);
      }
      break;
    }
    case 1: {
      auto msg = codec::ParseMessage(in);
      if (!msg.ok()) break;
      if (!msg->is_object()) std::abort();
      ReadFields(*msg);
      break;
    }
    case 2: {
      // What decodes re-encodes (standard alphabet, padded) and decodes to the same bytes.
      auto bytes = codec::Base64Decode(in);
      if (bytes.ok()) {
        auto back = codec::Base64Decode(codec::Base64Encode(*bytes));
        if (!back.ok() || *back != *bytes) std::abort();
      }
      auto round = codec::Base64Decode(codec::Base64Encode(in));
      if (!round.ok() || *round != in) std::abort();
      break;
    }
    case 3: {
      // A parsed time formats and parses to the same second.
      auto t = codec::ParseRfc3339(in);
      if (t.ok() && *t > -62135596800 && *t < 253402300800) {  // years 1..9999
        auto again = codec::ParseRfc3339(codec::Rfc3339Seconds(*t));
        if (!again.ok() || *again != *t) std::abort();
      }
      break;
    }
  }
  return 0;
}
