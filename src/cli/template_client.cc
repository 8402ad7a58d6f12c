#include "cli/template_client.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cstdlib>
#include <ctime>
#include <set>
#include <thread>

#include "api/codec/query.h"
#include "common/unique_fd.h"

namespace moat::cli {
namespace {

using api::codec::PercentEncode;

// Transport failures in a row the status poll rides out (moatd restarting) before giving up.
constexpr int kPollRetries = 5;
constexpr std::chrono::seconds kPollRetryDelay{1};
// Pages read after the build ended while they still bring log lines: enough for any log, a
// bound for a server that never sends the empty page.
constexpr int kMaxDrainPages = 1000;

std::string Now() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

void Log(const BuildObserver& observer, std::string level, std::string message) {
  if (observer.log)
    observer.log({.timestamp = Now(), .level = std::move(level), .message = std::move(message)});
}

std::string StringField(const json& object, const char* key) {
  if (!object.is_object()) return "";
  auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : "";
}

std::string HumanSize(uint64_t bytes) {
  char buf[32];
  if (bytes < 1024) {
    std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
  } else if (bytes < 1024 * 1024) {
    std::snprintf(buf, sizeof buf, "%.1f KiB", static_cast<double>(bytes) / 1024);
  } else {
    std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(bytes) / (1024 * 1024));
  }
  return buf;
}

std::string StepLine(const TemplateStep& step) {
  return step.line > 0 ? "Dockerfile line " + std::to_string(step.line) + ": " : "";
}

// An unnamed temporary file for the archive: it disappears with its descriptor.
Result<UniqueFd> TempFile() {
  const char* env = std::getenv("TMPDIR");
  std::string dir = env != nullptr && *env != '\0' ? env : "/tmp";
  int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC | O_EXCL, 0600);
  if (fd >= 0) return UniqueFd(fd);
  // Filesystems without O_TMPFILE: a named file, unlinked at once.
  std::string path = dir + "/moat-template-XXXXXX";
  fd = ::mkostemp(path.data(), O_CLOEXEC);
  if (fd < 0) return ErrnoError("creating a temporary file in " + dir);
  ::unlink(path.c_str());
  return UniqueFd(fd);
}

// PUT of the step's tar.gz to the upload URL, with Content-Length and without the API key.
Status Upload(ApiClient& api, const BuildContext& context, const CopyFiles& copy,
              const std::string& url, const BuildObserver& observer) {
  MOAT_ASSIGN_OR_RETURN(UniqueFd archive, TempFile());
  MOAT_RETURN_IF_ERROR(context.WriteArchive(copy.entries, archive.get()));
  struct stat st {};
  if (::fstat(archive.get(), &st) != 0) return ErrnoError("fstat(archive)");
  Log(observer, "info",
      "Uploading '" + copy.source + "' (" + std::to_string(copy.entries.size()) + " entries, " +
          HumanSize(static_cast<uint64_t>(st.st_size)) + " compressed)");

  UrlTarget where;
  if (!url.empty() && url.front() == '/') {  // a path on the API server itself
    where.base = api.base();
    where.base.prefix.clear();
    where.target = url;
  } else {
    MOAT_ASSIGN_OR_RETURN(where, ParseUrl(url));
  }
  HttpRequest put{
      .method = "PUT", .target = where.target, .headers = {}, .body = {}, .body_fd = archive.get()};
  auto response = SendHttp(where.base, put);
  const std::string what = "uploading the files of COPY " + copy.source;
  if (!response.ok()) return response.status().Annotate(what);
  if (response->status < 200 || response->status >= 300) {
    return ResponseError(*response).Annotate(what);
  }
  return Status::Ok();
}

Result<TemplateBuildResult> Follow(ApiClient& api, TemplateBuildResult build,
                                   const TemplateBuildOptions& options,
                                   const BuildObserver& observer) {
  const std::string path = "/templates/" + PercentEncode(build.template_id) + "/builds/" +
                           PercentEncode(build.build_id) + "/status?logsOffset=";
  uint64_t offset = 0;
  int failures = 0;
  int drained = 0;
  while (true) {
    Result<json> page = api.Control("GET", path + std::to_string(offset));
    if (!page.ok()) {
      if (page.status().code() == ErrorCode::kUnavailable && ++failures <= kPollRetries) {
        std::this_thread::sleep_for(kPollRetryDelay);
        continue;
      }
      return page.status().Annotate("following build " + build.build_id);
    }
    failures = 0;
    if (!page->is_object()) {
      return Internal("GET " + path + std::to_string(offset) + ": the answer is not a JSON object");
    }
    const json entries = page->value("logEntries", json::array());
    if (!entries.is_array()) {
      return Internal("GET " + path + std::to_string(offset) + ": logEntries is not an array");
    }
    for (const auto& e : entries) {
      if (observer.log) {
        observer.log({.timestamp = StringField(e, "timestamp"),
                      .level = StringField(e, "level"),
                      .message = StringField(e, "message")});
      }
    }
    offset += entries.size();
    if (observer.polled) observer.polled();

    const std::string status = StringField(*page, "status");
    if (status == "building" || status == "waiting") {
      std::this_thread::sleep_for(options.poll_interval);
      continue;
    }
    if (status != "ready" && status != "error") {
      return Internal("build " + build.build_id + " is in an unknown state \"" + status + "\"");
    }
    // The build has ended; its last log lines may still be coming.
    if (!entries.empty() && ++drained < kMaxDrainPages) {
      std::this_thread::sleep_for(options.poll_interval);
      continue;
    }
    if (status == "ready") return build;
    const json reason = page->value("reason", json::object());
    std::string message = StringField(reason, "message");
    if (message.empty()) message = "no reason given";
    return FailedPrecondition("build " + build.build_id + " failed: " + message);
  }
}

}  // namespace

Result<std::vector<CopyFiles>> PrepareCopies(const BuildContext& context,
                                             const DockerfileTemplate& dockerfile) {
  std::vector<CopyFiles> copies;
  for (size_t i = 0; i < dockerfile.steps.size(); ++i) {
    const TemplateStep& step = dockerfile.steps[i];
    if (step.type != "COPY") continue;
    CopyFiles copy{.step = i, .source = step.args.at(0), .entries = {}, .files_hash = {}};
    auto entries = context.Match(copy.source);
    if (!entries.ok()) return entries.status().Annotate(StepLine(step) + "COPY " + copy.source);
    copy.entries = std::move(*entries);
    MOAT_ASSIGN_OR_RETURN(copy.files_hash,
                          context.FilesHash(copy.source, step.args.at(1), copy.entries));
    copies.push_back(std::move(copy));
  }
  return copies;
}

json BuildStartBody(const DockerfileTemplate& dockerfile, const std::vector<CopyFiles>& copies,
                    bool force) {
  json steps = json::array();
  auto copy = copies.begin();
  for (size_t i = 0; i < dockerfile.steps.size(); ++i) {
    const TemplateStep& step = dockerfile.steps[i];
    json s = {{"type", step.type}, {"args", step.args}, {"force", false}};
    if (copy != copies.end() && copy->step == i) s["filesHash"] = (copy++)->files_hash;
    steps.push_back(std::move(s));
  }
  json body = {{"fromImage", dockerfile.from_image}, {"steps", std::move(steps)}, {"force", force}};
  if (!dockerfile.start_cmd.empty()) {
    body["startCmd"] = dockerfile.start_cmd;
    body["readyCmd"] = dockerfile.ready_cmd;
  }
  return body;
}

Result<TemplateBuildResult> BuildTemplate(ApiClient& api, const BuildContext& context,
                                          const DockerfileTemplate& dockerfile,
                                          const TemplateBuildOptions& options,
                                          const BuildObserver& observer) {
  // Every COPY is matched and hashed before anything is registered: a missing file then leaves
  // no build waiting on the server.
  MOAT_ASSIGN_OR_RETURN(std::vector<CopyFiles> copies, PrepareCopies(context, dockerfile));

  json request = {
      {"name", options.name}, {"cpuCount", options.cpu_count}, {"memoryMB", options.memory_mb}};
  if (options.min_free_disk_mb) request["minFreeDiskMb"] = *options.min_free_disk_mb;
  MOAT_ASSIGN_OR_RETURN(json registered, api.Control("POST", "/v3/templates", request));
  TemplateBuildResult build{.template_id = StringField(registered, "templateID"),
                            .build_id = StringField(registered, "buildID"),
                            .name = options.name};
  if (build.template_id.empty() || build.build_id.empty()) {
    return Internal("POST /v3/templates: the answer has no templateID or buildID");
  }
  Log(observer, "info",
      "Build " + build.build_id + " of template " + options.name + " (" + build.template_id +
          ") registered");

  const std::string tpl = "/templates/" + PercentEncode(build.template_id);
  std::set<std::string> handled;  // one upload per hash, however many steps share it
  for (const CopyFiles& copy : copies) {
    if (!handled.insert(copy.files_hash).second) continue;
    MOAT_ASSIGN_OR_RETURN(json upload, api.Control("GET", tpl + "/files/" + copy.files_hash));
    const bool present = upload.is_object() && upload.value("present", false) == true;
    if (present) {
      Log(observer, "info", "Skipping upload of '" + copy.source + "', already cached");
      continue;
    }
    const std::string url = StringField(upload, "url");
    if (url.empty()) {
      return FailedPrecondition("GET " + tpl + "/files/" + copy.files_hash +
                                ": the server lacks the files of COPY " + copy.source +
                                " but gave no upload URL");
    }
    MOAT_RETURN_IF_ERROR(Upload(api, context, copy, url, observer));
  }

  MOAT_RETURN_IF_ERROR(api.Control("POST", "/v2" + tpl + "/builds/" + PercentEncode(build.build_id),
                                   BuildStartBody(dockerfile, copies, options.no_cache))
                           .status());
  return Follow(api, std::move(build), options, observer);
}

std::string TemplateNameFromDir(std::string_view dir) {
  while (dir.size() > 1 && dir.back() == '/') dir.remove_suffix(1);
  size_t slash = dir.rfind('/');
  if (slash != std::string_view::npos) dir = dir.substr(slash + 1);
  std::string name;
  for (char c : dir) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    const bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
    if (ok) {
      name += c;
    } else if (!name.empty() && name.back() != '-') {
      name += '-';
    }
  }
  while (!name.empty() && name.back() == '-') name.pop_back();
  while (!name.empty() && name.front() == '-') name.erase(0, 1);
  return name.substr(0, 128);
}

Result<json> ListTemplates(ApiClient& api) {
  return api.Control("GET", "/templates");
}

Result<json> GetTemplate(ApiClient& api, const std::string& name_or_id) {
  auto r = api.Control("GET", "/templates/" + PercentEncode(name_or_id));
  if (!r.ok() && r.status().code() == ErrorCode::kNotFound) {
    return NotFound("template " + name_or_id + " not found");
  }
  return r;
}

Status DeleteTemplate(ApiClient& api, const std::string& name_or_id) {
  auto r = api.Control("DELETE", "/templates/" + PercentEncode(name_or_id));
  if (!r.ok() && r.status().code() == ErrorCode::kNotFound) {
    return NotFound("template " + name_or_id + " not found");
  }
  return r.status();
}

}  // namespace moat::cli
