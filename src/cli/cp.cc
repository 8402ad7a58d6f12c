// `moat cp LOCAL ID:PATH` and `moat cp ID:PATH LOCAL`: envd's POST and GET /files (E2B-WIRE §3)
// with raw octet-stream bodies. LOCAL "-" is stdin or stdout. A sandbox path ending in "/", or a
// local directory, receives the file under its source's name.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <iterator>
#include <memory>
#include <string>

#include "api/codec/query.h"
#include "cli/api_client.h"
#include "cli/commands.h"
#include "cli/output.h"
#include "common/fs.h"
#include "common/unique_fd.h"

namespace moat::cli {
namespace {

struct CpOptions {
  bool json = false;
  std::string source;
  std::string destination;
};

std::string BaseName(std::string_view path) {
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  size_t slash = path.rfind('/');
  return std::string(slash == std::string_view::npos ? path : path.substr(slash + 1));
}

bool IsDirectory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

Result<std::string> ReadStdin() {
  std::string data;
  char buf[64 * 1024];
  while (true) {
    ssize_t n = ::read(0, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("reading stdin");
    if (n == 0) return data;
    data.append(buf, static_cast<size_t>(n));
  }
}

Status WriteAll(int fd, std::string_view data, const std::string& what) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("writing " + what);
    data.remove_prefix(static_cast<size_t>(n));
  }
  return Status::Ok();
}

std::string FilesTarget(const std::string& path) {
  return "/files?path=" + api::codec::PercentEncode(path);
}

int Upload(ApiClient& api, const CpOptions& o, const std::string& local, const CpEndpoint& dst) {
  std::string remote = dst.path;
  if (remote.empty() || remote.back() == '/') {
    if (local == "-") return ReportError(InvalidArgument("cp from stdin needs a file name"));
    remote += BaseName(local);
  }
  auto data = local == "-" ? ReadStdin() : ReadFile(local);
  if (!data.ok()) return ReportError(data.status());
  auto headers = api.EnvdHeaders(*dst.sandbox_id, "");
  if (!headers.ok()) return ReportError(headers.status());
  HttpRequest req{.method = "POST",
                  .target = FilesTarget(remote),
                  .headers = std::move(*headers),
                  .body = std::move(*data)};
  req.headers.emplace_back("Content-Type", "application/octet-stream");
  auto resp = api.Send(req);
  if (!resp.ok()) return ReportError(resp.status());
  if (resp->status != 200) return ReportError(ResponseError(*resp));
  if (o.json) {
    json written = json::parse(resp->body, nullptr, /*allow_exceptions=*/false);
    if (!written.is_discarded()) PrintJson(written);
  }
  return 0;
}

int Download(ApiClient& api, const CpEndpoint& src, std::string local) {
  if (local != "-" && IsDirectory(local)) local += "/" + BaseName(src.path);
  auto headers = api.EnvdHeaders(*src.sandbox_id, "");
  if (!headers.ok()) return ReportError(headers.status());
  HttpRequest req{
      .method = "GET", .target = FilesTarget(src.path), .headers = std::move(*headers), .body = {}};

  // The local file is created only once the sandbox has answered 200, so a failed copy leaves
  // nothing behind.
  UniqueFd file;
  auto open_local = [&]() -> Status {
    if (local == "-" || file.get() >= 0) return Status::Ok();
    int fd = ::open(local.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return ErrnoError("open(" + local + ")");
    file = UniqueFd(fd);
    return Status::Ok();
  };
  auto sink = [&](std::string_view chunk) -> Status {
    MOAT_RETURN_IF_ERROR(open_local());
    return WriteAll(local == "-" ? 1 : file.get(), chunk, local == "-" ? "stdout" : local);
  };
  auto resp = api.Send(req, sink);
  if (!resp.ok()) return ReportError(resp.status());
  if (resp->status != 200) return ReportError(ResponseError(*resp));
  Status opened = open_local();  // an empty file sends no chunk
  if (!opened.ok()) return ReportError(opened);
  return 0;
}

}  // namespace

Runner AddCp(CLI::App& app) {
  auto o = std::make_shared<CpOptions>();
  auto* cmd = app.add_subcommand(
      "cp", "copy a file into or out of a sandbox: moat cp LOCAL ID:PATH | moat cp ID:PATH LOCAL");
  cmd->add_option("source", o->source, "LOCAL, ID:PATH or - (stdin)")->required();
  cmd->add_option("destination", o->destination, "LOCAL, ID:PATH or - (stdout)")->required();
  cmd->add_flag("--json", o->json, "print the API's JSON response to an upload");
  return [o] {
    CpEndpoint src = ParseCpEndpoint(o->source);
    CpEndpoint dst = ParseCpEndpoint(o->destination);
    if (src.sandbox_id.has_value() == dst.sandbox_id.has_value()) {
      return ReportError(
          InvalidArgument("cp copies between this host and a sandbox: exactly one "
                          "of SOURCE and DESTINATION must be ID:PATH"));
    }
    auto config = ApiConfigFromEnv();
    if (!config.ok()) return ReportError(config.status());
    ApiClient api(std::move(*config));
    if (dst.sandbox_id) return Upload(api, *o, src.path, dst);
    return Download(api, src, dst.path);
  };
}

}  // namespace moat::cli
