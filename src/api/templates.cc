#include "api/templates.h"

#include <fcntl.h>
#include <openssl/hmac.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <ctime>

#include "api/auth.h"
#include "api/codec/protojson.h"
#include "common/builtin_templates.h"
#include "common/cleanup.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/tar_check.h"
#include "common/unique_fd.h"
#include "common/utf8.h"

namespace moat::api {
namespace {

using nlohmann::json;

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool IsUuid(std::string_view s) {
  if (s.size() != 36) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    char c = s[i];
    if (dash ? c != '-' : !std::isxdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

bool AliasChars(std::string_view s) {
  return !s.empty() && s.size() <= 128 && std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
  });
}

bool TagChars(std::string_view s) {
  return !s.empty() && s.size() <= 128 && std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.';
  });
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string Trim(std::string_view s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  return std::string(s.substr(a, b - a));
}

std::string NewUuid() {
  std::string hex = RandomToken("", 16);
  // Version 4, variant 10xx.
  hex[12] = '4';
  static constexpr char kVariant[] = "89ab";
  hex[16] = kVariant[std::stoi(hex.substr(16, 1), nullptr, 16) & 3];
  return hex.substr(0, 8) + "-" + hex.substr(8, 4) + "-" + hex.substr(12, 4) + "-" +
         hex.substr(16, 4) + "-" + hex.substr(20, 12);
}

std::string NewTemplateId() {
  static constexpr char kChars[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  std::string raw = RandomToken("", 20);  // 40 hex digits: two per character
  std::string id;
  for (size_t i = 0; i < 20; ++i) {
    id.push_back(kChars[std::stoi(raw.substr(2 * i, 2), nullptr, 16) % 36]);
  }
  return id;
}

std::string Hmac(const std::string& key, const std::string& message) {
  unsigned char out[32];
  unsigned int len = sizeof out;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(message.data()), message.size(), out, &len);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned i = 0; i < len; ++i) {
    hex.push_back(kHex[out[i] >> 4]);
    hex.push_back(kHex[out[i] & 15]);
  }
  return hex;
}

std::string Time(int64_t ms) {
  return codec::Rfc3339(ms * 1000000);
}

json LogJson(const store::BuildLogRecord& l) {
  json e = {{"timestamp", Time(l.timestamp_ms)}, {"level", l.level}, {"message", l.message}};
  if (!l.step.empty()) e["step"] = l.step;
  return e;
}

// An optional int32 field: its value, or `def` when absent; invalid_argument when not an integer.
Result<int64_t> IntField(const json& body, const char* name, int64_t def) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return def;
  if (!it->is_number_integer()) {
    return InvalidArgument(std::string("field \"") + name + "\" must be an integer");
  }
  return it->get<int64_t>();
}

constexpr int64_t kMaxBuildLogLines = 50000;
constexpr size_t kMaxBuildLogLine = 8192;

}  // namespace

Result<TemplateName> ParseTemplateName(std::string_view raw) {
  std::string name = Lower(Trim(raw));
  if (name.empty()) return InvalidArgument("Name is required");
  TemplateName out;
  size_t slash = name.find('/');
  if (slash != std::string::npos) {
    out.ns = name.substr(0, slash);
    name = name.substr(slash + 1);
    if (!AliasChars(out.ns)) {
      return InvalidArgument("invalid template namespace \"" + out.ns +
                             "\": use a-z, 0-9, - and _");
    }
  }
  size_t colon = name.find(':');
  if (colon != std::string::npos) {
    out.tag = name.substr(colon + 1);
    name = name.substr(0, colon);
    // A UUID is no tag, but resolution takes one as a build id (E2B-TEMPLATES §5): Register
    // refuses it.
    if (!TagChars(out.tag)) {
      return InvalidArgument("invalid tag \"" + out.tag + "\": use a-z, 0-9, -, _ and .");
    }
    if (out.tag == "default") out.tag.clear();
  }
  if (!AliasChars(name)) {
    return InvalidArgument("invalid template name \"" + name + "\": use a-z, 0-9, - and _");
  }
  out.alias = name;
  return out;
}

TemplateService::TemplateService(store::Store& store, HostDirectory& hosts, TemplateOptions options)
    : store_(store), hosts_(hosts), options_(std::move(options)) {
  if (options_.fail_interrupted_builds) {
    auto stuck = store_.BuildsInStatus(std::string(store::kBuildBuilding));
    if (stuck.ok()) {
      for (const auto& b : *stuck) {
        store::BuildUpdate u;
        u.status = std::string(store::kBuildError);
        u.reason = json{
            {"message", "the build was interrupted: moatd stopped while it ran"},
            {"step",
             "base"}}.dump(-1, ' ', false, json::error_handler_t::replace);
        u.finished_at_ms = NowMs();
        (void)store_.TransitionBuild(b.id, std::string(store::kBuildBuilding), u);
      }
    }
  }
}

TemplateService::~TemplateService() {
  std::map<std::string, std::thread> threads;
  std::vector<std::thread> finished;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    threads.swap(threads_);
    finished.swap(finished_);
  }
  for (auto& [id, t] : threads) t.join();
  for (auto& t : finished) t.join();
}

size_t TemplateService::running() {
  std::lock_guard lock(mu_);
  return threads_.size();
}

std::string TemplateService::UploadPath(const std::string& team_id, const std::string& hash) const {
  return options_.uploads_dir + "/" + team_id + "/" + hash;
}

Result<store::TemplateRecord> TemplateService::Owned(const store::TeamRecord& team,
                                                     const std::string& id_or_name) {
  MOAT_ASSIGN_OR_RETURN(auto by_id, store_.GetTemplate(id_or_name));
  if (by_id && by_id->team_id == team.id) return *by_id;
  auto name = ParseTemplateName(id_or_name);
  if (name.ok() && (name->ns.empty() || name->ns == Lower(team.name) || name->ns == team.id)) {
    MOAT_ASSIGN_OR_RETURN(auto by_alias, store_.TemplateByAlias(team.id, name->alias));
    if (by_alias) return *by_alias;
  }
  return NotFound("template '" + id_or_name + "' not found");
}

Result<json> TemplateService::Register(const store::TeamRecord& team, const json& body) {
  if (!body.is_object()) return InvalidArgument("the body must be a JSON object");
  std::string raw_name;
  if (auto n = body.find("name"); n != body.end() && n->is_string()) {
    raw_name = *n;
  } else if (auto a = body.find("alias"); a != body.end() && a->is_string()) {
    raw_name = *a;
  }
  MOAT_ASSIGN_OR_RETURN(TemplateName name, ParseTemplateName(raw_name));
  if (IsUuid(name.tag)) {
    return InvalidArgument("invalid tag \"" + name.tag + "\": a tag must not be a UUID");
  }
  if (!name.ns.empty() && name.ns != Lower(team.name) && name.ns != team.id) {
    return InvalidArgument("namespace \"" + name.ns + "\" is not your team's");
  }
  if (name.alias == "base" || name.alias == "code-interpreter-v1") {
    return Status(ErrorCode::kAlreadyExists, "Alias '" + name.alias + "' is already used");
  }
  std::vector<std::string> tags;
  if (!name.tag.empty()) tags.push_back(name.tag);
  if (auto t = body.find("tags"); t != body.end() && !t->is_null()) {
    if (!t->is_array()) return InvalidArgument("field \"tags\" must be an array of strings");
    for (const auto& v : *t) {
      if (!v.is_string()) return InvalidArgument("field \"tags\" must be an array of strings");
      std::string tag = Lower(Trim(v.get<std::string>()));
      if (!TagChars(tag) || IsUuid(tag)) return InvalidArgument("invalid tag \"" + tag + "\"");
      if (std::find(tags.begin(), tags.end(), tag) == tags.end()) tags.push_back(tag);
    }
  }
  if (tags.empty()) tags.push_back("default");
  MOAT_ASSIGN_OR_RETURN(int64_t cpu, IntField(body, "cpuCount", 2));
  MOAT_ASSIGN_OR_RETURN(int64_t mem, IntField(body, "memoryMB", 1024));
  MOAT_ASSIGN_OR_RETURN(int64_t disk, IntField(body, "minFreeDiskMb", 0));
  if (cpu < 1 || cpu > 32) return InvalidArgument("CPU count must be between 1 and 32");
  if (cpu != 1 && cpu % 2 != 0) return InvalidArgument("CPU count must be 1 or an even number");
  if (mem < 128) return InvalidArgument("Memory must be at least 128 MiB");
  if (mem > 65536) return InvalidArgument("Memory must be at most 65536 MiB");
  if (mem % 2 != 0) return InvalidArgument("Memory must be divisible by 2");
  if (disk < 0 || disk > 65536) {
    return InvalidArgument("minFreeDiskMb must be between 0 and 65536");
  }
  int64_t now = NowMs();
  MOAT_ASSIGN_OR_RETURN(auto existing, store_.TemplateByAlias(team.id, name.alias));
  store::TemplateRecord tmpl;
  if (existing) {
    tmpl = *existing;
  } else {
    tmpl = store::TemplateRecord{.id = NewTemplateId(),
                                 .team_id = team.id,
                                 .alias = name.alias,
                                 .created_at_ms = now,
                                 .updated_at_ms = now};
    Status s = store_.InsertTemplate(tmpl);
    if (s.code() == ErrorCode::kAlreadyExists) {
      // Registered by a request racing this one: that template.
      MOAT_ASSIGN_OR_RETURN(auto again, store_.TemplateByAlias(team.id, name.alias));
      if (!again) return s;
      tmpl = *again;
    } else if (!s.ok()) {
      return s;
    }
  }
  store::TemplateBuildRecord build{.id = NewUuid(),
                                   .template_id = tmpl.id,
                                   .team_id = team.id,
                                   .cpu_count = static_cast<uint32_t>(cpu),
                                   .memory_mb = static_cast<uint32_t>(mem),
                                   .min_free_disk_mb = static_cast<uint32_t>(disk),
                                   .created_at_ms = now};
  MOAT_RETURN_IF_ERROR(store_.InsertBuild(build, tags));
  LogInfo("api.template_build_registered",
          {{"template", tmpl.id}, {"alias", tmpl.alias}, {"build", build.id}, {"team", team.id}});
  return json{{"templateID", tmpl.id},   {"buildID", build.id}, {"names", {tmpl.alias}},
              {"aliases", {tmpl.alias}}, {"tags", tags},        {"public", tmpl.is_public}};
}

Result<json> TemplateService::FileUpload(const store::TeamRecord& team,
                                         const std::string& template_id, const std::string& hash,
                                         const std::string& base_url) {
  if (hash.size() != 64 || hash.find_first_not_of("0123456789abcdef") != std::string::npos) {
    return InvalidArgument("Invalid files hash");
  }
  MOAT_RETURN_IF_ERROR(Owned(team, template_id).status());
  MOAT_ASSIGN_OR_RETURN(bool present, store_.HasTemplateFile(team.id, hash));
  int64_t expires = NowMs() / 1000 + options_.upload_url_ttl.count();
  std::string message = team.id + "\n" + hash + "\n" + std::to_string(expires);
  std::string url = base_url + "/template-files/upload?team=" + team.id + "&hash=" + hash +
                    "&expires=" + std::to_string(expires) +
                    "&token=" + Hmac(options_.upload_secret, message);
  return json{{"present", present}, {"url", url}};
}

Result<TemplateService::UploadTarget> TemplateService::CheckUploadUrl(
    const std::map<std::string, std::string>& q) const {
  auto get = [&](const char* k) -> std::string {
    auto it = q.find(k);
    return it == q.end() ? "" : it->second;
  };
  UploadTarget t{get("team"), get("hash")};
  std::string expires = get("expires"), token = get("token");
  if (t.team_id.empty() || t.hash.empty() || expires.empty() || token.empty()) {
    return InvalidArgument("the upload URL lacks team, hash, expires or token");
  }
  if (t.hash.size() != 64 || t.hash.find_first_not_of("0123456789abcdef") != std::string::npos ||
      t.team_id.find_first_of("/.") != std::string::npos ||
      expires.find_first_not_of("0123456789") != std::string::npos || expires.size() > 18) {
    return Status(ErrorCode::kPermissionDenied, "the upload URL is not valid");
  }
  std::string message = t.team_id + "\n" + t.hash + "\n" + expires;
  if (!SecretsEqual(Hmac(options_.upload_secret, message), token)) {
    return Status(ErrorCode::kPermissionDenied, "the upload URL's signature is not valid");
  }
  if (std::stoll(expires) < NowMs() / 1000) {
    return Status(ErrorCode::kPermissionDenied, "the upload URL has expired");
  }
  return t;
}

Status TemplateService::AcceptUpload(const UploadTarget& target, http::Request& req) {
  std::string dir = options_.uploads_dir + "/" + target.team_id;
  MOAT_RETURN_IF_ERROR(MakeDirs(dir, 0700));
  std::string tmp = dir + "/.upload-" + RandomToken("", 8);
  Cleanup remove_tmp([&] { ::unlink(tmp.c_str()); });
  {
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (!fd) return ErrnoError("open(" + tmp + ")");
    http::StringBodySource fallback(req.body);
    http::BodySource& body = req.Body(fallback);
    char buf[65536];
    for (;;) {
      MOAT_ASSIGN_OR_RETURN(size_t n, body.Read(buf, sizeof buf));
      if (n == 0) break;
      for (size_t off = 0; off < n;) {
        ssize_t w = ::write(fd.get(), buf + off, n - off);
        if (w < 0) return ErrnoError("write(" + tmp + ")");
        off += static_cast<size_t>(w);
      }
    }
    if (::fsync(fd.get()) < 0) return ErrnoError("fsync(" + tmp + ")");
  }
  // Refused here rather than at build time: not a tar, a path out of its directory, a device.
  MOAT_RETURN_IF_ERROR(CheckTarArchive(tmp, "", uint64_t{4} << 30));
  // Into the store (every replica serves it to any host), and kept here as a cache.
  MOAT_RETURN_IF_ERROR(store_.PutTemplateFile(target.team_id, target.hash, tmp));
  std::string final_path = UploadPath(target.team_id, target.hash);
  if (::rename(tmp.c_str(), final_path.c_str()) < 0) return ErrnoError("rename(" + tmp + ")");
  remove_tmp.Cancel();
  return Status::Ok();
}

Status TemplateService::StartBuild(const store::TeamRecord& team, const std::string& template_id,
                                   const std::string& build_id, const json& body) {
  if (!body.is_object()) return InvalidArgument("the body must be a JSON object");
  if (!IsUuid(build_id)) return InvalidArgument("build ID \"" + build_id + "\" is not a UUID");
  MOAT_ASSIGN_OR_RETURN(store::TemplateRecord tmpl, Owned(team, template_id));
  MOAT_ASSIGN_OR_RETURN(auto build, store_.GetBuild(build_id));
  if (!build || build->template_id != tmpl.id) {
    return NotFound("build '" + build_id + "' of template '" + template_id + "' not found");
  }
  std::string from_image =
      body.value("fromImage", json()).is_string() ? body["fromImage"].get<std::string>() : "";
  std::string from_template =
      body.value("fromTemplate", json()).is_string() ? body["fromTemplate"].get<std::string>() : "";
  if (from_image.empty() == from_template.empty()) {
    return InvalidArgument("exactly one of fromImage and fromTemplate must be given");
  }
  auto steps = body.find("steps");
  if (steps != body.end() && !steps->is_null()) {
    if (!steps->is_array()) return InvalidArgument("field \"steps\" must be an array");
    if (steps->size() > 256) return InvalidArgument("a template has at most 256 steps");
    for (size_t i = 0; i < steps->size(); ++i) {
      const json& s = (*steps)[i];
      if (!s.is_object() || !s.value("type", json()).is_string() ||
          (s.contains("args") && !s["args"].is_array())) {
        return InvalidArgument("step " + std::to_string(i + 1) +
                               " needs a \"type\" string and an \"args\" array");
      }
      for (const auto& a : s.value("args", json::array())) {
        if (!a.is_string()) {
          return InvalidArgument("step " + std::to_string(i + 1) + ": args must be strings");
        }
      }
    }
  }
  for (const char* k : {"startCmd", "readyCmd"}) {
    if (body.contains(k) && !body[k].is_null() && !body[k].is_string()) {
      return InvalidArgument(std::string("field \"") + k + "\" must be a string");
    }
  }
  {
    std::lock_guard lock(mu_);
    if (stopping_) return Unavailable("moatd is stopping");
    if (running_by_team_[team.id] >= options_.max_builds_per_team) {
      return ResourceExhausted("your team has " + std::to_string(options_.max_builds_per_team) +
                               " template builds running; start this one when one has finished");
    }
    ++running_by_team_[team.id];  // given back when the build ends (or does not start)
  }
  Cleanup give_back([&] { ReleaseTeamBuild(team.id); });
  store::BuildUpdate u;
  u.status = std::string(store::kBuildBuilding);
  // Stored without the registry password (the build itself gets the request as it came).
  json stored = body;
  if (auto reg = stored.find("fromImageRegistry"); reg != stored.end() && reg->is_object()) {
    for (const char* secret : {"password", "awsSecretAccessKey", "serviceAccountJson"}) {
      if (reg->contains(secret)) (*reg)[secret] = "(redacted)";
    }
  }
  u.spec = stored.dump(-1, ' ', false, json::error_handler_t::replace);
  u.started_at_ms = NowMs();
  MOAT_ASSIGN_OR_RETURN(bool started,
                        store_.TransitionBuild(build_id, std::string(store::kBuildWaiting), u));
  if (!started) return InvalidArgument("build is not in waiting state");
  build->status = u.status;
  build->spec = *u.spec;
  build->started_at_ms = *u.started_at_ms;
  std::lock_guard lock(mu_);
  if (stopping_) {
    // Stopping since the check above: the build is failed here rather than left `building`.
    Finish(*build, Unavailable("moatd stopped before the build could start"), "base", std::nullopt,
           "");
    return Unavailable("moatd is stopping");
  }
  for (auto& t : finished_) t.join();
  finished_.clear();
  give_back.Cancel();  // the build's thread gives it back
  threads_.emplace(build_id, std::thread([this, team, tmpl, b = *build, body] {
                     Cleanup done([&] { ReleaseTeamBuild(team.id); });
                     try {
                       RunBuild(team, tmpl, b, body);
                     } catch (const std::exception& e) {
                       // Never the process: the build fails (its thread is joined at the end).
                       Finish(b,
                              Internal(std::string("the build failed unexpectedly: ") + e.what()),
                              "base", std::nullopt, "");
                     }
                   }));
  return Status::Ok();
}

void TemplateService::ReleaseTeamBuild(const std::string& team_id) {
  std::lock_guard lock(mu_);
  if (--running_by_team_[team_id] <= 0) running_by_team_.erase(team_id);
}

void TemplateService::RunBuild(store::TeamRecord team, store::TemplateRecord tmpl,
                               store::TemplateBuildRecord build, json body) {
  // Builds of one template one at a time, in the order they started.
  std::shared_ptr<std::mutex> tmpl_lock;
  {
    std::lock_guard lock(mu_);
    auto& l = template_locks_[tmpl.id];
    if (!l) l = std::make_shared<std::mutex>();
    tmpl_lock = l;
  }
  // The log reaches the store in batches, each line within 150 ms of its arrival, also when a
  // long silent step follows it (the status polls show it while the step runs).
  std::mutex log_mu;
  std::condition_variable log_cv;
  bool log_done = false;
  std::vector<store::BuildLogRecord> pending;  // guarded by log_mu
  auto flush_locked = [&] {
    if (pending.empty()) return;
    Status s = store_.AppendBuildLogs(build.id, pending);
    if (!s.ok()) LogWarn("api.build_log_failed", {{"build", build.id}, {"error", s.ToString()}});
    pending.clear();
  };
  // A build's log is bounded (a step may print without end): past kMaxBuildLogLines lines only
  // moat's own errors are kept, and one line says so; every line at most kMaxBuildLogLine bytes.
  int64_t logged = 0;
  auto log = [&](const HostBuildLog& l) {
    std::lock_guard lock(log_mu);
    if (++logged > kMaxBuildLogLines && l.level != "error") {
      if (logged == kMaxBuildLogLines + 1) {
        pending.push_back({l.unix_ms, "warn", l.step,
                           "the build's log is longer than " + std::to_string(kMaxBuildLogLines) +
                               " lines: from here on only errors are kept"});
      }
      return;
    }
    std::string message = l.message.size() > kMaxBuildLogLine
                              ? l.message.substr(0, kMaxBuildLogLine) + "…"
                              : l.message;
    pending.push_back({l.unix_ms, l.level, l.step, ValidUtf8(message)});
    if (pending.size() >= 200) flush_locked();
  };
  std::thread flusher([&] {
    std::unique_lock lock(log_mu);
    for (;;) {
      bool done = log_cv.wait_for(lock, std::chrono::milliseconds(150), [&] { return log_done; });
      flush_locked();
      if (done) return;
    }
  });
  // The rest of the log into the store, and the flusher stopped.
  auto finish_log = [&] {
    {
      std::lock_guard lock(log_mu);
      log_done = true;
    }
    log_cv.notify_all();
    flusher.join();
  };
  std::string step = "base";
  std::string host_id;
  std::optional<HostTemplateBuilt> built;
  Status result = [&]() -> Status {
    std::lock_guard serial(*tmpl_lock);
    log({NowMs(), "info", "base", "Build " + build.id + " of template " + tmpl.alias + " started"});
    HostTemplateBuild hb{.build_id = build.id,
                         .template_id = tmpl.id,
                         .team_id = team.id,
                         .start = body,
                         .vcpus = build.cpu_count,
                         .memory_mib = build.memory_mb,
                         .min_free_disk_mib = build.min_free_disk_mb};
    // The base: `base`, or a ready build of one of the team's templates (on its host).
    std::string required_host;
    if (body.value("fromTemplate", json()).is_string()) {
      std::string from = body["fromTemplate"];
      if (from == hosts_.base_template().name || from == kCodeInterpreterTemplate) {
        hb.start["fromTemplate"] = from;  // built in: on any host that has it
      } else {
        auto parent = Resolve(team.id, from);
        if (!parent.ok()) return parent.status();
        if (!*parent) return NotFound("base template '" + from + "' not found");
        hb.start["fromTemplate"] = (*parent)->build.id;
        required_host = (*parent)->build.host_id;
      }
    }
    // The COPY steps' files.
    int n = 0;
    for (const auto& s : hb.start.value("steps", json::array())) {
      ++n;
      std::string hash =
          s.value("filesHash", json()).is_string() ? s["filesHash"].get<std::string>() : "";
      if (hash.empty()) continue;
      if (hash.size() != 64 || hash.find_first_not_of("0123456789abcdef") != std::string::npos) {
        step = std::to_string(n);
        return InvalidArgument("step " + step + ": invalid files hash");
      }
      std::string path = UploadPath(team.id, hash);
      if (!PathExists(path)) {
        // Uploaded through another replica: from the store into this one's cache.
        Status fetched = [&]() -> Status {
          MOAT_RETURN_IF_ERROR(MakeDirs(options_.uploads_dir + "/" + team.id, 0700));
          return store_.ReadTemplateFile(team.id, hash, path);
        }();
        if (!fetched.ok()) {
          step = std::to_string(n);
          if (fetched.code() == ErrorCode::kNotFound) {
            return NotFound("step " + step + ": the files of this COPY (hash " + hash +
                            ") were never uploaded");
          }
          return fetched.Annotate("step " + step + ": reading the uploaded files");
        }
      }
      hb.files[hash] = path;
    }
    Reservation need{build.cpu_count, build.memory_mb, false};
    auto place_on = [&](const std::string& host) -> Result<Placement> {
      MOAT_RETURN_IF_ERROR(hosts_.Reserve(host, need));
      auto h = hosts_.Host(host);
      if (!h.ok()) {
        hosts_.Release(host, need);
        return h.status();
      }
      return Placement{host, *h};
    };
    Result<Placement> placed = Unavailable("no host");
    if (!required_host.empty()) {
      placed = place_on(required_host);
    } else {
      // Layers are cached per host: a rebuild goes where the template was last built, if it
      // can, and anywhere else if not.
      std::string last_host;
      auto earlier = store_.ListBuilds(tmpl.id);
      if (earlier.ok()) {
        for (const auto& b : *earlier) {
          if (b.id != build.id && !b.host_id.empty()) {
            last_host = b.host_id;
            break;
          }
        }
      }
      if (!last_host.empty()) placed = place_on(last_host);
      if (!placed.ok()) placed = hosts_.Place(need);
    }
    if (!placed.ok()) return placed.status().Annotate("placing the build");
    host_id = placed->host_id;
    Cleanup release([&] { hosts_.Release(placed->host_id, need); });
    auto r = placed->host->BuildTemplate(hb, log, &step);
    if (!r.ok()) return r.status();
    built = *r;
    return Status::Ok();
  }();
  if (!result.ok()) {
    log({NowMs(), "error", step, "Build failed: " + result.message()});
  } else {
    log({NowMs(), "info", "finalize", "Build " + build.id + " is ready"});
  }
  finish_log();
  Finish(build, result, step, built, host_id);
  std::lock_guard lock(mu_);
  tmpl_lock.reset();
  if (auto l = template_locks_.find(tmpl.id);
      l != template_locks_.end() && l->second.use_count() == 1) {
    template_locks_.erase(l);  // no other build of it waits
  }
  auto it = threads_.find(build.id);
  if (it != threads_.end()) {
    finished_.push_back(std::move(it->second));
    threads_.erase(it);
  }
  cv_.notify_all();
}

void TemplateService::Finish(const store::TemplateBuildRecord& build, const Status& s,
                             const std::string& step, const std::optional<HostTemplateBuilt>& built,
                             const std::string& host_id) {
  store::BuildUpdate u;
  u.finished_at_ms = NowMs();
  u.host_id = host_id;
  if (s.ok() && built) {
    u.status = std::string(store::kBuildReady);
    u.result = built->result.dump(-1, ' ', false, json::error_handler_t::replace);
    u.disk_size_mb = built->disk_mib;
  } else {
    u.status = std::string(store::kBuildError);
    u.reason = json{{"message", ValidUtf8(s.message())}, {"step", step}}.dump(
        -1, ' ', false, json::error_handler_t::replace);
  }
  auto moved = store_.TransitionBuild(build.id, std::string(store::kBuildBuilding), u);
  if (!moved.ok() || !*moved) {
    LogWarn(
        "api.build_finish_lost",
        {{"build", build.id}, {"error", moved.ok() ? "not building" : moved.status().ToString()}});
  }
  LogInfo("api.template_build_finished", {{"build", build.id},
                                          {"template", build.template_id},
                                          {"status", u.status},
                                          {"error", s.ok() ? "" : s.message()}});
}

Result<json> TemplateService::BuildStatus(const store::TeamRecord& team,
                                          const std::string& template_id,
                                          const std::string& build_id, int64_t offset,
                                          int64_t limit) {
  MOAT_ASSIGN_OR_RETURN(store::TemplateRecord tmpl, Owned(team, template_id));
  MOAT_ASSIGN_OR_RETURN(auto build, store_.GetBuild(build_id));
  if (!build || build->template_id != tmpl.id) {
    return NotFound("Build '" + build_id + "' not found");
  }
  offset = std::max<int64_t>(offset, 0);
  limit = std::clamp<int64_t>(limit, 1, 100);
  MOAT_ASSIGN_OR_RETURN(auto logs, store_.BuildLogs(build_id, offset, limit));
  json entries = json::array();
  for (const auto& l : logs) entries.push_back(LogJson(l));
  json out = {{"templateID", tmpl.id},
              {"buildID", build->id},
              {"status", build->status},
              {"logEntries", entries},
              {"logs", json::array()}};
  if (build->status == store::kBuildError && !build->reason.empty()) {
    json reason = json::parse(build->reason, nullptr, false);
    if (!reason.is_object()) reason = json{{"message", build->reason}};
    // The failing step's entries at warn and above.
    json step_logs = json::array();
    std::string step = reason.value("step", "");
    auto all = store_.BuildLogs(build_id, 0, 20000);
    if (all.ok()) {
      for (const auto& l : *all) {
        if ((l.level == "warn" || l.level == "error") && (step.empty() || l.step == step)) {
          step_logs.push_back(LogJson(l));
        }
      }
    }
    reason["logEntries"] = step_logs;
    out["reason"] = reason;
  }
  return out;
}

Result<std::optional<ResolvedTemplate>> TemplateService::Resolve(const std::string& team_id,
                                                                 const std::string& raw) {
  std::optional<store::TemplateRecord> tmpl;
  std::string tag;
  MOAT_ASSIGN_OR_RETURN(auto by_id, store_.GetTemplate(raw));
  if (by_id && by_id->team_id == team_id) {
    tmpl = by_id;
  } else {
    auto name = ParseTemplateName(raw);
    if (!name.ok()) return std::optional<ResolvedTemplate>();
    if (!name->ns.empty()) {
      MOAT_ASSIGN_OR_RETURN(auto team, store_.GetTeam(team_id));
      if (!team || (name->ns != Lower(team->name) && name->ns != team->id)) {
        return std::optional<ResolvedTemplate>();
      }
    }
    MOAT_ASSIGN_OR_RETURN(tmpl, store_.TemplateByAlias(team_id, name->alias));
    if (!tmpl) return std::optional<ResolvedTemplate>();
    tag = name->tag;
  }
  std::optional<store::TemplateBuildRecord> build;
  if (IsUuid(tag)) {
    MOAT_ASSIGN_OR_RETURN(build, store_.GetBuild(tag));
    if (build && (build->template_id != tmpl->id || build->status != store::kBuildReady)) {
      build.reset();
    }
  } else {
    MOAT_ASSIGN_OR_RETURN(build, store_.ResolveTag(tmpl->id, tag.empty() ? "default" : tag));
  }
  if (!build) {
    return NotFound("tag '" + (tag.empty() ? std::string("default") : tag) +
                    "' does not exist for template '" + tmpl->alias +
                    "' (or has no ready build yet)");
  }
  ResolvedTemplate r{*tmpl, *build, ""};
  json result = json::parse(build->result, nullptr, false);
  if (result.is_object()) {
    r.default_user = result.value("context", json::object()).value("user", "");
  }
  return std::optional<ResolvedTemplate>(r);
}

Result<json> TemplateService::Alias(const store::TeamRecord& team, const std::string& alias) {
  if (alias == hosts_.base_template().name) return json{{"templateID", alias}, {"public", true}};
  MOAT_ASSIGN_OR_RETURN(TemplateName name, ParseTemplateName(alias));
  auto tmpl = Owned(team, name.ns.empty() ? name.alias : name.ns + "/" + name.alias);
  if (!tmpl.ok()) return NotFound("template alias '" + alias + "' not found");
  if (!name.tag.empty()) {
    MOAT_ASSIGN_OR_RETURN(auto tags, store_.ListTags(tmpl->id));
    bool found = std::any_of(tags.begin(), tags.end(),
                             [&](const store::TemplateTagRecord& t) { return t.tag == name.tag; });
    if (!found)
      return NotFound("tag '" + name.tag + "' of template '" + name.alias + "' not found");
  }
  return json{{"templateID", tmpl->id}, {"public", tmpl->is_public}};
}

namespace {

json TemplateJson(const store::TemplateRecord& t,
                  const std::vector<store::TemplateBuildRecord>& builds) {
  const store::TemplateBuildRecord* last_ready = nullptr;
  for (const auto& b : builds) {
    if (b.status == store::kBuildReady) {
      last_ready = &b;
      break;
    }
  }
  const store::TemplateBuildRecord* latest = builds.empty() ? nullptr : &builds.front();
  const store::TemplateBuildRecord* shown = last_ready != nullptr ? last_ready : latest;
  json out = {{"templateID", t.id},
              {"buildID", shown != nullptr ? json(shown->id) : json(nullptr)},
              {"cpuCount", shown != nullptr ? shown->cpu_count : 0},
              {"memoryMB", shown != nullptr ? shown->memory_mb : 0},
              {"diskSizeMB", last_ready != nullptr ? last_ready->disk_size_mb : 0},
              {"public", t.is_public},
              {"aliases", {t.alias}},
              {"names", {t.alias}},
              {"createdAt", Time(t.created_at_ms)},
              {"updatedAt", Time(std::max(t.updated_at_ms, latest ? latest->created_at_ms : 0))},
              {"lastSpawnedAt",
               t.last_spawned_at_ms > 0 ? json(Time(t.last_spawned_at_ms)) : json(nullptr)},
              {"spawnCount", t.spawn_count},
              {"buildCount", builds.size()},
              {"buildStatus", latest != nullptr ? latest->status : "waiting"},
              {"createdBy", nullptr},
              {"envdVersion", "0.6.4"}};
  return out;
}

}  // namespace

Result<json> TemplateService::List(const store::TeamRecord& team) {
  MOAT_ASSIGN_OR_RETURN(auto all, store_.ListTemplates(team.id));
  json out = json::array();
  for (const auto& t : all) {
    MOAT_ASSIGN_OR_RETURN(auto builds, store_.ListBuilds(t.id));
    out.push_back(TemplateJson(t, builds));
  }
  return out;
}

Result<json> TemplateService::Get(const store::TeamRecord& team, const std::string& id_or_name) {
  MOAT_ASSIGN_OR_RETURN(store::TemplateRecord t, Owned(team, id_or_name));
  MOAT_ASSIGN_OR_RETURN(auto builds, store_.ListBuilds(t.id));
  json out = TemplateJson(t, builds);
  json list = json::array();
  for (const auto& b : builds) {
    json item = {
        {"buildID", b.id},
        {"status", b.status},
        {"createdAt", Time(b.created_at_ms)},
        {"updatedAt", Time(std::max({b.created_at_ms, b.started_at_ms, b.finished_at_ms}))},
        {"finishedAt", b.finished_at_ms > 0 ? json(Time(b.finished_at_ms)) : json(nullptr)},
        {"cpuCount", b.cpu_count},
        {"memoryMB", b.memory_mb},
        {"diskSizeMB", b.disk_size_mb}};
    if (!b.reason.empty()) item["reason"] = json::parse(b.reason, nullptr, false);
    list.push_back(item);
  }
  out["builds"] = list;
  MOAT_ASSIGN_OR_RETURN(auto tags, store_.ListTags(t.id));
  json tag_list = json::array();
  for (const auto& tg : tags) tag_list.push_back({{"tag", tg.tag}, {"buildID", tg.build_id}});
  out["tags"] = tag_list;
  return out;
}

Status TemplateService::Delete(const store::TeamRecord& team, const std::string& id_or_name) {
  MOAT_ASSIGN_OR_RETURN(store::TemplateRecord t, Owned(team, id_or_name));
  MOAT_ASSIGN_OR_RETURN(auto builds, store_.ListBuilds(t.id));
  for (const auto& b : builds) {
    if (b.status == store::kBuildBuilding) {
      return FailedPrecondition("template '" + t.alias + "' has a build running (" + b.id + ")");
    }
  }
  store::SandboxFilter f;
  f.team_id = team.id;
  f.template_id = t.id;
  f.limit = 1;
  MOAT_ASSIGN_OR_RETURN(auto page, store_.ListSandboxes(f));
  if (!page.items.empty()) {
    return FailedPrecondition("template '" + t.alias + "' is used by sandbox " +
                              page.items.front().id + " (running or paused): kill it first");
  }
  // The files on their hosts first: a record without files is harmless, files without a record
  // would never be removed.
  for (const auto& b : builds) {
    if (b.status != store::kBuildReady) continue;
    auto host = hosts_.Host(b.host_id);
    if (!host.ok()) return host.status().Annotate("deleting build " + b.id);
    Status s = (*host)->DeleteTemplateBuild(b.id);
    if (!s.ok() && s.code() != ErrorCode::kNotFound) return s.Annotate("deleting build " + b.id);
  }
  MOAT_RETURN_IF_ERROR(store_.DeleteTemplate(t.id));
  LogInfo("api.template_deleted", {{"template", t.id}, {"alias", t.alias}, {"team", team.id}});
  return Status::Ok();
}

Result<json> TemplateService::AssignTags(const store::TeamRecord& team, const json& body) {
  if (!body.is_object() || !body.value("target", json()).is_string() ||
      !body.value("tags", json()).is_array()) {
    return InvalidArgument("the body needs \"target\" (name:tag) and \"tags\" (an array)");
  }
  MOAT_ASSIGN_OR_RETURN(auto resolved, Resolve(team.id, body["target"].get<std::string>()));
  if (!resolved) return NotFound("template '" + body["target"].get<std::string>() + "' not found");
  std::vector<std::string> tags;
  for (const auto& v : body["tags"]) {
    if (!v.is_string()) return InvalidArgument("field \"tags\" must be an array of strings");
    std::string tag = Lower(Trim(v.get<std::string>()));
    if (!TagChars(tag) || IsUuid(tag)) return InvalidArgument("invalid tag \"" + tag + "\"");
    tags.push_back(tag);
  }
  if (tags.empty()) return InvalidArgument("no tags given");
  MOAT_RETURN_IF_ERROR(store_.AssignTags(resolved->tmpl.id, resolved->build.id, tags, NowMs()));
  return json{{"buildID", resolved->build.id}, {"tags", tags}};
}

Status TemplateService::RemoveTags(const store::TeamRecord& team, const json& body) {
  if (!body.is_object() || !body.value("name", json()).is_string() ||
      !body.value("tags", json()).is_array()) {
    return InvalidArgument("the body needs \"name\" and \"tags\" (an array)");
  }
  MOAT_ASSIGN_OR_RETURN(store::TemplateRecord t, Owned(team, body["name"].get<std::string>()));
  std::vector<std::string> tags;
  for (const auto& v : body["tags"]) {
    if (!v.is_string()) return InvalidArgument("field \"tags\" must be an array of strings");
    tags.push_back(Lower(Trim(v.get<std::string>())));
  }
  MOAT_ASSIGN_OR_RETURN(int64_t removed, store_.RemoveTags(t.id, tags));
  if (removed == 0) return NotFound("none of these tags exists on template '" + t.alias + "'");
  return Status::Ok();
}

Result<json> TemplateService::Tags(const store::TeamRecord& team, const std::string& id_or_name) {
  MOAT_ASSIGN_OR_RETURN(store::TemplateRecord t, Owned(team, id_or_name));
  MOAT_ASSIGN_OR_RETURN(auto tags, store_.ListTags(t.id));
  json out = json::array();
  for (const auto& tg : tags) {
    out.push_back(
        {{"tag", tg.tag}, {"buildID", tg.build_id}, {"createdAt", Time(tg.created_at_ms)}});
  }
  return out;
}

}  // namespace moat::api
