#include "api/key_admin.h"

#include "api/auth.h"
#include "api/codec/protojson.h"
#include "common/log.h"

namespace moat::api {
namespace {

Status PermissionDenied(std::string message) {
  return Status(ErrorCode::kPermissionDenied, std::move(message));
}

Status AlreadyExists(std::string message) {
  return Status(ErrorCode::kAlreadyExists, std::move(message));
}

bool IsTeamNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}

// The team whose keys the caller asks for: its own, or (admin only) another existing one.
Result<store::TeamRecord> TargetTeam(store::Store& store, const store::TeamRecord& caller,
                                     const std::string& team_id) {
  if (team_id.empty() || team_id == caller.id) return caller;
  if (!caller.admin) {
    return PermissionDenied("only an admin key may manage another team's keys");
  }
  MOAT_ASSIGN_OR_RETURN(auto team, store.GetTeam(team_id));
  if (!team) return NotFound("team \"" + team_id + "\" not found");
  return *team;
}

}  // namespace

Result<CreateKeyAction> ParseCreateKey(std::string_view text) {
  MOAT_ASSIGN_OR_RETURN(auto body, codec::ParseMessage(text));
  CreateKeyAction a;
  MOAT_ASSIGN_OR_RETURN(auto name, codec::StringField(body, "name"));
  if (!name || name->empty()) return InvalidArgument("\"name\" is required");
  if (name->size() > 128) return InvalidArgument("\"name\" must be at most 128 characters");
  for (unsigned char c : *name) {
    if (c < 0x20 || c == 0x7f) return InvalidArgument("\"name\" must not hold control characters");
  }
  a.name = *name;
  MOAT_ASSIGN_OR_RETURN(a.new_team, codec::StringField(body, "team"));
  MOAT_ASSIGN_OR_RETURN(a.team_id, codec::StringField(body, "teamID"));
  if (a.new_team && a.team_id) {
    return InvalidArgument("give \"team\" (a new team) or \"teamID\" (an existing one), not both");
  }
  if (a.new_team) {
    const std::string& t = *a.new_team;
    if (t.empty() || t.size() > 64) return InvalidArgument("\"team\" must be 1 to 64 characters");
    for (char c : t) {
      if (!IsTeamNameChar(c)) {
        return InvalidArgument("\"team\" may hold only letters, digits and . _ - (got \"" + t +
                               "\")");
      }
    }
  }
  if (a.team_id && a.team_id->empty()) return InvalidArgument("\"teamID\" must not be empty");
  return a;
}

Result<CreatedKey> CreateKey(store::Store& store, const store::TeamRecord& caller,
                             const CreateKeyAction& a) {
  store::TeamRecord team;
  if (a.new_team) {
    if (!caller.admin) return PermissionDenied("only an admin key may create a team");
    MOAT_ASSIGN_OR_RETURN(auto existing, store.TeamByName(*a.new_team));
    if (existing) {
      return AlreadyExists("team \"" + *a.new_team + "\" already exists (teamID \"" + existing->id +
                           "\"); pass teamID to add a key to it");
    }
    MOAT_ASSIGN_OR_RETURN(team, store.CreateTeam(*a.new_team, /*admin=*/false));
    LogInfo("api.team_created", {{"team", team.id}, {"by", caller.id}});
  } else {
    MOAT_ASSIGN_OR_RETURN(team, TargetTeam(store, caller, a.team_id.value_or("")));
  }
  CreatedKey out;
  out.key = NewApiKey();
  MOAT_ASSIGN_OR_RETURN(out.record,
                        store.AddApiKey(team.id, a.name, Sha256Hex(out.key), MaskApiKey(out.key)));
  out.team = std::move(team);
  LogInfo("api.key_created",
          {{"key", out.record.id}, {"team", out.team.id}, {"by_team", caller.id}});
  return out;
}

Result<std::vector<store::ApiKeyRecord>> ListKeys(store::Store& store,
                                                  const store::TeamRecord& caller,
                                                  const std::string& team_id) {
  MOAT_ASSIGN_OR_RETURN(auto team, TargetTeam(store, caller, team_id));
  return store.ListApiKeys(team.id);
}

Status RevokeKey(store::Store& store, const store::TeamRecord& caller, const std::string& key_id) {
  MOAT_ASSIGN_OR_RETURN(auto key, store.GetApiKey(key_id));
  // Another team's key is not_found, as another team's sandbox is: its existence is not told.
  if (!key || (key->team_id != caller.id && !caller.admin)) {
    return NotFound("API key \"" + key_id + "\" not found");
  }
  MOAT_RETURN_IF_ERROR(store.RevokeApiKey(key->team_id, key->id));
  LogInfo("api.key_revoked", {{"key", key->id}, {"team", key->team_id}, {"by_team", caller.id}});
  return Status::Ok();
}

}  // namespace moat::api
