// envd's HTTP file routes (E2B-WIRE §3): GET /files streams a file out of the sandbox (gzip if
// the client accepts it), POST /files writes one or more (multipart, or a raw octet-stream
// body, optionally gzip), streaming the body into the guest as it arrives.
#include <strings.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>

#include "api/codec/gzip.h"
#include "api/codec/multipart.h"
#include "api/codec/query.h"
#include "api/errors.h"
#include "api/routes/routes.h"
#include "channel/guest_ops.h"
#include "common/file_metadata.h"
#include "host/envd/envd_routes.h"

namespace moat::api::routes {
namespace {

using channel::StreamEvent;
using channel::SubChannel;
using Clock = std::chrono::steady_clock;

constexpr auto kTransferTimeout = std::chrono::seconds(300);
// A gzip upload may inflate to 1 GiB, and past its first MiB to no more than 1000 times what
// has come compressed (docs/security.md, "HTTP limits").
constexpr codec::InflateLimits kInflateLimits{1024u * 1024 * 1024, 1000, 1024 * 1024};
constexpr size_t kPiece = 64 * 1024;  // how much of a raw body is read at a time
constexpr size_t kMaxEpilogue = 64 * 1024;

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
  auto stream = (*guest)->Open(channel::proto::ReadFileOp{*path, FileUser(call, q)});
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
      auto header =
          channel::ops::Checked(**guest, channel::proto::DecodeReadFileHeader(ev->message));
      if (!header.ok()) return SendFileError(w, header.status());
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

// Where an upload's bytes come from: it pushes them through `write` (which blocks while the
// guest grants no credit, so a fast client waits on a slow guest) until the file's end.
using UploadPump = std::function<Status(const std::function<Status(std::string_view)>& write)>;

// Writes one file as its bytes arrive. A failure of the pump's own (the client's body: too
// large, too slow, corrupt) abandons the file, as if never begun, and is also put in
// `*client_error`.
Result<json> WriteOne(EnvdCall& call, const std::string& path, const std::string& user,
                      const FileMetadata& metadata, const UploadPump& pump, Status* client_error) {
  MOAT_ASSIGN_OR_RETURN(auto guest, call.Guest());
  if (!metadata.empty() && !guest->guest_hello().Has(channel::proto::kFeatureEnvd06)) {
    return FailedPrecondition(
        "this sandbox runs a guest agent from before file metadata (it was restored from an "
        "older snapshot); create it anew to use metadata");
  }
  auto deadline = Clock::now() + kTransferTimeout;
  MOAT_ASSIGN_OR_RETURN(
      auto stream, guest->Open(channel::proto::WriteFileOp{path, user, std::nullopt, metadata}));
  Status guest_write;
  Status wrote = pump([&](std::string_view piece) {
    // Each piece gets the whole transfer timeout: the client's pace is the body's own limit.
    guest_write = stream->Write(SubChannel::kStdin, piece, Clock::now() + kTransferTimeout);
    return guest_write;
  });
  if (!wrote.ok() && guest_write.ok()) {
    // Cancelled, the guest drops its temporary file: nothing of a half upload lands.
    stream->Cancel();
    *client_error = wrote;
    return wrote;
  }
  if (wrote.ok()) wrote = stream->CloseWrite(SubChannel::kStdin);
  deadline = Clock::now() + kTransferTimeout;
  std::optional<channel::proto::FileEntry> entry;
  for (;;) {
    auto ev = stream->Next(deadline);
    if (!ev.ok()) return ev.status();
    if (ev->kind == StreamEvent::Kind::kMessage) {
      auto e =
          channel::ops::Checked(*guest, channel::proto::DecodeFileEntry(ev->message, "write_file"));
      if (!e.ok()) return e.status();
      entry = std::move(*e);
    }
    if (ev->kind == StreamEvent::Kind::kEnd) {
      MOAT_RETURN_IF_ERROR(ev->status);
      break;
    }
  }
  MOAT_RETURN_IF_ERROR(wrote);
  json out = {
      {"path", entry ? entry->path : path}, {"name", entry ? entry->name : ""}, {"type", "file"}};
  if (entry && !entry->metadata.empty()) out["metadata"] = entry->metadata;
  return out;
}

// The upload's metadata: every `X-Metadata-<key>: <value>` header (E2B-WIRE §3), checked and
// normalised as envd does; the set replaces whatever the files had (no headers: none).
Result<FileMetadata> UploadMetadata(const http::Request& req) {
  constexpr std::string_view kPrefix = "x-metadata-";
  FileMetadata raw;
  for (const auto& [name, value] : req.headers) {
    if (name.size() <= kPrefix.size() ||
        ::strncasecmp(name.c_str(), kPrefix.data(), kPrefix.size()) != 0) {
      continue;
    }
    raw.emplace(name.substr(kPrefix.size()), value);
  }
  return NormalizeMetadata(raw);
}

// A client-side failure of an upload as an HTTP answer: 413 (too large, a decompression bomb),
// 408 (too slow), 400 (malformed).
void SendUploadError(http::ResponseWriter& w, const Status& s) {
  SendRestError(w, s, http::BodyErrorHttpStatus(s));
}

// Reads and drops what follows the closing delimiter (an epilogue, the final CRLF), so that the
// connection can carry another request; a long one is left unread (the connection closes).
void DropEpilogue(http::BodySource& body) {
  char buf[4096];
  for (size_t total = 0; total < kMaxEpilogue;) {
    auto n = body.Read(buf, sizeof buf);
    if (!n.ok() || *n == 0) return;
    total += *n;
  }
}

// multipart/form-data, one file per part named "file", each streamed into the guest as its part
// arrives. A part that breaks the rules after earlier ones were written leaves those written.
void PostMultipart(EnvdCall& call, http::ResponseWriter& w, http::BodySource& body,
                   const std::optional<std::string>& path, const std::string& user,
                   const FileMetadata& metadata) {
  auto boundary = codec::MultipartBoundary(call.req.Header("Content-Type"));
  if (!boundary.ok()) return SendRestError(w, boundary.status());
  codec::MultipartReader reader([&body](char* buf, size_t size) { return body.Read(buf, size); },
                                *boundary);
  using Kind = codec::MultipartReader::Event::Kind;
  json written = json::array();
  for (;;) {
    auto ev = reader.Next();
    if (!ev.ok()) return SendUploadError(w, ev.status());
    if (ev->kind == Kind::kEnd) break;
    if (ev->kind != Kind::kPart || ev->part.name != "file") continue;  // other fields: skipped
    if (path && !path->empty() && !written.empty()) {
      return SendRestError(w, InvalidArgument("?path= names one file, the upload has several"));
    }
    // A single-file write names its target in ?path=; otherwise each filename is the path.
    std::string target = path && !path->empty() ? *path : ev->part.filename;
    if (target.empty()) {
      return SendRestError(w, InvalidArgument("a part has no filename and there is no ?path="));
    }
    Status client_error;
    auto r = WriteOne(
        call, target, user, metadata,
        [&reader](const std::function<Status(std::string_view)>& write) -> Status {
          for (;;) {
            MOAT_ASSIGN_OR_RETURN(auto piece, reader.Next());
            if (piece.kind != Kind::kData) return Status::Ok();  // kPartEnd
            MOAT_RETURN_IF_ERROR(write(piece.data));
          }
        },
        &client_error);
    if (!client_error.ok()) return SendUploadError(w, client_error);
    if (!r.ok()) return SendFileError(w, r.status());
    written.push_back(*r);
  }
  if (written.empty()) {
    return SendRestError(w, InvalidArgument("no part named \"file\" in the upload"));
  }
  DropEpilogue(body);
  SendJson(w, 200, written.dump(-1, ' ', false, json::error_handler_t::replace));
}

// A raw body (application/octet-stream), optionally gzip: one file, streamed into the guest as
// it arrives (and inflated on the way, within kInflateLimits).
void PostRaw(EnvdCall& call, http::ResponseWriter& w, http::BodySource& body,
             const std::optional<std::string>& path, const std::string& user,
             const FileMetadata& metadata) {
  if (!path || path->empty()) {
    return SendRestError(w, InvalidArgument("query parameter \"path\" is required"));
  }
  std::string encoding = call.req.Header("Content-Encoding");
  bool gzip = encoding == "gzip";
  if (!gzip && !encoding.empty() && encoding != "identity") {
    return SendRestError(w, InvalidArgument("unsupported Content-Encoding \"" + encoding + "\""));
  }
  Status client_error;
  auto r = WriteOne(
      call, *path, user, metadata,
      [&body, gzip](const std::function<Status(std::string_view)>& write) -> Status {
        std::unique_ptr<codec::GunzipStream> gunzip;
        if (gzip) gunzip = std::make_unique<codec::GunzipStream>(kInflateLimits);
        auto buf = std::make_unique<char[]>(kPiece);
        for (;;) {
          MOAT_ASSIGN_OR_RETURN(size_t n, body.Read(buf.get(), kPiece));
          if (n == 0) return gunzip ? gunzip->Finish() : Status::Ok();
          std::string_view piece(buf.get(), n);
          MOAT_RETURN_IF_ERROR(gunzip ? gunzip->Write(piece, write) : write(piece));
        }
      },
      &client_error);
  if (!client_error.ok()) return SendUploadError(w, client_error);
  if (!r.ok()) return SendFileError(w, r.status());
  SendJson(w, 200, json::array({*r}).dump(-1, ' ', false, json::error_handler_t::replace));
}

// The body streams in (ApiServer admits POST /files with Admission::Body::kStream): moatd holds a
// piece of it at a time, whatever the upload's size.
void PostFiles(EnvdCall& call, http::ResponseWriter& w) {
  auto q = codec::ParseQuery(call.req.raw_query);
  auto path = codec::QueryValue(q, "path");
  std::string user = FileUser(call, q);
  // Checked before a byte is written: a bad header writes nothing.
  auto metadata = UploadMetadata(call.req);
  if (!metadata.ok()) return SendRestError(w, metadata.status());
  http::StringBodySource buffered(call.req.body);
  http::BodySource& body = call.req.Body(buffered);
  if (call.req.Header("Content-Type").rfind("multipart/", 0) == 0) {
    return PostMultipart(call, w, body, path, user, *metadata);
  }
  PostRaw(call, w, body, path, user, *metadata);
}

}  // namespace

void RegisterEnvdFileRoutes(http::Router& router, EnvdContext& ctx) {
  // /health needs no token: it says whether the sandbox runs (502 when it does not).
  router.Add("GET", "/health",
             WithSandbox(ctx, EnvdErrors::kRest, EnvdAuth::kNone,
                         [](EnvdCall&, http::ResponseWriter& w) { SendNoContent(w); }));
  router.Add("GET", "/files",
             WithSandbox(ctx, EnvdErrors::kRest, EnvdAuth::kTokenOrSignature, GetFile));
  router.Add("POST", "/files",
             WithSandbox(ctx, EnvdErrors::kRest, EnvdAuth::kTokenOrSignature, PostFiles));
}

}  // namespace moat::api::routes
