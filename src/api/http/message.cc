#include "api/http/message.h"

#include <strings.h>

#include <algorithm>
#include <cstring>

namespace moat::api::http {

bool CaseInsensitiveLess::operator()(std::string_view a, std::string_view b) const {
  size_t n = std::min(a.size(), b.size());
  int c = ::strncasecmp(a.data(), b.data(), n);
  if (c != 0) return c < 0;
  return a.size() < b.size();
}

std::string Request::Header(std::string_view name) const {
  auto it = headers.find(std::string(name));
  return it == headers.end() ? std::string() : it->second;
}

std::string Request::Param(const std::string& name) const {
  auto it = params.find(name);
  return it == params.end() ? std::string() : it->second;
}

Result<size_t> StringBodySource::Read(char* buf, size_t size) {
  size_t n = std::min(size, data_.size());
  if (n > 0) std::memcpy(buf, data_.data(), n);
  data_.remove_prefix(n);
  return n;
}

int BodyErrorHttpStatus(const Status& status) {
  switch (status.code()) {
    case ErrorCode::kResourceExhausted: return 413;
    case ErrorCode::kDeadlineExceeded: return 408;
    default: return 400;
  }
}

Status RecordingWriter::Send(int status, Headers headers, std::string body) {
  if (started()) return FailedPrecondition("response already started");
  status_ = status;
  headers_ = std::move(headers);
  body_ = std::move(body);
  ended_ = true;
  return Status::Ok();
}

Status RecordingWriter::BeginStream(int status, Headers headers) {
  if (started()) return FailedPrecondition("response already started");
  status_ = status;
  headers_ = std::move(headers);
  streamed_ = true;
  return Status::Ok();
}

Status RecordingWriter::WriteChunk(std::string_view data) {
  if (!streamed_ || ended_) return FailedPrecondition("no open stream");
  body_.append(data);
  return Status::Ok();
}

Status RecordingWriter::EndStream() {
  if (!streamed_ || ended_) return FailedPrecondition("no open stream");
  ended_ = true;
  return Status::Ok();
}

}  // namespace moat::api::http
