#include "vmm/cgroup.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <sstream>
#include <thread>

#include "common/fs.h"
#include "common/log.h"

namespace moat::vmm {
namespace {

constexpr std::string_view kFsRoot = "/sys/fs/cgroup";

std::string JoinCgroupPath(std::string_view a, std::string_view b) {
  std::string out(a);
  while (!out.empty() && out.back() == '/') out.pop_back();
  size_t start = 0;
  while (start < b.size() && b[start] == '/') ++start;
  if (start < b.size()) {
    out += '/';
    out += b.substr(start);
  }
  return out;
}

bool ValidName(std::string_view name) {
  if (name.empty() || name.size() > 64 || name == "." || name == "..") return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-';
    if (!ok) return false;
  }
  return true;
}

Status WriteCgroupFile(const std::string& path, std::string_view value) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd) return ErrnoError("open(" + path + ")");
  ssize_t n;
  do {
    n = ::write(fd.get(), value.data(), value.size());
  } while (n < 0 && errno == EINTR);
  if (n < 0) return ErrnoError("write(" + path + ", \"" + std::string(value) + "\")");
  return Status::Ok();
}

}  // namespace

Result<CgroupLayout> ParseCgroupLayout(CgroupVersion version, std::string_view fs_root,
                                       std::string_view proc_self_cgroup) {
  CgroupLayout layout;
  layout.version = version;
  std::istringstream in{std::string(proc_self_cgroup)};
  std::string line;
  // Lines are "<hierarchy-id>:<controller,list>:<path>"; v2's is "0::<path>".
  std::vector<std::pair<std::string, std::string>> entries;  // {controllers, path}
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    size_t c1 = line.find(':');
    size_t c2 = c1 == std::string::npos ? std::string::npos : line.find(':', c1 + 1);
    if (c2 == std::string::npos) {
      return InvalidArgument("/proc/self/cgroup: malformed line \"" + line + "\"");
    }
    entries.emplace_back(line.substr(c1 + 1, c2 - c1 - 1), line.substr(c2 + 1));
  }
  if (version == CgroupVersion::kV2) {
    for (const auto& [controllers, path] : entries) {
      if (controllers.empty()) {
        layout.hierarchies.push_back({"", std::string(fs_root), path});
        return layout;
      }
    }
    return NotFound("/proc/self/cgroup: no cgroup v2 entry (0::/path)");
  }
  for (std::string_view want : kCgroupControllers) {
    bool found = false;
    for (const auto& [controllers, path] : entries) {
      std::istringstream list(controllers);
      std::string c;
      while (std::getline(list, c, ',')) found = found || c == want;
      if (found) {
        layout.hierarchies.push_back({std::string(want), JoinCgroupPath(fs_root, want), path});
        break;
      }
    }
    if (!found) {
      return NotFound("/proc/self/cgroup: cgroup v1 controller " + std::string(want) +
                      " is not mounted");
    }
  }
  return layout;
}

Result<CgroupLayout> DetectCgroupLayout() {
  struct statfs st {};
  if (::statfs(std::string(kFsRoot).c_str(), &st) < 0) {
    return ErrnoError("statfs(" + std::string(kFsRoot) + ")");
  }
  CgroupVersion version =
      st.f_type == CGROUP2_SUPER_MAGIC ? CgroupVersion::kV2 : CgroupVersion::kV1;
  MOAT_ASSIGN_OR_RETURN(std::string text, ReadFile("/proc/self/cgroup"));
  MOAT_ASSIGN_OR_RETURN(CgroupLayout layout, ParseCgroupLayout(version, kFsRoot, text));
  if (version == CgroupVersion::kV1) {
    for (const auto& h : layout.hierarchies) {
      struct statfs hs {};
      if (::statfs(h.mount.c_str(), &hs) < 0 || hs.f_type != CGROUP_SUPER_MAGIC) {
        return NotFound("cgroup v1 controller " + h.controller + " is not mounted at " + h.mount);
      }
    }
  }
  return layout;
}

std::vector<std::string> CgroupDirsFor(const CgroupLayout& layout, std::string_view parent,
                                       std::string_view name) {
  std::vector<std::string> dirs;
  for (const auto& h : layout.hierarchies) {
    std::string base =
        parent.empty() ? JoinCgroupPath(h.self_path, "moat") : JoinCgroupPath("/", parent);
    dirs.push_back(JoinCgroupPath(JoinCgroupPath(h.mount, base), name));
  }
  return dirs;
}

std::pair<std::string, std::string> CpuWeightFile(CgroupVersion version, uint32_t weight) {
  weight = std::clamp<uint32_t>(weight, 1, 10000);
  if (version == CgroupVersion::kV2) return {"cpu.weight", std::to_string(weight)};
  // v1: 1024 is normal; the kernel's floor is 2.
  return {"cpu.shares", std::to_string(std::max<uint64_t>(2, uint64_t{weight} * 1024 / 100))};
}

std::vector<std::pair<std::string, std::string>> CgroupLimitFiles(CgroupVersion version,
                                                                  std::string_view controller,
                                                                  const CgroupLimits& limits) {
  constexpr uint64_t kPeriodUs = 100000;
  std::vector<std::pair<std::string, std::string>> files;
  uint64_t quota_us = static_cast<uint64_t>(limits.cpus * kPeriodUs);
  bool all = version == CgroupVersion::kV2;
  if ((all || controller == "memory") && limits.memory_bytes > 0) {
    files.emplace_back(all ? "memory.max" : "memory.limit_in_bytes",
                       std::to_string(limits.memory_bytes));
    if (all) files.emplace_back("memory.swap.max", "0");
  }
  if ((all || controller == "cpu") && quota_us > 0) {
    if (all) {
      files.emplace_back("cpu.max", std::to_string(quota_us) + " " + std::to_string(kPeriodUs));
    } else {
      files.emplace_back("cpu.cfs_period_us", std::to_string(kPeriodUs));
      files.emplace_back("cpu.cfs_quota_us", std::to_string(quota_us));
    }
  }
  if ((all || controller == "cpu") && limits.cpu_weight > 0) {
    files.push_back(CpuWeightFile(version, limits.cpu_weight));
  }
  if ((all || controller == "pids") && limits.pids_max > 0) {
    files.emplace_back("pids.max", std::to_string(limits.pids_max));
  }
  return files;
}

Cgroup::~Cgroup() {
  if (dirs_.empty()) return;
  Status s = Remove();
  if (!s.ok()) LogError("cgroup.remove_failed", {{"error", s.ToString()}});
}

Cgroup::Cgroup(Cgroup&& other) noexcept
    : dirs_(std::move(other.dirs_)),
      parents_(std::move(other.parents_)),
      procs_fds_(std::move(other.procs_fds_)) {
  other.dirs_.clear();
}

Cgroup& Cgroup::operator=(Cgroup&& other) noexcept {
  if (this != &other) {
    if (!dirs_.empty()) (void)Remove();
    dirs_ = std::move(other.dirs_);
    parents_ = std::move(other.parents_);
    procs_fds_ = std::move(other.procs_fds_);
    other.dirs_.clear();
  }
  return *this;
}

Result<Cgroup> Cgroup::Create(const CgroupLayout& layout, std::string_view parent,
                              std::string_view name, const CgroupLimits& limits) {
  if (!ValidName(name)) {
    return InvalidArgument("cgroup name \"" + std::string(name) +
                           "\" must be 1-64 of [A-Za-z0-9_.-]");
  }
  if (parent.find("..") != std::string_view::npos) {
    return InvalidArgument("cgroup parent \"" + std::string(parent) + "\" contains \"..\"");
  }
  Cgroup cg;  // removes whatever was created if a later step fails
  std::vector<std::string> dirs = CgroupDirsFor(layout, parent, name);
  for (size_t i = 0; i < dirs.size(); ++i) {
    const auto& h = layout.hierarchies[i];
    const std::string& dir = dirs[i];
    std::string parent_dir = dir.substr(0, dir.rfind('/'));
    // The parent, our directory in it, and (v2) the controllers enabled down to it. Another VM's
    // cgroup, removed meanwhile, may take the parent with it when it was the last one in it
    // (Remove): a directory that vanished under us is made again.
    auto make = [&]() -> Status {
      if (::mkdir(parent_dir.c_str(), 0755) < 0 && errno != EEXIST) {
        return ErrnoError("mkdir(" + parent_dir + ")");
      }
      if (layout.version == CgroupVersion::kV2) {
        // v2 only limits what the parent delegates: enable the controllers in every ancestor
        // between the agent's cgroup and ours.
        std::string walk = h.mount;
        std::string rel = parent_dir.substr(h.mount.size());
        std::istringstream parts(rel);
        std::string part;
        std::vector<std::string> chain{walk};
        while (std::getline(parts, part, '/')) {
          if (part.empty()) continue;
          walk += "/" + part;
          chain.push_back(walk);
        }
        for (const auto& c : chain) {
          MOAT_RETURN_IF_ERROR(WriteCgroupFile(c + "/cgroup.subtree_control", "+memory +cpu +pids")
                                   .Annotate("enabling cgroup controllers"));
        }
      }
      if (::mkdir(dir.c_str(), 0755) < 0 && errno != EEXIST)
        return ErrnoError("mkdir(" + dir + ")");
      return Status::Ok();
    };
    Status made = make();
    for (int attempt = 1; !made.ok() && made.code() == ErrorCode::kNotFound && attempt < 5;
         ++attempt) {
      made = make();
    }
    MOAT_RETURN_IF_ERROR(made);
    cg.parents_.push_back(parent_dir);
    cg.dirs_.push_back(dir);
    MOAT_ASSIGN_OR_RETURN(std::string procs, ReadFile(dir + "/cgroup.procs"));
    if (!procs.empty()) {
      return FailedPrecondition("cgroup " + dir + " already exists and has processes: " + procs);
    }
    for (const auto& [file, value] : CgroupLimitFiles(layout.version, h.controller, limits)) {
      Status s = WriteCgroupFile(dir + "/" + file, value);
      // memory.swap.max is absent when the kernel has no swap accounting: nothing to limit.
      if (!s.ok() && file == "memory.swap.max" && s.code() == ErrorCode::kNotFound) continue;
      MOAT_RETURN_IF_ERROR(s);
    }
    std::string procs_path = dir + "/cgroup.procs";
    UniqueFd fd(::open(procs_path.c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd) return ErrnoError("open(" + procs_path + ")");
    cg.procs_fds_.push_back(std::move(fd));
  }
  return cg;
}

Result<Cgroup> Cgroup::Adopt(pid_t pid, std::string_view name) {
  if (!ValidName(name)) {
    return InvalidArgument("cgroup name \"" + std::string(name) +
                           "\" must be 1-64 of [A-Za-z0-9_.-]");
  }
  // The version and mounts are the host's; the paths are the process's own.
  MOAT_ASSIGN_OR_RETURN(CgroupLayout self, DetectCgroupLayout());
  std::string proc = "/proc/" + std::to_string(pid) + "/cgroup";
  MOAT_ASSIGN_OR_RETURN(std::string text, ReadFile(proc));
  MOAT_ASSIGN_OR_RETURN(CgroupLayout layout, ParseCgroupLayout(self.version, kFsRoot, text));
  // Filled only once every hierarchy checks out: a Cgroup removes its directories when dropped.
  std::vector<std::string> dirs, parents;
  for (const auto& h : layout.hierarchies) {
    std::string dir = JoinCgroupPath(h.mount, h.self_path);
    size_t slash = dir.rfind('/');
    if (dir.substr(slash + 1) != name || slash <= h.mount.size()) {
      std::string where = h.controller.empty() ? "" : " (" + h.controller + ")";
      return FailedPrecondition("process " + std::to_string(pid) + " is in cgroup " + h.self_path +
                                where + ", not in one named " + std::string(name));
    }
    dirs.push_back(dir);
    parents.push_back(dir.substr(0, slash));
  }
  Cgroup cg;
  cg.dirs_ = std::move(dirs);
  cg.parents_ = std::move(parents);
  return cg;
}

void Cgroup::Release() {
  dirs_.clear();
  parents_.clear();
  procs_fds_.clear();
}

std::vector<int> Cgroup::procs_fds() const {
  std::vector<int> fds;
  for (const auto& fd : procs_fds_) fds.push_back(fd.get());
  return fds;
}

Status Cgroup::SetCpuWeight(uint32_t weight) {
  // The directory of the cpu controller: v2's only one, or v1's that has cpu.shares.
  for (const auto& dir : dirs_) {
    for (CgroupVersion v : {CgroupVersion::kV2, CgroupVersion::kV1}) {
      auto [file, value] = CpuWeightFile(v, weight);
      if (!PathExists(dir + "/" + file)) continue;
      return WriteCgroupFile(dir + "/" + file, value).Annotate("cgroup " + dir);
    }
  }
  return NotFound("no cgroup directory of this VM has the cpu controller");
}

Result<bool> Cgroup::Contains(pid_t pid) const {
  if (dirs_.empty()) return false;
  for (const auto& dir : dirs_) {
    MOAT_ASSIGN_OR_RETURN(std::string procs, ReadFile(dir + "/cgroup.procs"));
    std::istringstream in(procs);
    bool found = false;
    for (std::string line; std::getline(in, line);) found = found || line == std::to_string(pid);
    if (!found) return false;
  }
  return true;
}

Status Cgroup::Remove(std::chrono::milliseconds wait) {
  procs_fds_.clear();
  auto deadline = std::chrono::steady_clock::now() + wait;
  std::vector<std::string> left;
  for (const auto& dir : dirs_) {
    for (;;) {
      if (::rmdir(dir.c_str()) == 0 || errno == ENOENT) break;
      // EBUSY: a member that was just reaped may still be counted for a moment.
      if (errno != EBUSY || std::chrono::steady_clock::now() >= deadline) {
        left.push_back(dir);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  if (!left.empty()) {
    int err = errno;
    dirs_ = left;
    return ErrnoError("rmdir(" + left.front() + ")", err);
  }
  dirs_.clear();
  // The shared parent goes too once the last VM's cgroup is gone; another VM keeps it (EBUSY).
  for (const auto& p : parents_) (void)::rmdir(p.c_str());
  parents_.clear();
  return Status::Ok();
}

}  // namespace moat::vmm
