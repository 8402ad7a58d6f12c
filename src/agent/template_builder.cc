#include "agent/template_builder.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <ctime>
#include <mutex>

#include "agent/disk.h"
#include "agent/external_tool.h"
#include "agent/guest_rootfs.h"
#include "agent/oci_image.h"
#include "agent/sandbox.h"
#include "agent/snapshot.h"
#include "agent/template_store.h"
#include "channel/guest_client.h"
#include "common/child_process.h"
#include "common/cleanup.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/sandbox_id.h"
#include "common/tar_check.h"
#include "common/unique_fd.h"
#include "common/utf8.h"

namespace moat::agent {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

// Builds running in this process: the layer cache is pruned only by a build that runs alone
// (one running beside it may be about to copy a layer it would evict).
std::atomic<int> g_running_builds{0};

int64_t NowMs() {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

std::string Hex(const unsigned char* bytes, unsigned len) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; ++i) {
    out.push_back(kHex[bytes[i] >> 4]);
    out.push_back(kHex[bytes[i] & 15]);
  }
  return out;
}

std::string Sha256Hex(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  return Hex(md, len);
}

Result<std::string> FileSha256Hex(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError("open(" + path + ")");
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  Cleanup free_ctx([&] { EVP_MD_CTX_free(ctx); });
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  char buf[1 << 16];
  for (;;) {
    ssize_t r = ::read(fd.get(), buf, sizeof buf);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return ErrnoError("read(" + path + ")");
    if (r == 0) break;
    EVP_DigestUpdate(ctx, buf, static_cast<size_t>(r));
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx, md, &len);
  return Hex(md, len);
}

bool ValidUserName(const std::string& u) {
  if (u.empty() || u.size() > 32) return false;
  if (!(std::islower(static_cast<unsigned char>(u[0])) || u[0] == '_')) return false;
  return std::all_of(u.begin(), u.end(), [](char c) {
    return std::islower(static_cast<unsigned char>(c)) ||
           std::isdigit(static_cast<unsigned char>(c)) || c == '_' || c == '-';
  });
}

bool ValidEnvName(const std::string& k) {
  if (k.empty() || std::isdigit(static_cast<unsigned char>(k[0]))) return false;
  return std::all_of(k.begin(), k.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
  });
}

// "a/./b/../c" -> "/a/c" (absolute, lexical).
std::string NormalizePath(const std::string& path) {
  std::vector<std::string> parts;
  size_t i = 0;
  while (i <= path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    std::string part = path.substr(i, j - i);
    if (part == "..") {
      if (!parts.empty()) parts.pop_back();
    } else if (!part.empty() && part != ".") {
      parts.push_back(part);
    }
    i = j + 1;
  }
  std::string out;
  for (const auto& p : parts) out += "/" + p;
  return out.empty() ? "/" : out;
}

std::string Join(const std::vector<std::string>& v, const char* sep) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? sep : "") + v[i];
  return out;
}

// The last `n` lines of `text`.
std::string LastLines(const std::string& text, size_t n) {
  size_t lines = 0;
  size_t end = text.size();
  while (end > 0 && text[end - 1] == '\n') --end;
  for (size_t i = end; i-- > 0;) {
    if (text[i] == '\n' && ++lines == n) return text.substr(i + 1, end - i - 1);
  }
  return text.substr(0, end);
}

// Guest-side COPY: unpacks the checked archive from stdin into a scratch directory, gives what
// the source names its owner and mode there, then copies it into place (directories merged,
// Docker-style). Positional parameters, never interpolated: $1 source prefix, $2 destination,
// $3 owner, $4 mode.
constexpr const char* kCopyScript = R"sh(set -e
u=$(mktemp -d /tmp/.moat-copy.XXXXXX)
trap 'rm -rf "$u"' EXIT
tar -x -f - -C "$u"
src="$u/$1"
if [ ! -e "$src" ] && [ ! -L "$src" ]; then echo "COPY: '$1' is not among the uploaded files" >&2; exit 1; fi
own="$3"
case "$own" in *:*) ;; *) grp=$(id -gn "$own" 2>/dev/null || echo "$own"); own="$own:$grp" ;; esac
chown -R -h "$own" "$src"
if [ -n "$4" ] && [ ! -L "$src" ]; then chmod -R "$4" "$src"; fi
dest="$2"
if [ -d "$src" ] && [ ! -L "$src" ]; then
  mkdir -p "$dest"
  cp -a "$src/." "$dest/"
else
  case "$dest" in
    */) mkdir -p "$dest"; cp -a "$src" "$dest" ;;
    *) mkdir -p "$(dirname "$dest")"; cp -a "$src" "$dest" ;;
  esac
fi
)sh";

// WORKDIR: $1 the directory, $2 the owner of what it creates.
constexpr const char* kWorkdirScript = R"sh(set -e
if [ ! -d "$1" ]; then mkdir -p "$1"; chown "$2" "$1"; fi
)sh";

// USER: $1 the user (created with a home if missing), $2 "true": passwordless sudo.
constexpr const char* kUserScript = R"sh(set -e
if ! id "$1" >/dev/null 2>&1; then
  if command -v useradd >/dev/null 2>&1; then useradd --create-home --shell /bin/bash "$1" 2>/dev/null || useradd --create-home "$1"
  else adduser -D "$1"; fi
fi
if [ "$2" = true ]; then
  mkdir -p /etc/sudoers.d
  echo "$1 ALL=(ALL:ALL) NOPASSWD: ALL" > "/etc/sudoers.d/$1"
  chmod 0440 "/etc/sudoers.d/$1"
fi
)sh";

}  // namespace

std::string RegistryHostName(const std::string& registry) {
  if (!registry.empty() && registry.front() == '[')
    return registry.substr(0, registry.find(']') + 1);
  return registry.substr(0, registry.find(':'));
}

bool IsHostLocalRegistry(const std::string& registry) {
  std::string host = RegistryHostName(registry);
  for (char& c : host) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (host == "localhost" || host.ends_with(".localhost")) return true;
  if (!host.empty() && host.front() == '[') host = host.substr(1, host.size() - 2);
  // What the name (or a number in any of the forms the resolver takes: "2130706433",
  // "0x7f.1") stands for now. skopeo resolves it again when it pulls: a name whose answer
  // changes in between is not caught (see docs/templates.md).
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (::getaddrinfo(host.c_str(), nullptr, &hints, &res) != 0) return false;
  bool local = false;
  for (addrinfo* a = res; a != nullptr && !local; a = a->ai_next) {
    if (a->ai_family == AF_INET) {
      uint32_t ip = ntohl(reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr.s_addr);
      local = (ip >> 24) == 127 || (ip >> 16) == 0xA9FE || ip == 0;  // loopback, link-local, any
    } else if (a->ai_family == AF_INET6) {
      const in6_addr& ip6 = reinterpret_cast<sockaddr_in6*>(a->ai_addr)->sin6_addr;
      const uint8_t* b = ip6.s6_addr;
      bool mapped = IN6_IS_ADDR_V4MAPPED(&ip6);
      uint32_t v4 =
          mapped ? (uint32_t{b[12]} << 24 | uint32_t{b[13]} << 16 | uint32_t{b[14]} << 8 | b[15])
                 : 0;
      // fd00:ec2::254: a cloud's metadata service over IPv6.
      static const uint8_t kMetadata6[16] = {0xfd, 0, 0x0e, 0xc2, 0, 0, 0,    0,
                                             0,    0, 0,    0,    0, 0, 0x02, 0x54};
      local = IN6_IS_ADDR_LOOPBACK(&ip6) || IN6_IS_ADDR_UNSPECIFIED(&ip6) ||
              IN6_IS_ADDR_LINKLOCAL(&ip6) || std::memcmp(b, kMetadata6, 16) == 0 ||
              (mapped && ((v4 >> 24) == 127 || (v4 >> 16) == 0xA9FE || v4 == 0));
    }
  }
  ::freeaddrinfo(res);
  return local;
}

json BuildContext::ToJson() const {
  json e = json::array();
  for (const auto& [k, v] : env) e.push_back(json::array({k, v}));
  return {{"user", user}, {"workdir", workdir}, {"env", e}};
}

Result<BuildContext> BuildContext::FromJson(const json& j) {
  if (!j.is_object()) return InvalidArgument("build context is not an object");
  BuildContext c;
  try {
    c.user = j.value("user", "user");
    c.workdir = j.value("workdir", "");
    for (const auto& kv : j.value("env", json::array())) {
      c.env.emplace_back(kv.at(0).get<std::string>(), kv.at(1).get<std::string>());
    }
  } catch (const json::exception& e) {
    return InvalidArgument(std::string("build context: ") + e.what());
  }
  return c;
}

json TemplateBuildResult::ToJson() const {
  return {{"buildID", build_id},         {"vcpus", vcpus},
          {"memoryMiB", memory_mib},     {"diskMiB", disk_mib},
          {"context", context.ToJson()}, {"startCmd", start_cmd},
          {"readyCmd", ready_cmd},       {"cachedSteps", cached_steps},
          {"runSteps", run_steps},       {"templateID", template_id},
          {"resized", resized},          {"bakeName", bake_name}};
}

Result<TemplateBuildResult> TemplateBuildResult::FromJson(const json& j) {
  TemplateBuildResult r;
  try {
    r.build_id = j.at("buildID").get<std::string>();
    r.vcpus = j.value("vcpus", 0u);
    r.memory_mib = j.value("memoryMiB", uint64_t{0});
    r.disk_mib = j.value("diskMiB", uint64_t{0});
    MOAT_ASSIGN_OR_RETURN(r.context, BuildContext::FromJson(j.value("context", json::object())));
    r.start_cmd = j.value("startCmd", "");
    r.ready_cmd = j.value("readyCmd", "");
    r.cached_steps = j.value("cachedSteps", 0);
    r.run_steps = j.value("runSteps", 0);
    r.template_id = j.value("templateID", "");
    r.resized = j.value("resized", false);
    r.bake_name = j.value("bakeName", "");
  } catch (const json::exception& e) {
    return InvalidArgument(std::string("build result: ") + e.what());
  }
  return r;
}

std::string CustomTemplateDir(const std::string& templates_dir, const std::string& build_id) {
  return templates_dir + "/custom/" + build_id;
}

bool IsBuildId(const std::string& s) {
  if (s.size() != 36) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    char c = s[i];
    if (dash ? c != '-' : !(std::isdigit(static_cast<unsigned char>(c)) || (c >= 'a' && c <= 'f')))
      return false;
  }
  return true;
}

std::string StepKey(const std::string& parent, const TemplateStep& step) {
  std::string in = "moat-layer-v1\n" + parent + "\n" + step.type + "\n";
  for (const auto& a : step.args) in += std::to_string(a.size()) + ":" + a + "\n";
  in += step.files_hash;
  return Sha256Hex(in);
}

std::string StaticPrefix(const std::string& src) {
  std::string s = src;
  while (s.rfind("./", 0) == 0) s = s.substr(2);
  std::vector<std::string> kept;
  size_t i = 0;
  while (i <= s.size()) {
    size_t j = s.find('/', i);
    if (j == std::string::npos) j = s.size();
    std::string part = s.substr(i, j - i);
    if (part.find_first_of("*?[{") != std::string::npos) break;
    if (!part.empty() && part != ".") kept.push_back(part);
    i = j + 1;
  }
  return Join(kept, "/");
}

std::string ResolveDest(const std::string& dest, const BuildContext& ctx, const std::string& home) {
  bool into_dir = !dest.empty() && dest.back() == '/';
  std::string base = ctx.workdir.empty() ? home : ctx.workdir;
  std::string path = !dest.empty() && dest[0] == '/' ? dest : base + "/" + dest;
  std::string out = NormalizePath(path);
  if (into_dir && out != "/") out += "/";
  return out;
}

std::string ExpandVars(const std::string& value,
                       const std::vector<std::pair<std::string, std::string>>& vars,
                       const std::map<std::string, std::string>& fallback) {
  auto lookup = [&](const std::string& name) -> std::string {
    for (auto it = vars.rbegin(); it != vars.rend(); ++it) {
      if (it->first == name) return it->second;
    }
    auto f = fallback.find(name);
    return f == fallback.end() ? "" : f->second;
  };
  std::string out;
  for (size_t i = 0; i < value.size(); ++i) {
    char c = value[i];
    if (c == '\\' && i + 1 < value.size() && value[i + 1] == '$') {
      out.push_back('$');
      ++i;
    } else if (c == '$' && i + 1 < value.size() && value[i + 1] == '{') {
      size_t end = value.find('}', i + 2);
      std::string name = end == std::string::npos ? "" : value.substr(i + 2, end - i - 2);
      if (end == std::string::npos || !ValidEnvName(name)) {
        out.push_back(c);
        continue;
      }
      out += lookup(name);
      i = end;
    } else if (c == '$' && i + 1 < value.size() &&
               (std::isalpha(static_cast<unsigned char>(value[i + 1])) || value[i + 1] == '_')) {
      size_t j = i + 1;
      while (j < value.size() &&
             (std::isalnum(static_cast<unsigned char>(value[j])) || value[j] == '_')) {
        ++j;
      }
      out += lookup(value.substr(i + 1, j - i - 1));
      i = j - 1;
    } else {
      out.push_back(c);
    }
  }
  return out;
}

namespace {

// One build: see the top of template_builder.h.
class Builder {
 public:
  Builder(const SandboxEnv& env, TemplateStore& store, const TemplateSpec& base,
          std::string templates_dir, const TemplateBuildSpec& spec, const BuildLogFn& log,
          std::mutex* finalize_mu)
      : finalize_mu_(finalize_mu),
        env_(env),
        store_(store),
        base_(base),
        dir_(std::move(templates_dir)),
        spec_(spec),
        log_(log) {}

  Result<TemplateBuildResult> Run(BuildFailure* failure);

 private:
  void Log(const std::string& level, const std::string& step, const std::string& message) {
    // Guest output is any bytes: valid UTF-8 from here on.
    if (log_) log_(BuildLogLine{NowMs(), level, step, ValidUtf8(message)});
  }
  Status Fail(const std::string& step, Status s) {
    failure_step_ = step;
    return s;
  }
  // The base image, its cache key and the context the steps start from.
  Status ResolveBase();
  Status PrepareImage();
  Status BootBuilder(const std::string& disk_from);
  Status RunStep(size_t i);
  Status Exec(const std::string& step, channel::ExecRequest req, const std::string& what,
              bool log_output);
  Result<std::string> HomeOf(const std::string& user);
  Status SaveLayer(const std::string& key);
  Status Flatten(const std::string& top, const std::string& out);
  Status Grow(const std::string& image, uint64_t* disk_mib, bool* resize);
  // The root filesystem's free space in the builder VM now (df), into free_mib_.
  void MeasureFree();

  std::mutex* finalize_mu_;
  const SandboxEnv& env_;
  TemplateStore& store_;
  TemplateSpec base_;
  std::string dir_;
  const TemplateBuildSpec& spec_;
  const BuildLogFn& log_;
  std::string failure_step_;

  std::string base_raw_;  // the raw image the layers are overlays over
  std::string kernel_;
  std::string key_;  // of the layer the next step builds on
  BuildContext ctx_;
  std::string parent_start_, parent_ready_;
  std::unique_ptr<Sandbox> vm_;
  std::map<std::string, std::string> guest_env_;  // the user's login shell's, for ENV expansion
  std::string scratch_;                           // the build's scratch directory on the host
  bool parent_resized_ = false;       // the parent's disk was grown: its filesystem grows here too
  std::optional<uint64_t> free_mib_;  // the root filesystem's, after the last step (df)
  bool guest_env_read_ = false;
};

std::string Describe(const TemplateStep& s) {
  std::string out = s.type;
  for (const auto& a : s.args) {
    if (!a.empty()) out += " " + a;
  }
  return out;
}

Status Builder::ResolveBase() {
  kernel_ = base_.kernel_path;
  std::string from = spec_.from_template;
  const std::string& image = spec_.from_image;
  if (!image.empty()) {
    std::string repo = image.substr(0, image.find(':'));
    if (repo == "e2bdev/base" || repo == "docker.io/e2bdev/base") from = base_.name;
  }
  if (spec_.from_builtin && from == spec_.from_builtin->name) {
    Log("info", "base", "Base: the " + from + " template");
    MOAT_ASSIGN_OR_RETURN(std::string bake, store_.Ensure(*spec_.from_builtin));
    base_raw_ = bake + "/disk.raw";
    key_ = Sha256Hex("builtin\n" + from + "\n" + bake.substr(bake.rfind('/') + 1));
    parent_start_ = spec_.from_builtin->start_cmd;
    parent_ready_ = spec_.from_builtin->ready_cmd;
    return Status::Ok();
  }
  if (from == base_.name) {
    Log("info", "base", "Base: the " + base_.name + " template");
    MOAT_ASSIGN_OR_RETURN(std::string bake, store_.Ensure(base_));
    base_raw_ = bake + "/disk.raw";
    key_ = Sha256Hex("base\n" + bake.substr(bake.rfind('/') + 1));
    return Status::Ok();
  }
  if (!from.empty()) {
    if (!IsBuildId(from)) return NotFound("base template \"" + from + "\" not found");
    std::string parent = CustomTemplateDir(dir_, from);
    auto text = ReadFile(parent + "/build.json");
    if (!text.ok()) return NotFound("base template build " + from + " is not on this host");
    auto j = json::parse(*text, nullptr, false);
    MOAT_ASSIGN_OR_RETURN(TemplateBuildResult r, TemplateBuildResult::FromJson(j));
    Log("info", "base", "Base: template build " + from);
    base_raw_ = parent + "/rootfs.raw";
    key_ = Sha256Hex("build\n" + from);
    ctx_ = r.context;
    parent_start_ = r.start_cmd;
    parent_resized_ = r.resized;
    parent_ready_ = r.ready_cmd;
    return Status::Ok();
  }
  return PrepareImage();
}

Status Builder::PrepareImage() {
  const std::string& image = spec_.from_image;
  if (image.empty()) return InvalidArgument("a build needs a base: fromTemplate or fromImage");
  // skopeo runs on the host: a registry on the host itself (loopback) or on its link-local
  // network (a cloud's metadata service) is reached only where the operator allowed it.
  MOAT_ASSIGN_OR_RETURN(ImageReference ref, ParseImageReference(image));
  if (IsHostLocalRegistry(ref.registry)) {
    std::string host = RegistryHostName(ref.registry);
    bool allowed =
        std::any_of(spec_.insecure_registries.begin(), spec_.insecure_registries.end(),
                    [&](const std::string& r) { return r == ref.registry || r == host; });
    if (!allowed) {
      return Status(ErrorCode::kPermissionDenied,
                    "registry " + ref.registry +
                        " is on this host's own network (loopback or link-local); moatd pulls "
                        "from it only when started with --insecure-registry " +
                        host);
    }
  }
  std::string images = dir_ + "/images";
  MOAT_RETURN_IF_ERROR(MakeDirs(images, 0711));
  MOAT_ASSIGN_OR_RETURN(std::string work, MakeTempDir(images, ".pull-"));
  Cleanup remove_work([&] { (void)RemoveTree(work); });
  OciPullOptions pull;
  pull.ref = image;
  if (spec_.registry) {
    pull.auth = RegistryAuth{spec_.registry->username, spec_.registry->password};
  }
  pull.work_dir = work + "/pull";
  // PullOciImage needs its scratch dir to exist, private to root (the auth file goes there).
  MOAT_RETURN_IF_ERROR(MakeDirs(pull.work_dir, 0700));
  pull.progress = [this](const std::string& line) { Log("info", "base", line); };
  Log("info", "base", "Pulling image " + image);
  std::string rootfs = work + "/rootfs";
  auto config = PullOciImage(pull, rootfs);
  if (!config.ok()) return config.status();
  std::string digest = config->digest;
  std::string id = Sha256Hex("image\n" + (digest.empty() ? image : digest)).substr(0, 32);
  std::string out = images + "/" + id;
  if (!PathExists(out + "/rootfs.raw")) {
    MOAT_RETURN_IF_ERROR(PrepareGuestRootfs(rootfs, base_.rootfs_path));
    std::string tmp = work + "/image";
    MOAT_RETURN_IF_ERROR(MakeDirs(tmp, 0755));
    MOAT_RETURN_IF_ERROR(MakeExt4Image(rootfs, tmp + "/rootfs.raw", spec_.min_free_disk_mib));
    ::chmod((tmp + "/rootfs.raw").c_str(), 0644);
    if (::rename(tmp.c_str(), out.c_str()) < 0 && !PathExists(out + "/rootfs.raw")) {
      return ErrnoError("rename(" + tmp + ", " + out + ")");
    }
    Log("info", "base", "Image " + image + " converted to a guest disk");
  } else {
    Log("info", "base", "Image " + image + " already converted (" + digest + ")");
  }
  base_raw_ = out + "/rootfs.raw";
  key_ = Sha256Hex("image\n" + id);
  // The image's config: its env and workdir carry into the build; its user too, until the
  // default-user step (E2B's template format 2.1) makes `user` the context's.
  ctx_ = BuildContext{};
  for (const auto& [k, v] : config->env) ctx_.env.emplace_back(k, v);
  ctx_.workdir = config->workdir;
  return Status::Ok();
}

Status Builder::BootBuilder(const std::string& disk_from) {
  TemplateSpec t = base_;
  t.name = "build-" + spec_.build_id.substr(0, 8);
  t.rootfs_path = base_raw_;
  t.vcpus = spec_.vcpus;
  t.memory_mib = spec_.memory_mib;
  t.kernel_path = kernel_;
  t.start_cmd.clear();
  t.ready_cmd.clear();
  auto t0 = Clock::now();
  GuestIdentity root;
  MOAT_ASSIGN_OR_RETURN(vm_, Sandbox::Boot(env_, t, NewSandboxId(), root, {}, disk_from));
  Log("info", "",
      "Builder VM started in " +
          std::to_string(
              std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count()) +
          " ms");
  return Status::Ok();
}

Status Builder::Exec(const std::string& step, channel::ExecRequest req, const std::string& what,
                     bool log_output) {
  MOAT_ASSIGN_OR_RETURN(auto guest, vm_->Guest());
  std::string tail;  // the output's last part, for the error
  std::string partial[2];
  auto flush_line = [&](int ch, std::string line) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (log_output) Log(ch == 1 ? "warn" : "info", step, line);
  };
  req.on_output = [&](channel::SubChannel ch, std::string_view data) {
    int c = ch == channel::SubChannel::kStderr ? 1 : 0;
    tail.append(data);
    if (tail.size() > 16384) tail.erase(0, tail.size() - 8192);
    partial[c].append(data);
    size_t nl;
    while ((nl = partial[c].find('\n')) != std::string::npos) {
      flush_line(c, partial[c].substr(0, nl));
      partial[c].erase(0, nl + 1);
    }
    if (partial[c].size() > 4096) {
      flush_line(c, partial[c]);
      partial[c].clear();
    }
  };
  auto deadline = Clock::now() + spec_.step_timeout + std::chrono::seconds(30);
  req.timeout_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(spec_.step_timeout).count();
  auto r = guest->Run(req, deadline);
  for (int c = 0; c < 2; ++c) {
    if (!partial[c].empty()) flush_line(c, partial[c]);
  }
  if (!r.ok()) return r.status().Annotate(what);
  if (r->timed_out) {
    return DeadlineExceeded(what + ": timed out after " +
                            std::to_string(spec_.step_timeout.count()) + " s");
  }
  if (r->exit_code.value_or(-1) != 0) {
    std::string how = r->signal ? "was killed by signal " + std::to_string(*r->signal)
                                : "exited with status " + std::to_string(r->exit_code.value_or(-1));
    std::string last = LastLines(tail, 10);
    return Status(ErrorCode::kFailedPrecondition,
                  what + ": " + how + (last.empty() ? "" : "; last output:\n" + last));
  }
  return Status::Ok();
}

Result<std::string> Builder::HomeOf(const std::string& user) {
  if (user == "root") return std::string("/root");
  MOAT_ASSIGN_OR_RETURN(auto guest, vm_->Guest());
  channel::ExecRequest req;
  req.argv = {"/bin/cat", "/etc/passwd"};
  req.user = "root";
  req.max_output_bytes = 4 << 20;
  MOAT_ASSIGN_OR_RETURN(auto r, guest->Run(req, Clock::now() + std::chrono::seconds(30)));
  size_t i = 0;
  const std::string& s = r.stdout_data;
  while (i < s.size()) {
    size_t j = s.find('\n', i);
    if (j == std::string::npos) j = s.size();
    std::string line = s.substr(i, j - i);
    if (line.rfind(user + ":", 0) == 0) {
      std::vector<std::string> f;
      size_t a = 0;
      for (;;) {
        size_t b = line.find(':', a);
        f.push_back(line.substr(a, b == std::string::npos ? std::string::npos : b - a));
        if (b == std::string::npos) break;
        a = b + 1;
      }
      if (f.size() >= 6 && !f[5].empty()) return f[5];
    }
    i = j + 1;
  }
  return "/home/" + user;
}

Status Builder::RunStep(size_t i) {
  const TemplateStep& s = spec_.steps[i];
  std::string step = std::to_string(i + 1);
  std::string what =
      "[builder " + step + "/" + std::to_string(spec_.steps.size()) + "] " + Describe(s);
  if (s.type == "RUN") {
    if (s.args.empty() || s.args[0].empty()) return InvalidArgument("RUN needs a command");
    channel::ExecRequest req;
    req.cmd = s.args[0];
    req.user = s.args.size() > 1 && !s.args[1].empty() ? s.args[1] : ctx_.user;
    req.cwd = ctx_.workdir;
    for (const auto& [k, v] : ctx_.env) req.env[k] = v;
    return Exec(step, std::move(req), what, /*log_output=*/true);
  }
  if (s.type == "COPY" || s.type == "ADD") {
    if (s.args.size() < 2) return InvalidArgument(s.type + " needs a source and a destination");
    auto blob = spec_.files.find(s.files_hash);
    if (s.files_hash.empty() || blob == spec_.files.end()) {
      return NotFound(s.type + " " + s.args[0] + ": its files (hash " + s.files_hash +
                      ") were never uploaded");
    }
    std::string scratch = scratch_ + "/copy-" + step + ".tar";
    Cleanup remove_scratch([&] { ::unlink(scratch.c_str()); });
    MOAT_RETURN_IF_ERROR(CheckTarArchive(blob->second, scratch, uint64_t{4} << 30));
    UniqueFd tar(::open(scratch.c_str(), O_RDONLY | O_CLOEXEC));
    if (!tar) return ErrnoError("open(" + scratch + ")");
    std::string owner = s.args.size() > 2 && !s.args[2].empty() ? s.args[2] : ctx_.user;
    std::string mode = s.args.size() > 3 ? s.args[3] : "";
    if (!mode.empty() &&
        (mode.size() > 4 || mode.find_first_not_of("01234567") != std::string::npos)) {
      return InvalidArgument(s.type + " mode \"" + mode + "\" is not an octal mode");
    }
    MOAT_ASSIGN_OR_RETURN(std::string home, HomeOf(ctx_.user));
    std::string dest = ResolveDest(s.args[1], ctx_, home);
    Log("info", step, what + " -> " + dest);
    channel::ExecRequest req;
    req.argv = {"/bin/sh", "-c", kCopyScript, "copy", StaticPrefix(s.args[0]), dest, owner, mode};
    req.user = "root";
    req.cwd = "/";
    // Streamed from the checked copy: an archive can be far larger than memory should hold.
    req.stdin_source = [&tar](char* buf, size_t size) -> Result<size_t> {
      ssize_t r;
      do {
        r = ::read(tar.get(), buf, size);
      } while (r < 0 && errno == EINTR);
      if (r < 0) return ErrnoError("reading the COPY archive");
      return static_cast<size_t>(r);
    };
    return Exec(step, std::move(req), what, /*log_output=*/true);
  }
  if (s.type == "ENV" || s.type == "ARG") {
    if (s.args.size() % 2 != 0) return InvalidArgument(s.type + " needs key and value pairs");
    if (!guest_env_read_) {
      MOAT_ASSIGN_OR_RETURN(auto guest, vm_->Guest());
      channel::ExecRequest req;
      req.cmd = "env";
      req.user = ctx_.user;
      auto r = guest->Run(req, Clock::now() + std::chrono::seconds(60));
      if (r.ok()) {
        std::string& out = r->stdout_data;
        size_t a = 0;
        while (a < out.size()) {
          size_t b = out.find('\n', a);
          if (b == std::string::npos) b = out.size();
          std::string line = out.substr(a, b - a);
          size_t eq = line.find('=');
          if (eq != std::string::npos) {
            guest_env_[ValidUtf8(line.substr(0, eq))] = ValidUtf8(line.substr(eq + 1));
          }
          a = b + 1;
        }
      }
      guest_env_read_ = true;
    }
    Log("info", step, what);
    for (size_t k = 0; k < s.args.size(); k += 2) {
      if (!ValidEnvName(s.args[k])) {
        return InvalidArgument(s.type + ": \"" + s.args[k] + "\" is not a variable name");
      }
      std::string v = ExpandVars(s.args[k + 1], ctx_.env, guest_env_);
      auto it = std::find_if(ctx_.env.begin(), ctx_.env.end(),
                             [&](const auto& kv) { return kv.first == s.args[k]; });
      if (it != ctx_.env.end()) {
        it->second = v;
      } else {
        ctx_.env.emplace_back(s.args[k], v);
      }
    }
    return Status::Ok();
  }
  if (s.type == "WORKDIR") {
    if (s.args.empty() || s.args[0].empty()) return InvalidArgument("WORKDIR needs a path");
    std::string base = ctx_.workdir.empty() ? "/" : ctx_.workdir;
    std::string path = NormalizePath(s.args[0][0] == '/' ? s.args[0] : base + "/" + s.args[0]);
    channel::ExecRequest req;
    req.argv = {"/bin/sh", "-c", kWorkdirScript, "workdir", path, ctx_.user};
    req.user = "root";
    req.cwd = "/";
    MOAT_RETURN_IF_ERROR(Exec(step, std::move(req), what, true));
    Log("info", step, what);
    ctx_.workdir = path;
    return Status::Ok();
  }
  if (s.type == "USER") {
    if (s.args.empty() || !ValidUserName(s.args[0])) {
      return InvalidArgument("USER: \"" + (s.args.empty() ? "" : s.args[0]) +
                             "\" is not a user name");
    }
    std::string sudo = s.args.size() > 1 ? s.args[1] : "";
    channel::ExecRequest req;
    req.argv = {"/bin/sh", "-c", kUserScript, "user", s.args[0], sudo};
    req.user = "root";
    req.cwd = "/";
    MOAT_RETURN_IF_ERROR(Exec(step, std::move(req), what, true));
    Log("info", step, what);
    ctx_.user = s.args[0];
    return Status::Ok();
  }
  return InvalidArgument("command type " + s.type + " is not implemented");
}

void Builder::MeasureFree() {
  free_mib_.reset();  // unknown unless measured now
  auto guest = vm_->Guest();
  if (!guest.ok()) return;
  channel::ExecRequest req;
  req.argv = {"/bin/sh", "-c", "df -Pk / | tail -n 1"};
  req.user = "root";
  req.cwd = "/";
  auto r = (*guest)->Run(req, Clock::now() + std::chrono::seconds(30));
  if (!r.ok() || r->exit_code != 0) return;
  // "/dev/vda 2031440 1453728 577712 72% /": the fourth field, KiB available.
  std::vector<std::string> f;
  std::string field;
  for (char c : r->stdout_data + " ") {
    if (c == ' ' || c == '\t' || c == '\n') {
      if (!field.empty()) f.push_back(field);
      field.clear();
    } else {
      field.push_back(c);
    }
  }
  if (f.size() >= 4 && f[3].find_first_not_of("0123456789") == std::string::npos) {
    free_mib_ = std::strtoull(f[3].c_str(), nullptr, 10) / 1024;
  }
}

Status Builder::SaveLayer(const std::string& key) {
  std::string layers = dir_ + "/layers";
  std::string final_dir = layers + "/" + key;
  // A step that ran has its own result: it replaces a layer of the same key (a forced step,
  // or a build racing this one), never the other way round.
  MOAT_RETURN_IF_ERROR(vm_->FlushGuestFilesystems());
  MOAT_ASSIGN_OR_RETURN(std::string tmp, MakeTempDir(layers, ".layer-"));
  Cleanup remove_tmp([&] { (void)RemoveTree(tmp); });
  MOAT_RETURN_IF_ERROR(vm_->CopyDiskTo(tmp + "/disk.qcow2"));
  ::chmod((tmp + "/disk.qcow2").c_str(), 0644);
  MeasureFree();
  json meta = {{"context", ctx_.ToJson()}, {"base", base_raw_}, {"createdAt", NowMs()}};
  if (free_mib_) meta["freeMiB"] = *free_mib_;
  MOAT_RETURN_IF_ERROR(WriteFileAtomic(
      tmp + "/context.json", meta.dump(-1, ' ', false, json::error_handler_t::replace), 0644));
  ::chmod(tmp.c_str(), 0755);
  if (PathExists(final_dir)) {
    // Out of the way first (a build that copies it now keeps the open file), then gone.
    std::string old = tmp + ".old";
    if (::rename(final_dir.c_str(), old.c_str()) == 0) (void)RemoveTree(old);
  }
  if (::rename(tmp.c_str(), final_dir.c_str()) < 0) {
    return ErrnoError("rename(" + tmp + ", " + final_dir + ")");
  }
  remove_tmp.Cancel();
  return Status::Ok();
}

Status Builder::Flatten(const std::string& top, const std::string& out) {
  if (top.empty()) return CopyFile(base_raw_, out);
  // A layer is flattened once (flat.raw beside it, gone with it); each build of it takes a hard
  // link, never writing to it: the artifact, and the bake's disk, are read-only images.
  std::string flat = top.substr(0, top.rfind('/')) + "/flat.raw";
  if (!PathExists(flat)) {
    std::string tmp = flat + ".tmp-" + spec_.build_id;
    Cleanup remove_tmp([&] { ::unlink(tmp.c_str()); });
    // Only the qcow2 chain is read here (QEMU's metadata); the filesystem inside, which the
    // guest wrote, is parsed by no host tool: its journal is replayed by the guest's kernel.
    auto r = RunTool({"qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", top, tmp},
                     std::chrono::minutes(30));
    MOAT_RETURN_IF_ERROR(r.status().Annotate("flattening the template's disk"));
    ::chmod(tmp.c_str(), 0444);
    if (::rename(tmp.c_str(), flat.c_str()) < 0) return ErrnoError("rename(" + tmp + ")");
    remove_tmp.Cancel();
  } else {
    Log("info", "finalize", "Flattened disk reused");
  }
  if (::link(flat.c_str(), out.c_str()) == 0) return Status::Ok();
  return CopyFile(flat, out);
}

Status Builder::Grow(const std::string& image, uint64_t* disk_mib, bool* resize) {
  struct stat st {};
  if (::stat(image.c_str(), &st) < 0) return ErrnoError("stat(" + image + ")");
  uint64_t size = static_cast<uint64_t>(st.st_size);
  *disk_mib = size >> 20;
  *resize = false;
  if (spec_.min_free_disk_mib == 0) return Status::Ok();
  // Free space as the guest measured it after the last step (unknown without one: all of it
  // is added). The image grows here by a truncate (nothing parsed); the filesystem grows into
  // it online, in the bake's VM.
  uint64_t free_mib = free_mib_.value_or(0);
  if (free_mib >= spec_.min_free_disk_mib) return Status::Ok();
  uint64_t grow = spec_.min_free_disk_mib - free_mib + 64 + (spec_.min_free_disk_mib / 20);
  uint64_t new_size = ((size >> 20) + grow) << 20;
  if (st.st_nlink > 1) {
    // A link to a layer's flat image: grown as a copy of its own.
    std::string own = image + ".own";
    MOAT_RETURN_IF_ERROR(CopyFile(image, own));
    if (::rename(own.c_str(), image.c_str()) < 0) return ErrnoError("rename(" + own + ")");
  }
  if (::truncate(image.c_str(), static_cast<off_t>(new_size)) < 0) {
    return ErrnoError("truncate(" + image + ")");
  }
  *disk_mib = new_size >> 20;
  *resize = true;
  Log("info", "finalize",
      "Disk grown to " + std::to_string(*disk_mib) + " MiB (" +
          std::to_string(spec_.min_free_disk_mib) + " MiB free asked for, " +
          std::to_string(free_mib) + " MiB free after the steps)");
  return Status::Ok();
}

Result<TemplateBuildResult> Builder::Run(BuildFailure* failure) {
  auto t0 = Clock::now();
  auto fail = [&](const std::string& step, const Status& s) -> Status {
    if (failure != nullptr) *failure = BuildFailure{s, step};
    Log("error", step, s.message());
    return s;
  };
  if (!IsBuildId(spec_.build_id)) return fail("base", InvalidArgument("bad build id"));
  MOAT_RETURN_IF_ERROR(MakeDirs(dir_ + "/layers", 0711));
  MOAT_RETURN_IF_ERROR(MakeDirs(dir_ + "/custom", 0711));
  MOAT_ASSIGN_OR_RETURN(scratch_, MakeTempDir(dir_ + "/layers", ".scratch-"));
  Cleanup remove_scratch([&] { (void)RemoveTree(scratch_); });
  if (Status s = ResolveBase(); !s.ok()) return fail("base", s);
  // Template format 2.1: the default user first (E2B's hidden `USER user` step; made below
  // where the base lacks it): the context's user is `user` from here on.
  ctx_.user = "user";

  // The cached prefix. Layers are the team's own (another team's steps never serve it), and a
  // COPY's key is the hash of the archive's bytes as uploaded, not the client's hash of its
  // files: what a layer holds is what its key says.
  size_t n = spec_.steps.size();
  std::vector<std::string> keys(n);
  std::string key = Sha256Hex("team\n" + spec_.team_id + "\n" + key_);
  for (size_t i = 0; i < n; ++i) {
    TemplateStep keyed = spec_.steps[i];
    if (!keyed.files_hash.empty()) {
      auto blob = spec_.files.find(keyed.files_hash);
      auto content = blob == spec_.files.end() ? Result<std::string>(NotFound(""))
                                               : FileSha256Hex(blob->second);
      keyed.files_hash = content.ok() ? "content:" + *content : "missing:" + keyed.files_hash;
    }
    key = StepKey(key, keyed);
    keys[i] = key;
  }
  size_t first = 0;
  std::string top;  // the layer disk the next step builds on; empty: the base image
  if (!spec_.force) {
    for (size_t i = 0; i < n; ++i) {
      if (spec_.steps[i].force) break;
      std::string layer = dir_ + "/layers/" + keys[i];
      auto text = ReadFile(layer + "/context.json");
      if (!text.ok()) break;
      auto meta = json::parse(*text, nullptr, false);
      auto ctx = meta.is_object() ? BuildContext::FromJson(meta.value("context", json::object()))
                                  : InvalidArgument("bad layer");
      if (!ctx.ok() || meta.value("base", "") != base_raw_) break;
      ctx_ = *ctx;
      top = layer + "/disk.qcow2";
      first = i + 1;
      if (meta.contains("freeMiB") && meta["freeMiB"].is_number_unsigned()) {
        free_mib_ = meta["freeMiB"].get<uint64_t>();
      } else {
        free_mib_.reset();
      }
      // Its last use, for the cache's eviction.
      (void)::utimensat(AT_FDCWD, (layer + "/context.json").c_str(), nullptr, 0);
      Log("info", std::to_string(i + 1),
          "CACHED [builder " + std::to_string(i + 1) + "/" + std::to_string(n) + "] " +
              Describe(spec_.steps[i]) + " [" + keys[i].substr(0, 12) + "]");
    }
  }
  Cleanup kill_vm([&] {
    if (vm_) vm_->Kill();
  });
  if (first < n) {
    if (Status s = BootBuilder(top); !s.ok()) return fail("base", s);
    // Steps write /tmp to the disk, as an image build does (the guest mounts a tmpfs over an
    // empty /tmp only: a template whose build left files there keeps them on disk).
    {
      channel::ExecRequest req;
      req.argv = {"/bin/sh", "-c",
                  "if mountpoint -q /tmp 2>/dev/null || grep -q ' /tmp tmpfs' /proc/mounts; then "
                  "umount /tmp; fi"};
      req.user = "root";
      req.cwd = "/";
      if (Status s = Exec("base", std::move(req), "preparing the builder", true); !s.ok()) {
        return fail("base", s);
      }
    }
    if (first == 0 && parent_resized_) {
      // The parent's image was grown for its minFreeDiskMb; its filesystem grew only in its
      // bake. This build's steps get the space too (kept in the first layer).
      channel::ExecRequest req;
      req.argv = {"/bin/sh", "-c", "resize2fs /dev/vda"};
      req.user = "root";
      req.cwd = "/";
      if (Status s = Exec("base", std::move(req), "growing the filesystem", true); !s.ok()) {
        return fail("base", s);
      }
    }
    if (first == 0) {
      // The default user, with passwordless sudo, before the first step (kept in its layer).
      channel::ExecRequest req;
      req.argv = {"/bin/sh", "-c", kUserScript, "user", "user", "true"};
      req.user = "root";
      req.cwd = "/";
      if (Status s = Exec("base", std::move(req), "creating the default user", true); !s.ok()) {
        return fail("base", s);
      }
    }
  }
  for (size_t i = first; i < n; ++i) {
    std::string step = std::to_string(i + 1);
    auto ts = Clock::now();
    // COPY, ENV, WORKDIR and USER log themselves with what they resolved.
    if (spec_.steps[i].type == "RUN") {
      Log("info", step,
          "[builder " + step + "/" + std::to_string(n) + "] " + Describe(spec_.steps[i]) + " [" +
              keys[i].substr(0, 12) + "]");
    }
    if (Status s = RunStep(i); !s.ok()) return fail(step, s);
    if (Status s = SaveLayer(keys[i]); !s.ok()) return fail(step, s.Annotate("saving the layer"));
    top = dir_ + "/layers/" + keys[i] + "/disk.qcow2";
    Log("debug", step,
        "step " + step + " took " +
            std::to_string(
                std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - ts).count()) +
            " ms");
  }
  if (vm_) {
    vm_->Kill();
    vm_.reset();
  }

  // The artifact: the flattened disk, resized, with what sandboxes need beside it.
  TemplateBuildResult result;
  result.build_id = spec_.build_id;
  result.vcpus = spec_.vcpus;
  result.memory_mib = spec_.memory_mib;
  result.context = ctx_;
  result.start_cmd = spec_.start_cmd.value_or(parent_start_);
  result.ready_cmd = spec_.ready_cmd.value_or(spec_.start_cmd ? "" : parent_ready_);
  if (result.ready_cmd.empty() && !result.start_cmd.empty()) result.ready_cmd = "sleep 20";
  result.cached_steps = static_cast<int>(first);
  result.run_steps = static_cast<int>(n - first);
  std::string out = CustomTemplateDir(dir_, spec_.build_id);
  if (PathExists(out))
    return fail("finalize",
                Status(ErrorCode::kAlreadyExists, "build " + spec_.build_id + " exists"));
  auto tmp = MakeTempDir(dir_ + "/custom", ".build-");
  if (!tmp.ok()) return fail("finalize", tmp.status());
  Cleanup remove_tmp([&] { (void)RemoveTree(*tmp); });
  Log("info", "finalize", "Flattening the disk");
  std::string raw = *tmp + "/rootfs.raw";
  if (Status s = Flatten(top, raw); !s.ok()) return fail("finalize", s);
  bool resize = false;
  if (Status s = Grow(raw, &result.disk_mib, &resize); !s.ok()) return fail("finalize", s);
  result.template_id = spec_.template_id;
  result.resized = resize;
  {
    struct stat rst {};
    if (::stat(raw.c_str(), &rst) == 0 && rst.st_nlink == 1) ::chmod(raw.c_str(), 0644);
  }
  // The image's identity: a link to a layer's flat image is that image (another build of the
  // same steps has the very same disk); a copy of its own is this build's.
  std::string rootfs_key = spec_.build_id;
  {
    struct stat rst {};
    if (::stat(raw.c_str(), &rst) == 0 && rst.st_nlink > 1) {
      rootfs_key = "flat:" + std::to_string(rst.st_dev) + ":" + std::to_string(rst.st_ino) + ":" +
                   std::to_string(rst.st_mtim.tv_sec) + "." + std::to_string(rst.st_mtim.tv_nsec);
    }
  }
  // Builds of the template that end in the same disk, commands, user, workdir, env and
  // resources share one snapshot (a rebuild with every step cached bakes nothing): it is named
  // by all of that. (Its /.e2b names the build that baked it first.)
  result.bake_name =
      "c" + Sha256Hex(json{spec_.template_id, rootfs_key, result.start_cmd, result.ready_cmd,
                           ctx_.ToJson(), spec_.vcpus, spec_.memory_mib, resize}
                          .dump(-1, ' ', false, json::error_handler_t::replace))
                .substr(0, 31);
  if (Status s = WriteFileAtomic(*tmp + "/rootfs.key", rootfs_key, 0644); !s.ok()) {
    return fail("finalize", s);
  }
  if (Status s = WriteFileAtomic(
          *tmp + "/build.json",
          result.ToJson().dump(-1, ' ', false, json::error_handler_t::replace), 0644);
      !s.ok()) {
    return fail("finalize", s);
  }
  ::chmod(tmp->c_str(), 0755);
  {
    // Into custom/ under the agent's lock: a delete of a build whose snapshot this one will
    // share either sees this one (and keeps the snapshot) or is over before the bake starts.
    std::unique_lock<std::mutex> lock;
    if (finalize_mu_ != nullptr) lock = std::unique_lock<std::mutex>(*finalize_mu_);
    if (::rename(tmp->c_str(), out.c_str()) < 0) return fail("finalize", ErrnoError("rename"));
  }
  remove_tmp.Cancel();
  Cleanup remove_out([&] { (void)RemoveTree(out); });

  // The snapshot, with the start command running: the same spec a create gets from build.json
  // (CustomTemplateSpec), so that the snapshot is the one creates find.
  auto spec = CustomTemplateSpec(base_, dir_, spec_.build_id);
  if (!spec.ok()) return fail("finalize", spec.status());
  TemplateSpec t = *spec;
  t.ready_timeout = spec_.ready_timeout;
  if (!t.start_cmd.empty()) Log("info", "finalize", "Starting: " + t.start_cmd);
  auto baked = store_.Ensure(
      t, [this](const std::string& level, const std::string& msg) { Log(level, "finalize", msg); });
  if (!baked.ok()) return fail("finalize", baked.status());
  remove_out.Cancel();
  if (g_running_builds.load() == 1) PruneLayers(dir_ + "/layers", spec_.layer_cache_mib << 20, top);
  Log("info", "finalize",
      "Template snapshot ready (" + std::to_string(result.cached_steps) + " steps cached, " +
          std::to_string(result.run_steps) + " run, " +
          std::to_string(
              std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count()) +
          " ms)");
  return result;
}

}  // namespace

void PruneLayers(const std::string& layers_dir, uint64_t budget_bytes, const std::string& keep) {
  struct Layer {
    std::string dir;
    int64_t used_ns = 0;
    uint64_t bytes = 0;
  };
  std::vector<Layer> layers;
  uint64_t total = 0;
  for (const auto& name : DirNames(layers_dir)) {
    if (name.empty() || name[0] == '.') continue;
    std::string dir = layers_dir + "/" + name;
    struct stat st {};
    auto meta_text = ReadFile(dir + "/context.json");
    json meta = meta_text.ok() ? json::parse(*meta_text, nullptr, false) : json();
    // A layer over a base that is gone (a deleted parent, a rebuilt base template) is never
    // used again.
    if (!meta.is_object() || ::stat((dir + "/context.json").c_str(), &st) < 0 ||
        !PathExists(meta.value("base", ""))) {
      if (dir + "/disk.qcow2" != keep) (void)RemoveTree(dir);
      continue;
    }
    Layer l{dir, static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec, 0};
    if (auto b = AllocatedBytes(dir + "/disk.qcow2"); b.ok()) l.bytes = *b;
    // Its flat image frees space only where no build or bake links it.
    struct stat fst {};
    if (::stat((dir + "/flat.raw").c_str(), &fst) == 0 && fst.st_nlink == 1) {
      if (auto b = AllocatedBytes(dir + "/flat.raw"); b.ok()) l.bytes += *b;
    }
    total += l.bytes;
    layers.push_back(std::move(l));
  }
  // Least recently used first, while over the budget.
  std::sort(layers.begin(), layers.end(),
            [](const Layer& a, const Layer& b) { return a.used_ns < b.used_ns; });
  for (const auto& l : layers) {
    if (total <= budget_bytes) break;
    if (l.dir + "/disk.qcow2" == keep) continue;
    if (RemoveTree(l.dir).ok()) {
      total -= std::min(total, l.bytes);
      LogInfo("template.layer_evicted",
              {{"layer", l.dir}, {"bytes", static_cast<int64_t>(l.bytes)}});
    }
  }
}

Result<TemplateBuildResult> BuildTemplate(const SandboxEnv& env, TemplateStore& store,
                                          const TemplateSpec& base,
                                          const std::string& templates_dir,
                                          const TemplateBuildSpec& spec, const BuildLogFn& log,
                                          BuildFailure* failure, std::mutex* finalize_mu) {
  ++g_running_builds;
  Cleanup done([] { --g_running_builds; });
  Builder b(env, store, base, templates_dir, spec, log, finalize_mu);
  return b.Run(failure);
}

Result<TemplateSpec> CustomTemplateSpec(const TemplateSpec& base, const std::string& templates_dir,
                                        const std::string& build_id) {
  std::string dir = CustomTemplateDir(templates_dir, build_id);
  auto text = ReadFile(dir + "/build.json");
  if (!text.ok()) return NotFound("template build " + build_id + " is not on this host");
  MOAT_ASSIGN_OR_RETURN(TemplateBuildResult r,
                        TemplateBuildResult::FromJson(json::parse(*text, nullptr, false)));
  TemplateSpec t = base;
  t.name = r.bake_name.empty() ? build_id : r.bake_name;
  t.rootfs_path = dir + "/rootfs.raw";
  t.vcpus = r.vcpus;
  t.memory_mib = r.memory_mib;
  t.start_cmd = r.start_cmd;
  t.ready_cmd = r.ready_cmd;
  t.defaults = GuestIdentity{.env = {}, .user = r.context.user, .workdir = r.context.workdir};
  t.start_env = r.context.env;
  t.rootfs_immutable = true;
  // Done in the bake's VM, as root, before the start command (never by a host tool on the
  // guest-written filesystem): E2B's /.e2b, and the filesystem grown into a grown disk.
  t.bake_files = {{"/.e2b", "ENV_ID=" + r.template_id + "\nTEMPLATE_ID=" + r.template_id +
                                "\nBUILD_ID=" + build_id + "\n"}};
  t.resize_root_fs = r.resized;
  return t;
}

}  // namespace moat::agent
