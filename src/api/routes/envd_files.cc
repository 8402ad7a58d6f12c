// envd's HTTP file routes (E2B-WIRE §3): GET /files streams a file out of the sandbox (gzip if
// the client accepts it), POST /files writes one or more (multipart, or a raw octet-stream
// body, optionally gzip).
#include <chrono>
#include <memory>

#include "api/codec/gzip.h"
#include "api/codec/multipart.h"
#include "api/codec/query.h"
#include "api/errors.h"
#include "api/routes/routes.h"

namespace moat::api::routes {
namespace {

using channel::StreamEvent;
using channel::SubChannel;
using Clock = std::chrono::steady_clock;

constexpr auto kTransferTimeout = std::chrono::seconds(300);
constexpr size_t kMaxInflated = 1024u * 1024 * 1024;

// envd's file errors: a directory or a bad path is 400, a missing file 404, a full disk 507.
void SendFileError(http::ResponseWriter& w, const Status& s) {
  if (s.code() == ErrorCode::kFailedPrecondition) return SendRestError(w, s, 400);
  if (s.code() == ErrorCode::kResourceExhausted &&
      s.message().find("No space") != std::string::npos) {
    return SendRestError(w, s, 507);
  }
  SendRestError(w, s);
}

// ?username= wins over the Basic-auth user.
std::string FileUser(EnvdCall& call, const codec::QueryParams& q) {
  auto u = codec::QueryValue(q, "username");
  return u && !u->empty() ? *u : call.user;
}

// Streams the file as the guest reads it; gzip-compressed on the way when the client accepts
// it (E2B-WIRE §3), so that memory stays bounded whatever the file's size.
void GetFile(EnvdCall& call, http::ResponseWriter& w) {
  auto q = codec::ParseQuery(call.req.raw_query);
  auto path = codec::QueryValue(q, "path");
  if (!path || path->empty())
    return SendRestError(w, InvalidArgument("query parameter \"path\" is required"));
  auto guest = call.Guest();
  if (!guest.ok()) return SendFileError(w, guest.status());
  auto stream = (*guest)->Open({{"op", "read_file"}, {"path", *path}, {"user", FileUser(call, q)}});
  if (!stream.ok()) return SendFileError(w, stream.status());
  std::unique_ptr<codec::GzipWriter> gzip;
  http::Headers head = {{"Content-Type", "application/octet-stream"}, {"Vary", "Accept-Encoding"}};
  if (codec::AcceptsGzip(call.req.Header("Accept-Encoding"))) {
    gzip = std::make_unique<codec::GzipWriter>();
    head["Content-Encoding"] = "gzip";
  }
  auto deadline = Clock::now() + kTransferTimeout;
  bool begun = false;
  auto begin = [&] {
    begun = true;
    return w.BeginStream(200, head).ok();
  };
  // Mid-body failures just return: the connection closes and the client sees a truncated body.
  for (;;) {
    auto ev = (*stream)->Next(deadline);
    if (!ev.ok()) {
      if (!begun) SendFileError(w, ev.status());
      return;
    }
    if (ev->kind == StreamEvent::Kind::kEnd) {
      if (!ev->status.ok()) {
        if (!begun) SendFileError(w, ev->status);
        return;
      }
      if (!begun) {
        // An empty file: `Content-Length: 0`, which the client reads as empty.
        (void)w.Send(200, {{"Content-Type", "application/octet-stream"}}, "");
        return;
      }
      if (gzip) {
        auto tail = gzip->Finish();
        if (!tail.ok() || !w.WriteChunk(*tail).ok()) return;
      }
      (void)w.EndStream();
      return;
    }
    if (ev->kind == StreamEvent::Kind::kMessage && !begun) {
      // {"size":N} comes before any byte: the file opened, the answer is 200.
      if (!begin()) return;
    } else if (ev->kind == StreamEvent::Kind::kData) {
      if (!begun && !begin()) return;
      if (!gzip) {
        if (!w.WriteChunk(ev->data).ok()) return;  // client gone; the stream cancels
        continue;
      }
      auto z = gzip->Write(ev->data);
      if (!z.ok() || !w.WriteChunk(*z).ok()) return;
    }
  }
}

Result<json> WriteOne(EnvdCall& call, const std::string& path, const std::string& user,
                      std::string_view data) {
  MOAT_ASSIGN_OR_RETURN(auto guest, call.Guest());
  auto deadline = Clock::now() + kTransferTimeout;
  MOAT_ASSIGN_OR_RETURN(auto stream,
                        guest->Open({{"op", "write_file"}, {"path", path}, {"user", user}}));
  Status wrote = stream->Write(SubChannel::kStdin, data, deadline);
  if (wrote.ok()) wrote = stream->CloseWrite(SubChannel::kStdin);
  json entry;
  for (;;) {
    auto ev = stream->Next(deadline);
    if (!ev.ok()) return ev.status();
    if (ev->kind == StreamEvent::Kind::kMessage) entry = ev->message;
    if (ev->kind == StreamEvent::Kind::kEnd) {
      MOAT_RETURN_IF_ERROR(ev->status);
      break;
    }
  }
  MOAT_RETURN_IF_ERROR(wrote);
  return json{
      {"path", entry.value("path", path)}, {"name", entry.value("name", "")}, {"type", "file"}};
}

void PostFiles(EnvdCall& call, http::ResponseWriter& w) {
  auto q = codec::ParseQuery(call.req.raw_query);
  auto path = codec::QueryValue(q, "path");
  std::string user = FileUser(call, q);
  std::string content_type = call.req.Header("Content-Type");
  json written = json::array();
  if (content_type.rfind("multipart/", 0) == 0) {
    auto boundary = codec::MultipartBoundary(content_type);
    if (!boundary.ok()) return SendRestError(w, boundary.status());
    auto parts = codec::ParseMultipart(call.req.body, *boundary);
    if (!parts.ok()) return SendRestError(w, parts.status());
    std::vector<const codec::MultipartPart*> files;
    for (const auto& p : *parts) {
      if (p.name == "file") files.push_back(&p);
    }
    if (files.empty())
      return SendRestError(w, InvalidArgument("no part named \"file\" in the upload"));
    if (path && !path->empty() && files.size() > 1) {
      return SendRestError(w, InvalidArgument("?path= names one file, the upload has several"));
    }
    for (const auto* p : files) {
      // A single-file write names its target in ?path=; otherwise each filename is the path.
      std::string target = path && !path->empty() ? *path : p->filename;
      if (target.empty())
        return SendRestError(w, InvalidArgument("a part has no filename and there is no ?path="));
      auto r = WriteOne(call, target, user, p->data);
      if (!r.ok()) return SendFileError(w, r.status());
      written.push_back(*r);
    }
  } else {
    if (!path || path->empty()) {
      return SendRestError(w, InvalidArgument("query parameter \"path\" is required"));
    }
    std::string encoding = call.req.Header("Content-Encoding");
    std::string inflated;
    std::string_view data = call.req.body;
    if (encoding == "gzip") {
      auto r = codec::GunzipBounded(call.req.body, kMaxInflated);
      if (!r.ok())
        return SendRestError(w, r.status(),
                             r.status().code() == ErrorCode::kResourceExhausted ? 413 : 400);
      inflated = std::move(*r);
      data = inflated;
    } else if (!encoding.empty() && encoding != "identity") {
      return SendRestError(w, InvalidArgument("unsupported Content-Encoding \"" + encoding + "\""));
    }
    auto r = WriteOne(call, *path, user, data);
    if (!r.ok()) return SendFileError(w, r.status());
    written.push_back(*r);
  }
  SendJson(w, 200, written.dump(-1, ' ', false, json::error_handler_t::replace));
}

}  // namespace

void RegisterEnvdFileRoutes(http::Router& router, EnvdContext& ctx) {
  // /health needs no token: it says whether the sandbox runs (502 when it does not).
  router.Add("GET", "/health",
             WithSandbox(ctx, EnvdErrors::kRest, false,
                         [](EnvdCall&, http::ResponseWriter& w) { SendNoContent(w); }));
  router.Add("GET", "/files", WithSandbox(ctx, EnvdErrors::kRest, true, GetFile));
  router.Add("POST", "/files", WithSandbox(ctx, EnvdErrors::kRest, true, PostFiles));
}

}  // namespace moat::api::routes
