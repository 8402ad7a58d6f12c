#include "guest/watch.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "common/log.h"
#include "guest/files.h"
#include "guest/fs_credentials.h"
#include "guest/path_open.h"

namespace moat::guest {
namespace {

constexpr uint32_t kMask = IN_CREATE | IN_MODIFY | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO |
                           IN_ATTRIB | IN_DONT_FOLLOW | IN_EXCL_UNLINK;
constexpr size_t kMaxWatchedDirs = 8192;
// Uploads and renames tracked at once; past that the oldest knowledge is dropped (an upload's
// events then show as a plain create).
constexpr size_t kMaxTracked = 1024;

// statfs f_type of filesystems whose changes inotify does not see when another machine makes
// them: NFS, CIFS, SMB, SMB2, FUSE.
bool IsNetworkFilesystem(int64_t type) {
  switch (static_cast<uint64_t>(type) & 0xffffffffu) {
    case 0x6969:
    case 0xFF534D42:
    case 0x517B:
    case 0xFE534D42:
    case 0x65735546: return true;
    default: return false;
  }
}

RateLimiter g_watch_log(1, 5);

const char* EventType(uint32_t mask) {
  if (mask & (IN_CREATE | IN_MOVED_TO)) return "create";
  if (mask & IN_MODIFY) return "write";
  if (mask & IN_DELETE) return "remove";
  if (mask & IN_MOVED_FROM) return "rename";
  if (mask & IN_ATTRIB) return "chmod";
  return nullptr;
}

}  // namespace

Result<std::unique_ptr<Watch>> Watch::Start(EventLoop& loop, const std::string& root,
                                            const WatchOptions& options, const UserInfo& user,
                                            Emit emit, HasRoom has_room) {
  // Resolved once without magic links (path_open.h); inotify itself takes only a path.
  MOAT_ASSIGN_OR_RETURN(UniqueFd at, OpenPath(root, O_PATH, 0, "watch"));
  struct stat st {};
  if (::fstat(at.get(), &st) < 0) return ErrnoError("stat(" + root + ")");
  if (!S_ISDIR(st.st_mode)) return InvalidArgument("watch(" + root + "): not a directory");
  struct statfs fs {};
  if (!options.allow_network_mounts && ::fstatfs(at.get(), &fs) == 0 &&
      IsNetworkFilesystem(fs.f_type)) {
    return InvalidArgument("cannot watch path on network filesystem: " + root);
  }
  UniqueFd fd(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
  if (!fd) return ErrnoError("inotify_init1");
  std::unique_ptr<Watch> w(
      new Watch(loop, std::move(fd), options, user, std::move(emit), std::move(has_room)));
  w->root_ = root;
  MOAT_RETURN_IF_ERROR(w->AddTree(root, ""));
  w->Refresh();
  return w;
}

Watch::~Watch() {
  loop_.Remove(reg_);
}

Status Watch::AddTree(const std::string& dir, const std::string& rel) {
  if (dirs_.size() >= kMaxWatchedDirs) {
    return ResourceExhausted("watch: more than " + std::to_string(kMaxWatchedDirs) +
                             " directories");
  }
  int wd = ::inotify_add_watch(fd_.get(), dir.c_str(), kMask | IN_ONLYDIR);
  if (wd < 0) return ErrnoError("inotify_add_watch(" + dir + ")");
  dirs_[wd] = rel;
  if (!recursive_) return Status::Ok();
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return Status::Ok();  // vanished or unreadable: nothing below to watch
  std::vector<std::string> subdirs;
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    if (e->d_type == DT_UNKNOWN) {  // some filesystems do not fill d_type in
      struct stat st {};
      if (::fstatat(::dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode)) {
        continue;
      }
    } else if (e->d_type != DT_DIR) {
      continue;
    }
    subdirs.push_back(name);
  }
  ::closedir(d);
  for (const auto& name : subdirs) {
    MOAT_RETURN_IF_ERROR(AddTree(dir + "/" + name, rel.empty() ? name : rel + "/" + name));
  }
  return Status::Ok();
}

void Watch::Refresh() {
  bool want = has_room_();
  if (want && reg_ == 0) {
    auto id = loop_.Add(fd_.get(), EPOLLIN, [this](uint32_t) { OnReadable(); });
    if (id.ok()) reg_ = *id;
  } else if (!want && reg_ != 0) {
    loop_.Remove(reg_);
    reg_ = 0;
  }
}

void Watch::Send(const char* type, const std::string& rel) {
  // A large write is a stream of IN_MODIFY; one event per batch says the same.
  if (type == last_type_ && rel == last_name_) return;
  SendAlways(type, rel);
}

void Watch::SendAlways(const char* type, const std::string& rel) {
  last_type_ = type;
  last_name_ = rel;
  Json event{{"type", type}, {"name", rel}};
  if (include_entry_ && (std::strcmp(type, "create") == 0 || std::strcmp(type, "write") == 0 ||
                         std::strcmp(type, "chmod") == 0)) {
    std::string abs = root_ + (root_ == "/" ? "" : "/") + rel;
    if (!users_) users_ = UserTable::Load();  // once per batch of events
    auto creds = FsCredentials::Assume(user_);
    if (creds.ok()) {
      auto entry = StatPath(abs, *users_);
      if (entry.ok()) event["entry"] = std::move(*entry);
    }
  }
  emit_(event);
}

void Watch::OnReadable() {
  // Large enough for many events; each is aligned for struct inotify_event.
  alignas(inotify_event) char buf[64 * 1024];
  ssize_t n = ::read(fd_.get(), buf, sizeof buf);
  if (n <= 0) return;
  last_type_.clear();
  last_name_.clear();
  users_.reset();
  for (ssize_t off = 0; off + static_cast<ssize_t>(sizeof(inotify_event)) <= n;) {
    // The kernel writes whole, aligned inotify_event records back to back into the buffer.
    const auto* ev = reinterpret_cast<const inotify_event*>(buf + off);
    off += static_cast<ssize_t>(sizeof(inotify_event) + ev->len);
    if (ev->mask & IN_Q_OVERFLOW) {
      if (g_watch_log.Allow()) LogWarn("guest.watch_overflow", {{"root", root_}});
      continue;
    }
    auto it = dirs_.find(ev->wd);
    if (it == dirs_.end()) continue;
    if (ev->mask & IN_IGNORED) {
      dirs_.erase(it);
      continue;
    }
    std::string name = ev->len > 0 ? std::string(ev->name, strnlen(ev->name, ev->len)) : "";
    std::string rel =
        it->second.empty() ? name : (name.empty() ? it->second : it->second + "/" + name);
    if (recursive_ && (ev->mask & IN_ISDIR) && (ev->mask & (IN_CREATE | IN_MOVED_TO))) {
      std::string abs = root_ + (root_ == "/" ? "" : "/") + rel;
      auto creds = FsCredentials::Assume(user_);
      Status s = creds.ok() ? AddTree(abs, rel) : creds.status();
      if (!s.ok() && g_watch_log.Allow()) {
        LogWarn("guest.watch_add_failed", {{"error", s.ToString()}});
      }
    }
    if (rel.empty()) continue;
    if (!(ev->mask & IN_ISDIR)) {
      if (auto temp = ParseUploadTempName(name)) {
        // An upload's temporary file: never shown; its rename into place is.
        if (ev->mask & IN_CREATE) {
          if (uploads_.size() >= kMaxTracked) uploads_.clear();
          uploads_[rel] = Upload{};
        } else if (ev->mask & IN_MODIFY) {
          // One that began before the watch is not tracked: its rename counts as a write.
          if (auto up = uploads_.find(rel); up != uploads_.end()) up->second.wrote = true;
        } else if (ev->mask & IN_DELETE) {
          uploads_.erase(rel);
        } else if (ev->mask & IN_MOVED_FROM) {
          auto up = uploads_.find(rel);
          if (renames_.size() >= kMaxTracked) renames_.clear();
          renames_[ev->cookie] = PendingRename{*temp, up == uploads_.end() || up->second.wrote};
          if (up != uploads_.end()) uploads_.erase(up);
        }
        continue;
      }
      if (ev->mask & IN_MOVED_TO) {
        if (auto r = renames_.find(ev->cookie); r != renames_.end()) {
          PendingRename pending = r->second;
          renames_.erase(r);
          // One whole sequence per upload, whatever came before it.
          if (!pending.temp.replaces) SendAlways("create", rel);
          SendAlways("chmod", rel);
          if (pending.wrote || pending.temp.replaces) SendAlways("write", rel);
          if (pending.temp.has_metadata)
            SendAlways("chmod", rel);  // envd's setxattr after the write
          continue;
        }
      }
    }
    const char* type = EventType(ev->mask);
    if (type != nullptr) Send(type, rel);
  }
  Refresh();
}

}  // namespace moat::guest
