// `moat host list|drain|undrain`: the fleet's hosts (GET /hosts) and an operator's drain of one
// (POST /hosts/{hostID}/drain, /undrain), with an admin key. `moatd serve` registers no hosts:
// there the list is empty.
#include <memory>
#include <string>

#include "api/codec/query.h"
#include "cli/api_client.h"
#include "cli/commands.h"
#include "cli/output.h"

namespace moat::cli {
namespace {

using api::codec::PercentEncode;

struct HostOptions {
  bool json = false;
  std::string id;  // drain, undrain
};

// The API's message says what went wrong (a lost host's 409 already says how it comes back);
// this adds what to do about a 403 or a 404.
Status Explained(const Status& s) {
  switch (s.code()) {
    case ErrorCode::kPermissionDenied:
      return Status(s.code(), s.message() + " (set MOAT_API_KEY to the admin key)");
    case ErrorCode::kNotFound:
      return Status(s.code(), s.message() + " (`moat host list` shows the hosts)");
    default: return s;
  }
}

}  // namespace

Runner AddHost(CLI::App& app) {
  auto o = std::make_shared<HostOptions>();
  auto* host = app.add_subcommand("host", "the fleet's hosts (admin key)");
  host->require_subcommand(1);
  auto* list = AddJsonLeaf(*host, "list", "list the hosts, their state and load", o->json);
  auto* drain = AddJsonLeaf(
      *host, "drain", "stop placing new sandboxes on a host (what it runs keeps running)", o->json);
  drain->add_option("id", o->id, "host ID (from host list)")->required();
  auto* undrain =
      AddJsonLeaf(*host, "undrain", "let a drained host take new sandboxes again", o->json);
  undrain->add_option("id", o->id, "host ID (from host list)")->required();

  return [=] {
    return RunControlCall(o->json, [&](ApiClient& api, std::string* text) -> Result<json> {
      if (list->parsed()) {
        auto r = api.Control("GET", "/hosts");
        if (!r.ok()) return Explained(r.status());
        *text = FormatHostList(*r);
        return r;
      }
      const char* verb = drain->parsed() ? "drain" : "undrain";
      auto r = api.Control("POST", "/hosts/" + PercentEncode(o->id) + "/" + verb);
      if (!r.ok()) return Explained(r.status());
      *text = FormatHostList(json::array({*r}));
      return r;
    });
  };
}

}  // namespace moat::cli
