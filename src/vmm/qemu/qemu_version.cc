#include "vmm/qemu/qemu_version.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <mutex>
#include <tuple>

#include "common/child_process.h"
#include "common/unique_fd.h"

namespace moat::vmm::qemu {
namespace {

// Reads a decimal number at `s[*i]`; false if there is none (or it is absurdly long).
bool ReadNumber(std::string_view s, size_t* i, int* out) {
  size_t start = *i;
  int v = 0;
  while (*i < s.size() && s[*i] >= '0' && s[*i] <= '9' && *i - start < 6) {
    v = v * 10 + (s[*i] - '0');
    ++*i;
  }
  if (*i == start) return false;
  *out = v;
  return true;
}

}  // namespace

std::string QemuVersion::Number() const {
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(micro);
}

QemuFeatures QemuFeatures::Of(const QemuVersion& v) {
  QemuFeatures f;
  f.readonly_private_memory = v.AtLeast(8, 2);
  f.fdset_file_migration = v.AtLeast(9, 1);
  f.incoming_exit_on_error = v.AtLeast(9, 1);
  return f;
}

Result<QemuVersion> ParseQemuVersion(std::string_view out) {
  std::string_view line = out.substr(0, out.find('\n'));
  constexpr std::string_view kPrefix = "QEMU emulator version ";
  size_t at = line.find(kPrefix);
  if (at == std::string_view::npos) {
    return InvalidArgument("not QEMU's --version output: \"" + std::string(line.substr(0, 80)) +
                           "\"");
  }
  size_t i = at + kPrefix.size();
  QemuVersion v;
  bool ok = ReadNumber(line, &i, &v.major) && i < line.size() && line[i++] == '.' &&
            ReadNumber(line, &i, &v.minor);
  if (ok && i < line.size() && line[i] == '.') {
    ++i;
    ok = ReadNumber(line, &i, &v.micro);
  }
  if (!ok) {
    return InvalidArgument("no version number in \"" + std::string(line.substr(0, 80)) + "\"");
  }
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.remove_suffix(1);
  v.text = std::string(line.substr(at));
  return v;
}

Result<QemuVersion> VersionFromQmpGreeting(const nlohmann::json& g) {
  const nlohmann::json* at = &g;
  for (const char* key : {"QMP", "version"}) {
    if (!at->is_object()) break;
    auto it = at->find(key);
    at = it == at->end() ? nullptr : &*it;
    if (at == nullptr) break;
  }
  const nlohmann::json* q = nullptr;
  if (at != nullptr && at->is_object()) {
    auto it = at->find("qemu");
    if (it != at->end() && it->is_object()) q = &*it;
  }
  if (q == nullptr) return InvalidArgument("the QMP greeting has no QMP.version.qemu");
  int parts[3];
  const char* names[3] = {"major", "minor", "micro"};
  for (int i = 0; i < 3; ++i) {
    auto it = q->find(names[i]);
    if (it == q->end() || !it->is_number_integer() || it->get<int64_t>() < 0 ||
        it->get<int64_t>() > 100000) {
      return InvalidArgument(std::string("the QMP greeting's version has no valid ") + names[i]);
    }
    parts[i] = static_cast<int>(it->get<int64_t>());
  }
  QemuVersion v{.major = parts[0], .minor = parts[1], .micro = parts[2]};
  v.text = "QEMU " + v.Number();
  auto pkg = at->find("package");
  if (pkg != at->end() && pkg->is_string() && !pkg->get<std::string>().empty()) {
    std::string p = pkg->get<std::string>().substr(0, 100);
    for (char& c : p) {
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
    }
    v.text += " (" + p + ")";
  }
  return v;
}

Result<QemuVersion> ProbeQemuVersion(const std::string& binary) {
  struct stat st {};
  if (::stat(binary.c_str(), &st) < 0) return ErrnoError("QEMU binary: stat(" + binary + ")");
  using Key = std::tuple<std::string, dev_t, ino_t, off_t, int64_t, long>;
  Key key{binary, st.st_dev, st.st_ino, st.st_size, st.st_mtim.tv_sec, st.st_mtim.tv_nsec};
  static std::mutex mu;
  static std::map<Key, QemuVersion> cache;
  {
    std::lock_guard lock(mu);
    if (auto it = cache.find(key); it != cache.end()) return it->second;
  }
  int p[2];
  if (::pipe2(p, O_CLOEXEC) < 0) return ErrnoError("pipe2");
  UniqueFd r(p[0]), w(p[1]);
  MOAT_ASSIGN_OR_RETURN(ChildProcess child, ChildProcess::Spawn({.argv = {binary, "--version"},
                                                                 .env = std::vector<std::string>{},
                                                                 .fds = {{1, w.get()}}}));
  w.Reset();
  std::string out;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  char buf[512];
  while (out.size() < 4096) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd pfd{.fd = r.get(), .events = POLLIN, .revents = 0};
    int n = ::poll(&pfd, 1, static_cast<int>(left.count()));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    ssize_t got = ::read(r.get(), buf, sizeof buf);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    out.append(buf, static_cast<size_t>(got));
  }
  child.Kill();
  auto version = ParseQemuVersion(out);
  if (!version.ok()) return version.status().Annotate(binary + " --version");
  std::lock_guard lock(mu);
  cache[key] = *version;
  return *version;
}

Status CheckQemuSupported(const QemuVersion& v) {
  if (v.AtLeast(kMinimumQemuMajor, kMinimumQemuMinor)) return Status::Ok();
  return FailedPrecondition(
      "QEMU " + v.Number() + " is too old: moat needs " + std::to_string(kMinimumQemuMajor) + "." +
      std::to_string(kMinimumQemuMinor) +
      " or later, which opens shared memory files read-only (readonly=on,rom=off); an older "
      "QEMU opens them read-write, so a VMM escape could change pages every sibling VM maps. On "
      "Debian 12, `make setup` installs 10.0 from bookworm-backports.");
}

}  // namespace moat::vmm::qemu
