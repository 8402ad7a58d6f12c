#include "guest/init.h"

#include <dirent.h>
#include <fcntl.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "common/log.h"
#include "common/unique_fd.h"

namespace moat::guest {
namespace {

struct MountSpec {
  const char* source;
  const char* target;
  const char* type;
  unsigned long flags;
  const char* data;
  mode_t dir_mode;
};

Status Mount(const MountSpec& m) {
  if (::mkdir(m.target, m.dir_mode) < 0 && errno != EEXIST) {
    return ErrnoError(std::string("mkdir(") + m.target + ")");
  }
  if (::mount(m.source, m.target, m.type, m.flags, m.data) < 0) {
    // EBUSY: the kernel (devtmpfs.mount=1) or an earlier run mounted it already.
    if (errno == EBUSY) return Status::Ok();
    return ErrnoError(std::string("mount(") + m.type + " on " + m.target + ")");
  }
  return Status::Ok();
}

Status RemountRootReadWrite() {
  struct statvfs vfs {};
  if (::statvfs("/", &vfs) < 0) return ErrnoError("statvfs(/)");
  if ((vfs.f_flag & ST_RDONLY) == 0) return Status::Ok();
  if (::mount(nullptr, "/", nullptr, MS_REMOUNT, nullptr) < 0) return ErrnoError("remount / rw");
  return Status::Ok();
}

Status BringUpLoopback() {
  UniqueFd sock(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!sock) return ErrnoError("socket(AF_INET)");
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  // SIOCGIFFLAGS/SIOCSIFFLAGS read and write ifr_flags of the ifreq we pass; nothing else.
  if (::ioctl(sock.get(), SIOCGIFFLAGS, &ifr) < 0) return ErrnoError("ioctl(SIOCGIFFLAGS, lo)");
  ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
  if (::ioctl(sock.get(), SIOCSIFFLAGS, &ifr) < 0) return ErrnoError("ioctl(SIOCSIFFLAGS, lo)");
  return Status::Ok();
}

// Does `path` hold nothing (or not exist)?
bool DirIsEmpty(const char* path) {
  DIR* d = ::opendir(path);
  if (d == nullptr) return true;
  bool empty = true;
  while (dirent* e = ::readdir(d)) {
    std::string_view name = e->d_name;
    if (name != "." && name != "..") {
      empty = false;
      break;
    }
  }
  ::closedir(d);
  return empty;
}

void UseConsoleForStdio() {
  int fd = ::open("/dev/console", O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) return;  // keep whatever the kernel gave us
  for (int target = 0; target < 3; ++target) ::dup2(fd, target);  // dup2 clears CLOEXEC
  if (fd > 2) ::close(fd);
}

}  // namespace

Status InitSystem() {
  Status first;
  auto note = [&first](Status s, std::string_view what) {
    if (s.ok()) return;
    LogWarn("guest.init_step_failed", {{"step", what}, {"error", s.ToString()}});
    if (first.ok()) first = s;
  };
  const MountSpec mounts[] = {
      {"proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr, 0555},
      {"sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr, 0555},
      {"devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755", 0755},
  };
  for (const auto& m : mounts) note(Mount(m), m.target);
  UseConsoleForStdio();
  note(RemountRootReadWrite(), "remount-rw");
  const MountSpec later[] = {
      {"devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666",
       0755},
      {"tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", 01777},
      {"tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", 01777},
      {"tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755", 0755},
  };
  for (const auto& m : later) {
    // A root filesystem that ships files in /tmp (a custom template whose build wrote there)
    // keeps its /tmp on disk, as E2B's templates have it, rather than hiding them.
    if (std::string_view(m.target) == "/tmp" && !DirIsEmpty("/tmp")) continue;
    note(Mount(m), m.target);
  }
  // /dev/ptmx must reach the devpts instance above: the devtmpfs node does (it looks up
  // pts/ptmx beside itself) once it is world-usable; without a node, point a link at it.
  struct stat st {};
  if (::lstat("/dev/ptmx", &st) == 0) {
    if (S_ISCHR(st.st_mode) && ::chmod("/dev/ptmx", 0666) < 0) {
      note(ErrnoError("chmod(/dev/ptmx)"), "ptmx");
    }
  } else if (::symlink("pts/ptmx", "/dev/ptmx") < 0) {
    note(ErrnoError("symlink(/dev/ptmx)"), "ptmx");
  }
  if (::sethostname("moat", 4) < 0) note(ErrnoError("sethostname"), "hostname");
  note(BringUpLoopback(), "loopback");
  ::setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
  ::umask(022);
  return first;
}

}  // namespace moat::guest
