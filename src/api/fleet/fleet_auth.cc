#include "api/fleet/fleet_auth.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <optional>

#include "common/log.h"
#include "common/unique_fd.h"

namespace moat::api::fleet {
namespace {

// A token file is one short line; anything this long is not one.
constexpr size_t kMaxTokenFileBytes = 64 * 1024;
constexpr size_t kSignatureBytes = 32;  // SHA-256

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  while (!s.empty() && s.back() == ' ') s.remove_suffix(1);
  return s;
}

struct ParsedHeader {
  int64_t t = 0;
  unsigned char sig[kSignatureBytes] = {};
};

// "t=<digits>,sig=<64 hex>", the parts in either order; other keys are ignored (they are not
// signed, so they can add nothing). Exactly one t and one sig: a request with the header twice
// arrives with the values joined by ", " and is refused here.
std::optional<ParsedHeader> ParseHeader(std::string_view header) {
  ParsedHeader out;
  bool have_t = false;
  bool have_sig = false;
  while (!header.empty()) {
    size_t comma = header.find(',');
    std::string_view part = Trim(header.substr(0, comma));
    header = comma == std::string_view::npos ? std::string_view() : header.substr(comma + 1);
    size_t eq = part.find('=');
    if (eq == std::string_view::npos) return std::nullopt;
    std::string_view key = part.substr(0, eq);
    std::string_view value = part.substr(eq + 1);
    if (key == "t") {
      // At most 18 digits: no overflow, and far beyond any real clock.
      if (have_t || value.empty() || value.size() > 18) return std::nullopt;
      int64_t t = 0;
      for (char c : value) {
        if (c < '0' || c > '9') return std::nullopt;
        t = t * 10 + (c - '0');
      }
      out.t = t;
      have_t = true;
    } else if (key == "sig") {
      if (have_sig || value.size() != 2 * kSignatureBytes) return std::nullopt;
      for (size_t i = 0; i < kSignatureBytes; ++i) {
        int hi = HexValue(value[2 * i]);
        int lo = HexValue(value[2 * i + 1]);
        if (hi < 0 || lo < 0) return std::nullopt;
        out.sig[i] = static_cast<unsigned char>(hi << 4 | lo);
      }
      have_sig = true;
    }
  }
  if (!have_t || !have_sig) return std::nullopt;
  return out;
}

void Mac(std::string_view key, int64_t t, std::string_view method, std::string_view target,
         std::string_view host_id, unsigned char out[kSignatureBytes]) {
  std::string message = std::to_string(t);
  message += '\n';
  message += method;
  message += '\n';
  message += target;
  message += '\n';
  message += host_id;
  unsigned int len = kSignatureBytes;
  // HMAC() writes EVP_MD_size(sha256) = 32 bytes into `out`; the casts only change the pointee
  // type of the key and message bytes, which OpenSSL reads as unsigned char.
  if (HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
           reinterpret_cast<const unsigned char*>(message.data()), message.size(), out,
           &len) == nullptr ||
      len != kSignatureBytes) {
    std::abort();  // SHA-256 HMAC cannot fail with valid arguments; nothing could be signed
  }
}

}  // namespace

int64_t UnixNow() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Result<FleetToken> FleetToken::FromSecret(std::string secret) {
  if (secret.size() < kMinFleetTokenBytes) {
    return InvalidArgument("the fleet token has " + std::to_string(secret.size()) +
                           " bytes; at least " + std::to_string(kMinFleetTokenBytes) +
                           " are required");
  }
  return FleetToken(std::move(secret));
}

Result<FleetToken> FleetToken::FromFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError("open(" + path + ") (the fleet token file)");
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return ErrnoError("fstat(" + path + ")");
  if (!S_ISREG(st.st_mode)) {
    return InvalidArgument("the fleet token file " + path + " is not a regular file");
  }
  if ((st.st_mode & (S_IRGRP | S_IROTH)) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    LogWarn("fleet.token_file_readable",
            {{"path", path}, {"mode", mode}, {"advice", "chmod 0600: it holds the fleet token"}});
  }
  std::string data;
  char buf[4096];
  while (data.size() < kMaxTokenFileBytes && data.find('\n') == std::string::npos) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("read(" + path + ")");
    }
    if (n == 0) break;
    data.append(buf, static_cast<size_t>(n));
  }
  size_t nl = data.find('\n');
  if (nl == std::string::npos && data.size() >= kMaxTokenFileBytes) {
    return InvalidArgument("the fleet token file " + path + " has no line break in its first " +
                           std::to_string(kMaxTokenFileBytes) + " bytes");
  }
  std::string line = data.substr(0, nl);
  if (!line.empty() && line.back() == '\r') line.pop_back();
  if (line.size() < kMinFleetTokenBytes) {
    return InvalidArgument("the fleet token file " + path + ": its first line has " +
                           std::to_string(line.size()) + " bytes; at least " +
                           std::to_string(kMinFleetTokenBytes) + " are required");
  }
  return FleetToken(std::move(line));
}

std::string FleetToken::Signature(int64_t t, std::string_view method, std::string_view target,
                                  std::string_view host_id) const {
  unsigned char mac[kSignatureBytes];
  Mac(secret_, t, method, target, host_id, mac);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * kSignatureBytes);
  for (unsigned char c : mac) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 15]);
  }
  return out;
}

std::string FleetToken::Header(int64_t now, std::string_view method, std::string_view target,
                               std::string_view host_id) const {
  return "t=" + std::to_string(now) + ",sig=" + Signature(now, method, target, host_id);
}

Status FleetToken::Verify(std::string_view header, std::string_view method, std::string_view target,
                          std::string_view host_id, int64_t now) const {
  if (header.empty()) return Unauthenticated("missing " + std::string(kFleetHeader));
  auto parsed = ParseHeader(header);
  if (!parsed) {
    return Unauthenticated(std::string(kFleetHeader) + " is malformed (want t=<unix>,sig=<hex>)");
  }
  int64_t skew = parsed->t - now;
  if (skew > kFleetSignatureWindow.count() || skew < -kFleetSignatureWindow.count()) {
    return Unauthenticated(std::string(kFleetHeader) + " is " + std::to_string(skew) +
                           " s from this agent's clock (the window is ±" +
                           std::to_string(kFleetSignatureWindow.count()) + " s)");
  }
  unsigned char expected[kSignatureBytes];
  Mac(secret_, parsed->t, method, target, host_id, expected);
  if (CRYPTO_memcmp(expected, parsed->sig, kSignatureBytes) != 0) {
    return Unauthenticated(std::string(kFleetHeader) +
                           " does not sign this request for this host (another fleet token, "
                           "host id or request)");
  }
  return Status::Ok();
}

}  // namespace moat::api::fleet
