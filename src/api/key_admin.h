// API key administration over the control API (/keys): who may create, list and revoke which
// keys. A key manages its own team's keys; only a key of the admin team (the one the first start
// created) may create a new team with its first key, or manage another team's keys. Keys are
// shown in plaintext once, when created; the store keeps only their SHA-256.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "api/store/store.h"
#include "common/status.h"

namespace moat::api {

struct CreateKeyAction {
  std::string name;
  std::optional<std::string> new_team;  // "team": create this team, the key is its first
  std::optional<std::string> team_id;   // "teamID": an existing team (default: the caller's)
};

// POST /keys {"name", "team"?, "teamID"?}. A key name is 1..128 characters without control
// characters; a team name 1..64 of [A-Za-z0-9._-]; "team" and "teamID" exclude each other.
Result<CreateKeyAction> ParseCreateKey(std::string_view body);

struct CreatedKey {
  store::ApiKeyRecord record;
  store::TeamRecord team;
  std::string key;  // the plaintext, never stored
};

// permission_denied when a non-admin caller names another or a new team; not_found for an
// unknown teamID; already_exists for a taken team name.
Result<CreatedKey> CreateKey(store::Store& store, const store::TeamRecord& caller,
                             const CreateKeyAction& action);
// The keys of `team_id` (empty: the caller's team), never their values.
Result<std::vector<store::ApiKeyRecord>> ListKeys(store::Store& store,
                                                  const store::TeamRecord& caller,
                                                  const std::string& team_id);
// A key the caller may manage: its team's, or any for the admin team (others: not_found). It is
// rejected at once by Authenticate. failed_precondition (409) for a team's last key, whoever
// asks: a team without a key could not manage its sandboxes any more.
Status RevokeKey(store::Store& store, const store::TeamRecord& caller, const std::string& key_id);

}  // namespace moat::api
