// System ops: watch, identity, health, metrics.
#include "guest/fs_credentials.h"
#include "guest/network.h"
#include "guest/server.h"

namespace moat::guest {

Result<Server::OpOutcome> Server::OpWatch(uint32_t id, const Json& req) {
  UserTable users = UserTable::Load();
  MOAT_ASSIGN_OR_RETURN(auto user_path, UserAndPath(req, "path", users));
  MOAT_ASSIGN_OR_RETURN(auto recursive, OptBool(req, "recursive"));
  MOAT_ASSIGN_OR_RETURN(auto include_entry, OptBool(req, "include_entry"));
  MOAT_ASSIGN_OR_RETURN(auto allow_network_mounts, OptBool(req, "allow_network_mounts"));
  WatchOptions options{recursive.value_or(false), include_entry.value_or(false),
                       allow_network_mounts.value_or(false)};
  Transport* transport = transport_.get();
  std::unique_ptr<Watch> watch;
  {
    MOAT_ASSIGN_OR_RETURN(FsCredentials creds, FsCredentials::Assume(user_path.first));
    MOAT_ASSIGN_OR_RETURN(watch, Watch::Start(
                                     loop_, user_path.second, options, user_path.first,
                                     [this, id](const Json& event) { SendMessage(id, event); },
                                     [transport] { return transport->has_room(); }));
  }
  NewStream(id, Stream::Kind::kWatch).watch = std::move(watch);
  SendMessage(id, Json{{"type", "start"}});
  return OpOutcome::kOpen;  // until CANCEL
}

Result<Server::OpOutcome> Server::OpIdentity(uint32_t id, const Json& req) {
  (void)id;
  MOAT_ASSIGN_OR_RETURN(IdentityRequest identity, ParseIdentity(req));
  MOAT_RETURN_IF_ERROR(ApplyIdentity(identity, options_.system, &defaults_));
  return OpOutcome::kDone;
}

Result<Server::OpOutcome> Server::OpNetwork(uint32_t id, const Json& req) {
  (void)id;
  MOAT_ASSIGN_OR_RETURN(NetworkRequest network, ParseNetwork(req));
  // Outside a VM (--listen-unix) the interfaces are the host's: validate only.
  if (options_.system) MOAT_RETURN_IF_ERROR(ApplyNetwork(network));
  return OpOutcome::kDone;
}

Result<Server::OpOutcome> Server::OpHealth(uint32_t id, const Json&) {
  SendMessage(id, Json{{"ok", true}, {"uptime_ms", UptimeMs()}});
  return OpOutcome::kDone;
}

Result<Server::OpOutcome> Server::OpMetrics(uint32_t id, const Json&) {
  MOAT_ASSIGN_OR_RETURN(Json metrics, metrics_.Collect());
  SendMessage(id, metrics);
  return OpOutcome::kDone;
}

}  // namespace moat::guest
