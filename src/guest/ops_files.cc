// File ops: read_file, write_file, stat, list, mkdir, move, remove. Each runs its filesystem
// syscalls under the requesting user's FsCredentials, as E2B's envd runs them as that user: the
// kernel's checks decide what the user may read, write and create, and new files are theirs.
#include "guest/files.h"
#include "guest/fs_credentials.h"
#include "guest/server.h"

namespace moat::guest {
namespace {

constexpr size_t kMaxListEntries = 100000;

}  // namespace

Result<std::pair<UserInfo, std::string>> Server::UserAndPath(const Json& req,
                                                             std::string_view field,
                                                             const UserTable& users) {
  MOAT_ASSIGN_OR_RETURN(auto user_name, OptString(req, "user"));
  MOAT_ASSIGN_OR_RETURN(std::string raw, RequiredString(req, field));
  if (raw.empty()) return InvalidArgument("field \"" + std::string(field) + "\" is empty");
  if (raw.find('\0') != std::string::npos) {
    return InvalidArgument("field \"" + std::string(field) + "\" contains a NUL byte");
  }
  MOAT_ASSIGN_OR_RETURN(UserInfo user, ResolveUser(user_name, defaults_, users));
  std::string path = ResolvePath(raw, user.home);
  return std::make_pair(std::move(user), std::move(path));
}

Result<Server::OpOutcome> Server::OpReadFile(uint32_t id, const Json& req) {
  UserTable users = UserTable::Load();
  MOAT_ASSIGN_OR_RETURN(auto user_path, UserAndPath(req, "path", users));
  std::unique_ptr<FileDownload> download;
  {
    MOAT_ASSIGN_OR_RETURN(FsCredentials creds, FsCredentials::Assume(user_path.first));
    MOAT_ASSIGN_OR_RETURN(download, FileDownload::Open(user_path.second));
  }
  SendMessage(id, Json{{"size", download->size()}});
  NewStream(id, Stream::Kind::kReadFile).download = std::move(download);
  return OpOutcome::kOpen;  // PumpDownloads sends the bytes as credit allows
}

Result<Server::OpOutcome> Server::OpWriteFile(uint32_t id, const Json& req) {
  UserTable users = UserTable::Load();
  MOAT_ASSIGN_OR_RETURN(auto user_path, UserAndPath(req, "path", users));
  MOAT_ASSIGN_OR_RETURN(auto mode, OptInt(req, "mode", 0, 07777));
  MOAT_ASSIGN_OR_RETURN(auto raw_metadata, OptStringMap(req, "metadata"));
  MOAT_ASSIGN_OR_RETURN(FileMetadata metadata,
                        NormalizeMetadata(raw_metadata.value_or(FileMetadata{})));
  std::unique_ptr<FileUpload> upload;
  {
    MOAT_ASSIGN_OR_RETURN(FsCredentials creds, FsCredentials::Assume(user_path.first));
    MOAT_ASSIGN_OR_RETURN(
        upload, FileUpload::Begin(user_path.second, user_path.first,
                                  static_cast<mode_t>(mode.value_or(0644)), std::move(metadata)));
  }
  Stream& s = NewStream(id, Stream::Kind::kWriteFile);
  s.upload = std::move(upload);
  s.user = std::move(user_path.first);
  return OpOutcome::kOpen;
}

Result<Server::OpOutcome> Server::OpStat(uint32_t id, const Json& req) {
  UserTable users = UserTable::Load();
  MOAT_ASSIGN_OR_RETURN(auto user_path, UserAndPath(req, "path", users));
  Json entry;
  {
    MOAT_ASSIGN_OR_RETURN(FsCredentials creds, FsCredentials::Assume(user_path.first));
    MOAT_ASSIGN_OR_RETURN(entry, StatPath(user_path.second, users));
  }
  SendMessage(id, entry);
  return OpOutcome::kDone;
}

Result<Server::OpOutcome> Server::OpList(uint32_t id, const Json& req) {
  UserTable users = UserTable::Load();
  MOAT_ASSIGN_OR_RETURN(auto user_path, UserAndPath(req, "path", users));
  MOAT_ASSIGN_OR_RETURN(auto depth, OptInt(req, "depth", 1, 64));
  std::vector<Json> entries;
  {
    MOAT_ASSIGN_OR_RETURN(FsCredentials creds, FsCredentials::Assume(user_path.first));
    MOAT_ASSIGN_OR_RETURN(entries, ListDir(user_path.second, static_cast<int>(depth.value_or(1)),
                                           users, kMaxListEntries));
  }
  SendArrayMessages(id, "entries", Json(std::move(entries)));
  return OpOutcome::kDone;
}

Result<Server::OpOutcome> Server::OpMkdir(uint32_t id, const Json& req) {
  UserTable users = UserTable::Load();
  MOAT_ASSIGN_OR_RETURN(auto user_path, UserAndPath(req, "path", users));
  bool created = false;
  {
    MOAT_ASSIGN_OR_RETURN(FsCredentials creds, FsCredentials::Assume(user_path.first));
    MOAT_ASSIGN_OR_RETURN(created, MakeDirs(user_path.second));
  }
  SendMessage(id, Json{{"created", created}});
  return OpOutcome::kDone;
}

Result<Server::OpOutcome> Server::OpMove(uint32_t id, const Json& req) {
  UserTable users = UserTable::Load();
  MOAT_ASSIGN_OR_RETURN(auto from, UserAndPath(req, "from", users));
  MOAT_ASSIGN_OR_RETURN(auto to, UserAndPath(req, "to", users));
  Json entry;
  {
    MOAT_ASSIGN_OR_RETURN(FsCredentials creds, FsCredentials::Assume(to.first));
    MOAT_RETURN_IF_ERROR(MovePath(from.second, to.second));
    MOAT_ASSIGN_OR_RETURN(entry, StatPath(to.second, users));
  }
  SendMessage(id, entry);
  return OpOutcome::kDone;
}

Result<Server::OpOutcome> Server::OpRemove(uint32_t id, const Json& req) {
  (void)id;
  UserTable users = UserTable::Load();
  MOAT_ASSIGN_OR_RETURN(auto user_path, UserAndPath(req, "path", users));
  MOAT_ASSIGN_OR_RETURN(FsCredentials creds, FsCredentials::Assume(user_path.first));
  MOAT_RETURN_IF_ERROR(RemovePath(user_path.second));
  return OpOutcome::kDone;
}

}  // namespace moat::guest
