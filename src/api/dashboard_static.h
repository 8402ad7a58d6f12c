// The dashboard's files (docs/dashboard-contract.md, "Static files"): /dashboard/ is index.html,
// /dashboard/assets/<file> the bundle, any other /dashboard/<path> without a dot in its last
// segment index.html again (the page's own routes), all from one directory that the build
// writes. Nothing outside that directory can be named: no "." or ".." segments (also when
// percent-encoded), no symbolic links followed below it, only regular files.
#pragma once

#include <string>
#include <string_view>

#include "api/http/message.h"

namespace moat::api {

// Where moatd finds the dashboard unless told: <the directory of moatd's binary>/../dashboard
// (build/dashboard for build/bin/moatd).
std::string DefaultDashboardDir();

// The headers every dashboard response carries (its CSP allows nothing but the page's own
// files: no inline script, no eval, no other origin; no framing; no content sniffing).
http::Headers DashboardSecurityHeaders();

// A writer that adds DashboardSecurityHeaders() to whatever response goes through it.
class DashboardHeadersWriter : public http::ResponseWriter {
 public:
  explicit DashboardHeadersWriter(http::ResponseWriter& inner) : inner_(inner) {}
  Status Send(int status, http::Headers headers, std::string body) override;
  Status BeginStream(int status, http::Headers headers) override;
  Status WriteChunk(std::string_view data) override { return inner_.WriteChunk(data); }
  Status EndStream() override { return inner_.EndStream(); }
  bool started() const override { return inner_.started(); }
  Result<http::HijackedConnection> Hijack() override { return inner_.Hijack(); }

 private:
  http::ResponseWriter& inner_;
};

// Whether a request path is the dashboard's to serve from files: /dashboard and everything
// under /dashboard/ but its API (/dashboard/api/...).
bool IsDashboardFilePath(std::string_view path);

// The Content-Type of a file by its extension (application/octet-stream when unknown).
std::string ContentTypeOf(std::string_view file_name);

// Answers a GET or HEAD of a dashboard file path from `root`: the file with its type, an ETag
// and Last-Modified (304 when If-None-Match matches), Cache-Control no-cache for index.html and
// the page's routes, a year for assets asked for with a version (`?v=`); 308 from /dashboard to
// /dashboard/; 404 (JSON) for a file that is not there or may not be named; 503 when the
// directory holds no index.html (the dashboard was not built). The security headers always.
void ServeDashboardFile(const std::string& root, const http::Request& req, http::ResponseWriter& w);

}  // namespace moat::api
