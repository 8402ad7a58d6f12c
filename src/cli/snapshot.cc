// `moat snapshot create|list|delete`: named snapshots over the control API (E2B-WIRE §2.2). A
// snapshot's ID is a template: `moat sandbox create --template <snapshot ID>`.
#include <memory>
#include <string>

#include "api/codec/query.h"
#include "cli/api_client.h"
#include "cli/commands.h"
#include "cli/output.h"

namespace moat::cli {
namespace {

using api::codec::PercentEncode;

struct SnapshotOptions {
  bool json = false;
  std::string id;       // create: the sandbox; delete: the snapshot
  std::string name;     // create: its name; list: only this name or ID
  std::string sandbox;  // list: only those taken from this sandbox
};

Result<json> List(ApiClient& api, const SnapshotOptions& o) {
  std::string query = "?limit=100";
  if (!o.sandbox.empty()) query += "&sandboxID=" + PercentEncode(o.sandbox);
  if (!o.name.empty()) query += "&name=" + PercentEncode(o.name);
  return api.ListAll("/snapshots", query);
}

}  // namespace

Runner AddSnapshot(CLI::App& app) {
  auto o = std::make_shared<SnapshotOptions>();
  auto* snapshot = app.add_subcommand("snapshot", "create, list and delete named snapshots");
  snapshot->require_subcommand(1);

  auto* create =
      AddJsonLeaf(*snapshot, "create", "snapshot a running sandbox (it keeps running)", o->json);
  create->add_option("sandbox", o->id, "sandbox ID")->required();
  create->add_option("--name", o->name, "a name, usable as a template like the ID");
  auto* list = AddJsonLeaf(*snapshot, "list", "list your snapshots, newest first", o->json);
  list->add_option("--sandbox", o->sandbox, "only snapshots taken from this sandbox");
  list->add_option("--name", o->name, "only snapshots with this name or ID");
  auto* remove = AddJsonLeaf(*snapshot, "delete", "delete a snapshot", o->json);
  remove->add_option("id", o->id, "snapshot ID")->required();

  return [=] {
    return RunControlCall(o->json, [&](ApiClient& api, std::string* text) -> Result<json> {
      if (create->parsed()) {
        json body = json::object();
        if (!o->name.empty()) body["name"] = o->name;
        MOAT_ASSIGN_OR_RETURN(
            json r, api.Control("POST", "/sandboxes/" + PercentEncode(o->id) + "/snapshots", body));
        *text = FormatFields(r, {"snapshotID", "names", "sandboxID", "createdAt"});
        return r;
      }
      if (list->parsed()) {
        MOAT_ASSIGN_OR_RETURN(json r, List(api, *o));
        *text = FormatSnapshotList(r);
        return r;
      }
      *text = "deleted " + o->id + "\n";
      return api.Control("DELETE", "/templates/" + PercentEncode(o->id));
    });
  };
}

}  // namespace moat::cli
