// The HTTP request and response types route handlers see. They are independent of Beast so that
// handlers and the router can be unit-tested with a recording ResponseWriter.
#pragma once

#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

namespace moat::api::http {

// Header names compare case-insensitively.
struct CaseInsensitiveLess {
  bool operator()(std::string_view a, std::string_view b) const;
};
using Headers = std::map<std::string, std::string, CaseInsensitiveLess>;

// The body of a request that its route reads as it arrives (HttpServer streams it rather than
// buffering it: file uploads), with the server's limits on its size and pace applied.
class BodySource {
 public:
  virtual ~BodySource() = default;
  // Up to `size` bytes of the body into `buf`: how many; 0 once the body is complete. Fails with
  // resource_exhausted past the body limit, deadline_exceeded when the client sends too slowly,
  // invalid_argument on malformed framing, unavailable when the client is gone.
  virtual Result<size_t> Read(char* buf, size_t size) = 0;
};

// A body that is all in memory already: requests built in-process and by tests.
class StringBodySource : public BodySource {
 public:
  explicit StringBodySource(std::string_view data) : data_(data) {}
  Result<size_t> Read(char* buf, size_t size) override;

 private:
  std::string_view data_;
};

// The HTTP status that answers a BodySource's error: 413, 408, or 400.
int BodyErrorHttpStatus(const Status& status);

struct Request {
  std::string method;     // "GET", "POST", ...
  std::string path;       // the target up to '?', not percent-decoded
  std::string raw_query;  // after '?', not decoded
  Headers headers;
  std::string body;  // the whole body, unless it streams (body_stream)
  // Set instead of `body` for routes whose body is read as it arrives; owned by the server, valid
  // for the handler's call. Null: the body, if any, is in `body`.
  BodySource* body_stream = nullptr;
  std::map<std::string, std::string> params;  // path parameters filled in by the router
  std::string peer;                           // "127.0.0.1:54321", for logs
  unsigned version = 11;                      // HTTP/1.x as 10 or 11
  // Who the request acts as, once a control route authenticated it (routes::Authed): the key's
  // id and name (a dashboard session: the key it signed in with). The audit log and history
  // name them.
  std::string auth_key_id;
  std::string auth_key_name;
  // The request's id (X-Request-Id if the client sent a sane one, else minted): in its log lines,
  // its audit record, and the X-Request-Id of its answer.
  std::string request_id;

  // The header's value, empty if absent.
  std::string Header(std::string_view name) const;
  bool HasHeader(std::string_view name) const { return headers.count(std::string(name)) > 0; }
  std::string Param(const std::string& name) const;
  // The body as a stream, whichever way it came: body_stream, or `body` through `fallback`.
  BodySource& Body(StringBodySource& fallback) { return body_stream ? *body_stream : fallback; }
};

// A client connection a handler has taken over (ResponseWriter::Hijack).
struct HijackedConnection {
  int fd = -1;  // borrowed: the server still owns it, and closes it when the handler returns
  std::string buffered;  // what the client sent after the request, already read by the server
};

// How a handler answers: one whole response, or a streamed one (headers, chunks, end). Every
// method fails once the client is gone; handlers stop producing then.
class ResponseWriter {
 public:
  virtual ~ResponseWriter() = default;
  virtual Status Send(int status, Headers headers, std::string body) = 0;
  virtual Status BeginStream(int status, Headers headers) = 0;
  virtual Status WriteChunk(std::string_view data) = 0;
  virtual Status EndStream() = 0;
  // Has a response (or its head) been sent?
  virtual bool started() const = 0;
  // Takes the raw connection over, for a handler that speaks its own protocol on it from here
  // on (the port proxy relays bytes both ways). The server then neither reads nor writes it
  // again, does not reuse it for another request, and closes it once the handler returns; its
  // Shutdown() still shuts the socket down, which the handler sees as EOF or an error.
  // failed_precondition once a response has started, or where there is no connection.
  virtual Result<HijackedConnection> Hijack() {
    return FailedPrecondition("this response writer has no connection to take over");
  }
};

// Wraps a writer to learn the status a handler answered with.
class StatusRecorder : public ResponseWriter {
 public:
  explicit StatusRecorder(ResponseWriter& inner) : inner_(inner) {}
  Status Send(int status, Headers headers, std::string body) override {
    status_ = status;
    return inner_.Send(status, std::move(headers), std::move(body));
  }
  Status BeginStream(int status, Headers headers) override {
    status_ = status;
    return inner_.BeginStream(status, std::move(headers));
  }
  Status WriteChunk(std::string_view data) override { return inner_.WriteChunk(data); }
  Status EndStream() override { return inner_.EndStream(); }
  bool started() const override { return inner_.started(); }
  Result<HijackedConnection> Hijack() override { return inner_.Hijack(); }
  int status() const { return status_; }

 private:
  ResponseWriter& inner_;
  int status_ = 0;
};

// A ResponseWriter that keeps what it was given: the router's and handlers' unit tests, and
// in-process callers.
class RecordingWriter : public ResponseWriter {
 public:
  Status Send(int status, Headers headers, std::string body) override;
  Status BeginStream(int status, Headers headers) override;
  Status WriteChunk(std::string_view data) override;
  Status EndStream() override;
  bool started() const override { return status_ != 0; }

  int status() const { return status_; }
  const Headers& headers() const { return headers_; }
  const std::string& body() const { return body_; }
  bool streamed() const { return streamed_; }
  bool ended() const { return ended_; }

 private:
  int status_ = 0;
  Headers headers_;
  std::string body_;
  bool streamed_ = false;
  bool ended_ = false;
};

}  // namespace moat::api::http
