// `moat keys create|list|revoke`: moatd's API key administration (/keys) with the caller's
// X-API-Key. A key manages its own team's keys; the admin key (the one moatd printed on its
// first start) may also create a team (--team) and manage another team's keys (--team-id).
#include <cstdio>
#include <memory>
#include <string>

#include "api/codec/query.h"
#include "cli/api_client.h"
#include "cli/commands.h"
#include "cli/output.h"

namespace moat::cli {
namespace {

using api::codec::PercentEncode;

struct KeysOptions {
  bool json = false;
  std::string name;     // create
  std::string team;     // create: a new team
  std::string team_id;  // create, list: an existing team
  std::string id;       // revoke
};

}  // namespace

Runner AddKeys(CLI::App& app) {
  auto o = std::make_shared<KeysOptions>();
  auto* keys = app.add_subcommand("keys", "create, list and revoke API keys");
  keys->require_subcommand(1);

  auto* create = AddJsonLeaf(*keys, "create",
                             "create an API key and print it (shown only this once)", o->json);
  create->add_option("name", o->name, "what the key is for")->required();
  auto* team = create->add_option("--team", o->team, "admin only: a new team the key is for");
  create->add_option("--team-id", o->team_id, "an existing team (admin only: another team)")
      ->excludes(team);
  auto* list = AddJsonLeaf(*keys, "list", "list a team's keys (masked)", o->json);
  list->add_option("--team-id", o->team_id, "admin only: another team's keys");
  auto* revoke = AddJsonLeaf(*keys, "revoke", "revoke a key; it is refused from then on", o->json);
  revoke->add_option("id", o->id, "key ID (from keys list)")->required();

  return [=] {
    return RunControlCall(o->json, [&](ApiClient& api, std::string* text) -> Result<json> {
      if (create->parsed()) {
        json body = {{"name", o->name}};
        if (!o->team.empty()) body["team"] = o->team;
        if (!o->team_id.empty()) body["teamID"] = o->team_id;
        MOAT_ASSIGN_OR_RETURN(json r, api.Control("POST", "/keys", body));
        *text = FormatFields(r, {"id", "name", "teamID", "teamName", "createdAt", "key"});
        if (!o->json) std::fputs("moat: the key is shown only this once: store it now\n", stderr);
        return r;
      }
      if (list->parsed()) {
        std::string target = "/keys";
        if (!o->team_id.empty()) target += "?teamID=" + PercentEncode(o->team_id);
        MOAT_ASSIGN_OR_RETURN(json r, api.Control("GET", target));
        *text = FormatKeyList(r);
        return r;
      }
      *text = "revoked " + o->id + "\n";
      return api.Control("DELETE", "/keys/" + PercentEncode(o->id));
    });
  };
}

}  // namespace moat::cli
