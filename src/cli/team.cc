// `moat team quotas`: a team's quotas and usage (GET /teams/{teamID}/quotas), and, with --set and
// an admin key, new limits (PUT). Without --team-id it is the caller's own team.
#include <memory>
#include <string>
#include <vector>

#include "api/codec/query.h"
#include "cli/api_client.h"
#include "cli/commands.h"
#include "cli/output.h"
#include "cli/quotas.h"

namespace moat::cli {
namespace {

using api::codec::PercentEncode;

struct TeamOptions {
  bool json = false;
  std::string team_id;
  std::vector<std::string> sets;
};

// The caller's team: every key listed by GET /keys is one of its own (and a team always keeps
// a key: its last cannot be revoked).
Result<std::string> OwnTeamId(ApiClient& api) {
  MOAT_ASSIGN_OR_RETURN(json keys, api.Control("GET", "/keys"));
  if (!keys.is_array() || keys.empty() || !keys[0].contains("teamID") ||
      !keys[0]["teamID"].is_string()) {
    return Internal("GET /keys named no team; pass --team-id");
  }
  return keys[0]["teamID"].get<std::string>();
}

}  // namespace

Runner AddTeam(CLI::App& app) {
  auto o = std::make_shared<TeamOptions>();
  auto* team = app.add_subcommand("team", "a team's settings");
  team->require_subcommand(1);
  auto* quotas = AddJsonLeaf(
      *team, "quotas", "show a team's quotas and usage; --set changes them (admin key)", o->json);
  quotas->add_option("--team-id", o->team_id, "another team (admin key; default: your own)");
  AddRepeatedOption(*quotas, "--set", o->sets,
                    "NAME=N or NAME=default, repeatable; NAME: max-sandboxes, max-vcpus, "
                    "max-memory-mib, max-creates-per-minute, max-metadata-bytes");

  return [=] {
    return RunControlCall(o->json, [&](ApiClient& api, std::string* text) -> Result<json> {
      std::string id = o->team_id;
      if (id.empty()) {
        MOAT_ASSIGN_OR_RETURN(id, OwnTeamId(api));
      }
      std::string target = "/teams/" + PercentEncode(id) + "/quotas";
      json r;
      if (o->sets.empty()) {
        MOAT_ASSIGN_OR_RETURN(r, api.Control("GET", target));
      } else {
        MOAT_ASSIGN_OR_RETURN(json body, ParseQuotaSets(o->sets));
        MOAT_ASSIGN_OR_RETURN(r, api.Control("PUT", target, body));
      }
      *text = FormatQuotas(r);
      return r;
    });
  };
}

}  // namespace moat::cli
