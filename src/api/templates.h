// TemplateService: custom templates on the control plane (docs/templates.md; the wire contract is
// shared/E2B-TEMPLATES.md). It records templates, builds, tags and build logs in the store, signs
// and accepts the uploads of COPY files, and runs each build on a host (HostAgent::BuildTemplate),
// writing its log to the store as it goes, so that any replica answers the status polls. Every
// template and build belongs to a team; another team's is not_found.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "api/host_directory.h"
#include "api/http/message.h"
#include "api/store/store.h"
#include "common/status.h"

namespace moat::api {

struct TemplateOptions {
  std::string uploads_dir;    // where COPY archives are kept: <dir>/<team>/<hash>
  std::string upload_secret;  // the HMAC key of upload URLs
  size_t max_upload_bytes = 256u << 20;
  std::chrono::seconds upload_url_ttl{1800};
  // At start, builds left `building` by an earlier process are failed (one process owns the
  // builds: `moatd serve`).
  bool fail_interrupted_builds = true;
  // Builds one team may have running at once (through this process); more are 429.
  int max_builds_per_team = 2;
};

// `[namespace/]alias[:tag]`, lower-cased and checked (E2B-TEMPLATES §5). The tag may be a build
// id (a UUID), which resolution accepts and registration refuses.
struct TemplateName {
  std::string ns;
  std::string alias;
  std::string tag;  // empty: none given (the default tag)
};
Result<TemplateName> ParseTemplateName(std::string_view name);

// What a sandbox create from a custom template needs.
struct ResolvedTemplate {
  store::TemplateRecord tmpl;
  store::TemplateBuildRecord build;  // ready
  std::string default_user;
};

class TemplateService {
 public:
  TemplateService(store::Store& store, HostDirectory& hosts, TemplateOptions options);
  // Waits for the builds in flight (their hosts are asked nothing more).
  ~TemplateService();
  TemplateService(const TemplateService&) = delete;
  TemplateService& operator=(const TemplateService&) = delete;

  // POST /v3/templates: the template (new, or the team's of that alias) and a waiting build.
  Result<nlohmann::json> Register(const store::TeamRecord& team, const nlohmann::json& body);
  // GET /templates/{id}/files/{hash}: {present, url}; `base_url` is how the caller reached us.
  Result<nlohmann::json> FileUpload(const store::TeamRecord& team, const std::string& template_id,
                                    const std::string& hash, const std::string& base_url);
  // The upload URL's query, checked before its body is read: the team and hash it is for.
  // permission_denied for a bad or expired signature.
  struct UploadTarget {
    std::string team_id, hash;
  };
  Result<UploadTarget> CheckUploadUrl(const std::map<std::string, std::string>& query) const;
  // Stores the body (tar or tar.gz, checked) as the team's archive of that hash.
  Status AcceptUpload(const UploadTarget& target, http::Request& req);
  // POST /v2/templates/{id}/builds/{buildID}: validates and starts the build in the background.
  Status StartBuild(const store::TeamRecord& team, const std::string& template_id,
                    const std::string& build_id, const nlohmann::json& body);
  // GET /templates/{id}/builds/{buildID}/status.
  Result<nlohmann::json> BuildStatus(const store::TeamRecord& team, const std::string& template_id,
                                     const std::string& build_id, int64_t offset, int64_t limit);
  // GET /templates/aliases/{alias}.
  Result<nlohmann::json> Alias(const store::TeamRecord& team, const std::string& alias);
  Result<nlohmann::json> List(const store::TeamRecord& team);
  Result<nlohmann::json> Get(const store::TeamRecord& team, const std::string& id_or_name);
  // not_found when the team has no such template; failed_precondition while sandboxes (running
  // or paused) of it exist, or one of its builds runs.
  Status Delete(const store::TeamRecord& team, const std::string& id_or_name);
  Result<nlohmann::json> AssignTags(const store::TeamRecord& team, const nlohmann::json& body);
  Status RemoveTags(const store::TeamRecord& team, const nlohmann::json& body);
  Result<nlohmann::json> Tags(const store::TeamRecord& team, const std::string& id_or_name);

  // A create's templateID: a custom template's name (`alias[:tag]`, `ns/alias[:tag]`) or id;
  // nullopt when it names none of the team's templates.
  Result<std::optional<ResolvedTemplate>> Resolve(const std::string& team_id,
                                                  const std::string& name);

  size_t max_upload_bytes() const { return options_.max_upload_bytes; }
  // Builds running now (tests wait for none).
  size_t running();

 private:
  Result<store::TemplateRecord> Owned(const store::TeamRecord& team, const std::string& id_or_name);
  void RunBuild(store::TeamRecord team, store::TemplateRecord tmpl,
                store::TemplateBuildRecord build, nlohmann::json body);
  void Finish(const store::TemplateBuildRecord& build, const Status& s, const std::string& step,
              const std::optional<HostTemplateBuilt>& built, const std::string& host_id);
  std::string UploadPath(const std::string& team_id, const std::string& hash) const;
  // A build of the team's ended (or did not start): gives its place back (takes mu_).
  void ReleaseTeamBuild(const std::string& team_id);

  store::Store& store_;
  HostDirectory& hosts_;
  TemplateOptions options_;

  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::map<std::string, std::thread> threads_;  // by build id
  std::vector<std::thread> finished_;           // joined by the next start or at the end
  std::map<std::string, std::shared_ptr<std::mutex>> template_locks_;  // one build per template
  std::map<std::string, int> running_by_team_;
};

}  // namespace moat::api
