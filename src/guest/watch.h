// The `watch` op: inotify on a directory (optionally its whole tree), events named relative to
// the watched directory. Read only while the outbound queue has room: inotify's own queue (and
// its overflow event) then bounds what a busy directory costs. Directories are watched as the
// requesting user (FsCredentials): a directory that user may not read is not watched.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <unordered_map>

#include "common/status.h"
#include "common/unique_fd.h"
#include "guest/event_loop.h"
#include "guest/request.h"
#include "guest/users.h"

namespace moat::guest {

class Watch {
 public:
  using Emit = std::function<void(const Json& event)>;
  using HasRoom = std::function<bool()>;

  // Call under `user`'s FsCredentials; directories created later are added under them too.
  static Result<std::unique_ptr<Watch>> Start(EventLoop& loop, const std::string& root,
                                              bool recursive, const UserInfo& user, Emit emit,
                                              HasRoom has_room);
  ~Watch();
  Watch(const Watch&) = delete;
  Watch& operator=(const Watch&) = delete;

  // Resumes reading once the outbound queue has room again.
  void Refresh();

 private:
  Watch(EventLoop& loop, UniqueFd fd, bool recursive, UserInfo user, Emit emit, HasRoom has_room)
      : loop_(loop),
        fd_(std::move(fd)),
        recursive_(recursive),
        user_(std::move(user)),
        emit_(std::move(emit)),
        has_room_(std::move(has_room)) {}
  // Watches `dir` (relative name `rel`) and, when recursive, every directory below it.
  Status AddTree(const std::string& dir, const std::string& rel);
  void OnReadable();

  EventLoop& loop_;
  UniqueFd fd_;
  bool recursive_;
  UserInfo user_;
  Emit emit_;
  HasRoom has_room_;
  EventLoop::Id reg_ = 0;
  std::string root_;
  std::unordered_map<int, std::string> dirs_;  // watch descriptor -> path relative to root
};

}  // namespace moat::guest
