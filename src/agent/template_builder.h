// Custom templates built on this host (docs/templates.md): the E2B step list run inside a builder
// microVM — never on the host — each step's disk kept as a cached layer, the result flattened
// into the template's root filesystem and baked into a snapshot with the start command running.
//
// Layers: DATA_DIR/templates/layers/<key>/{disk.qcow2, context.json}, a qcow2 overlay over the
// build's base image holding everything the steps so far changed, and the build context after
// them. key = SHA-256 over (parent key, step type, arguments, files hash): a rebuild boots from
// the last cached layer and runs only from the first changed step.
// Artifacts: DATA_DIR/templates/custom/<build id>/{rootfs.raw, rootfs.key, build.json}, content
// that names no host and no path outside itself (the snapshot store can move it); baked like the
// base template by TemplateStore, under DATA_DIR/templates/<build id>/.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "agent/sandbox.h"
#include "agent/template_store.h"
#include "common/status.h"

namespace moat::agent {

// What the steps so far set: the user and workdir later steps run as and in, and the env they
// see (ENV values, after expansion). The last user and workdir become the sandbox defaults; the
// env reaches the start command only (never a sandbox's runtime: E2B's semantics).
struct BuildContext {
  std::string user = "user";
  std::string workdir;  // empty: the user's home
  std::vector<std::pair<std::string, std::string>> env;
  nlohmann::json ToJson() const;
  static Result<BuildContext> FromJson(const nlohmann::json& j);
};

struct TemplateStep {
  std::string type;  // RUN, COPY, ADD, ENV, ARG, WORKDIR, USER (upper-cased)
  std::vector<std::string> args;
  bool force = false;      // this step (and so every later one) is not taken from the cache
  std::string files_hash;  // COPY/ADD
};

struct RegistryCredentials {
  std::string username, password;
};

struct TemplateBuildSpec {
  std::string build_id;     // a UUID: names the artifact
  std::string template_id;  // for /.e2b and the logs
  std::string team_id;      // whose layers it may use (the cache is per team)
  // Exactly one base: a template ("base", or the build id of a ready custom template on this
  // host) or an OCI image reference (e2bdev/base[:tag] is the base template).
  std::string from_template;
  std::string from_image;
  // Set by the agent when from_template names one of its built-in templates beyond base
  // (code-interpreter-v1): the child starts from that template's baked disk and inherits its
  // start and ready commands.
  std::optional<TemplateSpec> from_builtin;
  std::optional<RegistryCredentials> registry;
  std::vector<TemplateStep> steps;
  std::optional<std::string> start_cmd, ready_cmd;  // unset: inherited from a parent template
  bool force = false;                               // no cached layer is used
  unsigned vcpus = 2;
  uint64_t memory_mib = 1024;
  uint64_t min_free_disk_mib = 0;  // free space the disk must have after the steps
  // files_hash -> the uploaded archive on this host (tar, or tar.gz).
  std::map<std::string, std::string> files;
  std::chrono::seconds ready_timeout{600};
  std::chrono::seconds step_timeout{3600};
  // Registries on this host's own network that builds may pull from ("127.0.0.1" any port, or
  // "127.0.0.1:5000"): the operator's --insecure-registry.
  std::vector<std::string> insecure_registries;
  // The host's layer cache is kept within this much disk after a build (least recently used
  // layers go first).
  uint64_t layer_cache_mib = 20480;
};

// The parts of a build's artifact a sandbox and a child template need (build.json).
struct TemplateBuildResult {
  std::string build_id;
  unsigned vcpus = 0;
  uint64_t memory_mib = 0;
  uint64_t disk_mib = 0;
  BuildContext context;
  std::string start_cmd, ready_cmd;
  int cached_steps = 0, run_steps = 0;
  std::string template_id;  // for /.e2b
  bool resized = false;     // its disk was grown: the bake grows the filesystem into it
  std::string bake_name;    // its snapshot's name under DATA_DIR/templates (shared by equal builds)
  nlohmann::json ToJson() const;
  static Result<TemplateBuildResult> FromJson(const nlohmann::json& j);
};

struct BuildLogLine {
  int64_t unix_ms = 0;
  std::string level;  // debug, info, warn, error
  std::string step;   // "base", "1".."N", "finalize"
  std::string message;
};
using BuildLogFn = std::function<void(const BuildLogLine&)>;

// A failed build: why, and which step ("base", "1".."N", "finalize").
struct BuildFailure {
  Status status;
  std::string step;
};

// Where the artifact of build `build_id` lives under DATA_DIR/templates.
std::string CustomTemplateDir(const std::string& templates_dir, const std::string& build_id);
// "[a-f0-9-]{36}": a build id (and so a custom template's name on a host).
bool IsBuildId(const std::string& s);

// A registry's host without its port ("[::1]" keeps its brackets).
std::string RegistryHostName(const std::string& registry);
// Is the registry on this host (loopback, the unspecified address) or its link-local network
// (169.254.0.0/16, fe80::/10, fd00:ec2::254: a cloud's metadata service), by name or by what
// the name resolves to now? Builds pull from those only where allowed.
bool IsHostLocalRegistry(const std::string& registry);

// The cache key of a step after `parent` (hex SHA-256).
std::string StepKey(const std::string& parent, const TemplateStep& step);

// The static part of a COPY source: the path up to its first component with a glob character
// ("files/*.txt" -> "files"; "app" -> "app"; "*" -> "").
std::string StaticPrefix(const std::string& src);
// A destination resolved against the context (relative: against the workdir, or the user's
// home when none; a trailing "/" kept: "into this directory").
std::string ResolveDest(const std::string& dest, const BuildContext& ctx, const std::string& home);
// "$NAME" and "${NAME}" replaced from `vars` (then `fallback`; unknown: empty); "\$" is a "$".
// Nothing runs: "$(...)" and backquotes stay as text.
std::string ExpandVars(const std::string& value,
                       const std::vector<std::pair<std::string, std::string>>& vars,
                       const std::map<std::string, std::string>& fallback);
// Runs the build on this host (templates_dir: DATA_DIR/templates; `base`: the base template,
// whose kernel every build boots). Its log goes to `log` as it happens. On failure, *failure
// says why and in which step; everything the build made is gone except the layers of the steps
// that succeeded (the cache). `finalize_mu`: held while the result is moved into place (the
// agent's lock against deleting a build whose snapshot it may share).
Result<TemplateBuildResult> BuildTemplate(const SandboxEnv& env, TemplateStore& store,
                                          const TemplateSpec& base,
                                          const std::string& templates_dir,
                                          const TemplateBuildSpec& spec, const BuildLogFn& log,
                                          BuildFailure* failure, std::mutex* finalize_mu = nullptr);
// Evicts step layers (DATA_DIR/templates/layers): those over a base image that is gone, then the
// least recently used ones until the rest fit `budget_bytes`; never the layer whose disk is
// `keep`.
void PruneLayers(const std::string& layers_dir, uint64_t budget_bytes, const std::string& keep);
// The template a ready build on this host stands for (its artifact's build.json).
Result<TemplateSpec> CustomTemplateSpec(const TemplateSpec& base, const std::string& templates_dir,
                                        const std::string& build_id);

}  // namespace moat::agent
