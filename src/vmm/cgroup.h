// Per-VM cgroups: memory, CPU and pids limits for one VMM process, on cgroup v1 (one hierarchy
// per controller, including the "hybrid" layout with a controller-less cgroup2 beside them) or
// v2 (one unified hierarchy). The child joins its cgroup itself, before exec, by writing to the
// cgroup.procs files opened here (see jail.h); the Cgroup object removes the directories after
// the process has gone.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/unique_fd.h"

namespace moat::vmm {

enum class CgroupVersion { kV1, kV2 };

// The controllers moat limits. On v1 each has its own hierarchy.
inline constexpr std::string_view kCgroupControllers[] = {"memory", "cpu", "pids"};

// Where the hierarchies are and where this process sits in them.
struct CgroupLayout {
  CgroupVersion version = CgroupVersion::kV2;
  struct Hierarchy {
    std::string controller;  // v1: "memory", "cpu", "pids"; v2: "" (one hierarchy for all)
    std::string mount;       // e.g. /sys/fs/cgroup/memory, or /sys/fs/cgroup on v2
    std::string self_path;   // this process's cgroup in it, e.g. /process_api/e7c6...
  };
  std::vector<Hierarchy> hierarchies;
};

// Builds the layout from the text of /proc/self/cgroup. `fs_root` is where the hierarchies are
// mounted (/sys/fs/cgroup); v1 controllers are expected at fs_root/<controller>. A controller
// missing from the text is an error naming it. Pure: unit-tested.
Result<CgroupLayout> ParseCgroupLayout(CgroupVersion version, std::string_view fs_root,
                                       std::string_view proc_self_cgroup);
// Detects v1 or v2 (statfs of /sys/fs/cgroup: cgroup2 mounted there means v2; a tmpfs with v1
// controllers means v1/hybrid, whose controller-less cgroup2 at unified/ is of no use) and reads
// /proc/self/cgroup.
Result<CgroupLayout> DetectCgroupLayout();

// `parent` is a path relative to each hierarchy's root; empty means <self_path>/moat, under this
// process's own cgroup, so VMs stay inside whatever limits the agent itself runs under. The per-VM
// directory is <parent>/<name>. Pure: unit-tested.
std::vector<std::string> CgroupDirsFor(const CgroupLayout& layout, std::string_view parent,
                                       std::string_view name);

struct CgroupLimits {
  uint64_t memory_bytes = 0;  // 0: no limit
  double cpus = 0;            // CPU quota in CPUs (1.5 = 150 ms per 100 ms); 0: no limit
  uint64_t pids_max = 0;      // 0: no limit
  // Relative CPU share against the other VMs, on cgroup v2's scale (1-10000, 100 normal; v1's
  // cpu.shares scaled from it, 1024 normal). 0: the default. A warm clone being restored and
  // warmed up runs at kBackgroundCpuWeight, so that it yields the cores to sandboxes in use.
  uint32_t cpu_weight = 0;
};

inline constexpr uint32_t kNormalCpuWeight = 100;
inline constexpr uint32_t kBackgroundCpuWeight = 1;

// The file and value that give a cgroup `weight` (CgroupLimits::cpu_weight's scale; clamped to
// 1-10000) on `version`. Pure: unit-tested.
std::pair<std::string, std::string> CpuWeightFile(CgroupVersion version, uint32_t weight);

// The lines to write, as {file name, value}, for the given version. Pure: unit-tested.
std::vector<std::pair<std::string, std::string>> CgroupLimitFiles(CgroupVersion version,
                                                                  std::string_view controller,
                                                                  const CgroupLimits& limits);

// One VM's cgroup: one directory per hierarchy. Owns the directories; the destructor removes
// them (retrying briefly while the kernel still counts an exited member) and the parent
// directory if it became empty.
class Cgroup {
 public:
  Cgroup() = default;
  ~Cgroup();
  Cgroup(Cgroup&& other) noexcept;
  Cgroup& operator=(Cgroup&& other) noexcept;
  Cgroup(const Cgroup&) = delete;
  Cgroup& operator=(const Cgroup&) = delete;

  // Creates the directories (an existing one left by a crashed agent is reused if empty) and
  // writes the limits. Name: [A-Za-z0-9_.-]{1,64}.
  static Result<Cgroup> Create(const CgroupLayout& layout, std::string_view parent,
                               std::string_view name, const CgroupLimits& limits);

  // Takes over the cgroup a running process `pid` sits in, which an earlier agent created for
  // the VM `name` (a VMM re-adopted after a restart): found through /proc/<pid>/cgroup, so it
  // is found wherever the earlier agent ran. FailedPrecondition if the process is not in a
  // cgroup of that name in every hierarchy (never adopt, and later remove, someone else's).
  static Result<Cgroup> Adopt(pid_t pid, std::string_view name);

  const std::vector<std::string>& dirs() const { return dirs_; }
  // cgroup.procs of each directory, open for writing: a child joins with write(fd, "<pid>").
  std::vector<int> procs_fds() const;
  // Sets the CPU weight (CgroupLimits::cpu_weight's scale, 1-10000) of the cpu controller's
  // directory, whichever version: cpu.weight (v2) or cpu.shares (v1).
  Status SetCpuWeight(uint32_t weight);
  // Is `pid` a member in every hierarchy?
  Result<bool> Contains(pid_t pid) const;
  // Removes the directories; fails (and keeps ownership) while processes remain after `wait`.
  Status Remove(std::chrono::milliseconds wait = std::chrono::milliseconds(2000));
  // Gives the directories up without removing them (a VMM left running for the next agent).
  void Release();

 private:
  std::vector<std::string> dirs_;
  std::vector<std::string> parents_;  // removed too when empty (best effort)
  std::vector<UniqueFd> procs_fds_;
};

}  // namespace moat::vmm
