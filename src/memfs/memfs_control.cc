#include "memfs/memfs_control.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <random>
#include <thread>
#include <unordered_set>

#include "common/fs.h"
#include "common/json_depth.h"
#include "common/log.h"
#include "common/unique_fd.h"

namespace moat::memfs {
namespace {

// A spec of kMaxMemfsFileSize has 262144 chunks of ~67 bytes of JSON each.
constexpr uint64_t kMaxSpecBytes = uint64_t{32} << 20;
constexpr uint64_t kMaxTraceBytes = uint64_t{8} << 20;
constexpr uint64_t kMaxStatsBytes = uint64_t{1} << 20;

// Reads a whole file of at most `limit` bytes (errors name the path).
Result<std::string> ReadBounded(const std::string& path, uint64_t limit) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError("open(" + path + ")");
  struct stat st {};
  if (::fstat(fd.get(), &st) < 0) return ErrnoError("fstat(" + path + ")");
  if (!S_ISREG(st.st_mode)) return InvalidArgument(path + ": not a regular file");
  if (static_cast<uint64_t>(st.st_size) > limit) {
    return InvalidArgument(path + ": " + std::to_string(st.st_size) + " bytes, more than " +
                           std::to_string(limit));
  }
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("read(" + path + ")");
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > limit) return InvalidArgument(path + ": grew past " + std::to_string(limit));
  }
  return out;
}

// A name for a temporary file beside `path` that no other thread or process picks.
std::string TempNameFor(const std::string& path) {
  static std::atomic<uint64_t> counter{0};
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
  std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  return dir + "/.tmp-" + base + "-" + std::to_string(::getpid()) + "-" +
         std::to_string(counter.fetch_add(1));
}

Status WriteAll(int fd, const std::string& path, std::string_view data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("write(" + path + ")");
    }
    off += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Result<nlohmann::json> ParseJson(const std::string& what, std::string_view text, int max_depth) {
  if (JsonDepth(text, max_depth) < 0) return InvalidArgument(what + ": nested too deeply");
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgument(what + ": not valid JSON");
  return j;
}

// The JSON array of chunk indexes (a trace, a prefetch list): each an integer < `count` (when
// given), none repeated.
Result<std::vector<uint32_t>> DecodeIndexes(const std::string& what, const nlohmann::json& j,
                                            std::optional<uint64_t> count) {
  if (!j.is_array()) return InvalidArgument(what + ": not an array");
  std::vector<uint32_t> out;
  out.reserve(j.size());
  std::unordered_set<uint32_t> seen;
  for (size_t i = 0; i < j.size(); ++i) {
    const auto& v = j[i];
    std::string at = what + "[" + std::to_string(i) + "]";
    if (!v.is_number_unsigned()) return InvalidArgument(at + ": not a chunk index");
    uint64_t index = v.get<uint64_t>();
    if (index > UINT32_MAX || (count && index >= *count)) {
      return InvalidArgument(at + ": " + std::to_string(index) + " is out of range");
    }
    if (!seen.insert(static_cast<uint32_t>(index)).second) {
      return InvalidArgument(at + ": chunk " + std::to_string(index) + " is listed twice");
    }
    out.push_back(static_cast<uint32_t>(index));
  }
  return out;
}

Status ValidateSpec(const MemfsFileSpec& spec) {
  if (!IsValidMemfsName(spec.name)) {
    return InvalidArgument("memfs file name '" + spec.name + "': want [A-Za-z0-9_-]{1,64}");
  }
  const auto& map = spec.chunks;
  if (map.size > kMaxMemfsFileSize) {
    return InvalidArgument(spec.name + ": size " + std::to_string(map.size) + " past the limit");
  }
  uint64_t want = (map.size + storage::kChunkSize - 1) / storage::kChunkSize;
  if (map.chunks.size() != want) {
    return InvalidArgument(spec.name + ": chunks: " + std::to_string(map.chunks.size()) +
                           " chunks for size " + std::to_string(map.size) + " (want " +
                           std::to_string(want) + ")");
  }
  for (size_t i = 0; i < map.chunks.size(); ++i) {
    if (map.chunks[i] && !storage::IsValidChunkHash(*map.chunks[i])) {
      return InvalidArgument(spec.name + ": chunks[" + std::to_string(i) + "]: not a SHA-256");
    }
  }
  std::unordered_set<uint32_t> seen;
  for (size_t i = 0; i < spec.prefetch.size(); ++i) {
    if (spec.prefetch[i] >= want || !seen.insert(spec.prefetch[i]).second) {
      return InvalidArgument(spec.name + ": prefetch[" + std::to_string(i) +
                             "]: out of range or repeated");
    }
  }
  return Status::Ok();
}

std::string CheckedDir(const std::string& dir) {
  return !dir.empty() && dir.back() == '/' ? dir.substr(0, dir.size() - 1) : dir;
}

}  // namespace

bool IsValidMemfsName(std::string_view name) {
  if (name.empty() || name.size() > 64 || name == kReservedMemfsName) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  });
}

std::string EncodeMemfsFileSpec(const MemfsFileSpec& spec) {
  nlohmann::json chunks = nlohmann::json::array();
  for (const auto& c : spec.chunks.chunks) chunks.push_back(c ? nlohmann::json(*c) : nullptr);
  nlohmann::json j = {{"version", kMemfsFileSpecVersion},
                      {"size", spec.chunks.size},
                      {"chunks", std::move(chunks)},
                      {"prefetch", spec.prefetch},
                      {"fill", spec.fill}};
  return j.dump();
}

Result<MemfsFileSpec> DecodeMemfsFileSpec(std::string_view name, std::string_view json) {
  std::string what = "memfs file " + std::string(name);
  if (!IsValidMemfsName(name)) return InvalidArgument(what + ": want [A-Za-z0-9_-]{1,64}");
  MOAT_ASSIGN_OR_RETURN(nlohmann::json j, ParseJson(what, json, 4));
  if (!j.is_object()) return InvalidArgument(what + ": not a JSON object");
  MemfsFileSpec spec;
  spec.name = std::string(name);
  bool have_size = false;
  bool have_chunks = false;
  for (const auto& [key, v] : j.items()) {
    if (key == "version") {
      if (!v.is_number_unsigned() || v.get<uint64_t>() != kMemfsFileSpecVersion) {
        return InvalidArgument(what + ": version: want " + std::to_string(kMemfsFileSpecVersion));
      }
    } else if (key == "size") {
      if (!v.is_number_unsigned()) return InvalidArgument(what + ": size: not a byte count");
      spec.chunks.size = v.get<uint64_t>();
      if (spec.chunks.size > kMaxMemfsFileSize) {
        return InvalidArgument(what + ": size: past the limit of " +
                               std::to_string(kMaxMemfsFileSize));
      }
      have_size = true;
    } else if (key == "chunks") {
      if (!v.is_array()) return InvalidArgument(what + ": chunks: not an array");
      spec.chunks.chunks.reserve(v.size());
      for (size_t i = 0; i < v.size(); ++i) {
        const auto& c = v[i];
        if (c.is_null()) {
          spec.chunks.chunks.emplace_back(std::nullopt);
        } else if (c.is_string() && storage::IsValidChunkHash(c.get_ref<const std::string&>())) {
          spec.chunks.chunks.emplace_back(c.get<std::string>());
        } else {
          return InvalidArgument(what + ": chunks[" + std::to_string(i) +
                                 "]: neither null nor 64 lowercase hex digits");
        }
      }
      have_chunks = true;
    } else if (key == "prefetch") {
      MOAT_ASSIGN_OR_RETURN(spec.prefetch, DecodeIndexes(what + ": prefetch", v, std::nullopt));
    } else if (key == "fill") {
      if (!v.is_boolean()) return InvalidArgument(what + ": fill: not a boolean");
      spec.fill = v.get<bool>();
    } else {
      return InvalidArgument(what + ": unknown key '" + key + "'");
    }
  }
  if (!have_size) return InvalidArgument(what + ": size: missing");
  if (!have_chunks) return InvalidArgument(what + ": chunks: missing");
  MOAT_RETURN_IF_ERROR(ValidateSpec(spec));
  return spec;
}

std::string MemfsSpecPath(const std::string& control_dir, std::string_view name) {
  return CheckedDir(control_dir) + "/" + std::string(name) + ".json";
}

std::string MemfsTracePath(const std::string& control_dir, std::string_view name) {
  return CheckedDir(control_dir) + "/" + std::string(name) + ".trace";
}

std::string MemfsStatsPath(const std::string& control_dir) {
  return CheckedDir(control_dir) + "/stats.json";
}

std::string MemfsPidPath(const std::string& control_dir) {
  return CheckedDir(control_dir) + "/memfs.pid";
}

Status ReplaceFile(const std::string& path, std::string_view data, mode_t mode) {
  std::string tmp = TempNameFor(path);
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode));
  if (!fd) return ErrnoError("open(" + tmp + ")");
  Status written = WriteAll(fd.get(), tmp, data);
  fd.Reset();
  if (written.ok() && ::rename(tmp.c_str(), path.c_str()) < 0) {
    written = ErrnoError("rename(" + tmp + ", " + path + ")");
  }
  if (!written.ok()) ::unlink(tmp.c_str());
  return written;
}

Status WriteMemfsFile(const std::string& control_dir, const MemfsFileSpec& spec) {
  MOAT_RETURN_IF_ERROR(ValidateSpec(spec));
  return ReplaceFile(MemfsSpecPath(control_dir, spec.name), EncodeMemfsFileSpec(spec));
}

Result<MemfsFileSpec> ReadMemfsFile(const std::string& control_dir, std::string_view name) {
  if (!IsValidMemfsName(name)) {
    return InvalidArgument("memfs file name '" + std::string(name) + "': not valid");
  }
  std::string path = MemfsSpecPath(control_dir, name);
  MOAT_ASSIGN_OR_RETURN(std::string text, ReadBounded(path, kMaxSpecBytes));
  auto spec = DecodeMemfsFileSpec(name, text);
  if (!spec.ok()) return spec.status().Annotate(path);
  return spec;
}

Status RemoveMemfsFile(const std::string& control_dir, std::string_view name) {
  if (!IsValidMemfsName(name)) return InvalidArgument("memfs file name: not valid");
  std::string path = MemfsSpecPath(control_dir, name);
  if (::unlink(path.c_str()) < 0 && errno != ENOENT) return ErrnoError("unlink(" + path + ")");
  return Status::Ok();
}

Result<std::vector<uint32_t>> ReadMemfsTrace(const std::string& control_dir,
                                             std::string_view name) {
  if (!IsValidMemfsName(name)) return InvalidArgument("memfs file name: not valid");
  std::string path = MemfsTracePath(control_dir, name);
  MOAT_ASSIGN_OR_RETURN(std::string text, ReadBounded(path, kMaxTraceBytes));
  MOAT_ASSIGN_OR_RETURN(nlohmann::json j, ParseJson(path, text, 2));
  return DecodeIndexes(path, j, std::nullopt);
}

Result<bool> WriteMemfsTraceIfAbsent(const std::string& control_dir, std::string_view name,
                                     const std::vector<uint32_t>& trace) {
  if (!IsValidMemfsName(name)) return InvalidArgument("memfs file name: not valid");
  std::string path = MemfsTracePath(control_dir, name);
  std::string tmp = TempNameFor(path);
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (!fd) return ErrnoError("open(" + tmp + ")");
  Status written = WriteAll(fd.get(), tmp, nlohmann::json(trace).dump());
  fd.Reset();
  bool linked = false;
  // link(2), unlike rename(2), fails when the target exists: the first trace stays.
  if (written.ok()) {
    if (::link(tmp.c_str(), path.c_str()) == 0) {
      linked = true;
    } else if (errno != EEXIST) {
      written = ErrnoError("link(" + tmp + ", " + path + ")");
    }
  }
  ::unlink(tmp.c_str());
  if (!written.ok()) return written;
  return linked;
}

Status RemoveMemfsTrace(const std::string& control_dir, std::string_view name) {
  if (!IsValidMemfsName(name)) return InvalidArgument("memfs file name: not valid");
  std::string path = MemfsTracePath(control_dir, name);
  if (::unlink(path.c_str()) < 0 && errno != ENOENT) return ErrnoError("unlink(" + path + ")");
  return Status::Ok();
}

Result<nlohmann::json> ReadMemfsStats(const std::string& control_dir) {
  std::string path = MemfsStatsPath(control_dir);
  MOAT_ASSIGN_OR_RETURN(std::string text, ReadBounded(path, kMaxStatsBytes));
  MOAT_ASSIGN_OR_RETURN(nlohmann::json j, ParseJson(path, text, 8));
  if (!j.is_object()) return InvalidArgument(path + ": not a JSON object");
  return j;
}

// ---- MemfsProcess ----

namespace {

// argv of a live process (NUL-separated in /proc/<pid>/cmdline); empty when gone.
std::vector<std::string> ProcessArgv(pid_t pid) {
  auto text = ReadBounded("/proc/" + std::to_string(pid) + "/cmdline", 1 << 20);
  std::vector<std::string> out;
  if (!text.ok()) return out;
  size_t start = 0;
  while (start < text->size()) {
    size_t end = text->find('\0', start);
    if (end == std::string::npos) end = text->size();
    out.push_back(text->substr(start, end - start));
    start = end + 1;
  }
  return out;
}

// The last `bytes` of a log file, for errors.
std::string LogTail(const std::string& path, size_t bytes = 2048) {
  auto text = ReadBounded(path, uint64_t{1} << 30);
  if (!text.ok()) return "";
  std::string tail = text->size() > bytes ? text->substr(text->size() - bytes) : *text;
  while (!tail.empty() && (tail.back() == '\n' || tail.back() == ' ')) tail.pop_back();
  return tail;
}

}  // namespace

MemfsProcess::MemfsProcess(MemfsProcessOptions options) : options_(std::move(options)) {
  // memfs runs in "/" (it must not keep a directory of ours busy): a relative binary path is
  // resolved here, against our working directory.
  if (!options_.moatd_binary.empty() && options_.moatd_binary[0] != '/' &&
      options_.moatd_binary.find('/') != std::string::npos) {
    char cwd[4096];
    if (::getcwd(cwd, sizeof(cwd)) != nullptr) {
      options_.moatd_binary = std::string(cwd) + "/" + options_.moatd_binary;
    }
  }
}

MemfsProcess::~MemfsProcess() {
  std::lock_guard lock(mu_);
  // memfs outlives us: never kill it here. (If it is our child and exits while this process
  // lives on, it stays a zombie until this process exits.)
  child_.Release();
}

std::string MemfsProcess::PathOf(std::string_view name) const {
  return CheckedDir(options_.mount_dir) + "/" + std::string(name);
}

std::string MemfsProcess::LogPath() const {
  return options_.log_file.empty() ? CheckedDir(options_.control_dir) + "/memfs.log"
                                   : options_.log_file;
}

bool MemfsProcess::IsMountLive(const std::string& mount_dir) {
  struct statfs sfs {};
  if (::statfs(mount_dir.c_str(), &sfs) < 0) return false;
  return static_cast<int64_t>(sfs.f_type) == kFuseSuperMagic;
}

bool MemfsProcess::ChildAliveLocked() {
  return child_.valid() && !child_.Exited();
}

bool MemfsProcess::AdoptFromPidFileLocked() {
  auto text = ReadBounded(MemfsPidPath(options_.control_dir), 64);
  if (!text.ok()) return false;
  char* end = nullptr;
  long pid = std::strtol(text->c_str(), &end, 10);
  if (pid <= 1 || end == text->c_str()) return false;
  // The pid must still be a memfs serving this mount (pids are reused).
  std::vector<std::string> argv = ProcessArgv(static_cast<pid_t>(pid));
  bool is_memfs = std::find(argv.begin(), argv.end(), "memfs") != argv.end();
  auto mount = std::find(argv.begin(), argv.end(), "--mount");
  if (!is_memfs || mount == argv.end() || mount + 1 == argv.end() ||
      *(mount + 1) != options_.mount_dir) {
    return false;
  }
  auto adopted = ChildProcess::Adopt(static_cast<pid_t>(pid));
  if (!adopted.ok()) return false;
  child_ = std::move(*adopted);
  LogInfo("memfs.adopted", {{"pid", static_cast<int64_t>(pid)}, {"mount", options_.mount_dir}});
  return true;
}

Status MemfsProcess::EnsureRunning() {
  std::lock_guard lock(mu_);
  if (!ChildAliveLocked()) {
    child_.Release();
    child_ = ChildProcess();
    AdoptFromPidFileLocked();
  }
  if (ChildAliveLocked()) {
    if (IsMountLive(options_.mount_dir)) return Status::Ok();
    // Alive without a live mount: still starting, or stuck. Give it the start timeout.
    auto deadline = std::chrono::steady_clock::now() + options_.start_timeout;
    while (std::chrono::steady_clock::now() < deadline && ChildAliveLocked()) {
      if (IsMountLive(options_.mount_dir)) return Status::Ok();
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    LogWarn("memfs.restart", {{"pid", static_cast<int64_t>(child_.pid())},
                              {"reason", "mount not live within the start timeout"}});
    child_.Kill();
  }
  return StartLocked();
}

Status MemfsProcess::StartLocked() {
  const auto& o = options_;
  std::vector<std::string> argv = {o.moatd_binary,     "memfs",
                                   "--mount",          o.mount_dir,
                                   "--control",        o.control_dir,
                                   "--cache-dir",      o.cache_dir,
                                   "--cache-mib",      std::to_string(o.cache_mib),
                                   "--trace-window-s", std::to_string(o.trace_window_s),
                                   "--fill-delay-ms",  std::to_string(o.fill_delay_ms),
                                   "--foreground"};
  if (!o.snapshot_store.empty()) {
    argv.insert(argv.end(), {"--snapshot-store", o.snapshot_store, "--s3-endpoint", o.s3_endpoint,
                             "--s3-region", o.s3_region});
    if (!o.s3_credentials_file.empty()) {
      argv.insert(argv.end(), {"--s3-credentials-file", o.s3_credentials_file});
    }
  }
  if (!o.local_store.empty()) argv.insert(argv.end(), {"--local-store", o.local_store});
  MOAT_RETURN_IF_ERROR(MakeDirs(o.control_dir));
  std::string log_path = LogPath();
  UniqueFd log(::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640));
  if (!log) return ErrnoError("open(" + log_path + ")");
  UniqueFd devnull(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!devnull) return ErrnoError("open(/dev/null)");
  SpawnOptions spawn;
  spawn.argv = argv;
  spawn.fds = {{0, devnull.get()}, {1, log.get()}, {2, log.get()}};
  spawn.cwd = "/";
  spawn.new_session = true;       // its own session: a signal to the agent's group misses it
  spawn.parent_death_signal = 0;  // it outlives the agent
  auto child = ChildProcess::Spawn(spawn);
  if (!child.ok()) return child.status().Annotate("starting memfs");
  child_ = std::move(*child);
  pid_t pid = child_.pid();
  LogInfo("memfs.started", {{"pid", static_cast<int64_t>(pid)}, {"mount", o.mount_dir}});
  auto deadline = std::chrono::steady_clock::now() + o.start_timeout;
  for (;;) {
    if (child_.Exited()) {
      std::string how = DescribeWaitStatus(child_.exit_status().value_or(-1));
      child_ = ChildProcess();
      return Unavailable("memfs (pid " + std::to_string(pid) + ") " + how +
                         " before its mount was live; its log (" + log_path +
                         ") ends: " + LogTail(log_path));
    }
    if (IsMountLive(o.mount_dir)) return Status::Ok();
    if (std::chrono::steady_clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  child_.Kill();
  child_ = ChildProcess();
  return DeadlineExceeded("memfs (pid " + std::to_string(pid) + ") did not bring " + o.mount_dir +
                          " up within " + std::to_string(o.start_timeout.count()) +
                          " ms; its log (" + log_path + ") ends: " + LogTail(log_path));
}

std::optional<pid_t> MemfsProcess::pid() {
  std::lock_guard lock(mu_);
  if (ChildAliveLocked()) return child_.pid();
  return std::nullopt;
}

Status MemfsProcess::Stop(std::chrono::milliseconds timeout) {
  std::lock_guard lock(mu_);
  if (!ChildAliveLocked()) {
    child_.Release();
    child_ = ChildProcess();
    if (!AdoptFromPidFileLocked()) return Status::Ok();
  }
  MOAT_RETURN_IF_ERROR(child_.Signal(SIGTERM));
  pid_t pid = child_.pid();
  auto waited = child_.Wait(timeout);
  child_.Kill();  // SIGKILL when still running; nothing when it has exited
  child_ = ChildProcess();
  if (!waited.ok()) {
    return DeadlineExceeded("memfs (pid " + std::to_string(pid) + ") did not exit within " +
                            std::to_string(timeout.count()) + " ms of SIGTERM; killed");
  }
  // An adopted memfs's status is unknown (-1): only our own child's is checked.
  if (*waited >= 0 && !(WIFEXITED(*waited) && WEXITSTATUS(*waited) == 0)) {
    return Internal("memfs (pid " + std::to_string(pid) + ") " + DescribeWaitStatus(*waited) +
                    " on SIGTERM");
  }
  return Status::Ok();
}

}  // namespace moat::memfs
