#include "api/dashboard_static.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <ctime>
#include <optional>
#include <vector>

#include "api/codec/query.h"
#include "api/errors.h"
#include "common/unique_fd.h"

namespace moat::api {
namespace {

constexpr std::string_view kPrefix = "/dashboard";
// Nothing the dashboard ships is near this; a file past it is no file of ours.
constexpr off_t kMaxFileSize = 64 * 1024 * 1024;

struct File {
  std::string body;
  std::string etag;
  std::string last_modified;
};

// "Sun, 06 Nov 1994 08:49:37 GMT" (RFC 9110 §5.6.7).
std::string HttpDate(time_t t) {
  struct tm tm {};
  ::gmtime_r(&t, &tm);
  static const char* kDays[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s, %02d %s %04d %02d:%02d:%02d GMT", kDays[tm.tm_wday % 7],
                tm.tm_mday, kMonths[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
                tm.tm_sec);
  return buf;
}

// The path below the root as segments, or nullopt when it may not name a file there: an empty,
// ".", ".." or hidden segment (also percent-encoded: segments are split after decoding), a NUL
// or a backslash.
std::optional<std::vector<std::string>> SafeSegments(std::string_view rel) {
  std::string decoded = codec::PercentDecode(rel, false);
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    size_t slash = decoded.find('/', start);
    std::string seg = decoded.substr(start, slash - start);
    if (seg.empty() || seg.front() == '.' || seg.find('\0') != std::string::npos ||
        seg.find('\\') != std::string::npos) {
      return std::nullopt;
    }
    out.push_back(std::move(seg));
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return out;
}

// Opens root/segments... without following a symbolic link below root, and reads it if it is a
// regular file. nullopt when it is not there or not a regular file.
Result<std::optional<File>> ReadBelow(const std::string& root,
                                      const std::vector<std::string>& segments) {
  UniqueFd dir(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir) {
    if (errno == ENOENT || errno == ENOTDIR) return std::optional<File>();
    return ErrnoError("open(" + root + ")");
  }
  for (size_t i = 0; i + 1 < segments.size(); ++i) {
    UniqueFd next(
        ::openat(dir.get(), segments[i].c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!next) return std::optional<File>();  // absent, a file, or a symbolic link
    dir = std::move(next);
  }
  // O_NONBLOCK: a FIFO placed there must not hold the connection thread (it is refused below).
  UniqueFd fd(
      ::openat(dir.get(), segments.back().c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  if (!fd) return std::optional<File>();
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return ErrnoError("fstat(" + segments.back() + ")");
  if (!S_ISREG(st.st_mode) || st.st_size > kMaxFileSize) return std::optional<File>();
  File f;
  f.body.resize(static_cast<size_t>(st.st_size));
  size_t got = 0;
  while (got < f.body.size()) {
    ssize_t n = ::read(fd.get(), f.body.data() + got, f.body.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("read(" + segments.back() + ")");
    if (n == 0) break;  // it shrank while being read; serve what it is now
    got += static_cast<size_t>(n);
  }
  f.body.resize(got);
  char etag[64];
  std::snprintf(etag, sizeof etag, "\"%llx-%llx\"", static_cast<unsigned long long>(got),
                static_cast<unsigned long long>(st.st_mtim.tv_sec) * 1000000000ull +
                    static_cast<unsigned long long>(st.st_mtim.tv_nsec));
  f.etag = etag;
  f.last_modified = HttpDate(st.st_mtim.tv_sec);
  return std::optional<File>(std::move(f));
}

// Whether an If-None-Match header names `etag` (or is "*"); weak tags compare by their value.
bool EtagMatches(std::string_view header, std::string_view etag) {
  while (!header.empty()) {
    size_t comma = header.find(',');
    std::string_view tag = header.substr(0, comma);
    while (!tag.empty() && (tag.front() == ' ' || tag.front() == '\t')) tag.remove_prefix(1);
    while (!tag.empty() && (tag.back() == ' ' || tag.back() == '\t')) tag.remove_suffix(1);
    if (tag.substr(0, 2) == "W/") tag.remove_prefix(2);
    if (tag == "*" || tag == etag) return true;
    if (comma == std::string_view::npos) break;
    header.remove_prefix(comma + 1);
  }
  return false;
}

// Whether the request's Accept-Encoding takes gzip (without q=0).
bool AcceptsGzip(const http::Request& req) {
  std::string accept = req.Header("Accept-Encoding");
  for (char& c : accept) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  size_t at = accept.find("gzip");
  if (at == std::string::npos) return false;
  size_t end = accept.find(',', at);
  std::string params = accept.substr(at, end == std::string::npos ? std::string::npos : end - at);
  params.erase(std::remove(params.begin(), params.end(), ' '), params.end());
  return params.find("q=0") == std::string::npos || params.find("q=0.") != std::string::npos;
}

// `gzipped`: the body is the build's precompressed copy of the file (<name>.gz).
void SendFile(const http::Request& req, http::ResponseWriter& w, File file,
              std::string content_type, std::string cache_control, bool gzipped = false) {
  http::Headers h{{"ETag", file.etag},
                  {"Last-Modified", file.last_modified},
                  {"Cache-Control", std::move(cache_control)}};
  if (gzipped) {
    h["Content-Encoding"] = "gzip";
    h["Vary"] = "Accept-Encoding";
  }
  if (EtagMatches(req.Header("If-None-Match"), file.etag)) {
    (void)w.Send(304, std::move(h), "");
    return;
  }
  h["Content-Type"] = std::move(content_type);
  // A HEAD gets the head alone (the server then says Content-Length: 0; clients read no body).
  (void)w.Send(200, std::move(h), req.method == "HEAD" ? std::string() : std::move(file.body));
}

}  // namespace

std::string DefaultDashboardDir() {
  char buf[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "dashboard";
  std::string exe(buf, static_cast<size_t>(n));
  size_t slash = exe.rfind('/');
  std::string dir = slash == std::string::npos ? "." : exe.substr(0, slash);
  return dir + "/../dashboard";
}

http::Headers DashboardSecurityHeaders() {
  return {{"Content-Security-Policy",
           "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
           "connect-src 'self'"},
          {"X-Frame-Options", "DENY"},
          {"X-Content-Type-Options", "nosniff"}};
}

Status DashboardHeadersWriter::Send(int status, http::Headers headers, std::string body) {
  for (auto& [k, v] : DashboardSecurityHeaders()) headers[k] = v;
  return inner_.Send(status, std::move(headers), std::move(body));
}

Status DashboardHeadersWriter::BeginStream(int status, http::Headers headers) {
  for (auto& [k, v] : DashboardSecurityHeaders()) headers[k] = v;
  return inner_.BeginStream(status, std::move(headers));
}

bool IsDashboardFilePath(std::string_view path) {
  if (path == kPrefix) return true;
  if (path.substr(0, kPrefix.size() + 1) != "/dashboard/") return false;
  std::string_view rest = path.substr(kPrefix.size() + 1);
  return !(rest == "api" || rest.substr(0, 4) == "api/");
}

std::string ContentTypeOf(std::string_view file_name) {
  static const std::pair<std::string_view, const char*> kTypes[] = {
      {".html", "text/html; charset=utf-8"},
      {".js", "text/javascript; charset=utf-8"},
      {".mjs", "text/javascript; charset=utf-8"},
      {".css", "text/css; charset=utf-8"},
      {".json", "application/json"},
      {".map", "application/json"},
      {".txt", "text/plain; charset=utf-8"},
      {".svg", "image/svg+xml"},
      {".png", "image/png"},
      {".jpg", "image/jpeg"},
      {".jpeg", "image/jpeg"},
      {".gif", "image/gif"},
      {".webp", "image/webp"},
      {".ico", "image/x-icon"},
      {".woff", "font/woff"},
      {".woff2", "font/woff2"},
      {".ttf", "font/ttf"},
      {".otf", "font/otf"},
      {".wasm", "application/wasm"},
  };
  size_t dot = file_name.rfind('.');
  if (dot != std::string_view::npos) {
    std::string ext(file_name.substr(dot));
    for (char& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    for (const auto& [e, type] : kTypes) {
      if (ext == e) return type;
    }
  }
  return "application/octet-stream";
}

void ServeDashboardFile(const std::string& root, const http::Request& req,
                        http::ResponseWriter& writer) {
  DashboardHeadersWriter w(writer);
  if (req.method != "GET" && req.method != "HEAD") {
    return SendRestError(w, InvalidArgument(req.method + " is not allowed on " + req.path), 405);
  }
  if (req.path == kPrefix) {
    std::string location = "/dashboard/";
    if (!req.raw_query.empty()) location += "?" + req.raw_query;
    (void)w.Send(308, {{"Location", location}}, "");
    return;
  }
  std::string_view rel = std::string_view(req.path).substr(kPrefix.size() + 1);
  auto not_found = [&] { SendRestError(w, NotFound("no dashboard file " + req.path)); };
  std::vector<std::string> segments;
  if (!rel.empty()) {
    auto safe = SafeSegments(rel);
    // A trailing slash on one of the page's routes ("/dashboard/sandboxes/") is that route.
    if (!safe && rel.back() == '/') safe = SafeSegments(rel.substr(0, rel.size() - 1));
    if (!safe) return not_found();
    segments = std::move(*safe);
  }
  bool is_file = !segments.empty() &&
                 (segments.front() == "assets" || segments.back().find('.') != std::string::npos);
  if (is_file) {
    auto file = ReadBelow(root, segments);
    if (!file.ok()) return SendRestError(w, file.status());
    if (!*file) return not_found();
    bool versioned = codec::QueryValue(codec::ParseQuery(req.raw_query), "v").has_value();
    bool asset = segments.front() == "assets";
    std::string cache = asset && versioned ? "public, max-age=31536000, immutable" : "no-cache";
    // The build's gzip -9 copy of an asset (about a third of the bytes), when the client takes it.
    if (asset && AcceptsGzip(req)) {
      std::vector<std::string> gz = segments;
      gz.back() += ".gz";
      auto packed = ReadBelow(root, gz);
      if (packed.ok() && *packed) {
        (*packed)->etag.insert((*packed)->etag.size() - 1, "-gz");
        return SendFile(req, w, std::move(**packed), ContentTypeOf(segments.back()),
                        std::move(cache), /*gzipped=*/true);
      }
    }
    return SendFile(req, w, std::move(**file), ContentTypeOf(segments.back()), std::move(cache));
  }
  auto index = ReadBelow(root, {"index.html"});
  if (!index.ok()) return SendRestError(w, index.status());
  if (!*index) {
    return SendRestError(w, Unavailable("the dashboard was not built: " + root +
                                        "/index.html is missing (`make build` builds it)"));
  }
  SendFile(req, w, std::move(**index), "text/html; charset=utf-8", "no-cache");
}

}  // namespace moat::api
