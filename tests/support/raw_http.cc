#include "support/raw_http.h"

#include <arpa/inet.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <cctype>
#include <cstdlib>
#include <utility>

namespace moat::test_support {

void SetSocketTimeouts(int fd, std::chrono::seconds t) {
  timeval tv{static_cast<time_t>(t.count()), 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

sockaddr_in LoopbackAddress(uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

bool SendAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

bool Conn::Fill() {
  char tmp[65536];
  ssize_t n = ::recv(fd.get(), tmp, sizeof tmp, 0);
  if (n <= 0) return false;
  buf.append(tmp, static_cast<size_t>(n));
  return true;
}

std::string Conn::ReadUntil(std::string_view delim) {
  for (;;) {
    size_t at = buf.find(delim);
    if (at != std::string::npos) {
      std::string out = buf.substr(0, at + delim.size());
      buf.erase(0, at + delim.size());
      return out;
    }
    if (!Fill()) return "";
  }
}

bool Conn::ReadN(size_t n, std::string* out) {
  while (buf.size() < n) {
    if (!Fill()) return false;
  }
  *out = buf.substr(0, n);
  buf.erase(0, n);
  return true;
}

std::string Conn::ReadToEof() {
  while (Fill()) {
  }
  return std::exchange(buf, {});
}

Conn Dial(uint16_t port) {
  Conn c;
  c.fd.Reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  SetSocketTimeouts(c.fd.get(), std::chrono::seconds(20));
  sockaddr_in a = LoopbackAddress(port);
  // sockaddr_in is the AF_INET form of sockaddr.
  if (::connect(c.fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) c.fd.Reset();
  return c;
}

std::string Head::Header(const std::string& name) const {
  auto it = headers.find(name);
  return it == headers.end() ? "" : it->second;
}

Head ParseHead(const std::string& raw) {
  Head h;
  size_t eol = raw.find("\r\n");
  h.first_line = raw.substr(0, eol);
  if (eol == std::string::npos) return h;
  for (size_t pos = eol + 2; pos < raw.size();) {
    size_t end = raw.find("\r\n", pos);
    if (end == std::string::npos || end == pos) break;
    std::string line = raw.substr(pos, end - pos);
    size_t colon = line.find(':');
    std::string name = line.substr(0, colon);
    for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    std::string value = colon == std::string::npos ? "" : line.substr(colon + 1);
    while (!value.empty() && value.front() == ' ') value.erase(0, 1);
    h.headers[name] = value;
    pos = end + 2;
  }
  return h;
}

Reply ParseReply(const std::string& raw) {
  Reply r;
  size_t split = raw.find("\r\n\r\n");
  if (split == std::string::npos) return r;
  r.head = ParseHead(raw.substr(0, split + 2));
  if (r.head.first_line.size() >= 12) r.status = std::atoi(r.head.first_line.c_str() + 9);
  std::string body = raw.substr(split + 4);
  if (r.head.Header("transfer-encoding") != "chunked") {
    r.body = body;
    return r;
  }
  for (size_t pos = 0;;) {
    size_t eol = body.find("\r\n", pos);
    if (eol == std::string::npos) break;
    size_t n = std::strtoul(body.substr(pos, eol - pos).c_str(), nullptr, 16);
    if (n == 0) break;
    r.body += body.substr(eol + 2, n);
    pos = eol + 2 + n + 2;
  }
  return r;
}

Reply ReadReply(Conn& c) {
  std::string raw = c.ReadUntil("\r\n\r\n");
  Head head = ParseHead(raw);
  std::string body;
  if (!head.Header("content-length").empty()) {
    c.ReadN(std::strtoul(head.Header("content-length").c_str(), nullptr, 10), &body);
  } else if (head.Header("transfer-encoding") == "chunked") {
    body = c.ReadUntil("\r\n0\r\n\r\n");
  } else {
    body = c.ReadToEof();
  }
  return ParseReply(raw + body);
}

Reply Exchange(uint16_t port, const std::string& request) {
  Conn c = Dial(port);
  if (!SendAll(c.fd.get(), request)) return {};
  return ReadReply(c);
}

std::string WebSocketAccept(const std::string& key) {
  std::string in = key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  unsigned char digest[SHA_DIGEST_LENGTH];
  // Bytes as unsigned char: the same object representation.
  ::SHA1(reinterpret_cast<const unsigned char*>(in.data()), in.size(), digest);
  unsigned char b64[64];
  int n = ::EVP_EncodeBlock(b64, digest, SHA_DIGEST_LENGTH);
  return std::string(reinterpret_cast<char*>(b64), static_cast<size_t>(n));
}

std::string WebSocketFrame(uint8_t opcode, std::string_view payload, bool masked) {
  std::string f;
  f.push_back(static_cast<char>(0x80 | opcode));
  char mask_bit = masked ? static_cast<char>(0x80) : 0;
  size_t n = payload.size();
  if (n < 126) {
    f.push_back(static_cast<char>(mask_bit | static_cast<char>(n)));
  } else if (n < 65536) {
    f.push_back(static_cast<char>(mask_bit | 126));
    f.push_back(static_cast<char>(n >> 8));
    f.push_back(static_cast<char>(n & 0xff));
  } else {
    f.push_back(static_cast<char>(mask_bit | 127));
    for (int i = 7; i >= 0; --i) f.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  }
  const char key[4] = {0x1b, 0x2c, 0x3d, 0x4e};
  if (masked) f.append(key, 4);
  for (size_t i = 0; i < n; ++i) {
    f.push_back(masked ? static_cast<char>(payload[i] ^ key[i % 4]) : payload[i]);
  }
  return f;
}

bool ReadWebSocketFrame(Conn& c, WebSocketMessage* out) {
  std::string h;
  if (!c.ReadN(2, &h)) return false;
  out->opcode = static_cast<uint8_t>(h[0]) & 0x0f;
  bool masked = (static_cast<uint8_t>(h[1]) & 0x80) != 0;
  uint64_t n = static_cast<uint8_t>(h[1]) & 0x7f;
  if (n == 126 || n == 127) {
    std::string ext;
    if (!c.ReadN(n == 126 ? 2 : 8, &ext)) return false;
    n = 0;
    for (char b : ext) n = (n << 8) | static_cast<uint8_t>(b);
  }
  std::string key;
  if (masked && !c.ReadN(4, &key)) return false;
  if (!c.ReadN(n, &out->payload)) return false;
  if (masked) {
    for (size_t i = 0; i < n; ++i) out->payload[i] ^= key[i % 4];
  }
  return true;
}

LoopbackServer::LoopbackServer(std::function<void(Conn&)> serve) : serve_(std::move(serve)) {
  listener_.Reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a = LoopbackAddress(0);
  socklen_t len = sizeof a;
  // sockaddr_in is the AF_INET form of sockaddr.
  if (::bind(listener_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::listen(listener_.get(), 256) != 0 ||
      ::getsockname(listener_.get(), reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    std::abort();  // loopback on port 0: cannot fail on a working test machine
  }
  port_ = ntohs(a.sin_port);
  acceptor_ = std::thread([this] { AcceptLoop(); });
}

LoopbackServer::~LoopbackServer() {
  ::shutdown(listener_.get(), SHUT_RDWR);  // wakes accept()
  acceptor_.join();
  std::vector<std::thread> threads;
  {
    std::lock_guard lock(mu_);
    for (int fd : open_) ::shutdown(fd, SHUT_RDWR);
    threads.swap(threads_);
  }
  for (auto& t : threads) t.join();
}

void LoopbackServer::AcceptLoop() {
  for (;;) {
    int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) return;
    SetSocketTimeouts(fd, std::chrono::seconds(30));
    std::lock_guard lock(mu_);
    open_.insert(fd);
    threads_.emplace_back([this, fd] {
      Conn c;
      c.fd.Reset(fd);
      serve_(c);
      std::lock_guard lock(mu_);
      open_.erase(fd);
      // `c` closes the fd after the lock is released, when no shutdown can target it.
    });
  }
}

uint16_t RefusedLoopbackPort() {
  UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a = LoopbackAddress(0);
  socklen_t len = sizeof a;
  // sockaddr_in is the AF_INET form of sockaddr.
  ::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a);
  ::getsockname(s.get(), reinterpret_cast<sockaddr*>(&a), &len);
  return ntohs(a.sin_port);
}

}  // namespace moat::test_support
