#include "api/codec/protojson.h"

#include <cerrno>
#include <cstdlib>
#include <ctime>

namespace moat::api::codec {
namespace {

constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int DecodeChar(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+' || c == '-') return 62;
  if (c == '/' || c == '_') return 63;
  return -1;
}

std::string Name(std::string_view camel) {
  return "field \"" + std::string(camel) + "\"";
}

}  // namespace

std::string Base64Encode(std::string_view data) {
  std::string out;
  out.reserve((data.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= data.size(); i += 3) {
    uint32_t v = (uint8_t(data[i]) << 16) | (uint8_t(data[i + 1]) << 8) | uint8_t(data[i + 2]);
    out.push_back(kAlphabet[v >> 18]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
    out.push_back(kAlphabet[(v >> 6) & 63]);
    out.push_back(kAlphabet[v & 63]);
  }
  size_t rest = data.size() - i;
  if (rest > 0) {
    uint32_t v = uint8_t(data[i]) << 16;
    if (rest == 2) v |= uint8_t(data[i + 1]) << 8;
    out.push_back(kAlphabet[v >> 18]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
    out.push_back(rest == 2 ? kAlphabet[(v >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

Result<std::string> Base64Decode(std::string_view text) {
  while (!text.empty() && text.back() == '=') text.remove_suffix(1);
  if (text.size() % 4 == 1) return InvalidArgument("base64: bad length");
  std::string out;
  out.reserve(text.size() * 3 / 4);
  uint32_t acc = 0;
  int bits = 0;
  for (char c : text) {
    int v = DecodeChar(c);
    if (v < 0) return InvalidArgument("base64: bad character");
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  return out;
}

std::string Rfc3339(int64_t unix_ns) {
  int64_t secs = unix_ns / 1000000000;
  int64_t frac = unix_ns % 1000000000;
  if (frac < 0) {
    frac += 1000000000;
    secs -= 1;
  }
  std::string s = Rfc3339Seconds(secs);
  if (frac == 0) return s;
  char buf[32];  // room for any int64 the compiler cannot rule out
  int digits = 9;
  int64_t f = frac;
  if (f % 1000000 == 0) {
    f /= 1000000;
    digits = 3;
  } else if (f % 1000 == 0) {
    f /= 1000;
    digits = 6;
  }
  std::snprintf(buf, sizeof buf, ".%0*lld", digits, static_cast<long long>(f));
  s.insert(s.size() - 1, buf);
  return s;
}

std::string Rfc3339Seconds(int64_t unix_s) {
  time_t t = static_cast<time_t>(unix_s);
  struct tm tm {};
  ::gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

Result<int64_t> ParseRfc3339(std::string_view text) {
  std::string s(text);
  struct tm tm {};
  const char* rest = ::strptime(s.c_str(), "%Y-%m-%dT%H:%M:%S", &tm);
  if (rest == nullptr) return InvalidArgument("bad RFC 3339 time \"" + s + "\"");
  if (*rest == '.') {
    ++rest;
    while (*rest >= '0' && *rest <= '9') ++rest;
  }
  int64_t offset = 0;
  if (*rest == 'Z' || *rest == 'z') {
    ++rest;
  } else if (*rest == '+' || *rest == '-') {
    int sign = *rest == '-' ? -1 : 1;
    // Exactly "hh:mm", checked character by character (each check stops at the terminating
    // NUL): sscanf would also take "+1:2", and stepping 6 past it read beyond the string.
    auto digit = [](char c) { return c >= '0' && c <= '9'; };
    if (!(digit(rest[1]) && digit(rest[2]) && rest[3] == ':' && digit(rest[4]) && digit(rest[5]))) {
      return InvalidArgument("bad RFC 3339 offset in \"" + s + "\"");
    }
    int hh = (rest[1] - '0') * 10 + (rest[2] - '0');
    int mm = (rest[4] - '0') * 10 + (rest[5] - '0');
    offset = sign * (hh * 3600 + mm * 60);
    rest += 6;
  } else {
    return InvalidArgument("RFC 3339 time without zone: \"" + s + "\"");
  }
  if (*rest != '\0') return InvalidArgument("trailing characters in time \"" + s + "\"");
  return static_cast<int64_t>(::timegm(&tm)) - offset;
}

const json* Field(const json& msg, std::string_view camel, std::string_view snake) {
  if (!msg.is_object()) return nullptr;
  auto it = msg.find(std::string(camel));
  if (it != msg.end() && !it->is_null()) return &*it;
  if (!snake.empty()) {
    it = msg.find(std::string(snake));
    if (it != msg.end() && !it->is_null()) return &*it;
  }
  return nullptr;
}

Result<std::optional<std::string>> StringField(const json& msg, std::string_view camel,
                                               std::string_view snake) {
  const json* f = Field(msg, camel, snake);
  if (f == nullptr) return std::optional<std::string>();
  if (!f->is_string()) return InvalidArgument(Name(camel) + " must be a string");
  return std::optional<std::string>(f->get<std::string>());
}

Result<std::optional<bool>> BoolField(const json& msg, std::string_view camel,
                                      std::string_view snake) {
  const json* f = Field(msg, camel, snake);
  if (f == nullptr) return std::optional<bool>();
  if (!f->is_boolean()) return InvalidArgument(Name(camel) + " must be a boolean");
  return std::optional<bool>(f->get<bool>());
}

Result<std::optional<int64_t>> IntField(const json& msg, std::string_view camel, int64_t min,
                                        int64_t max, std::string_view snake) {
  const json* f = Field(msg, camel, snake);
  if (f == nullptr) return std::optional<int64_t>();
  int64_t v = 0;
  if (f->is_number_integer()) {
    if (f->is_number_unsigned() && f->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
      return InvalidArgument(Name(camel) + " is out of range");
    }
    v = f->get<int64_t>();
  } else if (f->is_number_float()) {
    double d = f->get<double>();
    // Range first: casting a double outside int64's range is undefined (found by api_json_fuzz:
    // {"timeout": 6e74}). 2^63 is exact as a double; INT64_MAX is not.
    if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0)) {
      return InvalidArgument(Name(camel) + " is out of range");
    }
    if (d != static_cast<double>(static_cast<int64_t>(d))) {
      return InvalidArgument(Name(camel) + " must be an integer");
    }
    v = static_cast<int64_t>(d);
  } else if (f->is_string()) {
    const std::string& s = f->get_ref<const std::string&>();
    char* end = nullptr;
    errno = 0;
    long long parsed = std::strtoll(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0' || errno == ERANGE) {
      return InvalidArgument(Name(camel) + " must be an integer, got \"" + s + "\"");
    }
    v = parsed;
  } else {
    return InvalidArgument(Name(camel) + " must be an integer");
  }
  if (v < min || v > max) {
    return InvalidArgument(Name(camel) + " must be in " + std::to_string(min) + ".." +
                           std::to_string(max));
  }
  return std::optional<int64_t>(v);
}

Result<std::optional<std::string>> BytesField(const json& msg, std::string_view camel,
                                              std::string_view snake) {
  MOAT_ASSIGN_OR_RETURN(auto text, StringField(msg, camel, snake));
  if (!text) return std::optional<std::string>();
  auto bytes = Base64Decode(*text);
  if (!bytes.ok()) return bytes.status().Annotate(Name(camel));
  return std::optional<std::string>(std::move(*bytes));
}

Result<std::map<std::string, std::string>> StringMapField(const json& msg, std::string_view camel,
                                                          std::string_view snake) {
  std::map<std::string, std::string> out;
  const json* f = Field(msg, camel, snake);
  if (f == nullptr) return out;
  if (!f->is_object()) return InvalidArgument(Name(camel) + " must be an object");
  for (const auto& [k, v] : f->items()) {
    if (!v.is_string()) {
      return InvalidArgument(Name(camel) + ": value of \"" + k + "\" must be a string");
    }
    out[k] = v.get<std::string>();
  }
  return out;
}

Result<std::optional<int64_t>> EnumField(const json& msg, std::string_view camel,
                                         const std::map<std::string, int64_t>& names,
                                         std::string_view snake) {
  const json* f = Field(msg, camel, snake);
  if (f == nullptr) return std::optional<int64_t>();
  if (f->is_string()) {
    auto it = names.find(f->get<std::string>());
    if (it == names.end()) {
      return InvalidArgument(Name(camel) + ": unknown value \"" + f->get<std::string>() + "\"");
    }
    return std::optional<int64_t>(it->second);
  }
  if (f->is_number_integer()) return std::optional<int64_t>(f->get<int64_t>());
  return InvalidArgument(Name(camel) + " must be an enum name or number");
}

Result<json> ParseMessage(std::string_view text) {
  if (text.empty()) return json::object();
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgument("request body is not valid JSON");
  if (!j.is_object()) return InvalidArgument("request body must be a JSON object");
  return j;
}

}  // namespace moat::api::codec
