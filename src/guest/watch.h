// The `watch` op: inotify on a directory (optionally its whole tree), events named relative to
// the watched directory. Read only while the outbound queue has room: inotify's own queue (and
// its overflow event) then bounds what a busy directory costs. Directories are watched as the
// requesting user (FsCredentials): a directory that user may not read is not watched.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>

#include "common/status.h"
#include "common/unique_fd.h"
#include "guest/event_loop.h"
#include "guest/file_transfer.h"
#include "guest/request.h"
#include "guest/users.h"

namespace moat::guest {

struct WatchOptions {
  bool recursive = false;
  // Events of type create, write and chmod carry the entry's stat (files.h's entry JSON) as
  // "entry", when it still exists by the time the event is read.
  bool include_entry = false;
  // inotify sees only this machine's changes to a network filesystem (NFS, CIFS/SMB, FUSE): a
  // watch there is InvalidArgument unless the caller says it knows.
  bool allow_network_mounts = false;
};

// An upload (file_transfer.h) is a temporary file renamed over its destination. The watch never
// shows the temporary name: its rename into place shows as E2B's envd shows a write in place —
// create, chmod and (when it has content) write for a new file; chmod and write for a replaced
// one; one more chmod when metadata was set.
class Watch {
 public:
  using Emit = std::function<void(const Json& event)>;
  using HasRoom = std::function<bool()>;

  // Call under `user`'s FsCredentials; directories created later are added under them too.
  static Result<std::unique_ptr<Watch>> Start(EventLoop& loop, const std::string& root,
                                              const WatchOptions& options, const UserInfo& user,
                                              Emit emit, HasRoom has_room);
  ~Watch();
  Watch(const Watch&) = delete;
  Watch& operator=(const Watch&) = delete;

  // Resumes reading once the outbound queue has room again.
  void Refresh();

 private:
  Watch(EventLoop& loop, UniqueFd fd, const WatchOptions& options, UserInfo user, Emit emit,
        HasRoom has_room)
      : loop_(loop),
        fd_(std::move(fd)),
        recursive_(options.recursive),
        include_entry_(options.include_entry),
        user_(std::move(user)),
        emit_(std::move(emit)),
        has_room_(std::move(has_room)) {}
  // Watches `dir` (relative name `rel`) and, when recursive, every directory below it.
  Status AddTree(const std::string& dir, const std::string& rel);
  void OnReadable();
  // Sends one event for `rel`, unless it repeats the one just sent (SendAlways: always), with its
  // entry when asked for.
  void Send(const char* type, const std::string& rel);
  void SendAlways(const char* type, const std::string& rel);

  struct Upload {
    bool wrote = false;  // IN_MODIFY seen on the temporary file
  };
  struct PendingRename {
    UploadTempName temp;
    bool wrote = true;  // not known when the upload began before the watch
  };

  EventLoop& loop_;
  UniqueFd fd_;
  bool recursive_;
  bool include_entry_;
  UserInfo user_;
  Emit emit_;
  HasRoom has_room_;
  EventLoop::Id reg_ = 0;
  std::string root_;
  std::unordered_map<int, std::string> dirs_;  // watch descriptor -> path relative to root
  // Uploads in progress (by the temporary file's relative name), and their renames into place
  // (by inotify cookie) between IN_MOVED_FROM and IN_MOVED_TO; both bounded.
  std::unordered_map<std::string, Upload> uploads_;
  std::unordered_map<uint32_t, PendingRename> renames_;
  std::string last_type_, last_name_;
  std::optional<UserTable> users_;  // for entries, read once per batch
};

}  // namespace moat::guest
