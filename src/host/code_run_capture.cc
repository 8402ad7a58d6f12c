#include "host/code_run_capture.h"

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>

#include "cli/code_stream.h"
#include "common/json_depth.h"

namespace moat::api {
namespace {

// An /execute body nests no deeper than its env_vars object: anything deeper is not one.
constexpr int kMaxRequestDepth = 8;
// A line buffer grown past this by a long line is given back once the line is decoded.
constexpr size_t kKeepLineCapacity = 64 * 1024;

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

char Lower(char c) {
  return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}

bool IEquals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(),
                                            [](char x, char y) { return Lower(x) == Lower(y); });
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

// `text` cut to at most `max` bytes, before a UTF-8 sequence rather than inside it.
std::string CutUtf8(std::string text, size_t max) {
  if (text.size() <= max) return text;
  size_t end = max;
  while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
  text.resize(end);
  return text;
}

// The first byte of `a` then `b` that is not JSON whitespace, or 0.
char FirstNonSpace(std::string_view a, std::string_view b) {
  for (std::string_view s : {a, b}) {
    size_t at = s.find_first_not_of(" \t\r");
    if (at != std::string_view::npos) return s[at];
  }
  return 0;
}

}  // namespace

void ExecuteStreamReader::Feed(std::string_view bytes) {
  while (!bytes.empty()) {
    switch (state_) {
      case State::kHead: bytes = TakeHead(bytes); break;
      case State::kChunkSize: bytes = TakeChunkSize(bytes); break;
      case State::kChunkData:
      case State::kLengthBody: {
        State was = state_;
        size_t n = static_cast<size_t>(std::min<uint64_t>(remaining_, bytes.size()));
        TakeBody(bytes.substr(0, n));
        bytes.remove_prefix(n);
        remaining_ -= n;
        if (state_ == was && remaining_ == 0) {
          if (was == State::kChunkData) {
            state_ = State::kChunkEnd;
          } else {
            EndBody();
          }
        }
        break;
      }
      case State::kChunkEnd: {
        // CRLF; a bare LF is taken too.
        char c = bytes.front();
        bytes.remove_prefix(1);
        if (c == '\n') {
          state_ = State::kChunkSize;
        } else if (c != '\r') {
          Fail();
        }
        break;
      }
      case State::kCloseBody:
        TakeBody(bytes);
        bytes = {};
        break;
      case State::kDone:
      case State::kFailed: return;
    }
  }
}

std::string_view ExecuteStreamReader::TakeHead(std::string_view bytes) {
  size_t from = head_.size() >= 3 ? head_.size() - 3 : 0;
  size_t before = head_.size();
  // Never more than the bound: past it without a blank line, it is no head.
  size_t take = std::min(bytes.size(), kMaxExecuteHead - head_.size());
  head_.append(bytes.substr(0, take));
  size_t end = head_.find("\r\n\r\n", from);
  if (end == std::string::npos) {
    if (head_.size() >= kMaxExecuteHead) Fail();
    return bytes.substr(take);
  }
  size_t used = end + 4 - before;
  std::string head = head_.substr(0, end + 4);
  std::string().swap(head_);
  ParseHead(head);
  return bytes.substr(used);
}

void ExecuteStreamReader::ParseHead(std::string_view head) {
  // "HTTP/1.x SSS reason"
  if (head.size() < 12 || head.substr(0, 7) != "HTTP/1." || head[8] != ' ' ||
      !std::all_of(head.begin() + 9, head.begin() + 12,
                   [](char c) { return c >= '0' && c <= '9'; })) {
    return Fail();
  }
  int status = (head[9] - '0') * 100 + (head[10] - '0') * 10 + (head[11] - '0');
  if (status >= 100 && status < 200 && status != 101) return;  // interim: the final head follows
  status_ = status;
  if (status != 200) {
    state_ = State::kDone;
    return;
  }
  bool chunked = false;
  bool has_length = false;
  uint64_t length = 0;
  size_t pos = head.find("\r\n") + 2;
  while (pos < head.size()) {
    size_t eol = head.find("\r\n", pos);
    std::string_view line = head.substr(pos, eol - pos);
    pos = eol + 2;
    size_t colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    std::string_view name = Trim(line.substr(0, colon));
    std::string_view value = Trim(line.substr(colon + 1));
    if (IEquals(name, "Transfer-Encoding")) {
      // The last coding is the framing one.
      size_t comma = value.rfind(',');
      chunked = IEquals(Trim(comma == std::string_view::npos ? value : value.substr(comma + 1)),
                        "chunked");
    } else if (IEquals(name, "Content-Length")) {
      if (value.empty() || value.size() > 18 ||
          !std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        return Fail();
      }
      has_length = true;
      length = std::stoull(std::string(value));
    }
  }
  if (chunked) {
    state_ = State::kChunkSize;
  } else if (has_length) {
    state_ = State::kLengthBody;
    remaining_ = length;
    if (length == 0) EndBody();
  } else {
    state_ = State::kCloseBody;
  }
}

std::string_view ExecuteStreamReader::TakeChunkSize(std::string_view bytes) {
  size_t newline = bytes.find('\n');
  std::string_view piece = newline == std::string_view::npos ? bytes : bytes.substr(0, newline);
  if (head_.size() + piece.size() > kMaxChunkSizeLine) {
    Fail();
    return {};
  }
  head_.append(piece);
  if (newline == std::string_view::npos) return {};
  std::string_view size = head_;
  size = Trim(size.substr(0, size.find(';')));
  if (size.empty() || size.size() > 15 || !std::all_of(size.begin(), size.end(), [](char c) {
        return (c >= '0' && c <= '9') || (Lower(c) >= 'a' && Lower(c) <= 'f');
      })) {
    Fail();
    return {};
  }
  remaining_ = std::stoull(std::string(size), nullptr, 16);
  head_.clear();
  if (remaining_ == 0) {
    EndBody();  // trailers, if any, are not read
  } else {
    state_ = State::kChunkData;
  }
  return bytes.substr(newline + 1);
}

void ExecuteStreamReader::TakeBody(std::string_view data) {
  while (!data.empty() && state_ != State::kDone && state_ != State::kFailed) {
    size_t newline = data.find('\n');
    if (skipping_) {
      if (newline == std::string_view::npos) return;
      data.remove_prefix(newline + 1);
      skipping_ = false;
      ++skipped_lines_;
      ++line_number_;
      continue;
    }
    std::string_view piece = newline == std::string_view::npos ? data : data.substr(0, newline);
    if (line_.size() + piece.size() > max_line_) {
      // Too long to keep. An object is skipped to its end (a large image result: nothing the
      // record keeps); anything else is not a line of the interpreter's stream. Decided on the
      // line's first max_line + 1 bytes, so that it does not depend on how they arrived.
      if (FirstNonSpace(line_, piece.substr(0, max_line_ + 1 - line_.size())) != '{') {
        return Fail();
      }
      std::string().swap(line_);
      skipping_ = true;
      continue;
    }
    line_.append(piece);
    if (newline == std::string_view::npos) return;
    data.remove_prefix(newline + 1);
    TakeLine();
  }
}

void ExecuteStreamReader::TakeLine() {
  ++line_number_;
  auto event = cli::DecodeCodeEvent(line_, line_number_);
  if (line_.capacity() > kKeepLineCapacity) {
    std::string().swap(line_);
  } else {
    line_.clear();
  }
  if (!event.ok()) return Fail();
  switch (event->type) {
    case cli::CodeEventType::kStdout: stdout_.Append(event->text); break;
    case cli::CodeEventType::kStderr: stderr_.Append(event->text); break;
    case cli::CodeEventType::kError: {
      // The last one wins, as in the official client.
      const cli::CodeError& e = event->error;
      std::string text = e.name.empty()    ? e.value
                         : e.value.empty() ? e.name
                                           : e.name + ": " + e.value;
      error_ = CutUtf8(std::move(text), kMaxExecuteError);
      error_seen_ = true;
      break;
    }
    case cli::CodeEventType::kEndOfExecution:
      ended_ = true;
      state_ = State::kDone;  // what follows says nothing more of this run
      std::string().swap(line_);
      break;
    default: break;
  }
}

void ExecuteStreamReader::EndBody() {
  if (!skipping_ && !line_.empty()) TakeLine();
  if (state_ != State::kFailed) state_ = State::kDone;
  std::string().swap(line_);
}

void ExecuteStreamReader::Fail() {
  state_ = State::kFailed;
  std::string().swap(head_);
  std::string().swap(line_);
  skipping_ = false;
}

void ExecuteStreamReader::Close(bool complete) {
  if (state_ == State::kCloseBody && complete) return EndBody();
  if (state_ != State::kFailed) state_ = State::kDone;
  std::string().swap(head_);
  std::string().swap(line_);
}

bool ExecuteStreamReader::settled() const {
  return ended_ || error_seen_ || state_ == State::kFailed || (status_ != 0 && status_ != 200);
}

void ExecuteStreamReader::Fill(store::CommandRecord* c) const {
  stdout_.Fill(&c->stdout_head, &c->stdout_tail, &c->stdout_bytes);
  stderr_.Fill(&c->stderr_head, &c->stderr_tail, &c->stderr_bytes);
  if (state_ == State::kFailed) {
    c->error = kUnparsableStream;
  } else if (status_ != 0 && status_ != 200) {
    c->error = "HTTP " + std::to_string(status_);
  } else if (error_seen_) {
    c->error = error_;
    c->exit_code = 1;
  } else if (ended_) {
    c->exit_code = 0;
  }
}

std::unique_ptr<CodeRunCapture> CodeRunCapture::Start(HistoryLog& log,
                                                      const std::string& sandbox_id,
                                                      const std::string& team_id,
                                                      std::string_view body) {
  if (!log.enabled() || JsonDepth(body, kMaxRequestDepth) < 0) return nullptr;
  nlohmann::json request;
  try {
    request = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  } catch (const nlohmann::json::exception&) {
    return nullptr;
  }
  if (!request.is_object()) return nullptr;  // a discarded parse too
  auto code = request.find("code");
  if (code == request.end() || !code->is_string()) return nullptr;
  store::CommandRecord rec;
  rec.sandbox_id = sandbox_id;
  rec.team_id = team_id;
  rec.kind = "code";
  rec.started_at_ms = NowMs();
  // The code goes in the started record only: FinishCommand does not rewrite it.
  store::CommandRecord started = rec;
  started.command = code->get<std::string>();
  rec.id = log.CommandStarted(std::move(started));
  if (rec.id == 0) return nullptr;  // the store failed (and counted it)
  return std::unique_ptr<CodeRunCapture>(new CodeRunCapture(log, std::move(rec)));
}

void CodeRunCapture::Finish(RelayEnd end, int status) {
  if (finished_) return;
  finished_ = true;
  reader_.Close(end == RelayEnd::kUpstreamClosed);
  reader_.Fill(&rec_);
  // The run is over either way: when its client leaves, the interpreter interrupts it
  // (E2B-CODE-INTERPRETER §4), so a record left open would count as a command in flight forever.
  rec_.ended_at_ms = NowMs();
  if (!reader_.settled() && rec_.error.empty()) {
    if (reader_.status() == 0 && status != 0 && status != 200) {
      rec_.error = "HTTP " + std::to_string(status);  // moatd's 502/504 in place of an answer
    } else if (end == RelayEnd::kClientGone) {
      rec_.error = "the client left before the run ended";
    } else if (end == RelayEnd::kIdleTimeout) {
      rec_.error = "the interpreter sent nothing for the proxy's idle timeout";
    } else if (end == RelayEnd::kUpstreamError) {
      rec_.error = "the connection to the interpreter failed before the run ended";
    } else {
      rec_.error = "the interpreter's stream ended before the run did";
    }
  }
  log_.CommandFinished(rec_);
}

}  // namespace moat::api
