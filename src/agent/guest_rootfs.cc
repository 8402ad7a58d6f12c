#include "agent/guest_rootfs.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <charconv>
#include <ctime>
#include <optional>
#include <set>
#include <string_view>
#include <vector>

#include "agent/external_tool.h"
#include "agent/rooted_dir.h"
#include "agent/tree_size.h"
#include "common/cleanup.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/unique_fd.h"
#include "net/slot_allocator.h"

namespace moat::agent {
namespace {

constexpr char kUserName[] = "user";
constexpr char kUserHome[] = "/home/user";
constexpr uint32_t kUserId = 1000;
constexpr size_t kMaxAccountFileBytes = 16 << 20;
constexpr size_t kMaxGuestAgentBytes = 256 << 20;
constexpr uint64_t kMiB = 1 << 20;
constexpr std::string_view kElfMagic("\177ELF", 4);

// The directories moat-guest mounts over at start (guest/init.cc) or that every guest has.
struct SystemDir {
  const char* path;
  mode_t mode;
};
constexpr SystemDir kSystemDirs[] = {
    {"proc", 0555},     {"sys", 0555},      {"dev", 0755},           {"run", 0755},
    {"tmp", 01777},     {"root", 0700},     {"etc", 0755},           {"home", 0755},
    {"usr/sbin", 0755}, {"var/tmp", 01777}, {"etc/sudoers.d", 0755},
};

// Split on `sep`, keeping empty fields.
std::vector<std::string_view> Fields(std::string_view line, char sep) {
  std::vector<std::string_view> out;
  for (size_t start = 0;;) {
    size_t at = line.find(sep, start);
    out.push_back(line.substr(start, at == std::string_view::npos ? at : at - start));
    if (at == std::string_view::npos) return out;
    start = at + 1;
  }
}

std::vector<std::string_view> Lines(std::string_view text) {
  std::vector<std::string_view> out;
  for (std::string_view line : Fields(text, '\n')) {
    if (!line.empty()) out.push_back(line);
  }
  return out;
}

std::optional<uint32_t> ParseId(std::string_view s) {
  uint32_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

// An /etc/passwd or /etc/group: the names and ids it has.
struct AccountFile {
  std::optional<RootedFile> file;
  std::set<uint32_t> ids;  // passwd: uids; group: gids
  // The `user` line's fields, if there is one.
  std::vector<std::string> user_fields;
};

AccountFile ParseAccounts(std::optional<RootedFile> file) {
  AccountFile a;
  if (file) {
    for (std::string_view line : Lines(file->data)) {
      auto f = Fields(line, ':');
      if (f.size() < 3 || f[0].empty() || f[0].front() == '#') continue;
      if (auto id = ParseId(f[2])) a.ids.insert(*id);
      if (f[0] == kUserName) a.user_fields.assign(f.begin(), f.end());
    }
  }
  a.file = std::move(file);
  return a;
}

uint32_t FreeId(const std::set<uint32_t>& taken, uint32_t from) {
  while (taken.count(from) != 0) ++from;
  return from;
}

// `text` with `line` appended on a line of its own.
std::string Appended(std::string text, const std::string& line) {
  if (!text.empty() && text.back() != '\n') text += '\n';
  return text + line + "\n";
}

// Writes an account file back with the original's mode and owner (shadow files are not
// world-readable), or `mode` when it is new.
Status WriteAccountFile(const RootedDir& root, const char* path,
                        const std::optional<RootedFile>& original, const std::string& text,
                        mode_t mode) {
  if (original) return root.WriteFile(path, text, original->mode, original->uid, original->gid);
  return root.WriteFile(path, text, mode);
}

// Copies the regular files directly in /etc/skel into the new home, as useradd -m does.
Status CopySkeleton(const RootedDir& root, const std::string& home, uid_t uid, gid_t gid) {
  auto skel = root.Resolve("etc/skel", O_RDONLY | O_DIRECTORY);
  if (!skel.ok()) return Status::Ok();
  DIR* d = ::fdopendir(skel->Release());
  if (d == nullptr) return ErrnoError("fdopendir(/etc/skel)");
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    std::string_view n = e->d_name;
    struct stat st {};
    // Regular files only, not what a symlink there points at (it could be /etc/shadow).
    if (n != "." && n != ".." && ::fstatat(::dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
        S_ISREG(st.st_mode)) {
      names.emplace_back(n);
    }
  }
  ::closedir(d);
  for (const auto& n : names) {
    MOAT_ASSIGN_OR_RETURN(auto file, root.ReadFile("etc/skel/" + n, 1 << 20));
    if (!file) continue;
    MOAT_RETURN_IF_ERROR(root.WriteFile(std::string(home).append("/").append(n), file->data,
                                        file->mode & 0777, uid, gid));
  }
  return Status::Ok();
}

// The `user` account as E2B's images have it (see the header).
Status EnsureUserAccount(const RootedDir& root) {
  MOAT_ASSIGN_OR_RETURN(auto passwd_file, root.ReadFile("etc/passwd", kMaxAccountFileBytes));
  MOAT_ASSIGN_OR_RETURN(auto group_file, root.ReadFile("etc/group", kMaxAccountFileBytes));
  AccountFile passwd = ParseAccounts(std::move(passwd_file));
  AccountFile group = ParseAccounts(std::move(group_file));

  if (!passwd.user_fields.empty()) {
    // The image has its own `user`: keep it as it is; only a missing home is made.
    const auto& f = passwd.user_fields;
    auto uid = f.size() == 7 ? ParseId(f[2]) : std::nullopt;
    auto gid = f.size() == 7 ? ParseId(f[3]) : std::nullopt;
    if (!uid || !gid || f[5].empty() || f[5].front() != '/' || f[5] == "/") return Status::Ok();
    auto home = root.MakeDirs(f[5], 0750);
    if (!home.ok()) {
      LogWarn("rootfs.user_home_skipped", {{"home", f[5]}, {"error", home.status().ToString()}});
      return Status::Ok();
    }
    if (root.created_last() && ::fchown(home->get(), *uid, *gid) < 0) {
      return ErrnoError("chown(" + f[5] + ")");
    }
    return Status::Ok();
  }

  std::string text_passwd = passwd.file ? passwd.file->data : "root:x:0:0:root:/root:/bin/sh\n";
  std::string text_group = group.file ? group.file->data : "root:x:0:\n";
  uint32_t gid = 0;
  bool new_group = false;
  if (!group.user_fields.empty() && group.user_fields.size() >= 3 &&
      ParseId(group.user_fields[2])) {
    gid = *ParseId(group.user_fields[2]);
  } else {
    // uid and gid alike where possible: 1000, or the first id from 1000 free in both files.
    std::set<uint32_t> taken = passwd.ids;
    taken.insert(group.ids.begin(), group.ids.end());
    gid = FreeId(taken, kUserId);
    new_group = true;
  }
  uint32_t uid = passwd.ids.count(gid) == 0 ? gid : FreeId(passwd.ids, kUserId);
  std::string shell = root.IsExecutableFile("bin/bash") ? "/bin/bash" : "/bin/sh";

  MOAT_RETURN_IF_ERROR(WriteAccountFile(
      root, "etc/passwd", passwd.file,
      Appended(text_passwd, std::string(kUserName) + ":x:" + std::to_string(uid) + ":" +
                                std::to_string(gid) + "::" + kUserHome + ":" + shell),
      0644));
  if (new_group) {
    MOAT_RETURN_IF_ERROR(WriteAccountFile(
        root, "etc/group", group.file,
        Appended(text_group, std::string(kUserName) + ":x:" + std::to_string(gid) + ":"), 0644));
  }
  // A locked password ('!'), as useradd leaves it: sudo needs none, and nobody logs in.
  MOAT_ASSIGN_OR_RETURN(auto shadow, root.ReadFile("etc/shadow", kMaxAccountFileBytes));
  if (shadow && ParseAccounts(shadow).user_fields.empty()) {
    std::string days = std::to_string(std::time(nullptr) / 86400);
    MOAT_RETURN_IF_ERROR(root.WriteFile(
        "etc/shadow",
        Appended(shadow->data, std::string(kUserName) + ":!:" + days + ":0:99999:7:::"),
        shadow->mode, shadow->uid, shadow->gid));
  }
  MOAT_ASSIGN_OR_RETURN(auto gshadow, root.ReadFile("etc/gshadow", kMaxAccountFileBytes));
  if (new_group && gshadow && ParseAccounts(gshadow).user_fields.empty()) {
    MOAT_RETURN_IF_ERROR(root.WriteFile("etc/gshadow",
                                        Appended(gshadow->data, std::string(kUserName) + ":!::"),
                                        gshadow->mode, gshadow->uid, gshadow->gid));
  }

  MOAT_ASSIGN_OR_RETURN(UniqueFd home, root.MakeDirs(kUserHome, 0750));
  bool created = root.created_last();
  // The account is new: its home is its own even where the image had made the directory, but
  // only a directory at that very path: through a symlink it could be /etc.
  MOAT_ASSIGN_OR_RETURN(UniqueFd home_parent, root.MakeDirs("home"));
  struct stat at_path {};
  struct stat opened {};
  if (::fstatat(home_parent.get(), "user", &at_path, AT_SYMLINK_NOFOLLOW) == 0 &&
      ::fstat(home.get(), &opened) == 0 && S_ISDIR(at_path.st_mode) &&
      at_path.st_ino == opened.st_ino && at_path.st_dev == opened.st_dev &&
      ::fchown(home.get(), uid, gid) < 0) {
    return ErrnoError(std::string("chown(") + kUserHome + ")");
  }
  if (created) MOAT_RETURN_IF_ERROR(CopySkeleton(root, kUserHome, uid, gid));
  LogInfo("rootfs.user_added", {{"uid", uid}, {"gid", gid}, {"shell", shell}});
  return Status::Ok();
}

// moat-guest out of the base template's image: `debugfs -R "cat PATH"` writes the file to
// stdout. debugfs exits 0 even when the file is missing (the error goes to stderr), so the
// result is checked: a non-empty ELF executable.
Result<std::string> ReadGuestAgent(const std::string& base_image) {
  if (!PathExists(base_image)) return NotFound("base image " + base_image + " does not exist");
  MOAT_ASSIGN_OR_RETURN(
      ToolOutput out,
      RunExternalTool({.argv = {"debugfs", "-R", std::string("cat ") + kGuestAgentPath, base_image},
                       .timeout = std::chrono::minutes(2),
                       .max_stdout = kMaxGuestAgentBytes}));
  if (!out.succeeded() || out.stdout_data.size() < 64 ||
      std::string_view(out.stdout_data).substr(0, kElfMagic.size()) != kElfMagic) {
    return FailedPrecondition(std::string("reading ") + kGuestAgentPath + " from " + base_image +
                              ": debugfs " + out.Describe());
  }
  return std::move(out.stdout_data);
}

}  // namespace

Status PrepareGuestRootfs(const std::string& rootfs_dir, const std::string& base_rootfs_image) {
  MOAT_ASSIGN_OR_RETURN(std::string agent, ReadGuestAgent(base_rootfs_image));
  MOAT_ASSIGN_OR_RETURN(RootedDir root, RootedDir::Open(rootfs_dir));
  // "/" itself: root's, and traversable by every user whatever the image said.
  if (::fchown(root.fd(), 0, 0) < 0 || ::fchmod(root.fd(), 0755) < 0) {
    return ErrnoError("chmod(" + rootfs_dir + ")");
  }
  for (const auto& d : kSystemDirs) {
    auto dir = root.MakeDirs(d.path, d.mode);
    if (!dir.ok()) return dir.status().Annotate("preparing the guest rootfs");
  }
  // The kernel's init= names this path (vmm/qemu/command_line.h); no /sbin/init is needed.
  MOAT_RETURN_IF_ERROR(root.WriteFile(kGuestAgentPath, agent, 0755));
  MOAT_RETURN_IF_ERROR(EnsureUserAccount(root).Annotate("adding the user account"));
  // As in E2B's images (and ours, guest/build-rootfs.sh): `user` may sudo without a password.
  MOAT_RETURN_IF_ERROR(root.WriteFile(
      "etc/sudoers.d/user", std::string(kUserName) + " ALL=(ALL:ALL) NOPASSWD: ALL\n", 0440));
  // What guest/build-rootfs.sh writes: the resolver is the slot's gateway (moat-guest rewrites
  // resolv.conf when the host configures the network).
  MOAT_RETURN_IF_ERROR(root.WriteFile("etc/hostname", "moat\n", 0644));
  MOAT_RETURN_IF_ERROR(root.WriteFile(
      "etc/hosts",
      "127.0.0.1\tlocalhost\n127.0.1.1\tmoat\n::1\tlocalhost ip6-localhost ip6-loopback\n", 0644));
  MOAT_RETURN_IF_ERROR(root.WriteFile(
      "etc/resolv.conf", std::string("nameserver ") + net::kGatewayAddress + "\n", 0644));
  LogInfo("rootfs.prepared", {{"dir", rootfs_dir}, {"agent_bytes", agent.size()}});
  return Status::Ok();
}

Status MakeExt4Image(const std::string& rootfs_dir, const std::string& image_path,
                     uint64_t min_free_mib) {
  MOAT_ASSIGN_OR_RETURN(TreeSize tree, TreeUsage(rootfs_dir));
  if (min_free_mib > (uint64_t{1} << 24)) {
    return InvalidArgument("min_free_mib " + std::to_string(min_free_mib) + " is over 16 TiB");
  }
  // Inodes: every entry, a quarter more and a thousand to spare; ext4 tables cost 256 bytes
  // each, counted in.
  uint64_t inodes = tree.inodes + tree.inodes / 4 + 1024;
  uint64_t bytes = tree.bytes + tree.bytes / 5 + 64 * kMiB + min_free_mib * kMiB + inodes * 256;
  uint64_t mib = std::max<uint64_t>((bytes + kMiB - 1) / kMiB, 256);
  // mkfs.ext4's default is one inode per 16 KiB; ask for more only when the tree needs them.
  inodes = std::max(inodes, mib * kMiB / 16384);

  UniqueFd fd(::open(image_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (!fd) return ErrnoError("create(" + image_path + ")");
  Cleanup remove([&] { ::unlink(image_path.c_str()); });
  // A sparse file: only what mkfs writes takes space on the host.
  if (::ftruncate(fd.get(), static_cast<off_t>(mib * kMiB)) < 0) {
    return ErrnoError("ftruncate(" + image_path + ")");
  }
  fd.Reset();
  auto started = std::chrono::steady_clock::now();
  // -m 0: no blocks reserved for root (min_free is for whichever user fills the disk);
  // root_owner: "/" is root's whoever ran mkfs. -d copies owners, modes, links and xattrs.
  MOAT_ASSIGN_OR_RETURN(ToolOutput out,
                        RunExternalTool({.argv = {"mkfs.ext4", "-q", "-F", "-L", "moat-root", "-m",
                                                  "0", "-N", std::to_string(inodes), "-E",
                                                  "root_owner=0:0", "-d", rootfs_dir, image_path},
                                         .timeout = std::chrono::minutes(30)}));
  if (!out.succeeded()) {
    return Internal("mkfs.ext4 -d " + rootfs_dir + " " + image_path + ": " + out.Describe());
  }
  remove.Cancel();
  LogInfo("rootfs.image_made", {{"image", image_path},
                                {"size_mib", mib},
                                {"tree_bytes", tree.bytes},
                                {"inodes", inodes},
                                {"ms", std::chrono::duration_cast<std::chrono::milliseconds>(
                                           std::chrono::steady_clock::now() - started)
                                           .count()}});
  return Status::Ok();
}

}  // namespace moat::agent
