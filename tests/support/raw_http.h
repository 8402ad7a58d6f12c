// HTTP/1.1 and WebSocket over plain loopback sockets, for tests that must see (and make) every
// byte on the wire: clients that send a request as written and read the answer as it comes,
// and a small threaded TCP server for upstreams.
#pragma once

#include <netinet/in.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/unique_fd.h"

namespace moat::test_support {

// Receive and send timeouts (SO_RCVTIMEO, SO_SNDTIMEO), so that a test never hangs on a socket.
void SetSocketTimeouts(int fd, std::chrono::seconds t);
sockaddr_in LoopbackAddress(uint16_t port);
bool SendAll(int fd, std::string_view data);

// A socket and what has been read from it but not consumed yet.
struct Conn {
  UniqueFd fd;
  std::string buf;

  bool Fill();
  // Everything up to and including `delim`; empty on EOF or timeout.
  std::string ReadUntil(std::string_view delim);
  bool ReadN(size_t n, std::string* out);
  std::string ReadToEof();
};

// A connection to 127.0.0.1:port with 20 s timeouts; its fd is invalid if connecting failed.
Conn Dial(uint16_t port);

// A message head: its first line and its headers (names lower-cased).
struct Head {
  std::string first_line;
  std::map<std::string, std::string> headers;
  std::string Header(const std::string& name) const;
};
Head ParseHead(const std::string& raw);

struct Reply {
  int status = 0;
  Head head;
  std::string body;  // de-chunked
};
// A whole response as far as `raw` goes.
Reply ParseReply(const std::string& raw);
// One response from `c`: by its Content-Length, its last chunk, or EOF.
Reply ReadReply(Conn& c);
// `request` (written out in full by the caller) on a new connection, and its response.
Reply Exchange(uint16_t port, const std::string& request);

// WebSocket (RFC 6455).
std::string WebSocketAccept(const std::string& key);
// One final frame; clients mask, servers do not.
std::string WebSocketFrame(uint8_t opcode, std::string_view payload, bool masked);
struct WebSocketMessage {
  uint8_t opcode = 0;
  std::string payload;  // unmasked
};
bool ReadWebSocketFrame(Conn& c, WebSocketMessage* out);

// A loopback TCP server on a free port; each connection is served by `serve` on a thread of
// its own (with 30 s socket timeouts). The destructor stops accepting, shuts the open
// connections down and joins every thread.
class LoopbackServer {
 public:
  explicit LoopbackServer(std::function<void(Conn&)> serve);
  ~LoopbackServer();
  LoopbackServer(const LoopbackServer&) = delete;
  LoopbackServer& operator=(const LoopbackServer&) = delete;
  uint16_t port() const { return port_; }

 private:
  void AcceptLoop();

  std::function<void(Conn&)> serve_;
  UniqueFd listener_;
  uint16_t port_ = 0;
  std::mutex mu_;
  std::set<int> open_;
  std::vector<std::thread> threads_;
  std::thread acceptor_;
};

// A loopback port that nothing listens on (bound, then closed again).
uint16_t RefusedLoopbackPort();

}  // namespace moat::test_support
