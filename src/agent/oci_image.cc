#include "agent/oci_image.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "agent/external_tool.h"
#include "agent/tree_size.h"
#include "common/cleanup.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/unique_fd.h"

namespace moat::agent {
namespace {

using nlohmann::json;

// The tag the pulled image gets in the scratch layout.
constexpr char kLayoutTag[] = "img";
// The guest kernel is x86_64 (guest/kernel.config): multi-platform images resolve to this.
constexpr char kGuestOs[] = "linux";
constexpr char kGuestArch[] = "amd64";
// skopeo's trust policy: any image, unsigned included.
constexpr char kTrustPolicy[] = R"({"default":[{"type":"insecureAcceptAnything"}]})";
constexpr size_t kMaxIndexBytes = 4 << 20;
constexpr size_t kMaxManifestBytes = 4 << 20;
constexpr size_t kMaxConfigBytes = 16 << 20;

bool IsLower(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

bool IsWordChar(char c) {
  return IsLower(c) || (c >= 'A' && c <= 'Z') || c == '_';
}

bool IsHex(std::string_view s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

// [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*: a component of a repository path.
bool IsPathComponent(std::string_view s) {
  if (s.empty() || !IsLower(s.front()) || !IsLower(s.back())) return false;
  for (size_t i = 0; i < s.size();) {
    if (IsLower(s[i])) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < s.size() && !IsLower(s[j])) ++j;
    std::string_view sep = s.substr(i, j - i);
    bool dashes = sep.find_first_not_of('-') == std::string_view::npos;
    if (!(sep == "." || sep == "_" || sep == "__" || dashes)) return false;
    i = j;
  }
  return true;
}

bool IsPort(std::string_view p) {
  return !p.empty() && p.size() <= 5 &&
         std::all_of(p.begin(), p.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// host[:port] or [ipv6][:port].
bool IsRegistryHost(std::string_view s) {
  if (!s.empty() && s.front() == '[') {
    size_t close = s.find(']');
    if (close == std::string_view::npos || close == 1) return false;
    std::string_view inside = s.substr(1, close - 1);
    bool hex = std::all_of(inside.begin(), inside.end(), [](char c) {
      return c == ':' || c == '.' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
             (c >= 'A' && c <= 'F');
    });
    std::string_view rest = s.substr(close + 1);
    return hex && (rest.empty() || (rest.front() == ':' && IsPort(rest.substr(1))));
  }
  std::string_view host = s.substr(0, s.find(':'));
  if (host.size() < s.size() && !IsPort(s.substr(host.size() + 1))) return false;
  if (host.empty() || host.front() == '-' || host.front() == '.' || host.back() == '-' ||
      host.back() == '.') {
    return false;
  }
  return std::all_of(host.begin(), host.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.';
  });
}

bool IsLoopbackHost(std::string_view registry) {
  std::string_view host = registry;
  if (!host.empty() && host.front() == '[') {
    return host.substr(0, host.find(']') + 1) == "[::1]";
  }
  host = host.substr(0, host.find(':'));
  if (host == "localhost") return true;
  if (host.rfind("127.", 0) != 0) return false;
  int dots = 0;
  for (char c : host) {
    if (c == '.') {
      ++dots;
    } else if (c < '0' || c > '9') {
      return false;
    }
  }
  return dots == 3;
}

bool IsDigest(std::string_view d) {
  if (d.rfind("sha256:", 0) == 0) return d.size() == 7 + 64 && IsHex(d.substr(7));
  if (d.rfind("sha512:", 0) == 0) return d.size() == 7 + 128 && IsHex(d.substr(7));
  return false;
}

Result<std::string> ReadBounded(const std::string& path, size_t max_bytes) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  if (!fd) return ErrnoError("open(" + path + ")");
  struct stat st {};
  if (::fstat(fd.get(), &st) < 0) return ErrnoError("fstat(" + path + ")");
  if (!S_ISREG(st.st_mode)) return InvalidArgument(path + " is not a regular file");
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    return InvalidArgument(path + " is larger than " + std::to_string(max_bytes) + " bytes");
  }
  std::string out(static_cast<size_t>(st.st_size), '\0');
  size_t off = 0;
  while (off < out.size()) {
    ssize_t n = ::read(fd.get(), out.data() + off, out.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("read(" + path + ")");
    if (n == 0) break;
    off += static_cast<size_t>(n);
  }
  out.resize(off);
  return out;
}

Result<json> ReadJson(const std::string& path, size_t max_bytes) {
  MOAT_ASSIGN_OR_RETURN(std::string text, ReadBounded(path, max_bytes));
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgument(path + " is not valid JSON");
  return j;
}

std::string BlobPath(const std::string& layout_dir, const std::string& digest) {
  size_t colon = digest.find(':');
  return layout_dir + "/blobs/" + digest.substr(0, colon) + "/" + digest.substr(colon + 1);
}

// A member of an object; null when `obj` is no object or has no such member. (json::value()
// throws on a non-object: nothing read from the layout may throw.)
const json& Member(const json& obj, const char* key) {
  static const json kNull;
  if (!obj.is_object()) return kNull;
  auto it = obj.find(key);
  return it != obj.end() ? *it : kNull;
}

// A string member of an object, or "" when absent, null or of another type.
std::string StringField(const json& obj, const char* key) {
  const json& v = Member(obj, key);
  return v.is_string() ? v.get<std::string>() : "";
}

std::string Base64(std::string_view in) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v = (static_cast<uint8_t>(in[i]) << 16) | (static_cast<uint8_t>(in[i + 1]) << 8) |
                 static_cast<uint8_t>(in[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out += kAlphabet[(v >> s) & 63];
  }
  if (i < in.size()) {
    uint32_t v = static_cast<uint8_t>(in[i]) << 16;
    if (i + 1 < in.size()) v |= static_cast<uint8_t>(in[i + 1]) << 8;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += i + 1 < in.size() ? kAlphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

// skopeo's fatal line is `time="…" level=fatal msg="initializing source docker://REF: why"`;
// the reason alone reads better after "pulling image REF: ".
std::string SkopeoReason(const std::string& stderr_tail) {
  std::string last = stderr_tail.substr(stderr_tail.rfind('\n') + 1);
  if (size_t at = stderr_tail.rfind("msg=\""); at != std::string::npos) {
    std::string msg;
    for (size_t i = at + 5; i < stderr_tail.size() && stderr_tail[i] != '\n'; ++i) {
      if (stderr_tail[i] == '\\' && i + 1 < stderr_tail.size()) {
        msg += stderr_tail[++i];
      } else if (stderr_tail[i] == '"') {
        break;
      } else {
        msg += stderr_tail[i];
      }
    }
    last = msg;
  }
  for (const char* prefix : {"initializing source ", "Error initializing source "}) {
    if (last.rfind(prefix, 0) == 0) {
      size_t colon = last.find(": ");
      if (colon != std::string::npos) last = last.substr(colon + 2);
    }
  }
  // "manifest unknown: manifest unknown": the registry's code and message say the same.
  size_t half = last.rfind(": ");
  if (half != std::string::npos) {
    std::string tail = last.substr(half + 2);
    if (last.size() >= 2 * tail.size() + 2 &&
        last.compare(half - tail.size(), tail.size(), tail) == 0) {
      last.resize(half);
    }
  }
  return last.empty() ? "skopeo failed without a message" : last;
}

ErrorCode SkopeoErrorCode(const std::string& reason) {
  auto has = [&](const char* s) { return reason.find(s) != std::string::npos; };
  if (has("manifest unknown") || has("name unknown") || has("not found") ||
      has("no image found in manifest list")) {
    return ErrorCode::kNotFound;
  }
  if (has("unauthorized") || has("authentication required") || has("denied")) {
    return ErrorCode::kPermissionDenied;
  }
  if (has("no such host") || has("connection refused") || has("i/o timeout") ||
      has("pinging container registry") || has("TLS handshake") || has("server gave HTTP")) {
    return ErrorCode::kUnavailable;
  }
  return ErrorCode::kInternal;
}

std::string Megabytes(uint64_t bytes) {
  return std::to_string((bytes + (1 << 19)) >> 20) + " MB";
}

}  // namespace

std::string ImageReference::ToString() const {
  std::string s = registry + "/" + repository;
  if (!tag.empty()) s += ":" + tag;
  if (!digest.empty()) s += "@" + digest;
  return s;
}

Result<ImageReference> ParseImageReference(std::string_view ref) {
  auto bad = [&](std::string_view why) {
    return InvalidArgument("image reference \"" + std::string(ref.substr(0, 256)) +
                           "\": " + std::string(why));
  };
  if (ref.empty()) return bad("empty");
  if (ref.size() > 1024) return bad("longer than 1024 characters");
  ImageReference r;
  std::string_view name = ref;
  if (size_t at = name.find('@'); at != std::string_view::npos) {
    r.digest = std::string(name.substr(at + 1));
    name = name.substr(0, at);
    if (!IsDigest(r.digest)) return bad("the digest is not sha256:<64 hex> or sha512:<128 hex>");
  }
  size_t slash = name.rfind('/');
  size_t colon = name.rfind(':');
  if (colon != std::string_view::npos && (slash == std::string_view::npos || colon > slash)) {
    r.tag = std::string(name.substr(colon + 1));
    name = name.substr(0, colon);
    if (r.tag.empty() || r.tag.size() > 128 || !IsWordChar(r.tag.front()) ||
        !std::all_of(r.tag.begin(), r.tag.end(),
                     [](char c) { return IsWordChar(c) || c == '.' || c == '-'; })) {
      return bad("the tag must be 1 to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'");
    }
  }
  std::string_view path = name;
  size_t first = name.find('/');
  if (first != std::string_view::npos) {
    std::string_view head = name.substr(0, first);
    if (head.find_first_of(".:") != std::string_view::npos || head == "localhost" ||
        (!head.empty() && head.front() == '[')) {
      if (!IsRegistryHost(head)) return bad("the registry host is not host[:port]");
      r.registry = std::string(head);
      path = name.substr(first + 1);
    }
  }
  if (r.registry.empty() || r.registry == "index.docker.io" ||
      r.registry == "registry-1.docker.io") {
    r.registry = "docker.io";
  }
  if (path.empty()) return bad("no repository name");
  for (size_t start = 0;;) {
    size_t end = path.find('/', start);
    std::string_view component = path.substr(start, end - start);
    if (!IsPathComponent(component)) {
      return bad("\"" + std::string(component) +
                 "\" is not a repository name (lower-case letters, digits, '.', '_', '-')");
    }
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  r.repository = std::string(path);
  if (r.registry == "docker.io" && r.repository.find('/') == std::string::npos) {
    r.repository = "library/" + r.repository;
  }
  if (r.registry.size() + 1 + r.repository.size() > 255) return bad("the name is too long");
  if (r.tag.empty() && r.digest.empty()) r.tag = "latest";
  r.insecure = IsLoopbackHost(r.registry);
  return r;
}

Result<OciImageConfig> ReadOciImageConfig(const std::string& layout_dir, const std::string& tag) {
  MOAT_ASSIGN_OR_RETURN(json index, ReadJson(layout_dir + "/index.json", kMaxIndexBytes));
  const json& manifests = Member(index, "manifests");
  if (!manifests.is_array()) return InvalidArgument("index.json has no manifests");
  std::string manifest_digest;
  for (const json& m : manifests) {
    std::string ref_name =
        StringField(Member(m, "annotations"), "org.opencontainers.image.ref.name");
    if (ref_name == tag) {
      manifest_digest = StringField(m, "digest");
      break;
    }
  }
  if (manifest_digest.empty()) return NotFound("no image tagged \"" + tag + "\" in the layout");
  if (!IsDigest(manifest_digest)) return InvalidArgument("index.json: bad manifest digest");
  MOAT_ASSIGN_OR_RETURN(json manifest,
                        ReadJson(BlobPath(layout_dir, manifest_digest), kMaxManifestBytes));
  std::string config_digest = StringField(Member(manifest, "config"), "digest");
  if (!IsDigest(config_digest)) return InvalidArgument("manifest: no valid config digest");
  MOAT_ASSIGN_OR_RETURN(json config_blob,
                        ReadJson(BlobPath(layout_dir, config_digest), kMaxConfigBytes));
  OciImageConfig out;
  out.digest = manifest_digest;
  // Absent or null fields (a "config": null is valid) set nothing.
  const json& config = Member(config_blob, "config");
  out.user = StringField(config, "User");
  out.workdir = StringField(config, "WorkingDir");
  if (const json& env = Member(config, "Env"); env.is_array()) {
    for (const json& e : env) {
      if (!e.is_string()) continue;
      const auto& kv = e.get_ref<const std::string&>();
      size_t eq = kv.find('=');
      if (eq == 0 || eq == std::string::npos) continue;  // Docker ignores these too
      out.env.emplace_back(kv.substr(0, eq), kv.substr(eq + 1));
    }
  }
  return out;
}

Result<OciImageConfig> PullOciImage(const OciPullOptions& options, const std::string& rootfs_dir) {
  auto progress = [&](const std::string& line) {
    if (options.progress) options.progress(line);
  };
  MOAT_ASSIGN_OR_RETURN(ImageReference ref, ParseImageReference(options.ref));
  if (options.work_dir.empty() || options.work_dir.front() != '/' ||
      options.work_dir.find(':') != std::string::npos) {
    // skopeo's and umoci's "oci:PATH:TAG" would split a path at its ':'.
    return InvalidArgument("work_dir must be an absolute path without ':': " + options.work_dir);
  }
  if (PathExists(rootfs_dir) && !DirNames(rootfs_dir).empty()) {
    return FailedPrecondition("rootfs dir " + rootfs_dir + " is not empty");
  }
  const std::string layout = options.work_dir + "/layout";
  const std::string policy = options.work_dir + "/policy.json";
  const std::string auth_file = options.work_dir + "/auth.json";
  // Our own trust policy: the host's /etc/containers/policy.json is not ours to depend on, and
  // signatures are not checked for any image (as E2B does not).
  MOAT_RETURN_IF_ERROR(WriteFileAtomic(policy, kTrustPolicy, 0644));

  // Global options (our policy, scratch for big files, the guest's platform), then copy's.
  std::vector<std::string> argv = {"skopeo", "--policy", policy, "--tmpdir", options.work_dir};
  argv.insert(argv.end(), {"--override-os", kGuestOs, "--override-arch", kGuestArch});
  argv.insert(argv.end(), {"copy", "--retry-times", "2"});
  argv.push_back(std::string("--src-tls-verify=") + (ref.insecure ? "false" : "true"));
  // The password goes into a file only skopeo reads (0600, in the scratch dir, removed right
  // after), never onto a command line that `ps` shows.
  Cleanup remove_auth([&] { ::unlink(auth_file.c_str()); });
  if (options.auth) {
    json auth = {{"auths",
                  {{ref.registry,
                    {{"auth", Base64(options.auth->username + ":" + options.auth->password)}}}}}};
    MOAT_RETURN_IF_ERROR(WriteFileAtomic(auth_file, auth.dump() + "\n", 0600));
    argv.insert(argv.end(), {"--src-authfile", auth_file});
  } else {
    // Anonymous: credentials that this host may hold for a registry never serve a tenant.
    argv.emplace_back("--src-no-creds");
  }
  argv.push_back("docker://" + ref.ToString());
  argv.push_back("oci:" + layout + ":" + kLayoutTag);

  progress("pulling " + ref.ToString() + (ref.insecure ? " (plain HTTP)" : ""));
  LogInfo("oci.pull_started",
          {{"image", ref.ToString()}, {"auth", options.auth ? "registry" : "none"}});
  auto started = std::chrono::steady_clock::now();
  // HOME in the scratch dir: no per-user registries.conf or auth of this host's root applies.
  ExternalTool skopeo{.argv = argv,
                      .env = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C",
                              "HOME=" + options.work_dir, "TMPDIR=" + options.work_dir},
                      .timeout = options.timeout,
                      .on_stdout_line = [&](std::string_view line) {
                        if (line.rfind("Copying ", 0) == 0) progress(std::string(line));
                      }};
  MOAT_ASSIGN_OR_RETURN(ToolOutput pulled, RunExternalTool(skopeo));
  remove_auth.Cancel();
  ::unlink(auth_file.c_str());
  if (!pulled.succeeded()) {
    std::string reason = SkopeoReason(pulled.stderr_tail);
    LogWarn("oci.pull_failed", {{"image", ref.ToString()}, {"error", reason}});
    return Status(SkopeoErrorCode(reason), "pulling image " + options.ref + ": " + reason);
  }
  auto pulled_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                       std::chrono::steady_clock::now() - started)
                       .count();
  auto config = ReadOciImageConfig(layout, kLayoutTag);
  if (!config.ok()) return config.status().Annotate("reading the config of image " + options.ref);
  uint64_t blob_bytes = 0;
  if (auto blobs = TreeUsage(layout + "/blobs"); blobs.ok()) blob_bytes = blobs->bytes;
  progress("pulled " + ref.ToString() + " " + config->digest + " (" + Megabytes(blob_bytes) + ", " +
           std::to_string(pulled_ms) + " ms)");

  started = std::chrono::steady_clock::now();
  ExternalTool umoci{.argv = {"umoci", "--log", "error", "raw", "unpack", "--image",
                              layout + ":" + kLayoutTag, rootfs_dir},
                     .env = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C",
                             "HOME=" + options.work_dir, "TMPDIR=" + options.work_dir},
                     .timeout = options.timeout};
  MOAT_ASSIGN_OR_RETURN(ToolOutput unpacked, RunExternalTool(umoci));
  if (!unpacked.succeeded()) {
    return Internal("unpacking image " + options.ref + ": umoci " + unpacked.Describe());
  }
  auto unpacked_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                         std::chrono::steady_clock::now() - started)
                         .count();
  MOAT_ASSIGN_OR_RETURN(TreeSize tree, TreeUsage(rootfs_dir));
  progress("unpacked " + Megabytes(tree.bytes) + " in " + std::to_string(tree.inodes) + " files (" +
           std::to_string(unpacked_ms) + " ms)");
  LogInfo("oci.pull_done", {{"image", ref.ToString()},
                            {"digest", config->digest},
                            {"blob_bytes", blob_bytes},
                            {"tree_bytes", tree.bytes},
                            {"pull_ms", pulled_ms},
                            {"unpack_ms", unpacked_ms}});
  return config;
}

}  // namespace moat::agent
