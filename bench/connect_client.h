// The client side the API benchmark needs: one blocking HTTP/1.1 connection (Boost.Beast,
// keep-alive) and a `process.Process/Start` call over it that checks the stream as the e2b SDK
// would (E2B-WIRE §4, §6): `start` first, then data, exactly one `end`, then the end-stream.
#pragma once

#include <sys/socket.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "api/codec/connect.h"
#include "api/codec/protojson.h"
#include "bench_util.h"
#include "common/status.h"

namespace moat::bench {

namespace net = boost::asio;
namespace bhttp = boost::beast::http;

struct HttpResult {
  int status = 0;
  std::string content_type;
  std::string body;  // whole body, unless a body callback took it
};

// One client connection. Not thread-safe; a thread per connection.
class HttpConnection {
 public:
  HttpConnection() = default;
  HttpConnection(const HttpConnection&) = delete;
  HttpConnection& operator=(const HttpConnection&) = delete;

  Status Connect(const std::string& host, uint16_t port) {
    boost::system::error_code ec;
    auto addr = net::ip::make_address(host, ec);
    if (!ec) socket_.connect({addr, port}, ec);
    if (ec)
      return Unavailable("connect " + host + ":" + std::to_string(port) + ": " + ec.message());
    socket_.set_option(net::ip::tcp::no_delay(true), ec);
    open_ = true;
    return Status::Ok();
  }
  bool open() const { return open_; }
  // The socket, for a watchdog that shuts it down (shutdown(2) only; the connection owns it).
  int native_fd() { return socket_.native_handle(); }
  void Close() {
    boost::system::error_code ec;
    socket_.close(ec);
    open_ = false;
  }

  // Sends one request and reads its response. `on_body`, if set, receives the body piece by piece
  // as it arrives (chunked streams) and the body is not kept.
  template <typename OnBody = std::nullptr_t>
  Result<HttpResult> Exchange(const std::string& method, const std::string& target,
                              const std::map<std::string, std::string>& headers, std::string body,
                              OnBody on_body = nullptr) {
    bhttp::request<bhttp::string_body> req{bhttp::string_to_verb(method), target, 11};
    req.set(bhttp::field::host, "127.0.0.1");
    for (const auto& [k, v] : headers) req.set(k, v);
    req.body() = std::move(body);
    req.keep_alive(true);
    req.prepare_payload();
    boost::system::error_code ec;
    bhttp::write(socket_, req, ec);
    if (ec) return Fail("writing the request", ec);
    bhttp::response_parser<bhttp::string_body> parser;
    parser.body_limit(64u << 20);
    bhttp::read_header(socket_, buffer_, parser, ec);
    if (ec) return Fail("reading the response head", ec);
    size_t seen = 0;
    auto deliver = [&] {
      if constexpr (!std::is_same_v<OnBody, std::nullptr_t>) {
        std::string& b = parser.get().body();
        if (b.size() > seen) on_body(std::string_view(b).substr(seen));
        b.clear();
        seen = 0;
      }
    };
    while (!parser.is_done()) {
      bhttp::read_some(socket_, buffer_, parser, ec);
      if (ec) return Fail("reading the response body", ec);
      deliver();
    }
    HttpResult out;
    out.status = parser.get().result_int();
    out.content_type = std::string(parser.get()[bhttp::field::content_type]);
    out.body = std::move(parser.get().body());
    if (!parser.get().keep_alive()) Close();
    return out;
  }

 private:
  Status Fail(const char* what, const boost::system::error_code& ec) {
    Close();
    return Unavailable(std::string(what) + ": " + ec.message());
  }

  net::io_context io_;
  net::ip::tcp::socket socket_{io_};
  boost::beast::flat_buffer buffer_;
  bool open_ = false;
};

// A control-API call with the key on a connection of its own (minutes may pass between calls,
// past the server's idle timeout): the parsed JSON body (null if empty), or an error naming the
// call when the status is not `expect` or the body is not JSON.
inline Result<nlohmann::json> ControlCall(const std::string& host, uint16_t port,
                                          const std::string& key, const std::string& method,
                                          const std::string& target, const nlohmann::json& body,
                                          int expect) {
  HttpConnection conn;
  MOAT_RETURN_IF_ERROR(conn.Connect(host, port));
  std::map<std::string, std::string> headers = {{"X-API-Key", key}};
  std::string text;
  if (!body.is_null()) {
    headers["Content-Type"] = "application/json";
    text = body.dump();
  }
  MOAT_ASSIGN_OR_RETURN(HttpResult res, conn.Exchange(method, target, headers, std::move(text)));
  if (res.status != expect) {
    return Internal(method + " " + target + ": HTTP " + std::to_string(res.status) + " " +
                    res.body);
  }
  if (res.body.empty()) return nlohmann::json(nullptr);
  auto j = nlohmann::json::parse(res.body, nullptr, false);
  if (j.is_discarded()) return Internal(method + " " + target + ": body is not JSON");
  return j;
}

// A sandbox as the control API returned it.
struct SandboxRef {
  std::string id;
  std::string access_token;  // "" when create returned none
};

struct ExecOutcome {
  Status status;  // ok only if the stream was well-formed, complete and exited 0
  std::string stdout_data;
  int data_events = 0;
  double start_ms = 0;  // request sent → `start` event
  double total_ms = 0;  // request sent → end-stream
};

// `process.Process/Start` of `argv` in `sb` over `conn`, read to its end-stream. `timeout_ms` is
// the command's lifetime (Connect-Timeout-Ms; the SDK's default is 60 s).
inline ExecOutcome StartProcess(HttpConnection& conn, const SandboxRef& sb,
                                const std::vector<std::string>& argv, int64_t timeout_ms = 60000) {
  using nlohmann::json;
  ExecOutcome out;
  json args = json::array();
  for (size_t i = 1; i < argv.size(); ++i) args.push_back(argv[i]);
  json msg = {{"process", {{"cmd", argv[0]}, {"args", args}, {"envs", json::object()}}},
              {"stdin", false}};
  std::map<std::string, std::string> headers = {
      {"Content-Type", "application/connect+json"},
      {"Connect-Protocol-Version", "1"},
      {"Connect-Timeout-Ms", std::to_string(timeout_ms)},
      {"Keepalive-Ping-Interval", "50"},
      {"E2b-Sandbox-Id", sb.id},
  };
  if (!sb.access_token.empty()) headers["X-Access-Token"] = sb.access_token;

  std::string pending;
  bool started = false, ended = false, end_stream = false;
  Status stream_error;
  auto fail = [&](Status s) {
    if (stream_error.ok()) stream_error = std::move(s);
  };
  auto on_body = [&](std::string_view piece) {
    pending.append(piece);
    while (pending.size() >= 5) {
      uint32_t n = 0;
      for (int i = 1; i <= 4; ++i) n = (n << 8) | static_cast<uint8_t>(pending[i]);
      if (pending.size() < 5 + size_t{n}) break;
      auto flags = static_cast<uint8_t>(pending[0]);
      json m = json::parse(pending.substr(5, n), nullptr, false);
      pending.erase(0, 5 + size_t{n});
      if (m.is_discarded()) return fail(Internal("an envelope is not JSON"));
      if (end_stream) return fail(Internal("an envelope after the end-stream"));
      if (flags & api::codec::kEnvelopeEndStream) {
        end_stream = true;
        if (m.contains("error")) return fail(Internal("end-stream error: " + m["error"].dump()));
        continue;
      }
      const json& ev = m.value("event", json::object());
      if (ev.contains("keepalive")) continue;
      if (!started && !ev.contains("start")) return fail(Internal("first event is not start"));
      if (ev.contains("start")) {
        if (started) return fail(Internal("a second start event"));
        started = true;
      } else if (ev.contains("data")) {
        auto bytes = api::codec::Base64Decode(ev["data"].value("stdout", ""));
        if (!bytes.ok()) return fail(Internal("data.stdout is not base64"));
        out.stdout_data += *bytes;
        ++out.data_events;
      } else if (ev.contains("end")) {
        if (ended) return fail(Internal("a second end event"));
        ended = true;
        const json& end = ev["end"];
        if (end.value("exitCode", 0) != 0 || end.value("exited", false) != true ||
            end.value("status", "") != "exit status 0") {
          return fail(Internal("end event is not a clean exit: " + end.dump()));
        }
      }
    }
  };

  auto t0 = Clock::now();
  bool start_stamped = false;
  auto timed_body = [&](std::string_view piece) {
    on_body(piece);
    if (started && !start_stamped) {
      out.start_ms = Ms(Clock::now() - t0);
      start_stamped = true;
    }
  };
  auto res = conn.Exchange("POST", "/process.Process/Start", headers,
                           api::codec::EncodeEnvelope(0, msg.dump()), timed_body);
  out.total_ms = Ms(Clock::now() - t0);
  if (!res.ok()) {
    out.status = res.status();
  } else if (res->status != 200) {
    out.status = Internal("HTTP " + std::to_string(res->status));
  } else if (res->content_type != "application/connect+json") {
    out.status = Internal("Content-Type " + res->content_type);
  } else if (!stream_error.ok()) {
    out.status = stream_error;
  } else if (!started || !ended || !end_stream || !pending.empty()) {
    out.status = Internal(std::string("stream incomplete:") + (started ? "" : " no start") +
                          (ended ? "" : " no end") + (end_stream ? "" : " no end-stream"));
  }
  return out;
}

}  // namespace moat::bench
