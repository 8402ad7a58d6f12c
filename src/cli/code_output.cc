#include "cli/code_output.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include "common/unique_fd.h"

namespace moat::cli {
namespace {

// How many taken names SaveFile skips before it gives up (a directory full of earlier runs).
constexpr int kMaxNameAttempts = 100000;
constexpr size_t kMaxSavedFiles = 1000;
constexpr uint64_t kMaxSavedBytes = uint64_t{1} << 30;

Status WriteAllTo(int fd, std::string_view data, const char* what) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError(std::string("writing ") + what);
    data.remove_prefix(static_cast<size_t>(n));
  }
  return Status::Ok();
}

}  // namespace

Status CodeOutput::Consume(std::string_view chunk) {
  reader_.Append(chunk);
  for (;;) {
    MOAT_ASSIGN_OR_RETURN(auto line, reader_.Next());
    if (!line) return Status::Ok();
    MOAT_RETURN_IF_ERROR(Handle(*line, reader_.line_number()));
  }
}

Status CodeOutput::Finish() {
  for (;;) {
    MOAT_ASSIGN_OR_RETURN(auto line, reader_.Finish());
    if (!line) return Status::Ok();
    MOAT_RETURN_IF_ERROR(Handle(*line, reader_.line_number()));
  }
}

Status CodeOutput::Handle(const std::string& line, uint64_t line_number) {
  MOAT_ASSIGN_OR_RETURN(CodeEvent event, DecodeCodeEvent(line, line_number));
  if (event.type == CodeEventType::kError) raised_ = true;
  if (options_.json) return Write(out_, line + "\n");
  switch (event.type) {
    case CodeEventType::kStdout: return Write(out_, event.text);
    case CodeEventType::kStderr: return Write(err_, event.text);
    case CodeEventType::kResult: return ShowResult(event.result);
    case CodeEventType::kError: {
      const CodeError& e = event.error;
      if (!e.traceback.empty()) return WriteLine(err_, e.traceback);
      return WriteLine(err_, e.name.empty() ? e.value : e.name + ": " + e.value);
    }
    case CodeEventType::kNumberOfExecutions:
    case CodeEventType::kEndOfExecution:
    case CodeEventType::kKeepalive:
    case CodeEventType::kUnknown: return Status::Ok();
  }
  return Status::Ok();
}

Status CodeOutput::ShowResult(const CodeResult& result) {
  const uint64_t number = ++results_;
  const std::string name = "result " + std::to_string(number);
  // A result with a file form shows as its files: its text is then a placeholder repr
  // ("<Figure size 640x480 with 1 Axes>").
  for (const ResultFile& file : result.files) {
    auto bytes = DecodeResultFile(file);
    if (!bytes.ok()) {
      MOAT_RETURN_IF_ERROR(Report(name + ": " + bytes.status().message()));
      continue;
    }
    auto path = SaveFile(*bytes, file.format.extension);
    if (!path.ok()) {
      MOAT_RETURN_IF_ERROR(Report(name + ": saving " + std::string(file.format.mime) + ": " +
                                  path.status().message()));
      continue;
    }
    MOAT_RETURN_IF_ERROR(
        WriteLine(out_, "saved " + std::string(file.format.mime) + " to " + *path));
  }
  if (!result.files.empty()) return Status::Ok();
  if (auto text = ResultText(result)) return WriteLine(out_, *text);
  std::string fields;
  for (const auto& field : result.other_fields) {
    fields += (fields.empty() ? "" : ", ") + QuoteUntrusted(field, 80);
  }
  return WriteLine(err_, "(" + name + " has no text form" +
                             (fields.empty() ? "" : " (" + fields + ")") + "; --json shows it)");
}

Result<std::string> CodeOutput::SaveFile(std::string_view bytes, std::string_view extension) {
  std::string label = options_.dir_label;
  if (label.empty() || label.back() != '/') label += '/';
  if (saved_files_ >= kMaxSavedFiles || saved_bytes_ + bytes.size() > kMaxSavedBytes) {
    return ResourceExhausted("not saving more than " + std::to_string(kMaxSavedFiles) +
                             " files or " + std::to_string(kMaxSavedBytes >> 20) +
                             " MiB from one run (--json shows every result)");
  }
  for (int attempt = 0; attempt < kMaxNameAttempts; ++attempt) {
    std::string file = "result-" + std::to_string(next_file_++) + "." + std::string(extension);
    // O_EXCL: never an existing file, nor through a symlink planted under this name.
    UniqueFd fd(::openat(options_.dir_fd, file.c_str(),
                         O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644));
    if (!fd) {
      if (errno == EEXIST) continue;
      return ErrnoError("creating " + label + file);
    }
    if (Status s = WriteAllTo(fd.get(), bytes, (label + file).c_str()); !s.ok()) {
      ::unlinkat(options_.dir_fd, file.c_str(), 0);  // no half-written file left behind
      return s;
    }
    ++saved_files_;
    saved_bytes_ += bytes.size();
    return label + file;
  }
  return ResourceExhausted("no free result-N." + std::string(extension) + " name in " + label);
}

Status CodeOutput::Write(Stream& stream, std::string_view text) {
  if (text.empty()) return Status::Ok();
  stream.at_line_start = text.back() == '\n';
  return WriteAllTo(stream.fd, text, stream.name);
}

Status CodeOutput::WriteLine(Stream& stream, std::string_view text) {
  std::string line = stream.at_line_start ? "" : "\n";
  line += text;
  if (line.empty() || line.back() != '\n') line += '\n';
  return Write(stream, line);
}

Status CodeOutput::Report(const std::string& message) {
  failed_ = true;
  return WriteLine(err_, "moat: " + message);
}

}  // namespace moat::cli
